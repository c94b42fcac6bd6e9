"""KIP with RFAD's random-feature kernel (Nguyen, Chen, Lee, ICLR 2021; Nguyen et al., NeurIPS
2021; Loo, Hasani, Amini, Rus, *Efficient Dataset Distillation using Random Feature
Approximation*, NeurIPS 2022, authors' code github.com/yolky/RFAD).

KIP learns a support set ``(X_s, Y_s)`` such that kernel ridge regression (KRR) with that
support predicts the labels of real data:

    ŷ_t = K_ts (K_ss + λ' I)^-1 Y_s,        λ' = λ · tr(K_ss) / n_s.

RFAD replaces KIP's exact infinite-width NTK by a Monte-Carlo estimate of the NNGP of a
ConvNet and KIP's squared error by a cross-entropy on temperature-scaled KRR outputs ("Platt
scaling"). The defaults follow RFAD's code (``run_distillation.py`` arguments and the loop in
``distillation.py``; file:line citations in brackets, commit c9ef03e):

* Kernel (``kernel="nngp"``): every iteration, ``num_models`` = 8 [run_distillation.py:34]
  fresh random networks φ_m (resampled every step: schedule ``(0, n_models, 1)``
  [run_distillation.py:141, distillation.py:161]). With ``Φ(x)`` the concatenation of the
  ``φ_m(x)`` divided by ``√(M·D)`` [distillation.py:181],
  ``K(x, x') = w_var · Φ(x)·Φ(x') + b_var`` with ``w_var = 2``, ``b_var = 0.01``
  [distillation.py:183, 220]: the NNGP of a final dense layer with weight variance 2 and
  bias std 0.1 (RFAD's neural-tangents reference kernel: ``W_std=√2, b_std=0.1``
  [kernels.py:9-10]).
* Network (``model="rfad"``): RFAD's ``ConvNet_wide`` with ``k=2``, ``chopped_head=True``
  [run_distillation.py:140, models.py:77-151]: ``depth`` (3) blocks of Conv3×3(``width`` =
  2·128 = 256, padding 1, bias) → ReLU → AvgPool2×2, **no normalisation**, features = the
  flattened last map (D = 256·⌊H/8⌋², 2304 for 28×28). Weights ~ N(0, 2/fan_in) (He /
  NTK-style), biases ~ N(0, 0.1²) [models.py:161, 169]. Any zoo name in ``model`` uses that
  network's ``embed`` with PyTorch's default init instead (ddkit's former kernel; with
  ``model="convnet"``, ``w_var=1``, ``b_var=0`` it is the old averaged ``φφᵀ/D``).
* Ridge: ``λ = reg = 5e-3`` [run_distillation.py:27 ``--jit``], ridge ``λ·tr(K_ss)/n_s`` added
  to ``K_ss`` after the ``b_var`` term, differentiated through the trace
  [distillation.py:184] (:func:`ddkit.spectral.trace_ridge_krr`).
* Real batch: ``real_batches`` = 4 [run_distillation.py:38 ``--n_batches``] batches of
  ``batch_real`` = 1280 [distillation.py:191] images, each drawn uniformly without
  replacement from the whole training set (not class-balanced) — 5120 targets per step.
  ``real_sampling="balanced"`` draws ``batch_real // K`` per class instead (ddkit's former
  sampling).
* Loss (``loss="platt"``; README's recipe ``--platt --learn_labels``): cross-entropy of
  ``exp(τ) · ŷ_t`` against the targets' classes, τ a learned float64 scalar starting at 0
  [distillation.py:37, 227]. ``loss="mse"``: ``½ · mean((Y_t − ŷ_t)²)`` with centred one-hot
  ``Y_t`` [distillation.py:208, 229] (KIP's loss).
* Labels: ``Y_s`` starts at one-hot − 1/K [distillation.py:40] and is learned with the images
  (``learn_labels``) [distillation.py:64, 71]; no label scaling during distillation.
* Optimiser: AdaBelief (``torch_optimizer``), ε = 1e-16, lr 1e-3 for images and labels
  [run_distillation.py:26, distillation.py:61-72], lr 1e-2 for τ [distillation.py:62], and
  a learned linear pixel transform ``T`` (C·H·W square, identity at start, lr 5e-5) applied
  to the support images before the networks [distillation.py:34-35, 62-72, 175]; the set
  stores the transformed images ``X_s·T`` [distillation.py:146]. :class:`ddkit.optim.AdaBelief`
  reproduces the package's update. ``optimizer="adam"`` uses ``torch.optim.Adam`` instead.
* Init: ``ipc`` random real images per class [coresets.py:95-103] (``init="real"``).

``kernel="ntk"``: the empirical NTK of the first logit of ``num_models`` fresh networks,
``K(x, x') = (1/M) Σ_m ⟨∂f_m(x)/∂θ, ∂f_m(x')/∂θ⟩ / P`` (``torch.func.jacrev``); not RFAD's
(``w_var``/``b_var`` are not applied to it).

Deviations from RFAD that remain (flags):

* ``FLAG no-early-stopping``: RFAD runs up to 100 000 iterations, checks every 40 the KRR
  loss on 500 training images per class with 16 fixed-seed models and keeps the best set,
  stopping after 1000 iterations without improvement [run_distillation.py:130-143,
  distillation.py:77-147]. ddkit runs ``iterations`` (default 1000) and returns the last set.
* ``FLAG storage``: the set is stored in pixel space (the loop de-standardises ``X_s·T``); τ
  is kept in ``extra["platt_log_temperature"]`` (RFAD saves it as ``k`` but never uses it to
  evaluate).
* ``FLAG preprocessing``: RFAD ZCA-whitens CIFAR/SVHN (``reg 0.1``) [run_distillation.py:61-84];
  ddkit distils on its standardised images (mean/std, as RFAD does for (Fashion-)MNIST).
* ``FLAG seeding``: networks and batches come from ddkit's per-iteration generator, not
  RFAD's ``random.randint`` seeds.
* ``FLAG evaluation``: none in this module; ``ddkit evaluate`` runs its ``kip`` protocol
  (RFAD's finite-network recipe, :mod:`ddkit.evaluate.recipes`) on these sets. RFAD's exact
  NNGP/NTK KRR evaluation is not provided.

Labels in the artifact: with ``learn_labels=True`` float32 N×K *regression targets*
(``label_kind="regression"``; not probabilities, entries may be negative), else int64 hard
labels. The same KRR core for tabular regression is :func:`ddkit.tabular.kip_tabular`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
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
    sample_per_class,
)
from ddkit.errors import ConfigError, ModelError
from ddkit.models import RFADConvNet
from ddkit.optim import AdaBelief
from ddkit.spectral.loss import trace_ridge_krr
from ddkit.spectral.stats import centred_one_hot

__all__ = ["KIPConfig", "KIPDistiller", "kip_loss", "kip_platt_loss", "nngp_feature_kernel",
           "ntk_kernel"]

TARGET_CHUNK = 1280  # target images per forward pass (RFAD's batch; bounds memory only)


class KIPConfig(MethodConfig):
    """KIP/RFAD settings; every default is RFAD's (module docstring: sources, file:line)."""

    iterations: NonNegativeInt = 1000  # FLAG no-early-stopping (RFAD: ≤ 100 000, patience 1000)
    batch_real: PositiveInt = 1280  # real images per batch
    real_batches: PositiveInt = 4  # batches per step (RFAD --n_batches)
    real_sampling: Literal["uniform", "balanced"] = "uniform"
    lr_img: PositiveFloat = 1e-3  # images and labels
    lr_temperature: PositiveFloat = 1e-2  # Platt τ
    lr_transform: PositiveFloat = 5e-5  # learned pixel transform T
    learn_transform: bool = True
    optimizer: Literal["adabelief", "adam"] = "adabelief"
    reg: PositiveFloat = 5e-3  # λ; the ridge is λ · tr(K_ss) / n_s
    loss: Literal["platt", "mse"] = "platt"
    learn_labels: bool = True
    kernel: Literal["nngp", "ntk"] = "nngp"
    model: str = "rfad"  # RFAD's ConvNet_wide; or a zoo name (its embed, PyTorch init)
    width: PositiveInt = 256
    depth: PositiveInt = 3
    num_models: PositiveInt = 8
    w_var: PositiveFloat = 2.0  # NNGP readout weight variance
    b_var: NonNegativeFloat = 0.01  # NNGP readout bias variance
    init: Literal["real", "noise"] = "real"
    checkpoint_every: NonNegativeInt = 100


