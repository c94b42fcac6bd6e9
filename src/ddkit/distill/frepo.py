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
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import NonNegativeInt, PositiveFloat, PositiveInt
from torch import Tensor

from ddkit.distill.base import (
    Distiller,
    LoopState,
    MethodConfig,
    RunContext,
    SetParts,
    initial_synthetic,
    iteration_generator,
    register,
)
from ddkit.errors import ConfigError, DDKitError
from ddkit.optim import Lamb
from ddkit.spectral.loss import trace_ridge_krr
from ddkit.spectral.stats import centred_one_hot
from ddkit.train import TrainConfig, train_model

__all__ = ["FRePoConfig", "FRePoDistiller", "cosine_lr", "frepo_krr_predict", "frepo_loss", "label_margin_loss",
           "make_frepo_network"]

FREPO_MODEL = "frepo-conv"
FLIP_DATASETS = ("cifar10", "cifar100")


class FRePoConfig(MethodConfig):
    """FRePo settings; every default's source is in the module docstring."""

    iterations: NonNegativeInt = 500_000
    checkpoint_every: NonNegativeInt = 1000
    batch_real: PositiveInt = 1024
    optimizer: Literal["lamb", "adam"] = "lamb"  # "lamb" (paper/JAX code) or "adam" (PyTorch port)
    lr_img: PositiveFloat = 3e-4  # images and labels; cosine decay to 0.1 × lr_img
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
def make_frepo_network(cfg: FRePoConfig, channels: int, num_classes: int, image_size: int) -> nn.Module:
    """A freshly initialised pool network (train mode): the zoo's ``frepo-conv``
    (:class:`ddkit.models.zoo.FRePoConvNet`) with ``width``/``depth``/``norm``, or any zoo model.

    Raises:
        ModelError: the network does not fit the images.
    """
    from ddkit.models import get_model

    if cfg.model == FREPO_MODEL:
        return get_model(FREPO_MODEL, channels, num_classes, image_size, width=cfg.width, depth=cfg.depth,
                         norm=cfg.norm)
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
    if h_support.dim() != 2 or h_target.dim() != 2 or h_support.shape[1] != h_target.shape[1]:
        raise DDKitError(f"frepo_krr_predict needs H_s n_s×d and H_t n_t×d, got {tuple(h_support.shape)} "
                         f"and {tuple(h_target.shape)}")
    hs, ht = h_support.double(), h_target.double()
    return trace_ridge_krr(ht @ hs.mT, hs @ hs.mT, y_support.double(), reg)


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


