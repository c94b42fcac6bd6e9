"""The shared part of the methods that match features of freshly sampled random networks.

DM (Zhao & Bilen, WACV 2023) and the UniDD ``spectral`` method differ only in the loss
they compute on one iteration's features; everything else lives here: real-image or noise
initialisation, a fresh network per iteration (never trained), a class-balanced real
batch, one siamese DSA draw per class, SGD with momentum on the synthetic images. The
loop itself (seeding, resume, checkpoints) is :class:`ddkit.distill.base.Distiller`'s.
"""

from __future__ import annotations

import functools
import time
from abc import abstractmethod
from collections.abc import Callable
from typing import Literal, Union

import torch
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from ddkit.augment import DSA, DSAConfig
from ddkit.distill.base import (
    Distiller,
    LoopState,
    MethodConfig,
    RunContext,
    SetParts,
    initial_synthetic,
    iteration_generator,
    sample_per_class,
)
from ddkit.errors import ConfigError
from ddkit.utils import compiler_available, decide_compile, describe_precision  # noqa: F401 (re-exported)


class FeatureMatchingConfig(MethodConfig):
    """Settings shared by the matching methods; defaults are DM's (Zhao & Bilen 2023, Sec. 4 and code)."""

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

    Speed settings (not in the papers; the algorithm and every random draw are unchanged,
    features agree with the plain eager form to float32 rounding, about 1e-5 relative, so
    images differ from such a run in the last digits):

    ``compile``: run ψ through ``torch.compile`` (inductor, fusing norm + ReLU + pooling).
    ``"auto"`` (default) compiles when the run has at least 200 iterations to amortise the
    first, compiling iteration (tens of seconds on a CPU, recorded as ``warmup_seconds``)
    and a compiler is present (a C++ compiler on CPU, Triton on CUDA); otherwise it runs
    eagerly. The set records the decision and its reason in ``extra["compiled"]``.
    ``True`` always compiles; a failure to compile is then a ConfigError, never a silent
    fall-back to eager. Later iterations reuse the compiled code for every freshly
    initialised network (parameters are graph inputs).
    ``channels_last``: ψ's weights in channels-last memory format (default on).
    Measured once on a 2-core AMD EPYC (docs/methods.md, "Speed"): the real branch's 2 560
    images went through ψ in 2.9 s compiled + channels-last, 7.8 s eager; a whole DM
    iteration against the authors' code is in bench/results/speed_reference.md.

    ``real_bf16``: run the real branch (the no-grad embedding of the ``batch_real``·K real
    images, 2 560 of the 2 660 images a DM iteration embeds at IPC 10) under bf16 autocast;
    the synthetic branch, its gradient and the image update stay FP32. Off by default: it is
    not exact (mean-feature relative error ≈ 1e-3). It pays only where the hardware has bf16
    matrix units (``amx_bf16``/``avx512_bf16``, CUDA): measured on a 2-core Intel Xeon with
    AMX, the compiled real branch took 0.96 s against 1.92 s in FP32; on an AMD EPYC
    without bf16 units bf16 was 20× slower. The set records ``extra["precision"]``.
    """

    compile: Union[bool, Literal["auto"]] = "auto"  # noqa: UP007 (pydantic reads the union)
    channels_last: bool = True
    real_bf16: bool = False


def compiled_embedding() -> Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]:
    """``torch.compile``'d ``(net, x) ↦ net.embed(x)`` with static shapes: one compiled graph
    per input shape and grad mode, shared by every network of the same architecture."""

    def embed(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return net.embed(x)

    return torch.compile(embed, dynamic=False)


def _bf16_embed(embed, device_type: str):
    """``embed`` under bf16 autocast, its features returned as float32."""

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return embed(x).float()

    return run


class EmbeddingMatchingDistiller(Distiller):
    """Base of DM and ``spectral``: a subclass supplies :meth:`matching_loss`.

    All classes' real images go through ψ in one pass, and all synthetic images in another:
    with batch norm (train mode, batch statistics) this is what DM's reference code does
    (``main_DM.py`` embeds the concatenated classes for ``ConvNetBN``), and with per-sample
    normalisation it equals the reference's class-by-class passes exactly. Classes smaller
    than ``batch_real`` are sampled with replacement.
    """

    Config = EmbeddingMatchingConfig

    @abstractmethod
    def matching_loss(self, ctx: RunContext, embed, real: torch.Tensor, syn: torch.Tensor, dsa: DSA | None,
                      generator: torch.Generator, weights: torch.Tensor | None, real_embed=None) -> torch.Tensor:
        """The loss of one iteration (real: (K·B)×C×H×W, syn: (K·S)×C×H×W, standardised and
        class-major; ``weights``: (K·B,) per-sample weights of the real batch or ``None``;
        ``real_embed``: the feature map of the no-grad real branch, ``None`` = ``embed``)."""

    def init_state(self, ctx: RunContext) -> LoopState:
        cfg = ctx.config
        use, why = decide_compile(cfg.compile, cfg.iterations, ctx.device)
        compiled = compiled_embedding() if use else None
        dsa = DSA(DSAConfig(strategy=cfg.dsa_strategy), image_size=ctx.image_size) if cfg.dsa else None
        by_class = ctx.real.class_indices()
        real_x = ctx.real_x()
        syn = initial_synthetic(real_x, by_class, ctx.ipc, cfg.init, iteration_generator(ctx.seed, -1))
        syn.requires_grad_(True)
        opt = torch.optim.SGD([syn], lr=cfg.lr_img, momentum=cfg.momentum)
        return LoopState(tensors={"syn": syn}, optimizers={"img": opt},
                         aux={"dsa": dsa, "compiled": compiled, "by_class": by_class},
                         values={"compiled": {"used": use, "reason": why},
                                 "precision": describe_precision("bf16" if cfg.real_bf16 else "fp32", ctx.device,
                                                                 "real branch (no-grad embedding of the real batch)")})

    def step(self, state: LoopState, ctx: RunContext, iteration: int, generator: torch.Generator) -> float:
        cfg, aux = ctx.config, state.aux
        syn, opt, compiled = state.tensors["syn"], state.optimizers["img"], aux["compiled"]
        # torch.compile imported torch._dynamo; eager runs catch nothing here
        compile_errors = (torch._dynamo.exc.TorchDynamoException,) if compiled is not None else ()
        net = ctx.new_model(cfg.model)
        if cfg.channels_last:
            net = net.to(memory_format=torch.channels_last)
        for p in net.parameters():
            p.requires_grad_(False)
        idx = sample_per_class(aux["by_class"], cfg.batch_real, generator)
        weights = ctx.sample_weights[idx].to(ctx.device) if ctx.sample_weights is not None else None
        embed = net.embed if compiled is None else functools.partial(compiled, net)
        real_embed = _bf16_embed(embed, ctx.device.type) if cfg.real_bf16 else None
        t_it = time.perf_counter()
        try:  # forward and backward: both are compiled (lazily, at first use) when compile=True
            loss = self.matching_loss(ctx, embed, ctx.real_x()[idx.to(ctx.device)], syn, aux["dsa"], generator,
                                      weights, real_embed)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        except compile_errors as exc:
            raise ConfigError(f"{self.name}: compiling ψ failed ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:300]}); run with compile=False") from None
        opt.step()
        if compiled is not None and "warmup_seconds" not in state.values:
            state.values["warmup_seconds"] = round(time.perf_counter() - t_it, 2)
        aux["net"] = net  # the iteration's network (for hooks: DOORPING)
        return float(loss.detach()) / ctx.num_classes

    def finish(self, state: LoopState, ctx: RunContext) -> SetParts:
        extra = {"compiled": state.values.get("compiled"), "precision": state.values.get("precision")}
        if state.aux["compiled"] is not None:
            extra["warmup_seconds"] = state.values.get("warmup_seconds")
        return SetParts(state.tensors["syn"].detach(), ctx.class_labels(), "hard", extra=extra)