def kip_loss(k_ts: Tensor, k_ss: Tensor, y_s: Tensor, y_t: Tensor, reg: float) -> Tensor:
    """KIP's KRR loss ``½ · mean((Y_t − K_ts (K_ss + λ tr(K_ss)/n_s I)^-1 Y_s)²)`` (RFAD's
    ``--platt`` off, distillation.py:229).

    Parameters
    ----------
    k_ts : Tensor of shape (n_t, n_s)
        Kernel between the target (real) batch and the support set.
    k_ss : Tensor of shape (n_s, n_s)
        Symmetric PSD kernel of the support set.
    y_s : Tensor of shape (n_s, k)
        Support labels (regression targets).
    y_t : Tensor of shape (n_t, k)
        Target labels.
    reg : float
        λ > 0; the ridge added to ``K_ss`` is ``λ · tr(K_ss) / n_s`` (scale-free).

    Returns
    -------
    Tensor
        Scalar loss in float64 (the KRR solve is done in float64), differentiable with
        respect to every input.

    Raises
    ------
    ConfigError
        If ``reg`` is not > 0 or the trace of ``K_ss`` is not positive.
    """
    pred = trace_ridge_krr(k_ts, k_ss, y_s, reg)
    return 0.5 * ((y_t.double() - pred.double()) ** 2).mean()


