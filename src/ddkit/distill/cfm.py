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
as the mean over batches of ``real_batch`` (128) images of the per-batch statistics,
weighted by batch size, over the training set (``stats_images`` limits the number).

Sources of the defaults (the authors' code, github bdy9527/UniDD, ``synthesis_small.py``,
``hook.py``, ``pretrain_small.py``; digest ``shared/papers/unidd-cfm.md``):

* teacher ``convnet`` (ConvNet-3, width 128; ``pretrain_small.py``'s ``ConvNetW128``, instance
  norm; the synthesis script's ``ConvNetW128D3`` teacher uses batch norm: ``teacher_model=
  convnetbn``), trained ``teacher_epochs=200`` epochs, SGD lr 0.1, momentum 0.9, weight decay
  5e-4, batch 128, cosine schedule, random crop (pad 4) + horizontal flip;
* per batch ``iterations=1000`` Adam steps, betas (0.5, 0.9), lr 0.25 (CIFAR; 0.1 for
  images larger than 32 px, the Tiny/ImageNet value), cosine decay to 0 without warm-up;
* init: real image #b of each class (here a seeded random permutation per class);
* augmentation per step: random resized crop (scale 0.08–1, ratio 3/4–4/3) and horizontal
  flip with one draw for the whole batch (torchvision transforms on a batch tensor, as the
  code does; kornia here), then ``torch.roll`` by (0..4, 0..4) px; pixels clipped to [0, 1]
  after each step;
* η = 0.1, HFM, β0 = 0.1 (CIFAR), cosine schedule, EMU on.

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
teacher (``DistilledSet.teacher``), whose online soft labels the CFM evaluation protocol
uses (``ddkit.evaluate(..., protocol="soft")``, :mod:`ddkit.evaluate.soft`). No soft labels
are stored: the protocol computes them on each augmented (CutMix) batch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from torch import Tensor

from ddkit.artifact import DistilledSet, _version, tensor_digest
from ddkit.data import ImageDataset
from ddkit.distill.base import (
    Checkpoint,
    Distiller,
    MethodConfig,
    adam_state_tensors,
    iteration_generator,
    register,
    restore_adam_state,
    sample_per_class,
)
from ddkit.errors import ArtifactError, ConfigError, DDKitError, ModelError
from ddkit.models import get_model
from ddkit.progress import LoopProgress
from ddkit.spectral.filters import Filter, apply, get_filter
from ddkit.utils import atomic_path, resolve_device

__all__ = ["CFMConfig", "CFMDistiller", "ConvStatsRecorder", "TEACHER_FORMAT", "Teacher", "beta_schedule",
           "cfm_layer_loss", "conv_input_stats", "conv_layers", "emu_update", "filtered", "load_teacher",
           "real_statistics", "train_teacher"]

TEACHER_FORMAT = "ddkit.teacher/1"
SKIP_CONVS = ("shortcut", "downsample")
ADAM_BETAS = (0.5, 0.9)  # synthesis optimiser (code)


