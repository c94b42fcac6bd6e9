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

The hard labels of the set are not used for training. Reported: the test accuracy after
the last epoch (the UniDD code reports the best test accuracy seen in the last 20 % of
epochs, which is optimistic; we do not select on the test set).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ddkit.errors import ConfigError

__all__ = ["PROTOCOLS", "SoftLabelConfig", "default_batch_size", "describe", "kd_loss", "lr_factor",
           "resolve_protocol", "run_soft_protocol", "train_student_soft"]

PROTOCOLS = ("hard", "soft", "auto")


@dataclass(frozen=True)
class SoftLabelConfig:
    """Hyper-parameters of :func:`train_student_soft` (defaults: UniDD/RDED, CIFAR)."""

    epochs: int = 1000
    batch_size: int = 100
    temperature: float = 20.0
    cutmix_alpha: float = 1.0
    lr: float = 1e-3
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    augment: bool = True  # random resized crop + flip + CutMix; False: none of them


def default_batch_size(ipc: int, num_classes: int, n: int) -> int:
    """The UniDD code's student batch size: CIFAR-10 table (≤ 10 classes) 10/50/100 at
    IPC 1/10/50, CIFAR-100 table (more classes) 20/100/200, 100 for other IPCs; at most ``n``."""
    table = {1: 10, 10: 50, 50: 100} if num_classes <= 10 else {1: 20, 10: 100, 50: 200}
    return max(1, min(n, table.get(ipc, 100)))


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``KL(softmax(t/T) ‖ softmax(s/T))`` summed over classes, averaged over the batch.

    Args:
        student_logits, teacher_logits: B×K float logits. temperature: T > 0.

    Returns:
        Scalar ≥ 0 (not multiplied by T², as in the UniDD code).
    """
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    q = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean")


def lr_factor(epoch: int, epochs: int) -> float:
    """The UniDD code's per-epoch lr multiplier ``½ (1 + cos(π e / (2E)))`` (1 → ½)."""
    return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs / 2.0))


def train_student_soft(student: nn.Module, teacher: nn.Module, images: Tensor, config: SoftLabelConfig, *,
                       mean: Tensor, std: Tensor, generator: torch.Generator | None = None,
                       on_epoch: Callable[[int, float], None] | None = None) -> nn.Module:
    """Train ``student`` in place on pixel-space ``images`` with the teacher's online soft labels.

    Args:
        student: a fresh zoo network on the target device.
        teacher: the frozen teacher (same device; put in eval mode here).
        images: N×C×H×W float32 in [0, 1] (pixel space), on the device.
        config: :class:`SoftLabelConfig`.
        mean, std: per-channel standardisation (C×1×1 tensors on the device).
        generator: CPU generator for shuffling (kornia and CutMix draw from torch's global
            RNG: seed it for determinism).
        on_epoch: called after each epoch with (epoch index, mean loss).

    Returns:
        The student (train mode).
    """
    import kornia.augmentation as K
    from torchvision.transforms import v2

    from ddkit.models.zoo import check_input

    check_input(student, images)
    size = images.shape[-1]
    teacher.eval()
    aug = nn.Sequential(K.RandomResizedCrop((size, size)), K.RandomHorizontalFlip()) if config.augment else None
    # CutMix's mixed labels are not used (the teacher labels the mixed images): dummy classes
    cutmix = v2.CutMix(alpha=config.cutmix_alpha, num_classes=2) if config.augment and config.cutmix_alpha > 0 \
        else None
    opt = torch.optim.AdamW(student.parameters(), lr=config.lr, betas=config.betas,
                            weight_decay=config.weight_decay)
    n = images.shape[0]
    student.train()
    for epoch in range(config.epochs):
        for group in opt.param_groups:
            group["lr"] = config.lr * lr_factor(epoch, config.epochs)
        order = torch.randperm(n, generator=generator).to(images.device)
        total = 0.0
        for s in range(0, n, config.batch_size):
            idx = order[s:s + config.batch_size]
            x = images[idx]
            if aug is not None:
                x = aug(x)
            x = (x - mean) / std
            if cutmix is not None:
                x, _ = cutmix(x, torch.zeros(x.shape[0], dtype=torch.int64, device=x.device))
            with torch.no_grad():
                target = teacher(x)
            loss = kd_loss(student(x), target, config.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
        if on_epoch is not None:
            on_epoch(epoch, total / n)
    return student


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
                          "pass one (--teacher PATH, a file from ddkit.distill.cfm.train_teacher or a CFM set)")
    if p == "auto":
        return "soft" if (has_teacher or teacher_given) else "hard"
    return p


