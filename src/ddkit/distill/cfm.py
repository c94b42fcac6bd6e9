"""CFM: Curriculum Frequency Matching (UniDD; Bo, Liu, Wang, ICLR 2026, arXiv 2503.01212).

A decoupled method of the SRe2L family. A *teacher* network is trained on the real data
(or loaded) and frozen; synthetic images are then optimised against it, IPC batches of one
image per class, batch b = 0..IPC−1 after batch b−1:

    L(x) = CE(teacher(aug(x)), y) + η Σ_l r_l,
    r_l  = ‖F(Σ_l^real) − F(Σ_l^syn)‖_F + ‖F(Σ_l^real) μ_l^real − F(Σ_l^syn) μ_l^syn‖_2,

where Σ_l (C×C) and μ_l (C) are the channel covariance and mean of the *input* of the
teacher's conv layer l (every ``nn.Conv2d`` except shortcut/downsample convs), taken over
all B·H·W positions of a batch. ``F`` is UniDD's spectral filter of the covariance:
HFM (high-frequency matching, default) ``F(Σ) = (Σ + β I)^-1`` (the KRR filter, built with
:func:`ddkit.spectral.apply` and the ``inverse`` filter) or LFM ``F(Σ) = Σ`` (the ``linear``
filter). The curriculum moves β over the batches from β0 to ~0, i.e. from an almost flat
(DM-like, low-frequency) filter to a strong high-pass:

* ``schedule="cosine"`` (default): ``β_b = β0 (1 + cos(π b / B)) / 2``, B = IPC;
* ``"linear"``: ``β_b = β0 (1 − b / B)``; ``"fixed"``: ``β_b = β0`` (the paper's ablations).

EMU (``emu=True``, default): the synthetic statistics in r_l are the running mean of the
statistics of the batches already synthesised (detached) and of the current batch:
``stat = (b · stat_prev + stat_b) / (b + 1)``, so the whole distilled set, not one batch, is
matched. The real statistics are computed once with the frozen teacher (no augmentation)
as the mean over batches of ``batch_real`` (128) images of the per-batch statistics,
weighted by batch size, over the training set (``stats_images`` limits the number).

Sources of the defaults (the authors' code, github bdy9527/UniDD, ``synthesis_small.py``,
``hook.py``, ``pretrain_small.py``; digest ``shared/papers/unidd-cfm.md``):

* teacher ``convnet`` (ConvNet-3, width 128; ``pretrain_small.py``'s ``ConvNetW128``, instance
  norm; the synthesis script's ``ConvNetW128D3`` teacher uses batch norm: ``teacher_model=
  convnetbn``), trained ``teacher_epochs=200`` epochs, SGD lr 0.1, momentum 0.9, weight decay
  5e-4, batch 128, cosine schedule, random crop (pad 4) + horizontal flip;
* per batch 1000 Adam steps (``iterations`` counts all updates, as in every method: its
  default is 1000 · IPC, and it must be a multiple of IPC), betas (0.5, 0.9), ``lr_img``
  0.25 (CIFAR; 0.1 for images larger than 32 px, the Tiny/ImageNet value), cosine decay to
  0 within each batch, without warm-up;
* init: real image #b of each class (here a seeded random permutation per class);
* augmentation per step: random resized crop (scale 0.08–1, ratio 3/4–4/3) and horizontal
  flip with one draw for the whole batch (torchvision transforms on a batch tensor, as the
  code does; kornia here), then ``torch.roll`` by (0..4, 0..4) px; pixels clipped to [0, 1]
  after each step;
* η = 0.1, ``band="hfm"`` (HFM), β0 = 0.1 (CIFAR), cosine schedule, EMU on.

MNIST-family: the same lr 0.25 and β0 0.1. The images are optimised in standardised units
(dataset mean/std), in which a step has the same size relative to the data's spread on
any dataset, so the CIFAR value carries over; β is compared with covariances of
standardised inputs / teacher activations, of the same order on both.

Deviations (all flags): ``teacher_subset`` (images per class used to train the teacher;
``None`` = all, the paper) — on a CPU one epoch over 60 000 images takes minutes;
``stats_images`` (``None`` = all, the paper); ``flip`` (horizontal flip during synthesis and
teacher training, on by default as in the paper, questionable for digits);
``emu_stats``: which statistics of a finished batch enter the running mean — ``"last_step"``
(default, the code: those of the batch's last optimisation step, an augmented view) or
``"final"`` (the finished images without augmentation). Not implemented: the code's
per-class / teacher-soft-label "signal" variants and the chunking of >200 classes.

The distilled set ships the images, their hard labels (the class of each image) and the
teacher (``DistilledSet.teacher``; :mod:`ddkit.teacher`), whose online soft labels the CFM
evaluation protocol uses (``ddkit.evaluate(..., protocol="soft")``, :mod:`ddkit.evaluate.soft`). No soft labels
are stored: the protocol computes them on each augmented (CutMix) batch.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from torch import Tensor

from ddkit.data import ImageDataset
from ddkit.distill.base import (
    Checkpoint,
    Distiller,
    LoopState,
    MethodConfig,
    RunContext,
    SetParts,
    iteration_generator,
    register,
    sample_per_class,
)
from ddkit.errors import ConfigError, DDKitError, ModelError
from ddkit.spectral.filters import Filter, apply, get_filter
from ddkit.teacher import Teacher, load_teacher, train_teacher

__all__ = ["CFMConfig", "CFMDistiller", "ConvStatsRecorder", "beta_schedule", "cfm_layer_loss", "conv_input_stats",
           "conv_layers", "emu_update", "filtered", "make_filter", "real_statistics"]

SKIP_CONVS = ("shortcut", "downsample")
ADAM_BETAS = (0.5, 0.9)  # synthesis optimiser (code)


# --------------------------------------------------------------------------- statistics
def conv_layers(model: nn.Module, skip: tuple[str, ...] = SKIP_CONVS) -> list[tuple[str, nn.Conv2d]]:
    """The ``nn.Conv2d`` modules of ``model`` whose input CFM matches, in registration order.

    Convs whose qualified name contains one of ``skip`` (shortcut / downsample 1×1 convs of
    residual networks) are left out, as in the UniDD code.
    """
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and not any(s in n for s in skip)]


def conv_input_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Channel covariance and mean of a conv input over all batch and spatial positions.

    Args:
        x: B×C×H×W float tensor (a conv layer's input).

    Returns:
        ``(Σ, μ)``: Σ C×C, the population covariance (divisor B·H·W, ``torch.cov(...,
        correction=0)`` of the C×(B·H·W) matrix), and μ (C,), in ``x``'s dtype; differentiable.

    Raises:
        DDKitError: ``x`` is not 4-D.
    """
    if x.dim() != 4:
        raise DDKitError(f"conv input statistics need B×C×H×W, got shape {tuple(x.shape)}")
    c = x.shape[1]
    flat = x.transpose(0, 1).reshape(c, -1)
    mean = flat.mean(1)
    centred = flat - mean[:, None]
    return centred @ centred.T / flat.shape[1], mean


