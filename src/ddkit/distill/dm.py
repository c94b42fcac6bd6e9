"""DM: Dataset Condensation with Distribution Matching (Zhao & Bilen, WACV 2023).

Each iteration samples a freshly initialised network ψ (ConvNet-3, never trained),
draws one DSA transform per class shared by that class's real and synthetic batches, and
minimises  L = Σ_c ‖ mean_i ψ(A(x^real_{c,i})) − mean_j ψ(A(s_{c,j})) ‖²  (paper eq. 4,
ψ = the network without its classifier) by SGD on the synthetic images (lr 1.0,
momentum 0.5), with 256 real images per class, 20 000 iterations, real-image
initialisation.

Batched form: all classes' real images go through ψ in one forward pass and all synthetic
images in another; per-class means come from a reshape. With per-sample normalisation
(instance norm, the default ConvNet) this is exactly the per-class loss (tested); with
batch norm it is not, so batch-norm models fall back to per-class passes. The real
branch runs without autograd (its embedding is a constant of the loss).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ddkit.artifact import DistilledSet
from ddkit.augment import DSA, DSAConfig
from ddkit.data import ImageDataset
from ddkit.distill.base import Checkpoint, Distiller, MethodConfig, iteration_generator, register
from ddkit.models import get_model
from ddkit.progress import LoopProgress


class DMConfig(MethodConfig):
    """DM settings; defaults are the paper's (Zhao & Bilen 2023, Sec. 4 and code)."""

    iterations: int = 20_000
    batch_real: int = 256
    lr_img: float = 1.0
    momentum: float = 0.5
    model: str = "convnet"
    init: str = "real"  # "real" or "noise"
    dsa: bool = True
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    checkpoint_every: int = 500


def dm_loss(embed, real: torch.Tensor, syn: torch.Tensor, num_classes: int,
            dsa: DSA | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """DM loss over all classes, batched.

    Args:
        embed: the feature map ψ (N×C×H×W → N×D).
        real: (K·B)×C×H×W standardised real images, class-major (B per class).
        syn: (K·S)×C×H×W standardised synthetic images, class-major (S per class).
        num_classes: K. dsa: siamese augmentation (one draw per class) or ``None``.

    Returns:
        Scalar Σ_c ‖mean ψ(real_c) − mean ψ(syn_c)‖² (gradient flows to ``syn`` only).
    """
    k = num_classes
    b, s = real.shape[0] // k, syn.shape[0] // k
    if dsa is not None:
        draw = dsa.draw(k, generator)
        real = dsa.apply(real, draw, torch.arange(k).repeat_interleave(b))
        syn = dsa.apply(syn, draw, torch.arange(k).repeat_interleave(s))
    with torch.no_grad():
        mu_real = embed(real).reshape(k, b, -1).mean(1)
    mu_syn = embed(syn).reshape(k, s, -1).mean(1)
    return ((mu_real - mu_syn) ** 2).sum()


def dm_loss_per_class(embed, real: torch.Tensor, syn: torch.Tensor, num_classes: int,
                      dsa: DSA | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The same loss computed class by class, as the reference code does (for tests and
    for batch-norm feature maps, whose statistics depend on the batch)."""
    k = num_classes
    b, s = real.shape[0] // k, syn.shape[0] // k
    draw = dsa.draw(k, generator) if dsa is not None else None
    loss = syn.new_zeros(())
    for c in range(k):
        r, y = real[c * b:(c + 1) * b], syn[c * s:(c + 1) * s]
        if draw is not None:
            r = dsa.apply(r, draw, torch.full((b,), c))
            y = dsa.apply(y, draw, torch.full((s,), c))
        with torch.no_grad():
            mr = embed(r).mean(0)
        loss = loss + ((mr - embed(y).mean(0)) ** 2).sum()
    return loss


@register
class DMDistiller(Distiller):
    """Distribution matching (DM). See the module docstring for the algorithm."""

    name = "dm"
    Config = DMConfig

    def run(self, real: ImageDataset, ipc: int, *, device, seed, progress, checkpoint: Path | None,
            resume) -> DistilledSet:
        cfg: DMConfig = self.config  # type: ignore[assignment]
        k, size = real.num_classes, real.image_size[0]
        dsa = DSA(DSAConfig(strategy=cfg.dsa_strategy), image_size=size) if cfg.dsa else None
        meta = self.checkpoint_meta(real, ipc, seed)
        by_class = real.class_indices()
        # All real images, standardised, on the device (the field's datasets fit in memory).
        real_x = real.normalize(real.float_images()).to(device)
        g0 = iteration_generator(seed, -1)
        if cfg.init == "real":
            init_idx = torch.cat([ix[torch.randperm(ix.numel(), generator=g0)[:ipc]] for ix in by_class])
            syn0 = real_x[init_idx.to(device)].clone()
        elif cfg.init == "noise":
            syn0 = torch.randn((k * ipc, real.channels, size, size), generator=g0).to(device)
        else:
            from ddkit.errors import ConfigError

            raise ConfigError(f"dm init must be 'real' or 'noise', got {cfg.init!r}")
        syn = syn0.requires_grad_(True)
        opt = torch.optim.SGD([syn], lr=cfg.lr_img, momentum=cfg.momentum)
        start = 0
        ck = self.load_checkpoint(checkpoint, resume, meta)
        if ck is not None:
            with torch.no_grad():
                syn.copy_(ck.tensors["syn"].to(device))
            opt.state[syn]["momentum_buffer"] = ck.tensors["momentum"].to(device).clone()
            start = ck.iteration
        per_class = "bn" in cfg.model or "batch" in cfg.model
        loss_fn = dm_loss_per_class if per_class else dm_loss
        bsz = cfg.batch_real
        t0 = time.perf_counter()
        loss_val = float("nan")
        with LoopProgress(f"dm ipc={ipc}", cfg.iterations, start, enabled=progress) as bar:
            for it in range(start, cfg.iterations):
                g = iteration_generator(seed, it)
                net = get_model(cfg.model, real.channels, k, size).to(device)
                for p in net.parameters():
                    p.requires_grad_(False)
                idx = torch.cat([ix[torch.randperm(ix.numel(), generator=g)[:bsz]] for ix in by_class])
                if any(ix.numel() < bsz for ix in by_class):  # tiny classes: sample with replacement
                    idx = torch.cat([ix[torch.randint(ix.numel(), (bsz,), generator=g)] for ix in by_class])
                loss = loss_fn(net.embed, real_x[idx.to(device)], syn, k, dsa, g)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_val = float(loss.detach()) / k
                bar.update(loss_val)
                done = it + 1
                if checkpoint is not None and cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
                    Checkpoint(done, {"syn": syn, "momentum": opt.state[syn]["momentum_buffer"]},
                               meta).save(checkpoint)
        seconds = time.perf_counter() - t0
        images = real.denormalize(syn.detach()).cpu()
        labels = torch.arange(k).repeat_interleave(ipc)
        return self.make_set(real, images, labels, ipc, seed, iterations=cfg.iterations,
                             iterations_run=cfg.iterations - start, seconds=round(seconds, 2),
                             final_loss=loss_val, device=str(device))