def describe(config: SoftLabelConfig, teacher_desc: str, model: str) -> str:
    """The one-line protocol string of an :class:`~ddkit.evaluate.EvalResult`."""
    aug = ("CutMix α=" f"{config.cutmix_alpha:g} + random resized crop + flip" if config.cutmix_alpha > 0
           else "random resized crop + flip") if config.augment else "no augmentation"
    return (f"soft-label KD (RDED/CFM): {model} students learn the online logits of the teacher ({teacher_desc}), "
            f"KL at T={config.temperature:g} (batchmean, no T² factor), {aug}, AdamW lr {config.lr:g} "
            f"wd {config.weight_decay:g}, lr × ½(1+cos(πe/2E)), batch {config.batch_size}, {config.epochs} ep; "
            f"final-epoch test accuracy (UniDD reports the best of the last 20 % of epochs)")


def run_soft_protocol(ds, teacher_arg: Any, test, *, model: str, runs: int, epochs: int | None, augment: bool,
                      device: torch.device, seed: int, batch_size: int | None, progress: bool
                      ) -> tuple[list[float], str, dict[str, Any]]:
    """Train ``runs`` students on ``ds`` with the soft-label protocol; test each on ``test``.

    Args:
        ds: the :class:`~ddkit.artifact.DistilledSet`.
        teacher_arg: ``None`` (use the teacher the set ships), a path (teacher file or a set
            that ships one) or a :class:`~ddkit.distill.cfm.Teacher`.
        test: the real test split. model: student zoo name. epochs: default 1000.
        batch_size: default :func:`default_batch_size`. seed: student i uses ``seed + i``.

    Returns:
        (accuracies in [0, 1], protocol string, settings dict for the JSON result).

    Raises:
        ConfigError: bad epochs/batch size, or a teacher that does not fit the set.
        ArtifactError: an unreadable teacher file.
    """
    from ddkit.distill.cfm import Teacher, load_teacher
    from ddkit.models import get_model
    from ddkit.train import accuracy

    if teacher_arg is None:
        teacher = Teacher.from_state(ds.teacher, ds.teacher_info, device)
        source = "shipped with the set"
    elif isinstance(teacher_arg, Teacher):
        teacher = teacher_arg.to(device)
        source = "given"
    else:
        teacher = load_teacher(Path(teacher_arg), device)
        source = str(teacher_arg)
    c, size = ds.images.shape[1], ds.images.shape[-1]
    teacher.check_fits(ds.dataset, c, ds.num_classes, size)
    epochs = 1000 if epochs is None else epochs
    n = ds.images.shape[0]
    bs = default_batch_size(ds.ipc, ds.num_classes, n) if batch_size is None else batch_size
    if epochs < 1 or bs < 1:
        raise ConfigError(f"soft-label evaluation needs epochs ≥ 1 and batch size ≥ 1, got {epochs}, {bs}")
    cfg = SoftLabelConfig(epochs=epochs, batch_size=bs, augment=augment)
    x = ds.images.to(device)
    mean = torch.tensor(ds.mean, device=device).view(-1, 1, 1)
    std = torch.tensor(ds.std, device=device).view(-1, 1, 1)
    accs: list[float] = []
    for i in range(runs):
        g = torch.Generator().manual_seed(seed + i)
        torch.manual_seed(seed + i)
        net = get_model(model, c, ds.num_classes, size).to(device)
        train_student_soft(net, teacher.model, x, cfg, mean=mean, std=std, generator=g)
        acc = accuracy(net, test.images, test.labels, normalize=lambda b: (b - mean) / std)
        accs.append(acc)
        if progress:
            print(f"  run {i + 1}/{runs}: {100 * acc:.2f} %", flush=True)
    desc = f"{teacher.describe()}; {source}"
    settings = {"name": "soft", "teacher": {**teacher.info, "source": source}, "temperature": cfg.temperature,
                "kl_times_T2": False, "cutmix_alpha": cfg.cutmix_alpha if augment else 0.0,
                "augmentation": "random resized crop (0.08-1) + horizontal flip + CutMix" if augment else "none",
                "optimizer": "AdamW", "lr": cfg.lr, "weight_decay": cfg.weight_decay, "betas": list(cfg.betas),
                "lr_schedule": "lr * 0.5 * (1 + cos(pi * epoch / (2 * epochs)))", "batch_size": bs, "epochs": epochs,
                "reported": "final-epoch test accuracy"}
    return accs, describe(cfg, desc, model), settings
