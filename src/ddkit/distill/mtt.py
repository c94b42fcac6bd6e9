"""MTT: dataset distillation by matching training trajectories (Cazenavette et al., CVPR 2022).

Given expert trajectories {θ*_t} of networks trained on the real data (a *buffer*, see
:mod:`ddkit.distill.buffer` and ``ddkit buffer``), every iteration (Algorithm 1):

1. draw an expert and a start epoch t, and set the student to θ̂_t = θ*_t;
2. take N (``syn_steps``) SGD steps on minibatches of the synthetic set, with DSA (one
   draw per step) and the learnable step size α: θ̂_{n+1} = θ̂_n − α ∇ℓ(θ̂_n; D_syn);
3. loss L = ‖θ̂_{t+N} − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖² (Eq. 2; M = ``expert_epochs``);
4. backpropagate through the N unrolled steps into the images (SGD, ``lr_img``, momentum
   0.5) and into α (SGD, ``lr_lr``, momentum 0.5; initial α = ``lr_teacher``).

The student is one flat parameter vector run with ``torch.func.functional_call`` (one
forward and one ``autograd.grad`` with ``create_graph`` per step), as the reference code
does with its ``ReparamModule``. The learned α is stored in the distilled set's ``lr`` and
the evaluation protocol trains with it.

Defaults. The published hyper-parameters depend on dataset and IPC; the MTT README gives
them as an image, transcribed (as "provided by the author") in DC-BENCH
(``justincui03/dc_benchmark``, ``methods/tm/readme.md``). For CIFAR-10:

=====  =========  ==========  ===============  ======  =======  =========  ====
IPC    syn_steps  expert_ep.  max_start_epoch  lr_img  lr_lr    lr_teacher ZCA
=====  =========  ==========  ===============  ======  =======  =========  ====
1      50         2           2                100     1e-7     0.01       yes
10     30         2           20               100     1e-5     0.001      yes
50     30         2           40               1000    1e-5     0.001      no
=====  =========  ==========  ===============  ======  =======  =========  ====

MTT did not distil MNIST or Fashion-MNIST, and ddkit has no ZCA whitening. ddkit therefore
uses, for every dataset, the CIFAR-10 row of the IPC (IPC 1 → row 1, IPC 2–10 → row 10,
IPC > 10 → row 50) for ``syn_steps``, ``expert_epochs``, ``max_start_epoch``, ``lr_lr`` and
``lr_teacher``, and ``lr_img = 1000``, the value of the only non-ZCA row (and the default of
the reference ``distill.py``); the ZCA rows' 100 belongs to whitened pixels. Leaving a
field at ``None`` selects that value; the resolved values are recorded in the set's
metadata (``extra["hyper"]``). Other defaults are the reference code's: 5000 iterations,
real initialisation, ``batch_syn`` = the whole synthetic set, DSA
``color_crop_cutout_flip_scale_rotate``, the buffer's network (ConvNet-3).

Choices and deviations (``min_syn_lr`` is a setting; the others are fixed behaviour):

* start epoch: drawn uniformly from 0..T+−1, as the reference code (NumPy ``randint``
  excludes the upper end); the paper writes t ≤ T+. ``max_start_epoch + expert_epochs − 1``
  must not exceed the buffer's epochs.
* expert choice: uniform over the buffer's complete experts for each iteration, drawn from
  the iteration's generator (the reference cycles through shuffled buffer files).
* ``min_syn_lr`` (1e-6): after each update α is clipped to at least this; the reference
  leaves α unconstrained, and a non-positive α cannot train a network. The clip is inert
  while α stays above it.
* a degenerate expert trajectory (parameters unchanged between t and t+M, where the
  normalised loss is 0/0) is reported as an ``ArtifactError`` instead of a NaN.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, field_validator
from torch import Tensor, nn
from torch.func import functional_call

from ddkit.artifact import DistilledSet
from ddkit.augment import DEFAULT_STRATEGY, DSA, DSAConfig
from ddkit.data import ImageDataset
from ddkit.distill.base import Checkpoint, Distiller, MethodConfig, initial_synthetic, iteration_generator, register
from ddkit.distill.buffer import ExpertBuffer, train_experts  # train_experts re-exported: stage 1 of MTT
from ddkit.errors import ArtifactError, ConfigError
from ddkit.models import get_model
from ddkit.progress import LoopProgress

__all__ = ["ExpertBuffer", "LR_IMG_NO_ZCA", "MTTConfig", "MTTDistiller", "PUBLISHED", "published_defaults",
           "train_experts", "trajectory_matching_loss", "unroll_student"]

# MTT's CIFAR-10 hyper-parameters by IPC (see the module docstring for the source)
PUBLISHED: dict[int, dict[str, float]] = {
    1: {"syn_steps": 50, "expert_epochs": 2, "max_start_epoch": 2, "lr_lr": 1e-7, "lr_teacher": 0.01},
    10: {"syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 20, "lr_lr": 1e-5, "lr_teacher": 0.001},
    50: {"syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 40, "lr_lr": 1e-5, "lr_teacher": 0.001},
}
LR_IMG_NO_ZCA = 1000.0


def published_defaults(ipc: int) -> dict[str, float]:
    """MTT's per-IPC defaults used by ddkit: the CIFAR-10 row of the IPC plus ``lr_img``.

    IPC 1 → the IPC-1 row, 2–10 → the IPC-10 row, > 10 → the IPC-50 row; ``lr_img`` is
    1000 (the non-ZCA value). Returns a new dict with ``syn_steps``, ``expert_epochs``,
    ``max_start_epoch`` (ints), ``lr_lr``, ``lr_teacher``, ``lr_img`` (floats).
    """
    row = 1 if ipc <= 1 else 10 if ipc <= 10 else 50
    out = dict(PUBLISHED[row])
    out["lr_img"] = LR_IMG_NO_ZCA
    return out


class MTTConfig(MethodConfig):
    """MTT settings; ``None`` fields take the per-IPC published value (module docstring)."""

    buffer: str = Field("", validate_default=True)  # expert-trajectory folder (required)
    iterations: NonNegativeInt = 5000
    syn_steps: PositiveInt | None = None  # N
    expert_epochs: PositiveInt | None = None  # M
    max_start_epoch: PositiveInt | None = None  # T+
    lr_img: PositiveFloat | None = None
    lr_lr: NonNegativeFloat | None = None
    lr_teacher: PositiveFloat | None = None  # initial learnable step size α
    momentum: NonNegativeFloat = 0.5  # of both SGD optimisers (images and α), as in the MTT code
    batch_syn: PositiveInt | None = None  # None: the whole synthetic set each step
    model: str | None = None  # None: the buffer's network
    init: Literal["real", "noise"] = "real"
    dsa: bool = True
    dsa_strategy: str = DEFAULT_STRATEGY
    min_syn_lr: NonNegativeFloat = 1e-6
    checkpoint_every: NonNegativeInt = 100

    @field_validator("buffer")
    @classmethod
    def _buffer_given(cls, v: str) -> str:
        if not str(v).strip():
            raise ValueError("mtt needs an expert-trajectory buffer: build one with `ddkit buffer DATASET --out DIR` "
                             "(or ddkit.distill.buffer.train_experts) and pass buffer=DIR (--set buffer=DIR)")
        if not (Path(v) / "manifest.json").is_file():
            raise ValueError(f"{v!r} is not an expert buffer (no readable manifest.json); "
                             f"build one with `ddkit buffer DATASET --out {v}`")
        return str(v)

    def resolved(self, ipc: int) -> dict[str, float]:
        """The hyper-parameters in force at ``ipc``: set fields, else :func:`published_defaults`."""
        out = published_defaults(ipc)
        for key in out:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


def _param_layout(net: nn.Module) -> tuple[list[str], list[torch.Size], list[int]]:
    named = list(net.named_parameters())
    return [n for n, _ in named], [p.shape for _, p in named], [p.numel() for _, p in named]


def unroll_student(net: nn.Module, start: Tensor, images: Tensor, labels: Tensor, syn_lr: Tensor | float,
                   steps: int, *, batch_syn: int | None = None, augment: DSA | None = None,
                   generator: torch.Generator | None = None, create_graph: bool = True) -> Tensor:
    """Train a student ``steps`` SGD steps on the synthetic set, functionally (MTT Alg. 1, l. 6–10).

    ``θ_{n+1} = θ_n − α ∇_θ CE(f(A(x_b); θ_n), y_b)`` with ``f`` = ``net`` evaluated by
    ``torch.func.functional_call`` at the flat parameter vector θ (``net``'s own
    parameters are not used or changed; its buffers are, cloned). Minibatches: a random
    permutation of the set, cut into chunks of ``batch_syn``, one chunk per step, a new
    permutation when used up (the reference code's order); ``batch_syn`` ``None`` or ≥ N:
    the whole set every step. ``augment``: one DSA draw per step (one op for the batch,
    parameters per image).

    Args:
        net: the network architecture (train mode), on the images' device.
        start: θ_0, float32 (P,), ``named_parameters()`` order; must require grad when
            ``create_graph`` (its graph is what later steps differentiate).
        images: N×C×H×W float32 standardised synthetic images. labels: int64 (N,).
        syn_lr: α, a scalar tensor (learnable) or float.
        steps: N ≥ 0. generator: CPU generator for the permutations and DSA draws.
        create_graph: keep the graph so the result is differentiable w.r.t. ``images``,
            ``syn_lr`` and ``start`` (MTT); ``False`` for a plain (non-meta) run.

    Returns:
        θ_N, float32 (P,) on ``start``'s device.

    Raises:
        ConfigError: ``start`` does not have P = the network's parameter count entries.
    """
    names, shapes, numels = _param_layout(net)
    if start.dim() != 1 or start.numel() != sum(numels):
        raise ConfigError(f"student parameters have shape {tuple(start.shape)}, the network needs ({sum(numels)},)")
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    n = images.shape[0]
    bsz = n if batch_syn is None or batch_syn >= n else batch_syn
    chunks: list[Tensor] = []
    w = start if create_graph else start.detach().requires_grad_(True)
    for _ in range(steps):
        if bsz == n:
            x, y = images, labels
        else:
            if not chunks:
                chunks = list(torch.split(torch.randperm(n, generator=generator), bsz))
            idx = chunks.pop().to(images.device)
            x, y = images[idx], labels[idx]
        if augment is not None:
            x = augment(x, generator=generator)
        params = {name: t.view(shape) for name, t, shape in zip(names, torch.split(w, numels), shapes, strict=True)}
        out = functional_call(net, {**params, **buffers}, (x,))
        (grad,) = torch.autograd.grad(F.cross_entropy(out, y), w, create_graph=create_graph)
        w = w - syn_lr * grad
        if not create_graph:
            w = w.detach().requires_grad_(True)
    return w if create_graph else w.detach()


def unroll_memory_bytes(net: nn.Module, image_shape: tuple[int, ...], num_classes: int, batch: int, steps: int,
                        device: torch.device | str = "cpu") -> int:
    """Estimated bytes the autograd graph of :func:`unroll_student` keeps for the backward
    pass (``steps`` steps on batches of ``batch`` images), measured, not modelled: the
    tensors saved for backward by one step (with ``create_graph``) on 1 and on 2 images,
    counted through ``torch.autograd.graph.saved_tensors_hooks``, extrapolated linearly in
    the batch and multiplied by ``steps``. Each storage counts once, however many saved
    tensors view it.

    Args:
        image_shape: (C, H, W). num_classes: K. batch, steps: ≥ 1.

    Returns:
        Bytes (int ≥ 0).
    """
    names, _, numels = _param_layout(net)
    theta = torch.cat([p.detach().flatten() for p in net.parameters()]).to(device)

    def one_step(b: int) -> int:
        storages: dict[int, int] = {}

        def pack(t: Tensor) -> Tensor:
            st = t.untyped_storage()
            storages[st.data_ptr()] = st.nbytes()
            return t

        x = torch.zeros(b, *image_shape, device=device, requires_grad=True)
        y = torch.zeros(b, dtype=torch.long, device=device)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            unroll_student(net, theta.clone().requires_grad_(True), x, y, 0.01, 1)
        return sum(storages.values())

    one, two = one_step(1), one_step(2)
    per_image = max(0, two - one)
    return int(steps * (max(0, one - per_image) + per_image * batch))


def available_memory_bytes(device: torch.device) -> int | None:
    """Free memory for tensors on ``device``: CUDA ``mem_get_info``; CPU ``MemAvailable``
    of /proc/meminfo (Linux); ``None`` where unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def trajectory_matching_loss(student_end: Tensor, expert_start: Tensor, expert_target: Tensor) -> Tensor:
    """MTT's normalised parameter distance (Eq. 2), a scalar ≥ 0.

    ``‖θ̂_{t+N} − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖²`` over flat float32 (P,) vectors. Squared
    norms (no square root), so the gradient is finite everywhere, also at a perfect match;
    the denominator is a constant (no gradient flows into the expert parameters).

    Raises:
        ArtifactError: ``expert_start`` equals ``expert_target`` (a degenerate expert
            trajectory: the parameters did not move in M epochs), where the ratio is undefined.
    """
    num = (student_end - expert_target).pow(2).sum()
    den = (expert_start - expert_target).detach().pow(2).sum()
    if not float(den) > 0:
        raise ArtifactError("expert trajectory is degenerate: its parameters at the start and target epochs are "
                            "identical, so the normalised distance is undefined; rebuild the buffer with lr > 0")
    return num / den


@register
class MTTDistiller(Distiller):
    """Matching Training Trajectories (MTT). See the module docstring for the algorithm,
    the defaults and their source, and the deviations.

    Needs ``buffer`` = a folder written by ``ddkit buffer`` on the same dataset.
    Output :class:`~ddkit.artifact.DistilledSet`: images float32 N×C×H×W in [0, 1]
    (N = K · ipc, class-major), int64 labels, ``lr`` = the learned step size α (float32
    scalar; evaluation trains with it). ``extra`` records ``iterations``,
    ``iterations_run``, ``seconds``, ``seconds_per_iteration``, ``final_loss``, ``syn_lr``,
    ``hyper`` (the resolved hyper-parameters), ``buffer`` and ``device``.

    Raises
    ------
    ConfigError
        No/unreadable buffer, a buffer of another dataset or with no finished expert, a
        ``model`` other than the buffer's, ``max_start_epoch + expert_epochs − 1`` beyond the
        buffer's epochs, or a resume from a checkpoint written with other settings.
    """

    name = "mtt"
    Config = MTTConfig

    def run(self, real: ImageDataset, ipc: int, *, device, seed, progress, checkpoint: Path | None,
            resume) -> DistilledSet:
        cfg: MTTConfig = self.config  # type: ignore[assignment]
        buf = ExpertBuffer(cfg.buffer)
        buf.check_compatible(real)
        model = cfg.model or buf.model
        if model != buf.model:
            raise ConfigError(f"mtt model {model!r} differs from the buffer's {buf.model!r}; "
                              f"leave model unset or build a buffer with --model {model}")
        hp = cfg.resolved(ipc)
        n_steps, m_ep, t_max = int(hp["syn_steps"]), int(hp["expert_epochs"]), int(hp["max_start_epoch"])
        if t_max - 1 + m_ep > buf.epochs:
            raise ConfigError(f"max_start_epoch {t_max} with expert_epochs {m_ep} needs trajectories of at least "
                              f"{t_max - 1 + m_ep} epochs, the buffer has {buf.epochs}; set max_start_epoch ≤ "
                              f"{max(0, buf.epochs - m_ep + 1)} (and expert_epochs ≤ {buf.epochs}) or build a longer "
                              f"buffer")
        k, size = real.num_classes, real.image_size[0]
        net = get_model(model, real.channels, k, size).to(device)
        net.train()
        for p in net.parameters():
            p.requires_grad_(False)
        if sum(p.numel() for p in net.parameters()) != buf.num_params:
            raise ConfigError(f"network {model!r} has a different parameter count than the buffer's experts")
        n_syn = k * ipc
        bsz = n_syn if cfg.batch_syn is None else min(cfg.batch_syn, n_syn)
        need = unroll_memory_bytes(net, (real.channels, size, size), k, bsz, n_steps, device)
        free = available_memory_bytes(torch.device(device))
        if free is not None and need > 0.85 * free:  # the estimate ran ~15 % under the measured peak
            fit = max(1, int(bsz * 0.7 * free / need))
            raise ConfigError(f"mtt: unrolling {n_steps} student steps on batches of {bsz} synthetic images keeps "
                              f"~{need / 2**30:.1f} GiB for the backward pass, {free / 2**30:.1f} GiB is free on "
                              f"{device}; set batch_syn ≤ {fit} (--set batch_syn={fit}) or fewer syn_steps")
        dsa = DSA(DSAConfig(strategy=cfg.dsa_strategy), image_size=size) if cfg.dsa else None
        meta = self.checkpoint_meta(real, ipc, seed)
        meta["config"].pop("buffer", None)  # the buffer is identified by its contents, not its path
        meta["buffer"] = buf.fingerprint
        by_class = real.class_indices()
        real_x = real.normalize(real.float_images())
        syn = initial_synthetic(real_x, by_class, ipc, cfg.init, iteration_generator(seed, -1))
        del real_x
        syn = syn.to(device).requires_grad_(True)
        syn_lr = torch.tensor(float(hp["lr_teacher"]), device=device).requires_grad_(True)
        labels = torch.arange(k).repeat_interleave(ipc).to(device)
        opt_img = torch.optim.SGD([syn], lr=hp["lr_img"], momentum=cfg.momentum)
        opt_lr = torch.optim.SGD([syn_lr], lr=hp["lr_lr"], momentum=cfg.momentum)
        start = 0
        ck = self.load_checkpoint(checkpoint, resume, meta)
        if ck is not None:
            start = ck.restore_sgd(syn, opt_img)
            with torch.no_grad():
                syn_lr.copy_(ck.tensors["syn_lr"].to(device).reshape(()))
            opt_lr.state[syn_lr]["momentum_buffer"] = ck.tensors["lr_momentum"].to(device).reshape(()).clone()
        t0 = time.perf_counter()
        loss_val = float("nan")
        with LoopProgress(f"mtt ipc={ipc}", cfg.iterations, start, enabled=progress) as bar:
            for it in range(start, cfg.iterations):
                g = iteration_generator(seed, it)
                expert = int(torch.randint(len(buf), (1,), generator=g))
                t = int(torch.randint(t_max, (1,), generator=g))
                theta_t = buf.params(expert, t).to(device)
                theta_target = buf.params(expert, t + m_ep).to(device)
                end = unroll_student(net, theta_t.clone().requires_grad_(True), syn, labels, syn_lr, n_steps,
                                     batch_syn=cfg.batch_syn, augment=dsa, generator=g)
                loss = trajectory_matching_loss(end, theta_t, theta_target)
                loss_val = float(loss.detach())
                if loss_val != loss_val:  # NaN: the unrolled student diverged
                    raise ConfigError(f"mtt diverged at iteration {it} (loss is NaN); lower lr_img, lr_lr or "
                                      f"lr_teacher")
                opt_img.zero_grad(set_to_none=True)
                opt_lr.zero_grad(set_to_none=True)
                loss.backward()
                opt_img.step()
                opt_lr.step()
                with torch.no_grad():
                    syn_lr.clamp_(min=cfg.min_syn_lr)
                bar.update(loss_val)
                done = it + 1
                if checkpoint is not None and cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
                    ck_out = Checkpoint.of_sgd(done, syn, opt_img, meta)
                    ck_out.tensors["syn_lr"] = syn_lr.detach()
                    ck_out.tensors["lr_momentum"] = opt_lr.state[syn_lr]["momentum_buffer"]
                    ck_out.save(checkpoint)
        seconds = time.perf_counter() - t0
        run = cfg.iterations - start
        images = real.denormalize(syn.detach()).cpu()
        ds = self.make_set(real, images, labels.cpu(), ipc, seed, iterations=cfg.iterations, iterations_run=run,
                           seconds=round(seconds, 2), seconds_per_iteration=round(seconds / run, 4) if run else None,
                           final_loss=loss_val, syn_lr=float(syn_lr.detach()), hyper=hp,
                           buffer={"path": str(buf.root), "experts": len(buf), "epochs": buf.epochs, "model": buf.model,
                                   "lr": buf.settings.get("lr"), "train_subset": buf.settings.get("train_subset")},
                           device=str(device))
        return dataclasses.replace(ds, lr=syn_lr.detach().float().cpu())
