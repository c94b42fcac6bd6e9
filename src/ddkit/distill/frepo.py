"""FRePo: neural Feature Regression with Pooling (Zhou, Nezhadarya, Ba, NeurIPS 2022).

FRePo treats the last layer of a network as the only part trained to convergence: with the
features ``H = f_θ(x)`` of a *frozen* network, training a linear head on the distilled set
``(X_s, Y_s)`` by ridge regression predicts the labels of real images as

    ŷ_t = H_t H_sᵀ (H_s H_sᵀ + λ' I)^-1 Y_s,     λ' = λ · tr(H_s H_sᵀ) / n_s

and the distilled images and labels are moved to minimise the regression error on a real
batch, ``L = mean_t ½‖Y_t − ŷ_t‖²`` (squared error summed over classes, averaged over the
batch, as the reference code's ``mean_squared_loss`` does). The feature extractor is not
frozen for good: FRePo keeps a **pool** of ``num_models`` networks trained *online on the
distilled set*; each iteration it picks one at random, takes the meta-gradient through its
features (the network's weights are constants for that step), then gives that network one
training step on the (updated) distilled set — or re-initialises it once it is older than
``max_online_updates`` steps (the paper's algorithm; the ages start staggered, ``i · max/num_models``
for member ``i``, so the pool always mixes young and old networks).

Defaults and their sources (paper = NeurIPS 2022 text; code = the authors' JAX repository,
``script/distill.py`` and ``lib/datadistillation/frepo.py``; README = its published command
``--arch=conv --width=128 --depth=3 --normalization=batch --max_online_updates=100
--num_nn_state=10 --num_train_steps=500000``):

* ``iterations`` 500 000 (README); ``checkpoint_every`` 1000 (code, ``steps_per_checkpoint``).
* ``num_models`` 10, ``max_online_updates`` 100, staggered ages (README, code). As in the
  code, a network whose age exceeds ``max_online_updates`` is re-initialised *instead of*
  trained that iteration (so each network gets ``max_online_updates + 1`` steps).
* Network (``model="frepo-conv"``): FRePo's ``conv`` — ``depth`` blocks of [norm → conv3×3
  → ReLU → avg-pool 2×2], widths ``width · 2^i`` (128/256/512), no norm before the first
  conv, batch norm before the others (``norm="batch"``), first conv padded by 3 for
  1-channel input (28×28 → 32×32), conv biases, weights LeCun-normal (truncated, flax's
  default), features = the flattened last block (512·4·4 = 8192 for 28/32-pixel images).
  This is *not* the DC ConvNet of the zoo (constant width, norm after the conv); any zoo
  name may be given instead (``model="convnetbn"``, ...). Batch-norm running statistics use
  flax momentum 0.1 = PyTorch ``momentum=0.9``; features are taken in eval mode (running
  statistics), online training is in train mode, as in the code.
* Online training (code): Adam, lr 3e-4 constant, MSE loss ``½‖f(x) − y‖²`` (summed over
  classes, mean over the batch) against the distilled labels, batch ``min(N, 1000)``
  distilled images drawn without replacement (``batch_syn``; the code reuses its
  ``eval_batch_size`` of 1000), no augmentation.
* Meta-step (code): LAMB (optax semantics: Adam moments with bias correction, ε = 1e-6,
  per-tensor trust ratio ‖p‖/‖u‖, no weight decay), lr 3e-4 with cosine decay to 0.1 × lr
  over the run (``optax.cosine_decay_schedule(alpha=0.1)``), images and labels in one
  optimiser. ``optimizer="adam"`` with ``lr=1e-3`` gives the authors' PyTorch port instead.
* Real batch: 1024 images (``batch_real``; code ``kernel.batch_size``), drawn uniformly at
  random (not class-balanced), targets one-hot − 1/K.
* KRR: ``reg`` λ = 1e-6 on the trace-normalised ridge (code ``nfr``); the solve is done in
  float64 here (the code uses float32). The ridge's dependence on ``H_s`` is differentiated,
  as the code's ``jax.grad`` does.
* Labels: learned (``learn_labels=True``, README ``--learn_label=True``), initialised to
  one-hot − 1/K divided by √(K/10) (code ``init_proto(scale_y=True)``). The code adds a
  label-margin term ``mean_s −min(y_(1) − y_(2), 1/K)`` (top-1 minus top-2 entry of each
  learned label) to the loss; ``margin_loss=True`` keeps it (it is not in the paper's
  equations; ``False`` drops it). With fixed labels it is a constant and is left out.
* Flip (code ``use_flip``): the KRR support is the distilled set plus its horizontal
  mirror images on CIFAR-10/100, not on MNIST/Fashion-MNIST; ``flip=None`` (default)
  follows that, ``True``/``False`` force it.
* No augmentation during distillation (the code's DSA-like ``diff_aug`` is used only when
  evaluating); images standardised with the dataset mean/std (the paper's ZCA whitening
  for CIFAR is not applied — not available in ddkit).
* Initialisation: ``ipc`` random real images per class (code ``init_proto``).

Deviations that are not flags: the real batch is drawn independently each iteration (the
code walks through shuffled epochs); batch-norm running variances are PyTorch's unbiased
estimate (flax keeps the biased one). The cosine schedule spans ``lr_decay_steps``
(0: the run's ``iterations``); a resumed run must keep that horizon (it is part of the
checkpoint's settings), so to extend a run later fix ``lr_decay_steps`` from the start.

Evaluation: the learned labels are regression targets (float32 N×K, not probabilities);
``ddkit.evaluate`` trains on them with MSE, as FRePo evaluates. FRePo's own evaluation
network is its ``conv`` without normalisation, trained with Adam and augmentation — the
project's protocol (zoo ConvNet, SGD) differs; see ``docs/frepo.md``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import NonNegativeInt, PositiveFloat, PositiveInt
from torch import Tensor

from ddkit.artifact import DistilledSet
from ddkit.data import ImageDataset
from ddkit.distill.base import (
    Checkpoint,
    Distiller,
    MethodConfig,
    adam_state_tensors,
    initial_synthetic,
    iteration_generator,
    register,
    restore_adam_state,
)
from ddkit.distill.kip import centred_one_hot
from ddkit.errors import ConfigError, DDKitError, ModelError
from ddkit.models import get_model
from ddkit.progress import LoopProgress
from ddkit.spectral.loss import krr_predict_kernel

__all__ = ["FRePoConfig", "FRePoConvNet", "FRePoDistiller", "Lamb", "PoolMember", "cosine_lr", "frepo_krr_predict",
           "frepo_loss", "label_margin_loss", "make_frepo_network", "online_step"]

FREPO_MODEL = "frepo-conv"
FLIP_DATASETS = ("cifar10", "cifar100")


class FRePoConfig(MethodConfig):
    """FRePo settings; every default's source is in the module docstring."""

    iterations: NonNegativeInt = 500_000
    checkpoint_every: NonNegativeInt = 1000
    batch_real: PositiveInt = 1024
    optimizer: Literal["lamb", "adam"] = "lamb"  # "lamb" (paper/JAX code) or "adam" (PyTorch port)
    lr: PositiveFloat = 3e-4  # images and labels; cosine decay to 0.1 × lr
    lr_decay_steps: NonNegativeInt = 0  # horizon of the cosine decay; 0 = iterations
    reg: PositiveFloat = 1e-6  # λ; ridge = λ · tr(K_ss) / n_s
    learn_labels: bool = True
    margin_loss: bool = True  # the code's label-margin term (not in the paper's equations)
    num_models: PositiveInt = 10
    max_online_updates: NonNegativeInt = 100
    online_lr: PositiveFloat = 3e-4  # Adam, constant
    batch_syn: PositiveInt = 1000  # distilled images per online training step
    model: str = FREPO_MODEL
    width: int = 128  # frepo-conv only
    depth: int = 3  # frepo-conv only
    norm: Literal["batch", "none"] = "batch"  # frepo-conv only
    flip: bool | None = None  # None: on for CIFAR-10/100 only, as the code
    init: Literal["real", "noise"] = "real"