# --------------------------------------------------------------------------- distiller
@register
class FRePoDistiller(Distiller):
    """FRePo (neural feature regression with a model pool). See the module docstring.

    Output :class:`~ddkit.artifact.DistilledSet`: images float32 N×C×H×W in [0, 1]
    (N = K · ipc, class-major); labels float32 N×K learned regression targets when
    ``learn_labels`` (``label_kind="regression"``; evaluation trains on them with MSE),
    else int64 (N,). ``extra`` records the loop's fields (``final_loss``: the last KRR loss,
    without the margin term), ``resets`` (pool re-initialisations in this run), ``model``
    and ``flip``.

    The pool's online step is the shared training loop's one step
    (:func:`ddkit.train.train_model` with ``max_steps=1``, loss ``sq``): a random
    ``batch_syn`` of the distilled images without replacement; when the set has at most
    ``batch_syn`` images the step uses all of them in a random order (0.1.0 kept their
    order; the difference is float rounding only).

    Raises
    ------
    ConfigError
        When the configuration is built: a setting out of range (``num_models``,
        ``batch_real``, ``batch_syn`` < 1, ``max_online_updates`` < 0,
        ``lr_img``/``online_lr``/``reg`` ≤ 0) or an unknown ``optimizer``, ``init`` or ``norm``.
        At run start: ``width``/``depth``/``norm`` changed for a zoo model, or a resume from
        a checkpoint written with other settings.
    ModelError
        The network does not fit the images.
    """

    name = "frepo"
    Config = FRePoConfig
    label_kinds = ("regression", "hard")

    def label_kind(self, config) -> str:
        return "regression" if config.learn_labels else "hard"

    def check(self, ctx: RunContext) -> None:
        cfg = ctx.config
        if cfg.model != FREPO_MODEL:
            defaults = FRePoConfig()
            changed = [k for k in ("width", "depth", "norm") if getattr(cfg, k) != getattr(defaults, k)]
            if changed:
                raise ConfigError(f"frepo settings {', '.join(changed)} apply to model {FREPO_MODEL!r} only, "
                                  f"not to zoo model {cfg.model!r}")

    def _horizon(self, ctx: RunContext) -> int:
        return ctx.config.lr_decay_steps or ctx.config.iterations

    def checkpoint_identity(self, ctx: RunContext) -> dict[str, Any]:
        return {**super().checkpoint_identity(ctx), "lr_decay_horizon": self._horizon(ctx)}

    def _member(self, ctx: RunContext) -> tuple[nn.Module, torch.optim.Adam]:
        net = make_frepo_network(ctx.config, ctx.channels, ctx.num_classes, ctx.image_size).to(ctx.device)
        return net, torch.optim.Adam(net.parameters(), lr=ctx.config.online_lr)

    def init_state(self, ctx: RunContext) -> LoopState:
        cfg, k = ctx.config, ctx.num_classes
        real_x = ctx.real_x()
        syn = initial_synthetic(real_x, ctx.real.class_indices(), ctx.ipc, cfg.init, iteration_generator(ctx.seed, -1))
        syn.requires_grad_(True)
        y_syn = (centred_one_hot(ctx.class_labels(), k) / math.sqrt(k / 10)).to(ctx.device)
        y_syn.requires_grad_(cfg.learn_labels)
        params = [syn, y_syn] if cfg.learn_labels else [syn]
        opt = Lamb(params, lr=cfg.lr_img) if cfg.optimizer == "lamb" else torch.optim.Adam(params, lr=cfg.lr_img)
        state = LoopState(tensors={"syn": syn, "labels": y_syn}, optimizers={"img": opt})
        stagger = cfg.max_online_updates // cfg.num_models
        for i in range(cfg.num_models):
            state.modules[f"pool{i}"], state.optimizers[f"pool{i}"] = self._member(ctx)
        state.values = {"ages": [stagger * i for i in range(cfg.num_models)], "resets": 0}
        state.aux = {"flip": cfg.flip if cfg.flip is not None else ctx.real.name in FLIP_DATASETS,
                     "real_y": centred_one_hot(ctx.real.labels, k).to(ctx.device),
                     "online": TrainConfig(epochs=1, batch_size=cfg.batch_syn, loss="sq", schedule="constant"),
                     "resets_before": None}
        return state

    def step(self, state: LoopState, ctx: RunContext, iteration: int, generator: torch.Generator) -> float:
        cfg, aux = ctx.config, state.aux
        if aux["resets_before"] is None:  # resets counted by this run (a resumed run starts from the checkpoint's)
            aux["resets_before"] = state.values["resets"]
        syn, y_syn, opt = state.tensors["syn"], state.tensors["labels"], state.optimizers["img"]
        real_x = ctx.real_x()
        m = int(torch.randint(cfg.num_models, (1,), generator=generator))
        idx = torch.randperm(real_x.shape[0], generator=generator)[:cfg.batch_real].to(ctx.device)
        net = state.modules[f"pool{m}"]
        for p in net.parameters():
            p.requires_grad_(False)
        net.eval()  # features with the network frozen, batch norm on its running statistics
        with torch.no_grad():
            h_t = net.embed(real_x[idx])
        x_s, y_s = (torch.cat([syn, syn.flip(-1)]), torch.cat([y_syn, y_syn])) if aux["flip"] else (syn, y_syn)
        pred = frepo_krr_predict(net.embed(x_s), y_s, h_t, cfg.reg)
        krr_loss = frepo_loss(pred, aux["real_y"][idx])
        loss = (krr_loss + label_margin_loss(y_syn)) if cfg.learn_labels and cfg.margin_loss else krr_loss
        for group in opt.param_groups:
            group["lr"] = cosine_lr(cfg.lr_img, iteration, self._horizon(ctx))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ages = state.values["ages"]
        # the chosen network: re-initialised past its age limit, else one online step on the distilled set
        if ages[m] > cfg.max_online_updates:
            state.modules[f"pool{m}"], state.optimizers[f"pool{m}"] = self._member(ctx)
            ages[m] = 0
            state.values["resets"] += 1
        else:
            for p in net.parameters():
                p.requires_grad_(True)
            train_model(net, syn.detach(), y_syn.detach(), aux["online"], optimizer=state.optimizers[f"pool{m}"],
                        generator=generator, max_steps=1)
            ages[m] += 1
        return float(krr_loss.detach())

    def finish(self, state: LoopState, ctx: RunContext) -> SetParts:
        cfg = ctx.config
        labels = state.tensors["labels"].detach().float() if cfg.learn_labels else ctx.class_labels()
        resets = state.values["resets"] - (state.aux["resets_before"] or 0)
        return SetParts(state.tensors["syn"].detach(), labels, self.label_kind(cfg),
                        extra={"resets": resets, "model": cfg.model, "flip": state.aux["flip"]})