# ------------------------------------------------------------------------------ teacher
@dataclass
class Teacher:
    """A trained network that labels images (CFM's teacher; the soft-label protocol's).

    Attributes:
        model: a zoo network (``info["model"]``) in eval mode, parameters frozen; maps
            standardised N×C×H×W float32 images to N×K logits.
        info: JSON description: ``model`` (zoo name), ``dataset``, ``channels``,
            ``num_classes``, ``image_size``, ``mean``, ``std``, ``test_accuracy`` (in [0, 1] or
            ``None``), ``epochs``, ``images_per_class`` (``None`` = all), ``seed``, ``version``.
    """

    model: nn.Module
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> Teacher:
        self.model.to(device)
        return self

    def state_dict(self) -> dict[str, Tensor]:
        """The model's state dict on the CPU (contiguous copies)."""
        return {k: v.detach().cpu().contiguous().clone() for k, v in self.model.state_dict().items()}

    def describe(self) -> str:
        acc = self.info.get("test_accuracy")
        acc_s = f", test accuracy {100 * acc:.2f} %" if isinstance(acc, (int, float)) else ""
        return f"{self.info.get('model')} trained on {self.info.get('dataset')}{acc_s}"

    @classmethod
    def from_state(cls, state: dict[str, Tensor], info: dict[str, Any], device: torch.device | str = "cpu"
                   ) -> Teacher:
        """Rebuild a teacher from its state dict and ``info`` (zoo model name and data shape).

        Raises:
            ArtifactError: ``info`` lacks the model/shape, names an unknown model, or the
                weights do not fit that model.
        """
        try:
            name, c, k, s = info["model"], int(info["channels"]), int(info["num_classes"]), int(info["image_size"])
        except (KeyError, TypeError, ValueError):
            raise ArtifactError(f"teacher description is incomplete (needs model, channels, num_classes, "
                                f"image_size): {info}") from None
        try:
            model = get_model(name, c, k, s)
        except ModelError as exc:
            raise ArtifactError(f"teacher model cannot be built: {exc}") from None
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise ArtifactError(f"teacher weights do not fit model {name!r} ({c}×{s}×{s}, {k} classes): {first}") \
                from None
        return cls(model.to(device), dict(info))

    def check_fits(self, dataset: str, channels: int, num_classes: int, image_size: int) -> None:
        """Raise :class:`ConfigError` unless the teacher was trained on ``dataset`` with this shape."""
        i = self.info
        want = (dataset, channels, num_classes, image_size)
        have = (i.get("dataset"), i.get("channels"), i.get("num_classes"), i.get("image_size"))
        if have != want:
            raise ConfigError(f"teacher ({have[0]}, {have[1]}×{have[3]}×{have[3]}, {have[2]} classes) does not fit "
                              f"{dataset} ({channels}×{image_size}×{image_size}, {num_classes} classes)")

    def save(self, path: str | Path) -> Path:
        """Write the teacher as ``.safetensors`` (state dict + JSON ``info`` + SHA-256), atomically.

        Raises:
            OutputError: the destination cannot be written.
        """
        from safetensors.torch import save_file

        tensors = self.state_dict()
        meta_json = json.dumps({**self.info, "format": TEACHER_FORMAT}, sort_keys=True)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp),
                      metadata={"ddkit_teacher": meta_json, "sha256": tensor_digest(tensors, meta_json)})
        return Path(path)