class ConvStatsRecorder:
    """Forward hooks that record :func:`conv_input_stats` of each matched conv's input.

    Use as a context manager around forward passes; after a forward, :attr:`stats` is the
    list of ``(Σ_l, μ_l)`` in layer order (gradients flow back to the input images).
    """

    def __init__(self, model: nn.Module, skip: tuple[str, ...] = SKIP_CONVS):
        self.layers = conv_layers(model, skip)
        if not self.layers:
            raise ModelError("CFM needs a teacher with convolution layers (e.g. convnet, resnet18)")
        self._stats: dict[int, tuple[Tensor, Tensor]] = {}
        self._handles: list[Any] = []

    def _hook(self, index: int):
        def fn(module, inputs, output):
            self._stats[index] = conv_input_stats(inputs[0])
        return fn

    def __enter__(self) -> ConvStatsRecorder:
        self._handles = [m.register_forward_hook(self._hook(i)) for i, (_, m) in enumerate(self.layers)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def stats(self) -> list[tuple[Tensor, Tensor]]:
        if len(self._stats) != len(self.layers):
            raise DDKitError("conv statistics are missing: run a forward pass inside the recorder first")
        return [self._stats[i] for i in range(len(self.layers))]


@torch.no_grad()
def real_statistics(model: nn.Module, images: Tensor, *, batch_size: int = 128,
                    device: torch.device | str | None = None) -> list[tuple[Tensor, Tensor]]:
    """The real-data target statistics of CFM: per conv layer, the batch-size-weighted mean
    over consecutive batches of ``batch_size`` images of the per-batch ``(Σ_l, μ_l)``.

    Args:
        model: the frozen teacher (put in eval mode here).
        images: N×C×H×W float32 standardised real images (any device; moved batch by batch).
        batch_size: images per batch (UniDD code: 128).
        device: where to compute (default: the model's device).

    Returns:
        ``[(Σ_l C_l×C_l, μ_l (C_l,)), ...]`` float32 on the device, accumulated in float64.

    Raises:
        ConfigError: no images or ``batch_size < 1``.
    """
    n = images.shape[0]
    if n < 1 or batch_size < 1:
        raise ConfigError(f"real statistics need images and batch_size ≥ 1, got {n} images, batch {batch_size}")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    acc: list[list[Tensor]] | None = None
    with ConvStatsRecorder(model) as rec:
        for s in range(0, n, batch_size):
            xb = images[s:s + batch_size].to(dev)
            model(xb)
            w = xb.shape[0] / n
            cur = [[cov.double() * w, mu.double() * w] for cov, mu in rec.stats]
            acc = cur if acc is None else [[a[0] + b[0], a[1] + b[1]] for a, b in zip(acc, cur, strict=True)]
    assert acc is not None
    return [(cov.float(), mu.float()) for cov, mu in acc]


# ------------------------------------------------------------------------ the CFM loss
def beta_schedule(kind: str, beta0: float, b: int, num_batches: int) -> float:
    """β of batch ``b`` (0-based) of ``num_batches`` = IPC (UniDD's curriculum).

    ``cosine``: β0 (1 + cos(π b / B)) / 2; ``linear``: β0 (1 − b / B); ``fixed``: β0.
    At b = 0 every schedule gives β0; all stay > 0 for b < B.

    Raises:
        ConfigError: unknown ``kind`` or ``b`` outside 0..B−1.
    """
    if not 0 <= b < num_batches:
        raise ConfigError(f"batch index {b} outside 0..{num_batches - 1}")
    if kind == "cosine":
        return beta0 * (1.0 + math.cos(math.pi * b / num_batches)) / 2.0
    if kind == "linear":
        return beta0 * (1.0 - b / num_batches)
    if kind == "fixed":
        return float(beta0)
    raise ConfigError(f"CFM schedule must be cosine, linear or fixed, got {kind!r}")


def make_filter(kind: str, beta: float) -> Filter:
    """HFM ``(λ + β)^-1`` (``inverse``) or LFM ``λ`` (``linear``) as a spectral filter.

    Raises:
        ConfigError: unknown kind, or β ≤ 0 for HFM.
    """
    if kind == "hfm":
        return get_filter("inverse", beta=beta)
    if kind == "lfm":
        return get_filter("linear")
    raise ConfigError(f"CFM filter must be 'hfm' or 'lfm', got {kind!r}")


def filtered(filt: Filter, cov: Tensor, mean: Tensor) -> tuple[Tensor, Tensor]:
    """``(F(Σ), F(Σ) μ)`` for a C×C covariance and a (C,) mean (:func:`ddkit.spectral.apply`,
    float64 inside, returned in ``cov``'s dtype; differentiable)."""
    f = apply(filt, cov)
    return f, f @ mean.to(f.dtype)


def cfm_layer_loss(filt: Filter, real_cov: Tensor, real_mean: Tensor, syn_cov: Tensor, syn_mean: Tensor, *,
                   real_filtered: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """UniDD's per-layer CFM term
    ``r_l = ‖F(Σ_real) − F(Σ_syn)‖_F + ‖F(Σ_real) μ_real − F(Σ_syn) μ_syn‖_2``.

    Args:
        filt: the spectral filter F (see :func:`make_filter`).
        real_cov, real_mean: C×C and (C,) real statistics.
        syn_cov, syn_mean: C×C and (C,) synthetic statistics (gradients flow to them).
        real_filtered: precomputed :func:`filtered` of the real statistics (speed only).

    Returns:
        Scalar tensor ≥ 0 (0 when the statistics are equal).
    """
    ft, ftm = real_filtered if real_filtered is not None else filtered(filt, real_cov, real_mean)
    fs, fsm = filtered(filt, syn_cov, syn_mean)
    return torch.linalg.matrix_norm(ft - fs, "fro") + torch.linalg.vector_norm(ftm - fsm)


def emu_update(prev: list[tuple[Tensor, Tensor]] | None, cur: list[tuple[Tensor, Tensor]], count: int
               ) -> list[tuple[Tensor, Tensor]]:
    """EMU running mean: ``(count · prev + cur) / (count + 1)`` layer by layer.

    ``prev`` is the mean over ``count`` finished batches (``None`` or ignored when
    ``count == 0``); the result is the mean over ``count + 1`` batches. Gradients flow
    through ``cur`` only when ``prev`` is detached (as CFM passes it).
    """
    if count == 0 or prev is None:
        return list(cur)
    w = 1.0 / (count + 1)
    return [((1 - w) * pc + w * cc, (1 - w) * pm + w * cm) for (pc, pm), (cc, cm) in zip(prev, cur, strict=True)]


# ------------------------------------------------------------------------ the distiller
class CFMConfig(MethodConfig):
    """CFM settings; defaults from the UniDD code (see the module docstring).

    ``iterations`` and ``lr_img`` left ``None`` take the paper's values for the run:
    1000 Adam steps per batch (1000 · IPC in all) and 0.25 (≤ 32 px) / 0.1 (larger images).
    """

    iterations: NonNegativeInt | None = None  # all Adam steps: IPC batches × steps per batch
    lr_img: PositiveFloat | None = None
    eta: NonNegativeFloat = 0.1
    band: Literal["hfm", "lfm"] = "hfm"  # "hfm" (Σ+βI)^-1 or "lfm" Σ
    beta: PositiveFloat = 0.1  # β0
    schedule: Literal["cosine", "linear", "fixed"] = "cosine"
    emu: bool = True
    emu_stats: Literal["last_step", "final"] = "last_step"  # "final": deviation
    flip: bool = True
    jitter: NonNegativeInt = 4
    teacher: str | None = None  # path of a saved teacher (or a CFM set) to use instead of training one
    teacher_model: str = "convnet"
    teacher_epochs: NonNegativeInt = 200
    teacher_subset: PositiveInt | None = None  # deviation: images per class for the teacher (None = all)
    measure_teacher: bool = True  # test accuracy of a freshly trained teacher, if the test split loads
    batch_real: PositiveInt = 128  # real images per batch of the statistics
    stats_images: PositiveInt | None = None  # deviation: real images for the statistics (None = all)
    checkpoint_every: NonNegativeInt = 100  # steps within a batch; finished batches are always checkpointed


class _SynthesisAug:
    """Random resized crop + flip (one draw per batch, kornia) + roll by 0..jitter px."""

    def __init__(self, size: int, flip: bool, jitter: int):
        import kornia.augmentation as K

        self.crop = K.RandomResizedCrop((size, size), same_on_batch=True)
        self.flip = K.RandomHorizontalFlip(same_on_batch=True) if flip else None
        self.jitter = jitter

    def __call__(self, x: Tensor, g: torch.Generator) -> Tensor:
        x = self.crop(x)
        if self.flip is not None:
            x = self.flip(x)
        if self.jitter:
            dx, dy = torch.randint(0, self.jitter + 1, (2,), generator=g).tolist()
            x = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
        return x


def _stats_tensors(prefix: str, stats: list[tuple[Tensor, Tensor]] | None) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for i, (cov, mu) in enumerate(stats or []):
        out[f"{prefix}_cov.{i}"], out[f"{prefix}_mean.{i}"] = cov.detach(), mu.detach()
    return out


def _stats_from(tensors: dict[str, Tensor], prefix: str, device) -> list[tuple[Tensor, Tensor]] | None:
    n = sum(1 for k in tensors if k.startswith(f"{prefix}_cov."))
    if n == 0:
        return None
    return [(tensors[f"{prefix}_cov.{i}"].to(device), tensors[f"{prefix}_mean.{i}"].to(device)) for i in range(n)]


@register
class CFMDistiller(Distiller):
    """Curriculum Frequency Matching (UniDD). See the module docstring for the algorithm.

    Output :class:`~ddkit.artifact.DistilledSet`: images float32 N×C×H×W in [0, 1]
    (N = K · IPC, class-major), int64 hard labels, and the teacher (``teacher`` state dict,
    ``teacher_info``). ``extra`` records the loop's fields, ``iterations_per_batch``,
    ``teacher_seconds`` (teacher and real statistics), ``betas`` (β per batch),
    ``teacher_agreement`` (share of distilled images the teacher assigns to their label)
    and ``teacher_test_accuracy``.

    Iteration t is step ``t mod P`` of batch ``t // P`` (P = iterations / IPC); its random
    draws come from ``iteration_generator(seed, t)``. Checkpoints (every ``checkpoint_every``
    steps within a batch, after every finished batch, and once the teacher is ready) hold
    the teacher, the real statistics, the finished batches, the EMU statistics and the
    current batch with its Adam state, so a resumed run equals an unbroken one.

    Raises:
        ConfigError: bad settings, ``iterations`` not a multiple of IPC, a teacher that does
            not fit the data, or a resume from a checkpoint written with other settings
            (including another ``iterations``).
        ArtifactError: ``teacher`` is not a readable teacher file.
    """

    name = "cfm"
    Config = CFMConfig
    checkpoint_after_init = True

    def dataset_defaults(self, real: ImageDataset, ipc: int) -> dict[str, Any]:
        return {"iterations": 1000 * ipc, "lr_img": 0.25 if real.image_size[0] <= 32 else 0.1}

    def check(self, ctx: RunContext) -> None:
        its, ipc = ctx.config.iterations, ctx.ipc
        if its % ipc:
            lo, hi = its - its % ipc, its - its % ipc + ipc
            raise ConfigError(f"cfm iterations count all Adam steps, one batch of one image per class after "
                              f"another, so they must be a multiple of IPC {ipc}; got {its}, use {lo} or {hi}")

    def checkpoint_identity(self, ctx: RunContext) -> dict[str, Any]:
        ident = super().checkpoint_identity(ctx)
        ident["config"]["iterations"] = ctx.config.iterations  # fixes the batches' length and lr schedule
        return ident

    def _per_batch(self, ctx: RunContext) -> int:
        return ctx.config.iterations // ctx.ipc

    def _teacher(self, ctx: RunContext) -> Teacher:
        cfg, real = ctx.config, ctx.real
        if cfg.teacher is not None:
            teacher = load_teacher(cfg.teacher, ctx.device)
            teacher.info.setdefault("source", str(cfg.teacher))
        else:
            test = None
            if cfg.measure_teacher:
                from ddkit.data import load_dataset

                try:
                    test = load_dataset(real.name, "test")
                except DDKitError:
                    test = None
            teacher = train_teacher(real, cfg.teacher_model, cfg.teacher_epochs, images_per_class=cfg.teacher_subset,
                                    flip=cfg.flip, seed=ctx.seed, device=ctx.device, test=test,
                                    progress=ctx.progress)
            teacher.info["source"] = "trained by cfm"
        teacher.check_fits(real.name, real.channels, real.num_classes, ctx.image_size)
        return teacher

    def init_state(self, ctx: RunContext) -> LoopState:
        cfg, ck, device = ctx.config, ctx.checkpoint, ctx.device
        real_x = ctx.real_x()
        if ck is not None:  # the teacher and the real statistics come back from the checkpoint
            state = {k[len("t.teacher."):]: v for k, v in ck.tensors.items() if k.startswith("t.teacher.")}
            teacher = Teacher.from_state(state, ck.values["teacher_info"], device)
            real_stats = _stats_from({k[2:]: v for k, v in ck.tensors.items() if k.startswith("t.")}, "real", device)
        else:
            teacher = self._teacher(ctx)
            if cfg.stats_images is not None and cfg.stats_images < len(ctx.real):
                pick = torch.randperm(len(ctx.real), generator=iteration_generator(ctx.seed, -3))[:cfg.stats_images]
                stats_x = real_x[pick.sort().values.to(real_x.device)]
            else:
                stats_x = real_x
            real_stats = real_statistics(teacher.model, stats_x, batch_size=cfg.batch_real, device=device)
        k = ctx.num_classes
        init_idx = sample_per_class(ctx.real.class_indices(), ctx.ipc, iteration_generator(ctx.seed, -1))
        init_idx = init_idx.view(k, ctx.ipc)
        lo = ctx.real.normalize(torch.zeros(1, ctx.channels, 1, 1)).to(device)
        hi = ctx.real.normalize(torch.ones(1, ctx.channels, 1, 1)).to(device)
        tensors = {**{f"teacher.{n}": v for n, v in teacher.state_dict().items()}, **_stats_tensors("real", real_stats)}
        return LoopState(tensors=tensors, values={"teacher_info": dict(teacher.info)},
                         aux={"teacher": teacher, "real_stats": real_stats, "init_idx": init_idx, "lo": lo, "hi": hi,
                              "aug": _SynthesisAug(ctx.image_size, cfg.flip, cfg.jitter),
                              "y": torch.arange(k, device=device), "batch": None})

    # ------------------------------------------------------------------ batches
    def _start_batch(self, state: LoopState, ctx: RunContext, b: int, resume_cur: bool = False) -> None:
        cfg, aux = ctx.config, state.aux
        filt = make_filter(cfg.band, beta_schedule(cfg.schedule, cfg.beta, b, ctx.ipc))
        if not resume_cur:
            state.tensors["cur"] = ctx.real_x()[aux["init_idx"][:, b].to(ctx.device)].clone().requires_grad_(True)
        cur = state.tensors["cur"]
        state.optimizers["cur"] = torch.optim.Adam([cur], lr=cfg.lr_img, betas=ADAM_BETAS, eps=1e-8)
        aux["batch"] = {"b": b, "filt": filt, "real_f": [filtered(filt, c, m) for c, m in aux["real_stats"]],
                        "last": None}

    def _emu(self, state: LoopState, ctx: RunContext) -> list[tuple[Tensor, Tensor]] | None:
        return _stats_from({k: v for k, v in state.tensors.items()}, "emu", ctx.device)

    def _end_batch(self, state: LoopState, ctx: RunContext) -> None:
        cfg, aux = ctx.config, state.aux
        b, cur, last = aux["batch"]["b"], state.tensors["cur"], aux["batch"]["last"]
        if cfg.emu_stats == "final" or last is None:
            with torch.no_grad(), ConvStatsRecorder(aux["teacher"].model) as rec:
                aux["teacher"].model(cur)
            last = [(c.detach(), m.detach()) for c, m in rec.stats]
        emu = [(c.detach(), m.detach()) for c, m in emu_update(self._emu(state, ctx), last, b)]
        state.tensors.update(_stats_tensors("emu", emu))
        done = cur.detach()[None]
        state.tensors["done"] = done if "done" not in state.tensors else torch.cat([state.tensors["done"], done])
        del state.tensors["cur"]
        del state.optimizers["cur"]
        aux["batch"] = None

    def load_state(self, state: LoopState, ck: Checkpoint, ctx: RunContext) -> None:
        mid_batch = "t.cur" in ck.tensors
        if mid_batch:  # the current batch's image tensor and optimiser must exist before the generic restore
            state.tensors["cur"] = ck.tensors["t.cur"].to(ctx.device).clone().requires_grad_(True)
            self._start_batch(state, ctx, ck.iteration // self._per_batch(ctx), resume_cur=True)
        super().load_state(state, ck, ctx)

    def step(self, state: LoopState, ctx: RunContext, iteration: int, generator: torch.Generator) -> float:
        cfg, aux = ctx.config, state.aux
        per = self._per_batch(ctx)
        b, it = divmod(iteration, per)
        if aux["batch"] is None:
            self._start_batch(state, ctx, b)
        syn, opt, batch, teacher = state.tensors["cur"], state.optimizers["cur"], aux["batch"], aux["teacher"]
        for group in opt.param_groups:
            group["lr"] = cfg.lr_img * 0.5 * (1.0 + math.cos(math.pi * it / per))
        with ConvStatsRecorder(teacher.model) as rec:
            logits = teacher.model(aux["aug"](syn, generator))
        cur = rec.stats
        used = emu_update(self._emu(state, ctx), cur, b) if cfg.emu else cur
        reg = sum(cfm_layer_loss(batch["filt"], rc, rm, sc, sm, real_filtered=rf)
                  for (rc, rm), (sc, sm), rf in zip(aux["real_stats"], used, batch["real_f"], strict=True))
        loss = F.cross_entropy(logits, aux["y"]) + cfg.eta * reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            syn.copy_(torch.maximum(torch.minimum(syn, aux["hi"]), aux["lo"]))
        batch["last"] = [(c.detach(), m.detach()) for c, m in cur]
        if it == per - 1:
            self._end_batch(state, ctx)
        return float(loss.detach())

    def should_checkpoint(self, state: LoopState, ctx: RunContext, done: int) -> bool:
        j = done - (done - 1) // self._per_batch(ctx) * self._per_batch(ctx)  # steps done in the current batch
        every = ctx.config.checkpoint_every
        return j == self._per_batch(ctx) or bool(every and j % every == 0)

    def finish(self, state: LoopState, ctx: RunContext) -> SetParts:
        cfg, aux, k, ipc = ctx.config, state.aux, ctx.num_classes, ctx.ipc
        done = list(state.tensors["done"].unbind(0)) if "done" in state.tensors else []
        for b in range(len(done), ipc):  # only with 0 iterations: the batches keep their initial images
            done.append(ctx.real_x()[aux["init_idx"][:, b].to(ctx.device)].clone())
        syn_all = torch.stack(done, 1).reshape(k * ipc, *done[0].shape[1:])  # class-major
        teacher = aux["teacher"]
        with torch.no_grad():
            agree = float((teacher.model(syn_all).argmax(1) == aux["y"].repeat_interleave(ipc)).float().mean())
        extra = {"iterations_per_batch": self._per_batch(ctx), "teacher_seconds": round(ctx.init_seconds, 2),
                 "betas": [round(beta_schedule(cfg.schedule, cfg.beta, b, ipc), 6) for b in range(ipc)],
                 "teacher_agreement": round(agree, 4), "teacher_test_accuracy": teacher.info.get("test_accuracy")}
        return SetParts(syn_all, ctx.class_labels(), "hard", extra=extra, teacher=teacher.state_dict(),
                        teacher_info=dict(teacher.info))
