"""Robustness of networks trained on a distilled set: adversarial and common corruptions.

* Adversarial accuracy (the trust study's protocol): torchattacks' FGSM and PGD, L∞,
  ε ∈ {2, 4, 8}/255 by default (MNIST convention ε ∈ {0.1, 0.3} as an option), PGD with 10
  steps of α = ε/4 and a random start; optionally AutoAttack (Croce & Hein, ICML 2020;
  torchattacks' ``AutoAttack``, L∞, ``version="standard"``: APGD-CE, APGD-T, FAB-T, Square
  with 5000 queries — slow, so off unless asked for; DD-RobustBench runs it at
  ε ∈ {1, 2, 3, 4}/255). Networks take standardised input, so the attacks run in pixel space
  [0, 1] with ``set_normalization_used(mean, std)``.
* Corruption accuracy: the 15 common corruptions of Hendrycks & Dietterich (ICLR 2019) at
  severities 1–5, from ``imagecorruptions-imaug`` (the maintained fork of
  ``imagecorruptions``). It takes H×W×3 uint8 images of at least 32 px: grey images are
  repeated to 3 channels and averaged back, 28 px images are padded to 32 (edge values) and
  cropped back after corrupting.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ddkit.errors import ConfigError

__all__ = ["ATTACKS", "CORRUPTIONS", "adversarial_accuracy", "corrupt_grid", "corrupt_images", "corruption_accuracy"]

ATTACKS = ("fgsm", "pgd", "autoattack")
CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")


def adversarial_accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: tuple[float, ...],
                         std: tuple[float, ...], *, attack: str = "pgd", eps: float = 8 / 255, steps: int = 10,
                         batch_size: int = 500, seed: int = 0) -> float:
    """Accuracy in [0, 1] of ``net`` on adversarial versions of pixel-space ``images``.

    Args:
        net: takes standardised N×C×H×W input. images: float [0, 1] (or uint8) N×C×H×W;
            labels: int64 (N,). mean, std: the standardisation (per channel, pixel units).
        attack: ``fgsm``, ``pgd`` (L∞, ``steps`` steps of ε/4, random start) or
            ``autoattack`` (L∞ standard version, ``seed`` passed on; ``steps`` unused). eps: ε
            in pixel units (0 < ε ≤ 1).

    Raises:
        ConfigError: unknown attack, ε out of (0, 1], steps < 1.
    """
    import torchattacks

    if attack not in ATTACKS:
        raise ConfigError(f"unknown attack {attack!r}; use {', '.join(ATTACKS)}")
    if not 0 < eps <= 1:
        raise ConfigError(f"ε must be in (0, 1] pixel units (e.g. 8/255 ≈ 0.031, MNIST 0.3), got {eps}")
    if steps < 1:
        raise ConfigError(f"PGD needs ≥ 1 step, got {steps}")
    dev = next(net.parameters()).device
    was = net.training
    net.eval()
    if attack == "fgsm":
        atk = torchattacks.FGSM(net, eps=eps)
    elif attack == "pgd":
        atk = torchattacks.PGD(net, eps=eps, alpha=eps / 4, steps=steps, random_start=True)
    else:
        with torch.no_grad():
            k = int(net(torch.zeros((1, *images.shape[1:]), device=dev)).shape[1])
        atk = torchattacks.AutoAttack(net, norm="Linf", eps=eps, version="standard", n_classes=k, seed=seed)
    atk.set_normalization_used(mean=list(mean), std=list(std))
    torch.manual_seed(seed)
    correct = 0
    for s in range(0, images.shape[0], batch_size):
        x = images[s:s + batch_size].to(dev)
        x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
        y = labels[s:s + batch_size].to(dev)
        adv = atk(x, y)
        with torch.no_grad():
            norm = (adv - torch.tensor(mean, device=dev).view(-1, 1, 1)) / torch.tensor(std, device=dev).view(-1, 1, 1)
            correct += int((net(norm).argmax(1) == y).sum())
    net.train(was)
    return correct / max(1, images.shape[0])


def corrupt_images(images: torch.Tensor, corruption: str, severity: int) -> torch.Tensor:
    """Corrupt uint8 images N×C×H×W (C = 1 or 3) with ``imagecorruptions``; returns uint8 N×C×H×W.

    Raises:
        ConfigError: unknown corruption, severity outside 1–5, or not uint8 N×C×H×W.
    """
    from imagecorruptions import corrupt

    if corruption not in CORRUPTIONS:
        raise ConfigError(f"unknown corruption {corruption!r}; known: {', '.join(CORRUPTIONS)}")
    if severity not in (1, 2, 3, 4, 5):
        raise ConfigError(f"severity must be 1..5, got {severity}")
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ConfigError(f"corrupt_images needs uint8 N×C×H×W images with C = 1 or 3, got {images.dtype} "
                          f"{tuple(images.shape)}")
    n, c, h, w = images.shape
    pad = max(0, 32 - min(h, w))
    lo = pad // 2
    out = []
    for img in images.numpy():
        hwc = np.repeat(img, 3, axis=0).transpose(1, 2, 0) if c == 1 else img.transpose(1, 2, 0)
        if pad:
            hwc = np.pad(hwc, ((lo, pad - lo), (lo, pad - lo), (0, 0)), mode="edge")
        res = np.asarray(corrupt(np.ascontiguousarray(hwc), corruption_name=corruption, severity=severity))
        res = res[lo:lo + h, lo:lo + w].astype(np.float64)
        res = res.mean(2, keepdims=True) if c == 1 else res
        out.append(np.clip(np.rint(res), 0, 255).astype(np.uint8).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out))


def corrupt_grid(images: torch.Tensor, corruptions: tuple[str, ...] = CORRUPTIONS,
                 severities: tuple[int, ...] = (1, 2, 3, 4, 5), *, seed: int = 0
                 ) -> dict[str, dict[int, torch.Tensor]]:
    """Every (corruption, severity) copy of uint8 ``images`` N×C×H×W, made once so that several
    networks are scored on the same corrupted images (paired, and each image corrupted once).
    ``imagecorruptions`` draws from NumPy's global generator: it is seeded with ``seed`` here
    (the caller's global state is restored afterwards), so the grid is reproducible.

    Raises:
        ConfigError: as :func:`corrupt_images`.
    """
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return {name: {s: corrupt_images(images, name, s) for s in severities} for name in corruptions}
    finally:
        np.random.set_state(state)


def corruption_accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, normalize, *,
                        corruptions: tuple[str, ...] = CORRUPTIONS, severities: tuple[int, ...] = (1, 2, 3, 4, 5),
                        corrupted: dict[str, dict[int, torch.Tensor]] | None = None
                        ) -> dict[str, dict[int, float]]:
    """Accuracy in [0, 1] of ``net`` per corruption and severity on uint8 ``images`` N×C×H×W;
    ``normalize`` maps a float [0, 1] batch to the network's input. ``corrupted``: the
    corrupted copies from :func:`corrupt_grid` of these images (made here when not given).

    Raises:
        ConfigError: as :func:`corrupt_images`, or ``corrupted`` lacks a requested cell.
    """
    from ddkit.train import accuracy

    out: dict[str, dict[int, float]] = {}
    for name in corruptions:
        out[name] = {}
        for s in severities:
            if corrupted is None:
                x = corrupt_images(images, name, s)
            elif s not in corrupted.get(name, {}):
                raise ConfigError(f"no corrupted copy for {name} at severity {s}; make them with corrupt_grid")
            else:
                x = corrupted[name][s]
            out[name][s] = accuracy(net, x, labels, normalize=normalize)
    return out
