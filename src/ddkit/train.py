"""The one supervised training loop of ddkit, and test-set accuracy.

Used by evaluation (train a fresh network on a distilled set), by herding's feature
network and by every method that needs a trained network. Defaults are the DC/DSA/DM
evaluation protocol (Zhao et al. 2021): SGD lr 0.01, momentum 0.9, weight decay 5e-4,
batch 256, learning rate × 0.1 at half the epochs, cross-entropy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ddkit.augment import DSA
from ddkit.models.zoo import check_input


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`train_model` (defaults: DC/DSA/DM evaluation)."""

    epochs: int = 300
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    decay_at: float = 0.5  # lr × 0.1 once this fraction of the epochs is done
    loss: str = "ce"  # "ce": cross-entropy (hard or probability labels); "mse": regression on N×K targets


def train_model(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig = TrainConfig(),
    *,
    augment: DSA | None = None,
    generator: torch.Generator | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Train ``model`` in place on standardised images and return it.

    Args:
        model: a zoo network on the target device.
        images: N×C×H×W float32, standardised (dataset mean/std), on the model's device.
        labels: int64 (N,) class indices, or float32 N×K soft labels (probabilities, with
            ``loss="ce"``: cross-entropy against them; any real targets with ``loss="mse"``,
            the KIP/FRePo evaluation of learned labels).
        config: :class:`TrainConfig`.
        augment: DSA applied per batch (non-siamese: one op, per-sample parameters).
        generator: CPU generator for shuffling and augmentation (determinism).
        on_epoch: called after each epoch with (epoch index, mean training loss).

    Raises:
        ModelError: images do not match the model's channels/size.
    """
    check_input(model, images)
    n = images.shape[0]
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    decay_epoch = math.ceil(config.epochs * config.decay_at)
    model.train()
    for epoch in range(config.epochs):
        if epoch == decay_epoch:
            for group in opt.param_groups:
                group["lr"] = config.lr * 0.1
        order = torch.randperm(n, generator=generator).to(images.device)
        total = 0.0
        for start in range(0, n, config.batch_size):
            idx = order[start:start + config.batch_size]
            x, y = images[idx], labels[idx]
            if augment is not None:
                x = augment(x, generator=generator)
            out = model(x)
            loss = F.mse_loss(out, y) if config.loss == "mse" else F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
        if on_epoch is not None:
            on_epoch(epoch, total / n)
    return model


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
             batch_size: int = 1000) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on images N×C×H×W and int64 labels (N,).

    ``images`` may be uint8 pixels (0..255) or float; ``normalize`` maps a float [0,1]
    batch to the model's input space. Batches are moved to the model's device.
    """
    device = next(model.parameters()).device
    model.eval()
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(device)
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        if normalize is not None:
            x = normalize(x)
        pred = model(x).argmax(1)
        correct += int((pred == labels[start:start + batch_size].to(device)).sum())
    model.train()
    return correct / max(1, images.shape[0])
