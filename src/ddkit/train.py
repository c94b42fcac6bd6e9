"""The one supervised training loop of ddkit, and what a trained network predicts.

Every network ddkit trains goes through :func:`train_model`: evaluation networks (the
DC/DSA/DM protocol, learned labels, the soft-label protocol), herding's feature network,
MTT's experts, the CFM teacher, DC/DSA's inner loop and FRePo's online model pool. What
differs between them is configuration: the optimiser and its schedule, the loss, an
augmentation of each batch, and a targets function (e.g. a teacher's logits on the
augmented batch), all named in :class:`TrainConfig` or passed as parts.

Defaults are the DC/DSA/DM evaluation protocol (Zhao et al. 2021): SGD lr 0.01, momentum
0.9, weight decay 5e-4, batch 256, learning rate × 0.1 at half the epochs, cross-entropy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from ddkit.errors import ConfigError
from ddkit.models.zoo import check_input
from ddkit.utils import check_precision

__all__ = ["LOSSES", "TrainConfig", "accuracy", "confusion", "make_optimizer", "outputs", "predict", "train_loss",
           "train_model"]

LOSSES = ("ce", "mse", "sq", "kd")

# (x, generator) -> augmented x
Augment = Callable[..., torch.Tensor]
# (x, targets) -> (x, targets): e.g. a teacher's logits on the (augmented) batch
TargetsFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class TrainConfig(BaseModel):
    """Settings of :func:`train_model` (defaults: the DC/DSA/DM evaluation protocol).

    Attributes:
        epochs: passes over the data (≥ 0).
        batch_size: images per step (≥ 1); the last batch of an epoch may be smaller.
        optimizer: ``sgd`` (``momentum``, ``weight_decay``), ``adam`` or ``adamw``
            (``betas``, ``weight_decay``).
        lr: initial learning rate (> 0).
        schedule: learning rate per epoch e of E: ``step`` (× 0.1 from epoch
            ⌈``decay_at``·E⌉ on, ``torch.optim.lr_scheduler.MultiStepLR``), ``cosine``
            (``CosineAnnealingLR`` to 0 over E epochs, stepped per epoch), ``half_cosine``
            (lr · ½(1 + cos(π e / 2E)), the UniDD/RDED student schedule: ends at lr/2),
            ``warmup_cosine`` (per optimiser step s of S: linear from 0 to lr over
            ``warmup_steps``, then cosine to ``final_lr``·lr at S; optax's
            ``warmup_cosine_decay_schedule``, FRePo's evaluation) or ``constant`` (the
            optimiser's lr is left as it is).
        warmup_steps, final_lr: of ``warmup_cosine`` (steps ≥ 0; fraction of lr in [0, 1]).
        shuffle: draw a new permutation each epoch (``False``: the stored order, as FRePo's
            evaluation batches).
        loss: ``ce`` (cross-entropy against class indices or probability rows), ``mse``
            (``F.mse_loss``, mean over N·K entries), ``sq`` (½ Σ_k (f − y)², mean over the
            batch: FRePo's ``mean_squared_loss``) or ``kd`` (KL(softmax(t/T) ‖ softmax(s/T)),
            batch mean, no T² factor, against teacher logits ``t``; RDED/UniDD).
        temperature: T of ``kd`` (> 0).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: NonNegativeInt = 300
    batch_size: PositiveInt = 256
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: PositiveFloat = 0.01
    momentum: NonNegativeFloat = 0.9
    weight_decay: NonNegativeFloat = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["step", "cosine", "half_cosine", "warmup_cosine", "constant"] = "step"
    decay_at: float = Field(0.5, ge=0, le=1)
    warmup_steps: NonNegativeInt = 0
    final_lr: float = Field(0.0, ge=0, le=1)
    shuffle: bool = True
    loss: Literal["ce", "mse", "sq", "kd"] = "ce"
    temperature: PositiveFloat = 20.0


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser ``config`` names, over ``params``."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


def _scheduler(opt: torch.optim.Optimizer, config: TrainConfig, total_steps: int = 0):
    e = config.epochs
    if config.schedule == "warmup_cosine":  # stepped per optimiser step (see train_model)
        w, total, end = config.warmup_steps, max(1, total_steps), config.final_lr

        def factor(s: int) -> float:
            if s < w:
                return s / w
            t = min(1.0, (s - w) / max(1, total - w))
            return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * t))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)
    if config.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[math.ceil(e * config.decay_at)], gamma=0.1)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, e))
    if config.schedule == "half_cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda ep: 0.5 * (1.0 + math.cos(math.pi * ep / e / 2.0)))
    return None


