"""Membership-inference scoring: the threshold attack and LiRA, and the field's metrics.

* Score of a network on an example (x, y): the logit-scaled confidence of Carlini et al.
  (S&P 2022, "Membership Inference Attacks From First Principles"),
  ``φ = log p_y − log Σ_{k≠y} p_k`` (:func:`logit_confidence`), whose distribution over
  training runs is close to Gaussian.
* Threshold attack (Yeom et al., CSF 2018): the score itself (higher: member).
* **LiRA online** (:func:`lira_online`): shadow networks trained with (IN) and without (OUT)
  each example; per example, Gaussians fitted to its IN and OUT shadow scores; the attack's
  score is the log likelihood ratio ``log N(φ; μ_in, σ_in²) − log N(φ; μ_out, σ_out²)``.
* **LiRA offline** (:func:`lira_offline`): OUT shadows only; score ``log Φ((φ − μ_out)/σ_out)``
  (one-sided: how far above what non-members score).
* Variance: per example (``fixed_variance=False``) or one global σ per side estimated from
  all examples' deviations from their own means (``fixed_variance=True``, the paper's choice
  for few shadows).
* Metrics (:func:`attack_metrics`): ROC AUC, balanced accuracy (the best threshold's
  ``(TPR + TNR)/2``), and TPR at 0.1 % and 1 % FPR (the largest TPR whose FPR does not exceed
  them), from scikit-learn's ROC curve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import norm
from sklearn.metrics import roc_auc_score, roc_curve

from ddkit.errors import ConfigError

__all__ = ["MIAMetrics", "attack_metrics", "lira_offline", "lira_offline_masked", "lira_online",
           "logit_confidence"]

_MIN_STD = 1e-6


def logit_confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``φ = log p_y − log Σ_{k≠y} p_k`` per example, float64 (N,), from logits N×K (stable in
    log space: ``log_softmax`` and ``logsumexp`` over the other classes).

    Raises:
        ConfigError: shapes disagree or fewer than 2 classes.
    """
    if logits.dim() != 2 or logits.shape[1] < 2 or labels.shape != (logits.shape[0],):
        raise ConfigError(f"logit_confidence needs N×K logits (K ≥ 2) and N labels, got {tuple(logits.shape)} "
                          f"and {tuple(labels.shape)}")
    logp = torch.log_softmax(logits.double(), dim=1)
    own = logp.gather(1, labels.long().view(-1, 1)).squeeze(1)
    others = logp.scatter(1, labels.long().view(-1, 1), float("-inf"))
    return own - torch.logsumexp(others, dim=1)


def _check(target: np.ndarray, shadow: np.ndarray, name: str) -> None:
    if target.ndim != 1 or shadow.ndim != 2 or shadow.shape[1] != target.shape[0]:
        raise ConfigError(f"{name}: target scores must be (N,) and shadow scores S×N, got {target.shape} and "
                          f"{shadow.shape}")
    if not (np.isfinite(target).all() and np.isfinite(shadow).all()):
        raise ConfigError(f"{name}: scores must be finite")


