"""Soft-label evaluation: students learn from a distilled set with a teacher's online soft labels.

The protocol of RDED (Sun et al., CVPR 2024) that UniDD/CFM (Bo, Liu, Wang, ICLR 2026)
evaluates with, as written in the UniDD code (``generate_soft_label_online.py``, github
bdy9527/UniDD):

* every batch of distilled images is augmented per image with a random resized crop
  (scale 0.08–1, ratio 3/4–4/3; kornia) and a horizontal flip, standardised, then mixed
  with CutMix (α = 1; ``torchvision.transforms.v2.CutMix``: one Beta(α, α) box per batch,
  pasted from the neighbouring image of the shuffled batch; the UniDD code pastes from a
  random permutation of the batch, the same distribution up to fixed points);
* the teacher (eval mode, frozen) labels the mixed batch: target ``softmax(t / T)``,
  student output ``log_softmax(s / T)``, loss ``KL(target ‖ student)`` averaged over the
  batch (``KLDivLoss(reduction="batchmean")``), T = 20, *not* multiplied by T² (the code
  has that factor commented out; AdamW is nearly invariant to the scale);
* AdamW, lr 1e-3, betas (0.9, 0.999), weight decay 1e-2; the lr of epoch e is
  ``1e-3 · ½ (1 + cos(π e / (2E)))`` (the code's schedule: half a cosine, ending at half
  the initial lr);
* E = 1000 epochs (CIFAR; 300 for Tiny/ImageNet); batch size by IPC as in the code for
  CIFAR-10 (10/50/100 at IPC 1/10/50, 100 otherwise) and CIFAR-100 (20/100/200, for
  more than 10 classes), capped at the set size.

All of it is a configuration of the shared loop (:func:`ddkit.train.train_model`: loss
``kd``, a batch transform and a targets function). The hard labels of the set are not
used for training. Reported: the test accuracy after the last epoch (the UniDD code
reports the best test accuracy seen in the last 20 % of epochs, which is optimistic; we
do not select on the test set).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, NonNegativeFloat, PositiveFloat, PositiveInt
from torch import Tensor

from ddkit.errors import ConfigError
from ddkit.teacher import Teacher, load_teacher
from ddkit.train import TrainConfig

__all__ = ["PROTOCOLS", "SoftAugment", "SoftLabelConfig", "default_batch_size", "describe", "resolve_protocol",
           "resolve_teacher", "teacher_targets"]

PROTOCOLS = ("hard", "soft", "auto")


class SoftLabelConfig(BaseModel):
    """Settings of the soft-label protocol (defaults: UniDD/RDED, CIFAR; module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: PositiveInt = 1000
    batch_size: PositiveInt = 100
    temperature: PositiveFloat = 20.0
    cutmix_alpha: NonNegativeFloat = 1.0
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    augment: bool = True  # random resized crop + flip + CutMix; False: none of them

    def train_config(self) -> TrainConfig:
        """The shared loop's settings: AdamW, half-cosine schedule, ``kd`` loss at T."""
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, optimizer="adamw", lr=self.lr,
                           weight_decay=self.weight_decay, betas=self.betas, schedule="half_cosine", loss="kd",
                           temperature=self.temperature)


class SoftAugment:
    """The protocol's batch transform on pixel-space images: random resized crop + flip
    (kornia, per image), standardisation, CutMix (torchvision v2). kornia and CutMix draw
    from torch's global RNG (seed it for determinism); ``generator`` is not used."""

    def __init__(self, size: int, config: SoftLabelConfig, mean: Tensor, std: Tensor):
        import kornia.augmentation as K
        from torchvision.transforms import v2

        self.aug = nn.Sequential(K.RandomResizedCrop((size, size)), K.RandomHorizontalFlip()) if config.augment \
            else None
        # CutMix's mixed labels are not used (the teacher labels the mixed images): dummy classes
        self.cutmix = v2.CutMix(alpha=config.cutmix_alpha, num_classes=2) \
            if config.augment and config.cutmix_alpha > 0 else None
        self.mean, self.std = mean, std

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self.aug is not None:
            x = self.aug(x)
        x = (x - self.mean) / self.std
        if self.cutmix is not None:
            x, _ = self.cutmix(x, torch.zeros(x.shape[0], dtype=torch.int64, device=x.device))
        return x