def train_loss(out: torch.Tensor, target: torch.Tensor, config: TrainConfig,
               weights: torch.Tensor | None = None) -> torch.Tensor:
    """The loss ``config.loss`` of logits ``out`` (B×K) against ``target``.

    ``target``: int64 (B,) class indices or float32 B×K rows (``ce``), regression targets
    B×K (``mse``, ``sq``) or teacher logits B×K (``kd``). ``weights``: optional (B,)
    non-negative per-sample weights; the loss is then Σ w_i ℓ_i / Σ w_i, with ℓ_i each
    sample's term of the same loss (for ``mse`` its mean over K). Returns a scalar.
    """
    if weights is None:
        if config.loss == "ce":
            return F.cross_entropy(out, target)
        if config.loss == "mse":
            return F.mse_loss(out, target)
        if config.loss == "sq":
            return 0.5 * ((out - target.to(out.dtype)) ** 2).sum(1).mean()
        log_p = F.log_softmax(out / config.temperature, dim=1)
        return F.kl_div(log_p, F.softmax(target / config.temperature, dim=1), reduction="batchmean")
    if config.loss == "ce":
        per = F.cross_entropy(out, target, reduction="none")
    elif config.loss == "mse":
        per = ((out - target) ** 2).mean(1)
    elif config.loss == "sq":
        per = 0.5 * ((out - target.to(out.dtype)) ** 2).sum(1)
    else:
        log_p = F.log_softmax(out / config.temperature, dim=1)
        per = F.kl_div(log_p, F.softmax(target / config.temperature, dim=1), reduction="none").sum(1)
    w = weights.to(per.dtype)
    return (per * w).sum() / w.sum().clamp_min(1e-12)