def _moments(shadow: np.ndarray, mask: np.ndarray, fixed_variance: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-example mean and std of the masked shadow scores (S×N)."""
    count = mask.sum(0)
    if (count < 1).any():
        raise ConfigError("every example needs at least one shadow score on this side (IN/OUT)")
    mean = np.where(mask, shadow, 0.0).sum(0) / count
    dev2 = np.where(mask, (shadow - mean) ** 2, 0.0)
    if fixed_variance:
        pooled = np.sqrt(dev2.sum() / max(1, int(mask.sum()) - 1))
        std = np.full_like(mean, max(pooled, _MIN_STD))
    else:
        std = np.sqrt(dev2.sum(0) / np.maximum(count - 1, 1))
        std = np.maximum(std, _MIN_STD)
    return mean, std


def lira_online(target: np.ndarray, shadow: np.ndarray, shadow_in: np.ndarray, *,
                fixed_variance: bool = False) -> np.ndarray:
    """LiRA online: per example, ``log N(φ; μ_in, σ_in²) − log N(φ; μ_out, σ_out²)``.

    Args:
        target: (N,) scores φ of the attacked network. shadow: S×N shadow networks' scores.
        shadow_in: S×N bool, whether each shadow network was trained with each example.
        fixed_variance: one global σ per side instead of per-example σ.

    Returns:
        (N,) float64 membership scores (higher: member).

    Raises:
        ConfigError: shapes disagree, non-finite scores, or an example without IN or OUT shadows.
    """
    target, shadow, mask = np.asarray(target, float), np.asarray(shadow, float), np.asarray(shadow_in, bool)
    _check(target, shadow, "lira_online")
    if mask.shape != shadow.shape:
        raise ConfigError(f"lira_online: shadow_in must be {shadow.shape}, got {mask.shape}")
    mu_in, sd_in = _moments(shadow, mask, fixed_variance)
    mu_out, sd_out = _moments(shadow, ~mask, fixed_variance)
    return norm.logpdf(target, mu_in, sd_in) - norm.logpdf(target, mu_out, sd_out)


def lira_offline(target: np.ndarray, shadow_out: np.ndarray, *, fixed_variance: bool = False) -> np.ndarray:
    """LiRA offline: ``log Φ((φ − μ_out)/σ_out)`` from OUT shadows only (S×N scores).

    Raises:
        ConfigError: shapes disagree or non-finite scores.
    """
    target, shadow = np.asarray(target, float), np.asarray(shadow_out, float)
    _check(target, shadow, "lira_offline")
    mu, sd = _moments(shadow, np.ones_like(shadow, dtype=bool), fixed_variance)
    return norm.logcdf(target, mu, sd)


def lira_offline_masked(target: np.ndarray, shadow: np.ndarray, shadow_out: np.ndarray, *,
                        fixed_variance: bool = True) -> np.ndarray:
    """LiRA offline when each example has its own OUT shadows: ``shadow_out`` (S×N bool) marks
    the shadow networks that did not train on each example.

    Raises:
        ConfigError: shapes disagree, non-finite scores, or an example without OUT shadows.
    """
    target, shadow, mask = np.asarray(target, float), np.asarray(shadow, float), np.asarray(shadow_out, bool)
    _check(target, shadow, "lira_offline")
    if mask.shape != shadow.shape:
        raise ConfigError(f"lira_offline: shadow_out must be {shadow.shape}, got {mask.shape}")
    mu, sd = _moments(shadow, mask, fixed_variance)
    return norm.logcdf(target, mu, sd)


@dataclass
class MIAMetrics:
    """ROC AUC, balanced accuracy and TPR at 0.1 % / 1 % FPR (all in [0, 1]) of an attack."""

    auc: float
    balanced_accuracy: float
    tpr_at_0_1pct_fpr: float
    tpr_at_1pct_fpr: float
    members: int
    non_members: int


def attack_metrics(scores: np.ndarray, is_member: np.ndarray) -> MIAMetrics:
    """Metrics of membership scores (higher: member) against the truth.

    Raises:
        ConfigError: shapes disagree, non-finite scores, or members/non-members missing.
    """
    s, m = np.asarray(scores, float), np.asarray(is_member, bool)
    if s.shape != m.shape or s.ndim != 1:
        raise ConfigError(f"scores and membership must be two (N,) arrays, got {s.shape} and {m.shape}")
    if not np.isfinite(s).all():
        raise ConfigError("membership scores must be finite")
    if m.all() or not m.any():
        raise ConfigError("membership metrics need both members and non-members")
    fpr, tpr, _ = roc_curve(m, s)

    def tpr_at(limit: float) -> float:
        ok = fpr <= limit
        return float(tpr[ok].max()) if ok.any() else 0.0

    return MIAMetrics(auc=float(roc_auc_score(m, s)), balanced_accuracy=float(((1 + tpr - fpr) / 2).max()),
                      tpr_at_0_1pct_fpr=tpr_at(1e-3), tpr_at_1pct_fpr=tpr_at(1e-2), members=int(m.sum()),
                      non_members=int((~m).sum()))