def kip_platt_loss(k_ts: Tensor, k_ss: Tensor, y_s: Tensor, labels_t: Tensor, reg: float,
                   log_temperature: Tensor) -> Tensor:
    """RFAD's Platt-scaled loss: ``CE(exp(τ) · ŷ_t, c_t)`` with ``ŷ_t`` the trace-ridge KRR
    prediction (yolky/RFAD distillation.py:219-227).

    Parameters
    ----------
    k_ts, k_ss, y_s, reg
        As in :func:`kip_loss`.
    labels_t : Tensor, int64 of shape (n_t,)
        Target classes in ``0..k-1``.
    log_temperature : Tensor, 0-dim
        τ (any real; RFAD starts at 0); the logits are ``exp(τ) · ŷ_t``.

    Returns
    -------
    Tensor
        Scalar mean cross-entropy (float64), differentiable w.r.t. the kernels, ``y_s`` and τ.

    Raises
    ------
    ConfigError
        If ``reg`` is not > 0 or the trace of ``K_ss`` is not positive.
    """
    pred = trace_ridge_krr(k_ts, k_ss, y_s, reg).double()
    return F.cross_entropy(torch.exp(log_temperature.double()) * pred, labels_t.long())


def _target_features(embed, x_target: Tensor) -> Tensor:
    with torch.no_grad():
        return torch.cat([embed(x_target[i:i + TARGET_CHUNK]) for i in range(0, x_target.shape[0], TARGET_CHUNK)])


def nngp_feature_kernel(embeds, x_support: Tensor, x_target: Tensor, w_var: float = 2.0,
                        b_var: float = 0.01) -> tuple[Tensor, Tensor]:
    """RFAD's random-feature NNGP estimate.

    ``K(x, x') = w_var · (1/M) Σ_m φ_m(x)·φ_m(x') / D_m + b_var`` over the feature maps in
    ``embeds`` (yolky/RFAD distillation.py:181-183, 220: ``2·ΦΦᵀ + 0.01``).

    Parameters
    ----------
    embeds : sequence of callables
        Feature maps ``φ_m`` mapping N×C×H×W float32 to N×D_m.
    x_support : Tensor, float32 of shape (n_s, C, H, W)
        Support images (gradients flow to them).
    x_target : Tensor, float32 of shape (n_t, C, H, W)
        Target images (treated as constants; embedded in chunks of 1280 without autograd).
    w_var : float
        Readout weight variance (> 0; RFAD 2). b_var : float — readout bias variance (≥ 0; 0.01).

    Returns
    -------
    (k_ss, k_ts) : Tensors of shapes (n_s, n_s) and (n_t, n_s)
        ``k_ss`` is symmetric PSD (a positive multiple of an average of Gram matrices plus
        a constant ``b_var ≥ 0``).
    """
    k_ss = k_ts = None
    for embed in embeds:
        hs = embed(x_support)
        ht = _target_features(embed, x_target)
        d = hs.shape[1]
        a, b = hs @ hs.mT / d, ht @ hs.mT / d
        k_ss = a if k_ss is None else k_ss + a
        k_ts = b if k_ts is None else k_ts + b
    m = len(embeds)
    return w_var * k_ss / m + b_var, w_var * k_ts / m + b_var