def train_model(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    config: TrainConfig = TrainConfig(),
    *,
    optimizer: torch.optim.Optimizer | None = None,
    augment: Augment | None = None,
    targets_fn: TargetsFn | None = None,
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    sample_weights: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    max_steps: int | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    compile: bool = False,
    precision: str = "fp32",
) -> nn.Module:
    """Train ``model`` in place and return it (train mode).

    Each epoch draws a permutation of the N samples with ``generator`` and cuts it into
    batches of ``config.batch_size``; each batch is ``x = images[idx]``, ``y = targets[idx]``,
    then ``x = augment(x, generator=generator)``, then ``x, y = targets_fn(x, y)``, then one
    optimiser step on ``train_loss(model(x), y)``.

    Args:
        model: the network, on the data's device.
        images: N×C×H×W float32 in whatever space ``augment`` / the model expect
            (standardised for the zoo's networks), on the model's device.
        targets: (N,) int64 class indices or N×K float32 (see :class:`TrainConfig.loss`);
            for ``kd`` with a ``targets_fn`` anything indexable by sample (it is replaced).
        config: :class:`TrainConfig`.
        optimizer: continue with this optimiser (its state and lr are kept; the schedule
            is not applied); default: a new one from ``config`` with its schedule.
        augment: called on each batch as ``augment(x, generator=generator)``.
        targets_fn: called after ``augment``; returns the batch and its targets.
        loss_fn: ``loss_fn(model, x, y)`` → scalar, instead of ``train_loss(model(x), y)``:
            for objectives that look inside the model (ELF's front/rear terms); ``y`` is
            ``targets[idx]`` (e.g. the batch's sample indices).
        sample_weights: optional (N,) float, ≥ 0: per-sample loss weights.
        generator: CPU generator for the permutations (and passed to ``augment``).
        max_steps: stop after this many optimiser steps (default: all epochs).
        on_epoch: called after each epoch with (epoch index, mean training loss).
        compile: run the model's forward (and so its backward) through ``torch.compile``
            (inductor, static shapes: one graph per batch shape, shared by every fresh
            network of the same architecture). The same algorithm; the float rounding of
            the fused kernels differs from eager in the last digits. The first step
            compiles (seconds to a minute on a CPU). A ``loss_fn`` receives the compiled
            module (its submodules stay eager).
        precision: ``"fp32"`` (default) or ``"bf16"``: forward and loss under bf16
            autocast (weights, gradients and the optimiser stay FP32). Not exact; pays only
            with bf16 matrix units (:func:`ddkit.utils.bf16_units`): on a 2-core Intel Xeon
            with AMX a compiled ConvNet-3 step on 100 images took 124 ms against 196 ms
            (docs/methods.md, "Speed").

    Raises:
        ModelError: images do not match the model's channels/size.
        ConfigError: ``sample_weights`` not of shape (N,), negative, or all zero; the model
            does not compile (``compile=True`` never falls back to eager silently);
            ``precision`` not fp32/bf16.
    """
    check_input(model, images)
    check_precision(precision)
    n = images.shape[0]
    if sample_weights is not None:
        if sample_weights.shape != (n,) or bool((sample_weights < 0).any()) or not float(sample_weights.sum()) > 0:
            raise ConfigError(f"sample_weights must be {n} non-negative numbers, not all zero")
        sample_weights = sample_weights.to(images.device)
    sched = None
    per_step = config.schedule == "warmup_cosine"
    if optimizer is None:
        optimizer = make_optimizer(model.parameters(), config)
        planned = config.epochs * math.ceil(n / config.batch_size)
        sched = _scheduler(optimizer, config, planned if max_steps is None else min(planned, max_steps))
    model.train()
    forward: nn.Module = torch.compile(model, dynamic=False) if compile else model
    # torch.compile imported torch._dynamo; eager runs catch nothing here
    compile_errors = (torch._dynamo.exc.TorchDynamoException,) if compile else ()
    steps = 0
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=generator).to(images.device) if config.shuffle \
            else torch.arange(n, device=images.device)
        total = 0.0
        for start in range(0, n, config.batch_size):
            idx = order[start:start + config.batch_size]
            x, y = images[idx], targets[idx]
            if augment is not None:
                x = augment(x, generator=generator)
            if targets_fn is not None:
                x, y = targets_fn(x, y)
            try:
                with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    if loss_fn is not None:
                        loss = loss_fn(forward, x, y)
                    else:
                        loss = train_loss(forward(x), y, config,
                                          None if sample_weights is None else sample_weights[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            except compile_errors as exc:
                lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
                why = " ".join(lines[:3])[:400]  # inductor's first line is "backend='inductor' raised:"
                raise ConfigError(f"torch.compile failed on {type(model).__name__} ({why}); "
                                  "train with compile=False") from None
            optimizer.step()
            if per_step and sched is not None:
                sched.step()
            total += float(loss.detach()) * idx.numel()
            steps += 1
            if max_steps is not None and steps >= max_steps:
                return model
        if sched is not None and not per_step:
            sched.step()
        if on_epoch is not None:
            on_epoch(epoch, total / n)
    return model


def _batches(model: nn.Module, images: torch.Tensor, normalize, batch_size: int):
    device = next(model.parameters()).device
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(device)
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        yield normalize(x) if normalize is not None else x


@torch.no_grad()
def outputs(model: nn.Module, images: torch.Tensor, normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
            batch_size: int = 1000) -> torch.Tensor:
    """Raw outputs (logits or regression outputs), float N×K on the model's device, of ``model``
    (eval mode during the call; its mode is restored).

    ``images``: N×C×H×W uint8 pixels (0..255) or float, N ≥ 1; ``normalize`` as :func:`predict`.
    Batches of ``batch_size`` are moved to the model's device.

    Raises:
        ConfigError: ``images`` holds no image.
    """
    if images.shape[0] == 0:
        raise ConfigError("outputs: images is empty (0 images)")
    was_training = model.training
    model.eval()
    outs = [model(x) for x in _batches(model, images, normalize, batch_size)]
    model.train(was_training)
    return torch.cat(outs)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
            batch_size: int = 1000) -> torch.Tensor:
    """Predicted classes, int64 (N,) on the CPU, of ``model`` (eval mode during the call).

    ``images``: N×C×H×W uint8 pixels (0..255) or float; ``normalize`` maps a float [0, 1]
    batch to the model's input space. Batches are moved to the model's device.
    """
    if images.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64)
    return outputs(model, images, normalize, batch_size).argmax(1).cpu()


def confusion(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
              normalize: Callable[[torch.Tensor], torch.Tensor] | None = None, batch_size: int = 1000) -> torch.Tensor:
    """Confusion matrix, int64 K×K: entry (i, j) counts test images of class i predicted as j.

    Per-class accuracy is ``diag / row sums``; overall accuracy ``trace / total``.
    """
    pred = predict(model, images, normalize, batch_size)
    idx = labels.cpu().long() * num_classes + pred
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             normalize: Callable[[torch.Tensor], torch.Tensor] | None = None, batch_size: int = 1000) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on images N×C×H×W and int64 labels (N,).

    ``images`` may be uint8 pixels (0..255) or float; ``normalize`` maps a float [0,1]
    batch to the model's input space. Leaves the model in train mode (as 0.1.0 did).
    """
    pred = predict(model, images, normalize, batch_size)
    model.train()
    return int((pred == labels.cpu()).sum()) / max(1, images.shape[0])
