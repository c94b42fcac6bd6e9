"""The top-level :func:`distill` entry point."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ddkit.artifact import DistilledSet
from ddkit.data import ImageDataset, load_dataset
from ddkit.distill import StepEvent, get_method, make_config


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

    Returns:
        The :class:`DistilledSet` (images float32 N×C×H×W in pixel space, unclamped; labels, the resolved
        config, the run's record in ``extra``).

    Raises:
        DatasetNotFoundError, ConfigError: unknown dataset/method/setting, bad IPC.
    """
    if isinstance(real, str):
        real = load_dataset(real, "train", data_root=data_root, download=download)
    cls = get_method(method)
    overrides = dict(config or {})
    if iterations is not None:
        overrides["iterations"] = iterations
    distiller = cls(make_config(cls, overrides))
    split = None
    if audit_split is not None:
        from ddkit.audit.privacy import member_split

        members, _ = member_split(len(real), audit_split)
        split = {"seed": int(audit_split), "fraction": 0.5, "train_size": len(real), "dataset": real.name}
        real = real.subset(members)
        if sample_weights is not None:
            sample_weights = torch.as_tensor(sample_weights)[members]
    ds = distiller.distill(real, ipc, device=device, seed=seed, progress=progress, checkpoint=checkpoint,
                           resume=resume, hook=hook, sample_weights=sample_weights)
    if split is not None:
        ds.extra["audit_split"] = split
    return ds