def load_teacher(path: str | Path, device: torch.device | str = "cpu") -> Teacher:
    """Load a teacher written by :meth:`Teacher.save`, or the teacher shipped in a distilled set.

    Args:
        path: a teacher ``.safetensors`` file, or a distilled set that ships a teacher (CFM).
        device: where to put the model.

    Raises:
        ArtifactError: missing file, not a safetensors file, neither a teacher nor a
            distilled set with a teacher, SHA-256 mismatch, or weights that do not fit the
            named model.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"teacher file {str(p)!r} does not exist or is not a file")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{str(p)!r} is not a teacher (not a safetensors file: "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if "ddkit" in meta:  # a distilled set: use the teacher it ships
        ds = DistilledSet.load(p)
        if not ds.has_teacher:
            raise ArtifactError(f"{str(p)!r} is a distilled set without a teacher")
        return Teacher.from_state(ds.teacher, ds.teacher_info, device)
    if "ddkit_teacher" not in meta or "sha256" not in meta:
        raise ArtifactError(f"{str(p)!r} is a safetensors file but not a ddkit teacher")
    tensors = load_file(str(p))
    if tensor_digest(tensors, meta["ddkit_teacher"]) != meta["sha256"]:
        raise ArtifactError(f"teacher {str(p)!r} failed its SHA-256 check: the file was modified or is corrupt")
    try:
        info = json.loads(meta["ddkit_teacher"])
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"teacher {str(p)!r} has malformed metadata ({exc})") from None
    if info.pop("format", None) != TEACHER_FORMAT:
        raise ArtifactError(f"{str(p)!r}: unknown teacher format")
    return Teacher.from_state(tensors, info, device)


def _teacher_augment(size: int, flip: bool):
    import kornia.augmentation as K

    ops: list[nn.Module] = [K.RandomCrop((size, size), padding=4)]
    if flip:
        ops.append(K.RandomHorizontalFlip())
    return nn.Sequential(*ops)


def train_teacher(real: ImageDataset, model: str = "convnet", epochs: int = 200, *,
                  images_per_class: int | None = None, lr: float = 0.1, momentum: float = 0.9,
                  weight_decay: float = 5e-4, batch_size: int = 128, augment: bool = True, flip: bool = True,
                  seed: int = 0, device: torch.device | str = "auto", test: ImageDataset | None = None,
                  progress: bool = True) -> Teacher:
    """Train a teacher on real data (UniDD ``pretrain_small.py`` recipe).

    Cross-entropy, SGD (lr 0.1, momentum 0.9, weight decay 5e-4), batch 128, cosine
    annealing of the lr over ``epochs`` (to 0, stepped per epoch), random crop with 4 px
    zero padding and horizontal flip (pixel space, per image, kornia).

    Args:
        real: training split (uint8 N×C×H×W, int64 labels).
        model: zoo name (default ``convnet``: ConvNet-3 width 128).
        epochs: passes over the (sub)set (paper: 200 on CIFAR-10); 0 gives the untrained network.
        images_per_class: train on a seeded class-balanced subset of this many images per
            class (a deviation for CPU budgets; ``None`` = the whole set).
        augment, flip: the crop/flip augmentation; ``flip=False`` keeps the crop only.
        seed: drives the initialisation, shuffling and augmentation (same seed and device ⇒
            same teacher).
        device: ``auto``, ``cpu``, ``cuda``. test: if given, the teacher's test accuracy is
            measured and stored in ``info["test_accuracy"]``.
        progress: show a progress bar (one step per epoch).

    Returns:
        :class:`Teacher` in eval mode on ``device``.

    Raises:
        ConfigError: ``epochs < 0``, ``batch_size < 1``, ``lr <= 0`` or ``images_per_class < 1``.
        ModelError: the model does not fit the images.
    """
    from ddkit.train import accuracy

    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise ConfigError(f"teacher training needs epochs ≥ 0, batch_size ≥ 1, lr > 0; got {epochs}, "
                          f"{batch_size}, {lr}")
    if images_per_class is not None and images_per_class < 1:
        raise ConfigError(f"teacher images_per_class must be ≥ 1 or None, got {images_per_class}")
    dev = resolve_device(device)
    data = real if images_per_class is None else real.per_class_subset(images_per_class, seed=seed)
    c, k, size = real.channels, real.num_classes, real.image_size[0]
    g = iteration_generator(seed, -2)  # also seeds the global RNG: initialisation and kornia draws
    net = get_model(model, c, k, size).to(dev)
    x_pix = data.float_images().to(dev)
    y = data.labels.to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    aug = _teacher_augment(size, flip).to(dev) if augment else None
    n = x_pix.shape[0]
    t0 = time.perf_counter()
    net.train()
    with LoopProgress(f"teacher {model}", epochs, enabled=progress) as bar:
        for _ in range(epochs):
            order = torch.randperm(n, generator=g).to(dev)
            total = 0.0
            for s in range(0, n, batch_size):
                idx = order[s:s + batch_size]
                xb = x_pix[idx]
                if aug is not None:
                    xb = aug(xb)
                loss = F.cross_entropy(net(real.normalize(xb)), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * idx.numel()
            sched.step()
            bar.update(total / n)
    test_acc = None
    if test is not None:
        test_acc = accuracy(net, test.images, test.labels, normalize=real.normalize)
    info = {"model": model, "dataset": real.name, "channels": c, "num_classes": k, "image_size": size,
            "mean": list(real.mean), "std": list(real.std), "test_accuracy": test_acc, "epochs": epochs,
            "images_per_class": images_per_class, "train_images": n, "seed": seed, "lr": lr, "batch_size": batch_size,
            "augment": ("crop+flip" if flip else "crop") if augment else "none",
            "seconds": round(time.perf_counter() - t0, 2), "version": _version()}
    return Teacher(net, info)


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
    """CFM settings; defaults from the UniDD code (see the module docstring)."""

    iterations: NonNegativeInt = 1000  # Adam steps per batch (one image per class)
    lr: PositiveFloat | None = None  # None: 0.25 for images ≤ 32 px (CIFAR), 0.1 above (Tiny/ImageNet)
    eta: NonNegativeFloat = 0.1
    filter: Literal["hfm", "lfm"] = "hfm"  # "hfm" (Σ+βI)^-1 or "lfm" Σ
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
    real_batch: PositiveInt = 128
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


def _stats_from(tensors: dict[str, Tensor], prefix: str, layers: int, device) -> list[tuple[Tensor, Tensor]] | None:
    if f"{prefix}_cov.0" not in tensors:
        return None
    return [(tensors[f"{prefix}_cov.{i}"].to(device), tensors[f"{prefix}_mean.{i}"].to(device)) for i in range(layers)]


def _json_tensor(obj: Any) -> Tensor:
    return torch.tensor(list(json.dumps(obj, sort_keys=True).encode()), dtype=torch.uint8)


def _json_from(t: Tensor) -> Any:
    return json.loads(bytes(t.tolist()).decode())


@register
class CFMDistiller(Distiller):
    """Curriculum Frequency Matching (UniDD). See the module docstring for the algorithm.

    Output :class:`~ddkit.artifact.DistilledSet`: images float32 N×C×H×W in [0, 1]
    (N = K · IPC, class-major), int64 hard labels, and the teacher (``teacher`` state dict,
    ``teacher_info``). ``extra`` records ``iterations`` (per batch), ``total_iterations``
    (IPC · iterations), ``iterations_run`` (steps run by this call), ``seconds``,
    ``teacher_seconds``, ``betas`` (β per batch), ``final_loss``, ``teacher_agreement`` (share of
    distilled images the teacher assigns to their label) and ``device``.

    Checkpoints (``checkpoint_every`` steps within a batch, and after every finished batch)
    hold the teacher, the real statistics, the finished batches, the EMU statistics and the
    current batch with its Adam state; every random draw of step t of batch b comes from
    ``iteration_generator(seed, b · iterations + t)``, so a resumed run equals an unbroken one.

    Raises:
        ConfigError: bad settings, a teacher that does not fit the data, or a resume from a
            checkpoint written with other settings (including another ``iterations``).
        ArtifactError: ``teacher`` is not a readable teacher file.
    """

    name = "cfm"
    Config = CFMConfig

    def checkpoint_meta(self, real: ImageDataset, ipc: int, seed: int) -> dict[str, Any]:
        meta = super().checkpoint_meta(real, ipc, seed)
        meta["config"]["iterations"] = self.config.iterations  # per batch: fixes the lr schedule and draws
        return meta

    def _teacher(self, real: ImageDataset, device: torch.device, seed: int, progress: bool) -> Teacher:
        cfg: CFMConfig = self.config  # type: ignore[assignment]
        size = real.image_size[0]
        if cfg.teacher is not None:
            teacher = load_teacher(cfg.teacher, device)
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
                                    flip=cfg.flip, seed=seed, device=device, test=test, progress=progress)
            teacher.info["source"] = "trained by cfm"
        teacher.check_fits(real.name, real.channels, real.num_classes, size)
        return teacher

    def run(self, real: ImageDataset, ipc: int, *, device, seed, progress, checkpoint: Path | None,
            resume) -> DistilledSet:
        cfg: CFMConfig = self.config  # type: ignore[assignment]
        k, size = real.num_classes, real.image_size[0]
        iters = cfg.iterations
        lr0 = cfg.lr if cfg.lr is not None else (0.25 if size <= 32 else 0.1)
        meta = self.checkpoint_meta(real, ipc, seed)
        ck = self.load_checkpoint(checkpoint, resume, meta)
        t0 = time.perf_counter()
        real_x = real.normalize(real.float_images())  # CPU, standardised
        # --- teacher and real statistics (restored from a checkpoint when resuming)
        if ck is not None:
            state = {n[len("teacher."):]: v for n, v in ck.tensors.items() if n.startswith("teacher.")}
            teacher = Teacher.from_state(state, _json_from(ck.tensors["teacher_info"]), device)
        else:
            teacher = self._teacher(real, device, seed, progress)
        n_layers = len(conv_layers(teacher.model))
        if ck is not None:
            real_stats = _stats_from(ck.tensors, "real", n_layers, device)
        else:
            if cfg.stats_images is not None and cfg.stats_images < len(real):
                pick = torch.randperm(len(real), generator=iteration_generator(seed, -3))[:cfg.stats_images]
                stats_x = real_x[pick.sort().values]
            else:
                stats_x = real_x
            real_stats = real_statistics(teacher.model, stats_x, batch_size=cfg.real_batch, device=device)
        assert real_stats is not None
        teacher_seconds = round(time.perf_counter() - t0, 2)
        # --- synthetic state
        init_idx = sample_per_class(real.class_indices(), ipc, iteration_generator(seed, -1)).view(k, ipc)
        y = torch.arange(k, device=device)
        lo = real.normalize(torch.zeros(1, real.channels, 1, 1)).to(device)
        hi = real.normalize(torch.ones(1, real.channels, 1, 1)).to(device)
        done_batches: list[Tensor] = []
        emu_stats: list[tuple[Tensor, Tensor]] | None = None
        start = 0  # global steps completed
        cur_state: dict[str, Tensor] = {}
        if ck is not None:
            start = ck.iteration
            if "done" in ck.tensors:
                done_batches = list(ck.tensors["done"].to(device).unbind(0))
            emu_stats = _stats_from(ck.tensors, "emu", n_layers, device)
            cur_state = {n: v for n, v in ck.tensors.items() if n == "cur" or n.startswith("adam_")}
        teacher_tensors = {f"teacher.{n}": v for n, v in teacher.state_dict().items()}
        teacher_tensors["teacher_info"] = _json_tensor(teacher.info)

        def save(step: int, cur: Tensor | None, opt: torch.optim.Adam | None) -> None:
            if checkpoint is None:
                return
            tensors = {**teacher_tensors, **_stats_tensors("real", real_stats), **_stats_tensors("emu", emu_stats)}
            if done_batches:
                tensors["done"] = torch.stack(done_batches)
            if cur is not None and opt is not None:
                tensors["cur"] = cur.detach()
                tensors.update(adam_state_tensors(opt, cur, "adam"))
            Checkpoint(step, tensors, meta).save(checkpoint)

        if ck is None:
            save(0, None, None)
        aug = _SynthesisAug(size, cfg.flip, cfg.jitter)
        betas: list[float] = []
        loss_val = float("nan")
        first_batch = len(done_batches)
        t1 = time.perf_counter()
        with LoopProgress(f"cfm ipc={ipc}", ipc * iters, min(start, ipc * iters), enabled=progress) as bar:
            for b in range(ipc):
                beta = beta_schedule(cfg.schedule, cfg.beta, b, ipc)
                betas.append(round(beta, 6))
                if b < first_batch:
                    continue
                filt = make_filter(cfg.filter, beta)
                real_f = [filtered(filt, cov, mu) for cov, mu in real_stats]
                syn = real_x[init_idx[:, b]].to(device).clone().requires_grad_(True)
                opt = torch.optim.Adam([syn], lr=lr0, betas=ADAM_BETAS, eps=1e-8)
                it0 = 0
                if "cur" in cur_state and b == first_batch:
                    with torch.no_grad():
                        syn.copy_(cur_state["cur"].to(device))
                    restore_adam_state(opt, syn, cur_state, "adam")
                    it0 = start - b * iters
                last: list[tuple[Tensor, Tensor]] | None = None
                for it in range(it0, iters):
                    g = iteration_generator(seed, b * iters + it)
                    for group in opt.param_groups:
                        group["lr"] = lr0 * 0.5 * (1.0 + math.cos(math.pi * it / iters))
                    with ConvStatsRecorder(teacher.model) as rec:
                        logits = teacher.model(aug(syn, g))
                    cur = rec.stats
                    used = emu_update(emu_stats, cur, b) if cfg.emu else cur
                    reg = sum(cfm_layer_loss(filt, rc, rm, sc, sm, real_filtered=rf)
                              for (rc, rm), (sc, sm), rf in zip(real_stats, used, real_f, strict=True))
                    loss = F.cross_entropy(logits, y) + cfg.eta * reg
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    with torch.no_grad():
                        syn.copy_(torch.maximum(torch.minimum(syn, hi), lo))
                    last = [(c.detach(), m.detach()) for c, m in cur]
                    loss_val = float(loss.detach())
                    bar.update(loss_val)
                    step = b * iters + it + 1
                    if cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0 and it + 1 < iters:
                        save(step, syn, opt)
                if cfg.emu_stats == "final" or last is None:
                    with torch.no_grad(), ConvStatsRecorder(teacher.model) as rec:
                        teacher.model(syn)
                    last = [(c.detach(), m.detach()) for c, m in rec.stats]
                emu_stats = [(c.detach(), m.detach()) for c, m in emu_update(emu_stats, last, b)]
                done_batches.append(syn.detach())
                save((b + 1) * iters, None, None)
        seconds = time.perf_counter() - t1
        syn_all = torch.stack(done_batches, 1).reshape(k * ipc, *real_x.shape[1:])  # class-major
        with torch.no_grad():
            agree = float((teacher.model(syn_all).argmax(1) == y.repeat_interleave(ipc)).float().mean())
        images = real.denormalize(syn_all).cpu()
        labels = torch.arange(k).repeat_interleave(ipc)
        ds = self.make_set(real, images, labels, ipc, seed, iterations=iters, total_iterations=ipc * iters,
                           iterations_run=max(0, ipc * iters - start), seconds=round(seconds, 2),
                           teacher_seconds=teacher_seconds, betas=betas, lr_img=lr0, final_loss=loss_val,
                           teacher_agreement=round(agree, 4), teacher_test_accuracy=teacher.info.get("test_accuracy"),
                           device=str(device))
        return dataclasses.replace(ds, teacher=teacher.state_dict(), teacher_info=dict(teacher.info))