def ntk_kernel(nets, x_support: Tensor, x_target: Tensor) -> tuple[Tensor, Tensor]:
    """Empirical NTK of the first logit, averaged over ``nets`` (not RFAD's kernel).

    ``K(x, x') = (1/M) Σ_m ⟨J_m(x), J_m(x')⟩ / P_m`` with ``J_m(x) = ∂f_m(x)_0 / ∂θ_m``
    (all parameters, flattened) computed by ``torch.func.jacrev`` over
    ``torch.func.functional_call``. The Jacobians stay differentiable with respect to the
    support images (double backward).

    Parameters
    ----------
    nets : sequence of nn.Module
        Networks mapping N×C×H×W to N×K logits; per-sample independent (no batch norm in
        training mode).
    x_support : Tensor, float32 of shape (n_s, C, H, W)
    x_target : Tensor, float32 of shape (n_t, C, H, W)

    Returns
    -------
    (k_ss, k_ts) : Tensors of shapes (n_s, n_s) and (n_t, n_s)

    Notes
    -----
    Memory is O((n_s + n_t) · P) floats per network.
    """
    from torch.func import functional_call, jacrev

    k_ss = k_ts = None
    for net in nets:
        params = {k: v.detach() for k, v in net.named_parameters()}
        p_count = sum(v.numel() for v in params.values())

        def first_logit(p, x, net=net):
            return functional_call(net, p, (x,))[:, 0]

        def flat_jac(x, p=params, f=first_logit):
            jac = jacrev(f)(p, x)
            return torch.cat([j.reshape(x.shape[0], -1) for j in jac.values()], 1)

        js = flat_jac(x_support)
        with torch.no_grad():
            jt = torch.cat([flat_jac(x_target[i:i + TARGET_CHUNK]) for i in range(0, x_target.shape[0], TARGET_CHUNK)])
        a, b = js @ js.mT / p_count, jt @ js.mT / p_count
        k_ss = a if k_ss is None else k_ss + a
        k_ts = b if k_ts is None else k_ts + b
    m = len(nets)
    return k_ss / m, k_ts / m