def teacher_targets(teacher: nn.Module):
    """A targets function for :func:`ddkit.train.train_model`: the frozen teacher's logits
    on the (augmented, standardised) batch."""
    teacher.eval()

    def fn(x: Tensor, _y: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            return x, teacher(x)

    return fn


def default_batch_size(ipc: int, num_classes: int, n: int) -> int:
    """The UniDD code's student batch size: CIFAR-10 table (≤ 10 classes) 10/50/100 at
    IPC 1/10/50, CIFAR-100 table (more classes) 20/100/200, 100 for other IPCs; at most ``n``."""
    table = {1: 10, 10: 50, 50: 100} if num_classes <= 10 else {1: 20, 10: 100, 50: 200}
    return max(1, min(n, table.get(ipc, 100)))


def resolve_protocol(protocol: str, has_teacher: bool, teacher_given: bool) -> str:
    """``"hard"`` or ``"soft"`` for a requested protocol.

    ``auto``: soft when a teacher is given or the set ships one, else hard.

    Raises:
        ConfigError: unknown protocol; ``soft`` without any teacher; a teacher given with ``hard``.
    """
    p = str(protocol).strip().lower()
    if p not in PROTOCOLS:
        raise ConfigError(f"unknown evaluation protocol {protocol!r}; use hard, soft or auto")
    if p == "hard" and teacher_given:
        raise ConfigError("a teacher only applies to the soft-label protocol; use --protocol soft or auto")
    if p == "soft" and not (has_teacher or teacher_given):
        raise ConfigError("the soft-label protocol needs a teacher: this distilled set ships none; "
                          "pass one (--teacher PATH, a file from ddkit.teacher.train_teacher or a CFM set)")
    if p == "auto":
        return "soft" if (has_teacher or teacher_given) else "hard"
    return p


def resolve_teacher(ds, teacher_arg: Any, device: torch.device) -> tuple[Teacher, str]:
    """The teacher for ``ds`` and where it came from: the one the set ships (``None``), a
    path (teacher file or a set that ships one) or a :class:`~ddkit.teacher.Teacher`.

    Raises:
        ConfigError: the teacher does not fit the set. ArtifactError: unreadable file.
    """
    if teacher_arg is None:
        teacher, source = Teacher.from_state(ds.teacher, ds.teacher_info, device), "shipped with the set"
    elif isinstance(teacher_arg, Teacher):
        teacher, source = teacher_arg.to(device), "given"
    else:
        teacher, source = load_teacher(Path(teacher_arg), device), str(teacher_arg)
    teacher.check_fits(ds.dataset, ds.images.shape[1], ds.num_classes, ds.images.shape[-1])
    return teacher, source


def describe(config: SoftLabelConfig, teacher_desc: str, model: str) -> str:
    """The one-line protocol string of an :class:`~ddkit.evaluate.EvalResult`."""
    aug = ("CutMix α=" f"{config.cutmix_alpha:g} + random resized crop + flip" if config.cutmix_alpha > 0
           else "random resized crop + flip") if config.augment else "no augmentation"
    return (f"soft-label KD (RDED/CFM): {model} students learn the online logits of the teacher ({teacher_desc}), "
            f"KL at T={config.temperature:g} (batchmean, no T² factor), {aug}, AdamW lr {config.lr:g} "
            f"wd {config.weight_decay:g}, lr × ½(1+cos(πe/2E)), batch {config.batch_size}, {config.epochs} ep; "
            f"final-epoch test accuracy (UniDD reports the best of the last 20 % of epochs)")


def settings(config: SoftLabelConfig, teacher: Teacher, source: str) -> dict[str, Any]:
    """The machine-readable settings of a soft-label evaluation (for the JSON result)."""
    return {"name": "soft", "teacher": {**teacher.info, "source": source}, "temperature": config.temperature,
            "kl_times_T2": False, "cutmix_alpha": config.cutmix_alpha if config.augment else 0.0,
            "augmentation": "random resized crop (0.08-1) + horizontal flip + CutMix" if config.augment else "none",
            "optimizer": "AdamW", "lr": config.lr, "weight_decay": config.weight_decay, "betas": list(config.betas),
            "lr_schedule": "lr * 0.5 * (1 + cos(pi * epoch / (2 * epochs)))", "batch_size": config.batch_size,
            "epochs": config.epochs, "reported": "final-epoch test accuracy"}
