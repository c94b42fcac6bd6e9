"""The top-level :func:`distill` entry point."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ddkit.artifact import DistilledSet
from ddkit.data import ImageDataset, load_dataset
from ddkit.distill import StepEvent, get_method, make_config
from ddkit.errors import ConfigError


def distill(
    real: ImageDataset | str,
    method: str = "dm",
    ipc: int = 10,
    *,
    iterations: int | None = None,
    config: dict[str, Any] | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    data_root: str | Path | None = None,
    download: bool = False,
    hook: Callable[[StepEvent], None] | None = None,
    sample_weights: torch.Tensor | None = None,
    audit_split: int | None = None,
    debias: str | None = None,
    debias_config: dict[str, Any] | None = None,
) -> DistilledSet:
    """Distil a real dataset with a registered method.

    Args:
        real: an :class:`ImageDataset` (training split) or a dataset name.
        method: registry name (``random``, ``herding``, ``dm``, ...).
        ipc: images per class (1 ≤ IPC ≤ smallest class).
        iterations: override the method's iteration budget (recorded in the result).
        config: method settings overriding its paper defaults (unknown keys are errors).
        seed, device, checkpoint, resume, progress, hook, sample_weights: see
            :meth:`ddkit.distill.base.Distiller.distill`.
        data_root, download: where to look for the data when ``real`` is a name, and whether
            torchvision may download it when no copy is found (off by default).
        audit_split: distil from the seeded half of ``real`` (the *members*; the other half is
            the non-member pool of the membership-inference audit). The set records the split
            as a spec (seed, fraction, the real set's size), not as a list of indices.
        debias: a remedy for biased real data (:mod:`ddkit.distill.debias`): ``"kde"``
            (label-free weights ∝ 1/kernel density of each image's embedding within its
            class, after Cui et al. 2024) or ``"oracle"`` (inverse frequency of the known
            bias attribute within its class: an upper bound; needs ``real.attributes``).
            The weights, normalised per class to mean 1, become ``sample_weights`` (DM:
            weighted class means; DC/DSA: a weighted real-side loss); the set records the
            choice, its settings and a summary of the weights in ``extra["debias"]``.
        debias_config: settings of ``kde`` (:class:`ddkit.distill.debias.KDEConfig`).

    Returns:
        The :class:`DistilledSet` (images float32 N×C×H×W in pixel space, unclamped; labels, the resolved
        config, the run's record in ``extra``).

    Raises:
        DatasetNotFoundError, ConfigError: unknown dataset/method/setting, bad IPC; a
            remedy that is unknown, given with ``sample_weights``, asked of a method without
            per-sample weights, or ``oracle`` on a dataset without attributes.
    """
    if isinstance(real, str):
        real = load_dataset(real, "train", data_root=data_root, download=download)
    cls = get_method(method)
    overrides = dict(config or {})
    if iterations is not None:
        overrides["iterations"] = iterations
    distiller = cls(make_config(cls, overrides))
    if debias is not None:
        from ddkit.distill.debias import DEBIAS

        if str(debias).strip().lower() not in DEBIAS:
            raise ConfigError(f"unknown debias remedy {debias!r}; use one of {', '.join(DEBIAS)}")
        if sample_weights is not None:
            raise ConfigError("give either sample_weights or debias, not both")
        if not cls.supports_sample_weights:
            from ddkit.distill import METHODS

            able = ", ".join(m for m, c in METHODS.items() if c.supports_sample_weights)
            raise ConfigError(f"method {cls.name!r} does not take per-sample weights, so it cannot debias; "
                              f"use one of {able}")
    elif debias_config:
        raise ConfigError("debias_config needs debias='kde'")
    split = None
    if audit_split is not None:
        from ddkit.audit.privacy import member_split

        members, _ = member_split(len(real), audit_split)
        split = {"seed": int(audit_split), "fraction": 0.5, "train_size": len(real), "dataset": real.name}
        real = real.subset(members)
        if sample_weights is not None:
            sample_weights = torch.as_tensor(sample_weights)[members]
    debias_info = None
    if debias is not None:
        from ddkit.distill.debias import debias_weights

        sample_weights, debias_info = debias_weights(real, debias, seed=seed, device=device, config=debias_config)
    ds = distiller.distill(real, ipc, device=device, seed=seed, progress=progress, checkpoint=checkpoint,
                           resume=resume, hook=hook, sample_weights=sample_weights)
    if split is not None:
        ds.extra["audit_split"] = split
    if debias_info is not None:
        ds.extra["debias"] = debias_info
    return ds