@register
class KIPDistiller(Distiller):
    """KIP with RFAD's defaults. See the module docstring for the algorithm, kernels and flags.

    Output :class:`~ddkit.artifact.DistilledSet`: images float32 N×C×H×W, the transformed
    support ``X_s·T`` in pixel space, unclamped (N = K · ipc, class-major); labels float32 N×K
    learned regression targets when ``learn_labels`` (``label_kind="regression"``), else
    int64 (N,). ``extra`` records the loop's fields, ``kernel``, ``loss`` and
    ``platt_log_temperature`` (τ; 0 unless ``loss="platt"``).

    Raises
    ------
    ConfigError
        When the configuration is built: unknown ``kernel``, ``loss``, ``optimizer``,
        ``real_sampling`` or ``init``; a count < 1; a learning rate, ``reg`` or ``w_var`` ≤ 0;
        ``b_var`` < 0. At run start: an unknown zoo ``model``, a network too deep for the
        image size, or a resume from a checkpoint written with other settings.
    """

    name = "kip"
    Config = KIPConfig
    label_kinds = ("regression", "hard")

    def label_kind(self, config) -> str:
        return "regression" if config.learn_labels else "hard"

    def check(self, ctx: RunContext) -> None:
        cfg = ctx.config
        from ddkit.models import get_model

        try:
            if cfg.model == "rfad":
                RFADConvNet(ctx.channels, ctx.num_classes, ctx.image_size, 1, cfg.depth)  # size check only
            else:
                get_model(cfg.model, ctx.channels, ctx.num_classes, ctx.image_size)
        except ModelError as exc:
            raise ConfigError(f"setting 'model' of method 'kip': {exc}") from None

    def _networks(self, ctx: RunContext, generator: torch.Generator) -> list[nn.Module]:
        cfg = ctx.config
        nets = []
        for _ in range(cfg.num_models):
            if cfg.model == "rfad":
                net = RFADConvNet(ctx.channels, ctx.num_classes, ctx.image_size, cfg.width, cfg.depth,
                                  generator=generator).to(ctx.device)
            else:
                net = ctx.new_model(cfg.model)
            for p in net.parameters():
                p.requires_grad_(False)
            nets.append(net.eval())
        return nets

    def init_state(self, ctx: RunContext) -> LoopState:
        cfg, k = ctx.config, ctx.num_classes
        by_class = ctx.real.class_indices()
        syn = initial_synthetic(ctx.real_x(), by_class, ctx.ipc, cfg.init, iteration_generator(ctx.seed, -1))
        syn.requires_grad_(True)
        y_syn = centred_one_hot(ctx.class_labels(), k).to(ctx.device).requires_grad_(cfg.learn_labels)
        d = syn[0].numel()
        transform = torch.eye(d, device=ctx.device).requires_grad_(cfg.learn_transform)
        log_temp = torch.zeros((), dtype=torch.float64, device=ctx.device).requires_grad_(cfg.loss == "platt")
        groups = [{"params": [syn, y_syn] if cfg.learn_labels else [syn]}]
        if cfg.learn_transform:
            groups.append({"params": [transform], "lr": cfg.lr_transform})
        if cfg.loss == "platt":
            groups.append({"params": [log_temp], "lr": cfg.lr_temperature})
        opt = AdaBelief(groups, lr=cfg.lr_img, eps=1e-16) if cfg.optimizer == "adabelief" \
            else torch.optim.Adam(groups, lr=cfg.lr_img)
        return LoopState(tensors={"syn": syn, "labels": y_syn, "transform": transform, "log_temperature": log_temp},
                         optimizers={"img": opt}, aux={"by_class": by_class})

    def _real_batch(self, ctx: RunContext, state: LoopState, generator: torch.Generator) -> Tensor:
        cfg, k = ctx.config, ctx.num_classes
        if cfg.real_sampling == "balanced":
            return torch.cat([sample_per_class(state.aux["by_class"], max(1, cfg.batch_real // k), generator)
                              for _ in range(cfg.real_batches)])
        n = len(ctx.real)
        draws = []
        for _ in range(cfg.real_batches):
            if cfg.batch_real <= n:  # RFAD: np.random.choice(N, 1280, replace=False) per batch
                draws.append(torch.randperm(n, generator=generator)[:cfg.batch_real])
            else:
                draws.append(torch.randint(n, (cfg.batch_real,), generator=generator))
        return torch.cat(draws)

    @staticmethod
    def _support(state: LoopState) -> Tensor:
        syn, transform = state.tensors["syn"], state.tensors["transform"]
        return (syn.reshape(syn.shape[0], -1) @ transform).reshape(syn.shape)

    def step(self, state: LoopState, ctx: RunContext, iteration: int, generator: torch.Generator) -> float:
        cfg, k = ctx.config, ctx.num_classes
        y_syn, opt = state.tensors["labels"], state.optimizers["img"]
        nets = self._networks(ctx, generator)
        idx = self._real_batch(ctx, state, generator)
        x_t = ctx.real_x()[idx.to(ctx.device)]
        c_t = ctx.real.labels[idx].to(ctx.device)
        support = self._support(state)
        if cfg.kernel == "nngp":
            k_ss, k_ts = nngp_feature_kernel([n.embed for n in nets], support, x_t, cfg.w_var, cfg.b_var)
        else:
            k_ss, k_ts = ntk_kernel(nets, support, x_t)
        if cfg.loss == "platt":
            loss = kip_platt_loss(k_ts, k_ss, y_syn, c_t, cfg.reg, state.tensors["log_temperature"])
        else:
            loss = kip_loss(k_ts, k_ss, y_syn, centred_one_hot(c_t, k), cfg.reg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    def finish(self, state: LoopState, ctx: RunContext) -> SetParts:
        cfg = ctx.config
        labels = state.tensors["labels"].detach().float() if cfg.learn_labels else ctx.class_labels()
        with torch.no_grad():
            images = self._support(state)
        extra = {"kernel": cfg.kernel, "loss": cfg.loss,
                 "platt_log_temperature": float(state.tensors["log_temperature"].detach())}
        return SetParts(images.detach(), labels, self.label_kind(cfg), extra=extra)