# --------------------------------------------------------------------------- network
class FRePoConvNet(nn.Module):
    """FRePo's ``conv`` network (the authors' ``lib/models`` ``Conv``), in PyTorch.

    ``depth`` blocks; block ``i``: [norm (i ≥ 1)] → Conv3×3(``width·2^i``, bias) → ReLU →
    AvgPool 2×2. The first conv pads by 3 for 1-channel input, by 1 otherwise. Then a linear
    classifier on the flattened features.

    Args:
        channels: C. num_classes: K. image_size: H (= W) in pixels.
        width: channels of the first block (128). depth: blocks (3).
        norm: ``"batch"`` (BatchNorm2d, eps 1e-5, momentum 0.9 = flax's 0.1) or ``"none"``.

    Input N×C×H×W float32 (standardised); ``embed`` → N×D features with
    D = width·2^(depth−1)·(H'/2^depth)², H' = H + 4 for 1-channel input, H otherwise;
    ``forward`` → N×K logits. Weights: truncated LeCun normal (flax's default), biases 0.

    Raises:
        ModelError: unknown ``norm``, width/depth < 1, or the image is too small.
    """

    def __init__(self, channels: int, num_classes: int, image_size: int, width: int = 128, depth: int = 3,
                 norm: str = "batch"):
        super().__init__()
        if norm not in ("batch", "none"):
            raise ModelError(f"frepo-conv norm must be 'batch' or 'none', got {norm!r}")
        if width < 1 or depth < 1:
            raise ModelError(f"frepo-conv needs width ≥ 1 and depth ≥ 1, got {width}, {depth}")
        pad0 = 3 if channels == 1 else 1
        size = image_size + 2 * pad0 - 2
        layers: list[nn.Module] = []
        c_in = channels
        for i in range(depth):
            if i > 0 and norm == "batch":
                layers.append(nn.BatchNorm2d(c_in, eps=1e-5, momentum=0.9))
            c_out = width * 2 ** i
            layers += [nn.Conv2d(c_in, c_out, 3, padding=pad0 if i == 0 else 1), nn.ReLU(), nn.AvgPool2d(2, 2)]
            size //= 2  # padding 1 keeps the size through later convs; the pool halves it
            c_in = c_out
        if size < 1:
            raise ModelError(f"frepo-conv depth {depth} is too deep for {image_size}×{image_size} images")
        self.features = nn.Sequential(*layers)
        self.feature_dim = c_in * size * size
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        for mod in self.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                fan_in = mod.weight[0].numel()
                std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # flax variance_scaling, truncated
                nn.init.trunc_normal_(mod.weight, std=std, a=-2 * std, b=2 * std)
                nn.init.zeros_(mod.bias)

    def embed(self, x: Tensor) -> Tensor:
        return torch.flatten(self.features(x), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


def make_frepo_network(cfg: FRePoConfig, channels: int, num_classes: int, image_size: int) -> nn.Module:
    """A freshly initialised pool network: :class:`FRePoConvNet` or a zoo model (train mode).

    Raises:
        ModelError: the network does not fit the images.
    """
    if cfg.model == FREPO_MODEL:
        return FRePoConvNet(channels, num_classes, image_size, cfg.width, cfg.depth, cfg.norm)
    return get_model(cfg.model, channels, num_classes, image_size)


# --------------------------------------------------------------------------- losses
def frepo_krr_predict(h_support: Tensor, y_support: Tensor, h_target: Tensor, reg: float) -> Tensor:
    """FRePo's feature-space KRR prediction (the paper's neural feature regression; code ``nfr``).

    ``ŷ_t = H_t H_sᵀ (H_s H_sᵀ + λ' I)^-1 Y_s`` with ``λ' = reg · tr(H_s H_sᵀ) / n_s``; equal
    by the push-through identity to ``H_t (H_sᵀH_s + λ' I_d)^-1 H_sᵀ Y_s``, the ridge-regression
    head trained on the support features.

    Parameters
    ----------
    h_support : Tensor, float of shape (n_s, d)
        Support (distilled) features; gradients flow through the kernel and the ridge.
    y_support : Tensor, float of shape (n_s, k)
        Support labels (regression targets).
    h_target : Tensor, float of shape (n_t, d)
        Target (real) features.
    reg : float
        λ > 0 (dimensionless; the ridge is scaled by the mean diagonal of the kernel).

    Returns
    -------
    Tensor, float64 of shape (n_t, k)
        The kernels and the solve are computed in float64.

    Raises
    ------
    ConfigError
        ``reg`` not > 0, or all support features are zero (the trace vanishes).
    DDKitError
        Shapes disagree.
    """
    if not reg > 0:
        raise ConfigError(f"FRePo reg must be > 0, got {reg!r}")
    if h_support.dim() != 2 or h_target.dim() != 2 or h_support.shape[1] != h_target.shape[1]:
        raise DDKitError(f"frepo_krr_predict needs H_s n_s×d and H_t n_t×d, got {tuple(h_support.shape)} "
                         f"and {tuple(h_target.shape)}")
    hs, ht = h_support.double(), h_target.double()
    n = hs.shape[0]
    k_ss = hs @ hs.mT
    k_ts = ht @ hs.mT
    ridge = float(reg) * torch.diagonal(k_ss).sum() / n
    if not float(ridge.detach()) > 0:
        raise ConfigError("FRePo support features are all zero (the kernel's trace is 0)")
    # krr_predict_kernel takes the ridge as a number; its dependence on H_s (through the
    # trace) is kept in the graph by a zero-valued term, as the code differentiates it.
    eye = torch.eye(n, dtype=torch.float64, device=k_ss.device)
    k_ss = k_ss + (ridge - ridge.detach()) * eye
    return krr_predict_kernel(k_ts, k_ss, y_support.double(), float(ridge.detach()))


def frepo_loss(pred: Tensor, y_target: Tensor) -> Tensor:
    """``mean_t ½ ‖ŷ_t − y_t‖²`` (sum over classes, mean over the batch; code ``mean_squared_loss``).

    ``pred`` and ``y_target``: (n, k) float; returns a scalar in ``pred``'s dtype.
    """
    return 0.5 * ((pred - y_target.to(pred.dtype)) ** 2).sum(1).mean()


def label_margin_loss(y: Tensor) -> Tensor:
    """The code's label-margin term: ``mean_i −min(y_i,(1) − y_i,(2), 1/K)``.

    ``y``: (n, K) float learned labels, K ≥ 2; ``y_i,(1) ≥ y_i,(2)`` are the two largest
    entries of row i. Its gradient raises a row's top-1 margin while it is below 1/K.
    Returns a scalar in [−1/K, 0].
    """
    top = torch.topk(y, 2, dim=1).values
    return -(top[:, 0] - top[:, 1]).clamp(max=1.0 / y.shape[1]).mean()


def cosine_lr(base: float, step: int, horizon: int, alpha: float = 0.1) -> float:
    """``optax.cosine_decay_schedule``: ``base · (α + (1 − α) · ½(1 + cos(π · min(step, T)/T)))``."""
    t = min(step, horizon) / max(horizon, 1)
    return base * (alpha + (1 - alpha) * 0.5 * (1 + math.cos(math.pi * t)))


class Lamb(torch.optim.Optimizer):
    """LAMB with ``optax.lamb`` semantics (You et al., ICLR 2020), no weight decay.

    Per tensor ``p``: Adam moments ``m, v`` with bias correction, ``u = m̂ / (√v̂ + ε)``, then
    ``p ← p − lr · r · u`` with the trust ratio ``r = ‖p‖ / ‖u‖`` (``r = 1`` when either norm
    is 0). State per tensor: ``step`` (float32 scalar tensor), ``exp_avg``, ``exp_avg_sq`` —
    the same keys as ``torch.optim.Adam``.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = torch.tensor(0.0)
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)
                st["step"] += 1
                k = float(st["step"])
                st["exp_avg"].mul_(b1).add_(p.grad, alpha=1 - b1)
                st["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                u = (st["exp_avg"] / (1 - b1 ** k)) / ((st["exp_avg_sq"] / (1 - b2 ** k)).sqrt() + group["eps"])
                p_norm, u_norm = p.norm(), u.norm()
                ratio = torch.where((p_norm > 0) & (u_norm > 0), p_norm / u_norm.clamp_min(1e-30),
                                    torch.ones_like(p_norm))
                p.add_(u * ratio, alpha=-group["lr"])
        return None


# --------------------------------------------------------------------------- the pool
class PoolMember:
    """One network of FRePo's model pool with its online Adam optimiser and age (steps)."""

    def __init__(self, net: nn.Module, lr: float, age: int):
        self.net = net
        self.opt = torch.optim.Adam(net.parameters(), lr=lr)
        self.age = age

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features of ``x`` (N×C×H×W) with the network frozen, in eval mode."""
        self.net.eval()
        return self.net.embed(x)

    def state_tensors(self, prefix: str) -> dict[str, Tensor]:
        out = {f"{prefix}.net.{k}": v for k, v in self.net.state_dict().items()}
        for j, p in enumerate(self.net.parameters()):
            out.update(adam_state_tensors(self.opt, p, f"{prefix}.adam{j}"))
        return out

    def load_tensors(self, tensors: dict[str, Tensor], prefix: str, device: torch.device) -> None:
        sd = {k[len(prefix) + 5:]: v.to(device) for k, v in tensors.items() if k.startswith(f"{prefix}.net.")}
        self.net.load_state_dict(sd)
        for j, p in enumerate(self.net.parameters()):
            restore_adam_state(self.opt, p, tensors, f"{prefix}.adam{j}")


def online_step(member: PoolMember, x_syn: Tensor, y_syn: Tensor, batch: int, generator: torch.Generator) -> float:
    """One online training step of a pool network on the distilled set (code ``train_step``).

    Loss ``mean ½‖f(x) − y‖²`` over ``min(N, batch)`` distilled images drawn without
    replacement with ``generator`` (all of them, in order, when N ≤ batch); train mode
    (batch norm uses batch statistics and updates its running ones); one Adam step; age + 1.
    ``x_syn`` N×C×H×W and ``y_syn`` N×K are detached. Returns the loss value.
    """
    n = x_syn.shape[0]
    if n > batch:
        pick = torch.randperm(n, generator=generator)[:batch].to(x_syn.device)
        x_syn, y_syn = x_syn[pick], y_syn[pick]
    net = member.net
    net.train()
    for p in net.parameters():
        p.requires_grad_(True)
    loss = frepo_loss(net(x_syn), y_syn)
    member.opt.zero_grad(set_to_none=True)
    loss.backward()
    member.opt.step()
    member.age += 1
    return float(loss.detach())


# --------------------------------------------------------------------------- distiller
@register
class FRePoDistiller(Distiller):
    """FRePo (neural feature regression with a model pool). See the module docstring.

    Output :class:`~ddkit.artifact.DistilledSet`: images float32 N×C×H×W in [0, 1]
    (N = K · ipc, class-major); labels float32 N×K learned regression targets when
    ``learn_labels`` (evaluation trains on them with MSE), else int64 (N,). ``extra``
    records ``iterations``, ``iterations_run``, ``seconds``, ``final_loss`` (last KRR loss,
    without the margin term), ``resets`` (pool re-initialisations in this run), ``model``,
    ``flip`` and ``device``.

    Raises
    ------
    ConfigError
        When the configuration is built: a setting out of range (``num_models``,
        ``batch_real``, ``batch_syn`` < 1, ``max_online_updates`` < 0,
        ``lr``/``online_lr``/``reg`` ≤ 0) or an unknown ``optimizer``, ``init`` or ``norm``.
        At run start: ``width``/``depth``/``norm`` changed for a zoo model, or a resume from
        a checkpoint written with other settings.
    ModelError
        The network does not fit the images.
    """

    name = "frepo"
    Config = FRePoConfig

    def _check(self, cfg: FRePoConfig) -> None:
        if cfg.model != FREPO_MODEL:
            defaults = FRePoConfig()
            changed = [k for k in ("width", "depth", "norm") if getattr(cfg, k) != getattr(defaults, k)]
            if changed:
                raise ConfigError(f"frepo settings {', '.join(changed)} apply to model {FREPO_MODEL!r} only, "
                                  f"not to zoo model {cfg.model!r}")

    def run(self, real: ImageDataset, ipc: int, *, device, seed, progress, checkpoint: Path | None,
            resume) -> DistilledSet:
        cfg: FRePoConfig = self.config  # type: ignore[assignment]
        self._check(cfg)
        k, size = real.num_classes, real.image_size[0]
        flip = cfg.flip if cfg.flip is not None else real.name in FLIP_DATASETS
        horizon = cfg.lr_decay_steps or cfg.iterations
        meta = self.checkpoint_meta(real, ipc, seed)
        meta["lr_decay_horizon"] = horizon
        by_class = real.class_indices()
        real_x = real.normalize(real.float_images()).to(device)
        real_y = centred_one_hot(real.labels, k).to(device)
        n_real = real_x.shape[0]
        g0 = iteration_generator(seed, -1)
        syn = initial_synthetic(real_x, by_class, ipc, cfg.init, g0).requires_grad_(True)
        hard = torch.arange(k).repeat_interleave(ipc)
        y_syn = (centred_one_hot(hard, k) / math.sqrt(k / 10)).to(device).requires_grad_(cfg.learn_labels)
        params = [syn, y_syn] if cfg.learn_labels else [syn]
        opt: torch.optim.Optimizer = (Lamb(params, lr=cfg.lr) if cfg.optimizer == "lamb"
                                      else torch.optim.Adam(params, lr=cfg.lr))
        stagger = cfg.max_online_updates // cfg.num_models
        pool = [PoolMember(make_frepo_network(cfg, real.channels, k, size).to(device), cfg.online_lr, stagger * i)
                for i in range(cfg.num_models)]
        start = 0
        ck = self.load_checkpoint(checkpoint, resume, meta)
        if ck is not None:
            start = self._restore(ck, cfg, syn, y_syn, opt, pool, device)
        t0 = time.perf_counter()
        loss_val, resets = float("nan"), 0
        with LoopProgress(f"frepo ipc={ipc}", cfg.iterations, start, enabled=progress) as bar:
            for it in range(start, cfg.iterations):
                g = iteration_generator(seed, it)
                m = int(torch.randint(cfg.num_models, (1,), generator=g))
                idx = torch.randperm(n_real, generator=g)[:cfg.batch_real].to(device)
                member = pool[m]
                for p in member.net.parameters():
                    p.requires_grad_(False)
                with torch.no_grad():
                    h_t = member.features(real_x[idx])
                x_s, y_s = (torch.cat([syn, syn.flip(-1)]), torch.cat([y_syn, y_syn])) if flip else (syn, y_syn)
                pred = frepo_krr_predict(member.features(x_s), y_s, h_t, cfg.reg)
                krr_loss = frepo_loss(pred, real_y[idx])
                loss = (krr_loss + label_margin_loss(y_syn)) if cfg.learn_labels and cfg.margin_loss else krr_loss
                for group in opt.param_groups:
                    group["lr"] = cosine_lr(cfg.lr, it, horizon)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_val = float(krr_loss.detach())
                # the chosen network: re-initialised past its age limit, else one online step
                if member.age > cfg.max_online_updates:
                    pool[m] = PoolMember(make_frepo_network(cfg, real.channels, k, size).to(device), cfg.online_lr, 0)
                    resets += 1
                else:
                    online_step(member, syn.detach(), y_syn.detach(), cfg.batch_syn, g)
                bar.update(loss_val)
                done = it + 1
                if checkpoint is not None and cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
                    self._save(checkpoint, done, meta, cfg, syn, y_syn, opt, pool)
        seconds = time.perf_counter() - t0
        images = real.denormalize(syn.detach()).cpu()
        labels = y_syn.detach().float().cpu().contiguous() if cfg.learn_labels else hard
        return self.make_set(real, images, labels, ipc, seed, iterations=cfg.iterations,
                             iterations_run=cfg.iterations - start, seconds=round(seconds, 2),
                             final_loss=loss_val, resets=resets, model=cfg.model, flip=flip, device=str(device))

    @staticmethod
    def _save(path: Path, done: int, meta: dict[str, Any], cfg: FRePoConfig, syn: Tensor, y_syn: Tensor,
              opt: torch.optim.Optimizer, pool: list[PoolMember]) -> None:
        tensors: dict[str, Tensor] = {"syn": syn, **adam_state_tensors(opt, syn, "opt_syn")}
        if cfg.learn_labels:
            tensors.update({"labels": y_syn, **adam_state_tensors(opt, y_syn, "opt_labels")})
        tensors["pool_ages"] = torch.tensor([mem.age for mem in pool], dtype=torch.int64)
        for i, mem in enumerate(pool):
            tensors.update(mem.state_tensors(f"pool{i}"))
        Checkpoint(done, tensors, meta).save(path)

    @staticmethod
    def _restore(ck: Checkpoint, cfg: FRePoConfig, syn: Tensor, y_syn: Tensor, opt: torch.optim.Optimizer,
                 pool: list[PoolMember], device: torch.device) -> int:
        t = ck.tensors
        with torch.no_grad():
            syn.copy_(t["syn"].to(device))
            if cfg.learn_labels:
                y_syn.copy_(t["labels"].to(device))
        restore_adam_state(opt, syn, t, "opt_syn")
        if cfg.learn_labels:
            restore_adam_state(opt, y_syn, t, "opt_labels")
        ages = t["pool_ages"].tolist()
        for i, mem in enumerate(pool):
            mem.load_tensors(t, f"pool{i}", device)
            mem.age = int(ages[i])
        return ck.iteration
