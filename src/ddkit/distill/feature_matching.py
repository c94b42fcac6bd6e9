"""The loop shared by methods that match features of freshly sampled random networks.

DM (Zhao & Bilen, WACV 2023) and the UniDD ``spectral`` method differ only in the loss
they compute on one iteration's features; everything else lives here: real-image or noise
initialisation, a fresh network per iteration (never trained), a class-balanced real
batch, one siamese DSA draw per class, SGD with momentum on the synthetic images,
checkpoints and exact resume (every random draw of iteration t comes from a generator
seeded by (seed, t), so a checkpoint needs only the images and the momentum).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from ddkit.artifact import DistilledSet
from ddkit.augment import DSA, DSAConfig
from ddkit.data import ImageDataset
from ddkit.distill.base import (
    Checkpoint,
    Distiller,
    MethodConfig,
    initial_synthetic,
    iteration_generator,
    sample_per_class,
)
from ddkit.errors import ConfigError
from ddkit.models import get_model
from ddkit.progress import LoopProgress

# loss(embed, real (K·B)×C×H×W, syn (K·S)×C×H×W, K, dsa, generator, per_class) -> scalar
MatchingLoss = Callable[..., torch.Tensor]


class FeatureMatchingConfig(MethodConfig):
    """Settings of the shared loop; defaults are DM's (Zhao & Bilen 2023, Sec. 4 and code)."""

    iterations: NonNegativeInt = 20_000
    batch_real: PositiveInt = 256
    lr_img: PositiveFloat = 1.0
    momentum: NonNegativeFloat = 0.5
    model: str = "convnet"
    init: Literal["real", "noise"] = "real"
    dsa: bool = True
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    checkpoint_every: NonNegativeInt = 500


class EmbeddingMatchingConfig(FeatureMatchingConfig):
    """Settings of the methods that match embeddings of a fresh network (DM, ``spectral``).

    ``compile`` (opt-in, not in the papers): run ψ through ``torch.compile`` (inductor).
    Same algorithm and the same random draws; features agree with eager mode to float32
    rounding (about 1e-5 relative), so the images differ from an eager run's in the last
    digits. The first iteration pays the compilation (tens of seconds on a CPU, recorded
    as ``warmup_seconds`` in the set's metadata); later iterations reuse the compiled code
    for every freshly initialised network (parameters are graph inputs). Needs a C++
    compiler on CPU (Triton on CUDA); a failure to compile is a ConfigError, never a
    silent fall-back to eager. Measured speed: ``bench/speed.py``.
    """

    compile: bool = False


def compiled_embedding() -> Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]:
    """``torch.compile``'d ``(net, x) ↦ net.embed(x)`` with static shapes: one compiled graph
    per input shape and grad mode, shared by every network of the same architecture."""

    def embed(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return net.embed(x)

    return torch.compile(embed, dynamic=False)


def run_feature_matching(distiller: Distiller, real: ImageDataset, ipc: int, loss_fn: MatchingLoss, *,
                         device: torch.device, seed: int, progress: bool, checkpoint: Path | None, resume: bool,
                         title: str, **extra) -> DistilledSet:
    """Distil ``real`` to ``ipc`` images per class by minimising ``loss_fn`` (see module doc).

    ``distiller.config`` must be a :class:`FeatureMatchingConfig`. Models containing batch
    norm are embedded class by class (``per_class=True`` is passed to ``loss_fn``), since
    their features depend on the batch; classes smaller than ``batch_real`` are sampled
    with replacement. ``extra`` is added to the set's metadata.
    """
    cfg: EmbeddingMatchingConfig = distiller.config  # type: ignore[assignment]
    k, size = real.num_classes, real.image_size[0]
    compiled = compiled_embedding() if cfg.compile else None
    # torch.compile imported torch._dynamo; eager runs catch nothing here
    compile_errors = (torch._dynamo.exc.TorchDynamoException,) if compiled is not None else ()
    warmup = None
    dsa = DSA(DSAConfig(strategy=cfg.dsa_strategy), image_size=size) if cfg.dsa else None
    meta = distiller.checkpoint_meta(real, ipc, seed)
    by_class = real.class_indices()
    real_x = real.normalize(real.float_images()).to(device)  # the field's datasets fit in memory
    g0 = iteration_generator(seed, -1)
    syn = initial_synthetic(real_x, by_class, ipc, cfg.init, g0).requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=cfg.lr_img, momentum=cfg.momentum)
    start = 0
    ck = distiller.load_checkpoint(checkpoint, resume, meta)
    if ck is not None:
        start = ck.restore_sgd(syn, opt)
    probe = get_model(cfg.model, real.channels, k, size)
    per_class = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in probe.modules())
    bsz = cfg.batch_real
    t0 = time.perf_counter()
    loss_val = float("nan")
    with LoopProgress(title, cfg.iterations, start, enabled=progress) as bar:
        for it in range(start, cfg.iterations):
            g = iteration_generator(seed, it)
            net = get_model(cfg.model, real.channels, k, size).to(device)
            for p in net.parameters():
                p.requires_grad_(False)
            idx = sample_per_class(by_class, bsz, g)
            embed = net.embed if compiled is None else functools.partial(compiled, net)
            t_it = time.perf_counter()
            try:  # forward and backward: both are compiled (lazily, at first use) when compile=True
                loss = loss_fn(embed, real_x[idx.to(device)], syn, k, dsa, g, per_class)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            except compile_errors as exc:
                raise ConfigError(f"{distiller.name}: compile=True failed ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:300]}); run with compile=False") from None
            opt.step()
            loss_val = float(loss.detach()) / k
            if compiled is not None and warmup is None:
                warmup = round(time.perf_counter() - t_it, 2)
            bar.update(loss_val)
            done = it + 1
            if checkpoint is not None and cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
                Checkpoint.of_sgd(done, syn, opt, meta).save(checkpoint)
    seconds = time.perf_counter() - t0
    images = real.denormalize(syn.detach()).cpu()
    labels = torch.arange(k).repeat_interleave(ipc)
    return distiller.make_set(real, images, labels, ipc, seed, iterations=cfg.iterations,
                              iterations_run=cfg.iterations - start, seconds=round(seconds, 2),
                              final_loss=loss_val, device=str(device),
                              **({"warmup_seconds": warmup} if compiled is not None else {}), **extra)
