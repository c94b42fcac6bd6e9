"""Class fairness of networks trained on a distilled set (the trust study's per-class view).

From per-class test accuracies (runs × K, e.g. ``EvalResult.per_class`` of each run):
the std across classes, the worst class, the range (max − min), and against a reference
(networks trained on the full real training set) the ratio of the stds and the per-class
deltas, so "distillation amplifies unfairness" is a number.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ddkit.errors import ConfigError

__all__ = ["fairness"]


def fairness(per_class: np.ndarray, reference: np.ndarray | None = None) -> dict[str, Any]:
    """Fairness figures of per-class accuracies (in [0, 1]).

    Args:
        per_class: runs × K (or (K,)) accuracies of networks trained on the distilled set.
        reference: the same for networks trained on the full real data (optional).

    Returns:
        ``std``, ``worst``, ``worst_class``, ``range`` (means over runs of each run's figure),
        ``per_class`` (mean over runs); with a reference also ``std_reference``,
        ``std_ratio`` (std / std_reference) and ``delta_per_class`` (distilled − reference).

    Raises:
        ConfigError: shapes that are not runs × K, or values outside [0, 1].
    """
    a = np.atleast_2d(np.asarray(per_class, dtype=float))
    if a.ndim != 2 or a.shape[1] < 2 or not ((a >= 0) & (a <= 1)).all():
        raise ConfigError(f"per-class accuracies must be runs × K (K ≥ 2) values in [0, 1], got shape {a.shape}")
    mean = a.mean(0)
    out: dict[str, Any] = {"std": float(a.std(1).mean()), "worst": float(a.min(1).mean()),
                           "worst_class": int(mean.argmin()), "range": float((a.max(1) - a.min(1)).mean()),
                           "per_class": mean.round(6).tolist()}
    if reference is not None:
        r = np.atleast_2d(np.asarray(reference, dtype=float))
        if r.shape[1] != a.shape[1]:
            raise ConfigError(f"reference has {r.shape[1]} classes, the set {a.shape[1]}")
        std_ref = float(r.std(1).mean())
        out.update(std_reference=std_ref, std_ratio=float(out["std"] / std_ref) if std_ref > 0 else float("inf"),
                   delta_per_class=(mean - r.mean(0)).round(6).tolist())
    return out
