"""The hard-label evaluation protocols of the methods' own papers (their reference code).

A distilled set is evaluated, by default, the way the paper that made it evaluated its
sets (``protocol="auto"``); any set can be evaluated under another protocol for a common
comparison (``protocol="dsa"`` is the field's usual one). Every result records the
protocol's name and settings. Read from the authors' code (file:line in
``docs/methods.md``, "Evaluation protocols"):

``dsa`` — DSA/DM/MTT (VICO-UoE/DatasetCondensation ``utils.evaluate_synset``,
    GeorgeCazenavette/mtt-distillation): ConvNet-3, SGD lr 0.01 (MTT: the set's learned
    lr), momentum 0.9, weight decay 5e-4, batch 256, lr × 0.1 at half, 1000 epochs, DSA
    ``color_crop_cutout_flip_scale_rotate`` per batch (MNIST, SVHN: without ``flip``, as
    the DSA README prescribes), cross-entropy. ``hard`` is another name for it. MTT's code
    also logs the best mean over its distillation checkpoints ("Max_Accuracy"); ddkit
    evaluates the final set only.
``dc`` — DC (``main.py``, ``get_daparam``): as ``dsa`` but without augmentation and 300
    epochs, except MNIST: one of crop (±4 px), scale (×0.8–1.2 per axis) or rotate
    (±45°) per image, mean fill, 1000 epochs (the code switches to 1000 whenever it
    augments). Deviation: the three ops are DSA's affine warp (bilinear) with scale drawn
    in [1/1.2, 1.2], not scipy's rotation and ``F.interpolate``.
``frepo`` — FRePo (yongchao97/FRePo ``script/eval.py``): FRePo's conv network without
    normalisation (``frepo-convnn``: the code turns ``batch`` into ``identity`` at
    evaluation), Adam lr 3e-4 (the ``weight_decay`` flag does not reach optax's ``adam``:
    none), linear warm-up over 500 steps then cosine to 0.01·lr, a number of steps set by
    the set's size (10 images: 1000 steps, 100: 2000, 200: 20 000, 400/500: 5000, 1000:
    10 000, 2000/5000: 40 000; the nearest row otherwise), batch min(N, 500) in stored
    order, loss ½ Σ_k (f − y)² averaged over the batch against the learned labels as they
    are, one augmentation op per batch from FRePo's list (colour, crop, rotate, translate,
    cutout, flip; MNIST/Fashion-MNIST without flip). Deviation: the ops are DSA's
    implementations (cutout ¼ of the side, zoom 1.25) rather than FRePo's own ranges.
``kip`` — RFAD/KIP finite networks (yolky/RFAD ``eval_distilled_set.py --run_finite``,
    ``training.py``): RFAD's ConvNet (``rfad-convnet``: width 1024, no normalisation,
    Gaussian init), SGD momentum 0.9 at a constant lr, full batch (≤ 513), output centred
    on the initial network (f − f₀) and the loss mean((f − f₀ − s·y)²)/s² with label scale
    s, weight decay as wd·Σ(θ − θ₀)², no augmentation; validation accuracy every 100
    steps on 500 training images per class, the best-validation network kept, stopping
    after 500 steps without improvement or at 20 000. (lr, s, wd) from RFAD's
    ``--use_best_hypers`` table by dataset and IPC (Fashion-MNIST IPC 10: 1e-2, 8, 1e-3);
    elsewhere RFAD's plain defaults (1e-2, 1, 0, no centring). RFAD reports one network;
    ddkit trains ``runs``.
``soft`` — RDED/CFM (:mod:`ddkit.evaluate.soft`).

Learned-label sets (``label_kind="regression"``) under ``dsa``/``dc`` are trained with
FRePo's loss ½ Σ_k (f − y)² (batch mean) rather than ``F.mse_loss`` (a mean over K as
well, which made the gradient K/2 = 5× weaker than either paper's).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ddkit.augment import DSA, DSAConfig
from ddkit.errors import ConfigError
from ddkit.train import TrainConfig, outputs, train_model
from ddkit.utils import table_row

__all__ = ["HARD_PROTOCOLS", "PROTOCOLS", "Recipe", "default_protocol", "make_recipe"]

HARD_PROTOCOLS = ("dsa", "dc", "frepo", "kip")
PROTOCOLS = ("auto", "hard", "soft", *HARD_PROTOCOLS)
# the protocol each method's paper evaluates with (others: dsa)
_METHOD_PROTOCOL = {"dc": "dc", "frepo": "frepo", "kip": "kip", "cfm": "soft"}
_NO_FLIP_DSA = {"mnist", "svhn", "digits"}
_NO_FLIP_FREPO = {"mnist", "fashion-mnist", "digits"}
_FREPO_STEPS = {10: 1000, 100: 2000, 200: 20000, 400: 5000, 500: 5000, 1000: 10000, 2000: 40000, 5000: 40000}
# RFAD utils.py --use_best_hypers: dataset -> ipc -> (lr, label scale, weight decay)
_RFAD_HYPERS = {
    "mnist": {1: (1e-3, 8, 1e-3), 10: (1e-2, 8, 1e-3), 50: (1e-2, 8, 0.0)},
    "fashion-mnist": {1: (1e-3, 8, 0.0), 10: (1e-2, 8, 1e-3), 50: (1e-3, 2, 0.0)},
    "svhn": {1: (1e-3, 16, 0.0), 10: (1e-2, 8, 0.0), 50: (1e-2, 2, 0.0)},
    "cifar10": {1: (1e-3, 8, 0.0), 10: (1e-3, 2, 0.0), 50: (1e-2, 2, 0.0)},
    "cifar100": {1: (1e-1, 8, 0.0), 10: (1e-1, 2, 0.0)},
}


def default_protocol(method: str, has_teacher: bool) -> str:
    """The protocol ``auto`` picks: ``soft`` for a set that ships a teacher, else the one of
    the paper of ``method`` (``dc``, ``frepo``, ``kip``), else ``dsa``."""
    if has_teacher:
        return "soft"
    p = _METHOD_PROTOCOL.get(method, "dsa")
    return "dsa" if p == "soft" else p


@dataclass
class Recipe:
    """A resolved hard-label protocol: what :func:`ddkit.evaluate.train_networks` runs.

    ``fit(net, x, y, generator)`` trains ``net`` (standardised images ``x``, labels ``y`` as
    the set stores them) and returns the network to test (RFAD: the centred network).
    """

    name: str
    model: str
    train: TrainConfig
    augment: Callable | None
    desc: str
    settings: dict[str, Any]
    max_steps: int | None = None
    fit_fn: Callable[..., nn.Module] | None = None
    needs_validation: bool = False

    def fit(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
            validation: tuple[torch.Tensor, torch.Tensor] | None = None, **parts) -> nn.Module:
        """Train ``net`` on standardised images ``x`` (N×C×H×W float32) and stored labels ``y``
        (int64 (N,) or float32 N×K) under ``generator``; ``validation`` = (standardised images,
        int64 labels) for protocols that select on it (``kip``), ``parts`` go to
        :func:`ddkit.train.train_model` (ELF's ``loss_fn``). Returns the network to test."""
        if self.fit_fn is not None:
            return self.fit_fn(net, x, y, generator, validation)
        train_model(net, x, y, self.train, generator=generator, augment=self.augment, max_steps=self.max_steps,
                    **parts)
        return net


class PerImageOps(DSA):
    """DSA's ops with one op *per image* (DC's ``augment``), parameters per image."""

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        d = self.draw(x.shape[0], generator, one_op=False)
        return self.apply(x, d, torch.arange(x.shape[0]))


def make_recipe(name: str, ds, *, epochs: int | None = None, augment: bool = True, batch_size: int | None = None,
                model: str | None = None) -> Recipe:
    """The recipe of hard-label protocol ``name`` (``dsa``/``hard``, ``dc``, ``frepo``, ``kip``)
    for distilled set ``ds``. ``epochs``/``batch_size``/``model`` override the protocol's
    (``epochs`` counts optimiser steps for ``frepo`` and ``kip``, whose code counts steps);
    ``augment=False`` drops its augmentation.

    Raises:
        ConfigError: unknown protocol name.
    """
    key = "dsa" if name == "hard" else name
    size = ds.images.shape[-1]
    kind = ds.label_kind
    if key in ("dsa", "dc"):
        return _dc_dsa(key, ds, size, kind, epochs, augment, batch_size, model)
    if key == "frepo":
        return _frepo(ds, size, epochs, augment, batch_size, model)
    if key == "kip":
        return _rfad(ds, epochs, batch_size, model)
    raise ConfigError(f"unknown hard-label protocol {name!r}; use one of {', '.join(HARD_PROTOCOLS)}")


def _loss_for(kind: str) -> str:
    return "sq" if kind == "regression" else "ce"


def _dc_dsa(key, ds, size, kind, epochs, augment, batch_size, model) -> Recipe:
    lr = float(ds.lr) if ds.lr is not None else 0.01
    loss = _loss_for(kind)
    aug, aug_name = None, "none"
    if augment and key == "dsa":
        strategy = "color_crop_cutout_scale_rotate" if ds.dataset in _NO_FLIP_DSA else \
            "color_crop_cutout_flip_scale_rotate"
        aug, aug_name = DSA(DSAConfig(strategy=strategy), image_size=size), f"DSA {strategy}"
    elif augment and key == "dc" and ds.dataset == "mnist":
        cfg = DSAConfig(strategy="crop_scale_rotate", crop=4 / size, scale=1.2, rotate=45.0)
        aug, aug_name = PerImageOps(cfg, image_size=size), "DC crop_scale_rotate (one op per image)"
    ep = epochs or (1000 if aug is not None else 300)
    tcfg = TrainConfig(epochs=ep, lr=lr, batch_size=batch_size or 256, loss=loss)
    net = model or "convnet"
    label = {"hard": "hard-label CE", "probabilities": "soft-label CE (stored labels)",
             "regression": "learned labels, ½Σ_k(f−y)² (FRePo's scale)"}[kind]
    desc = (f"{key.upper()} protocol: {net}, {label}, SGD lr {lr:g}{' (learned)' if ds.lr is not None else ''} "
            f"mom 0.9 wd 5e-4, batch {tcfg.batch_size}, lr ×0.1 at half, {ep} ep, augmentation {aug_name}")
    settings = {"name": key, "model": net, "loss": loss, "label_kind": kind, "optimizer": "SGD", "lr": lr,
                "lr_learned": ds.lr is not None, "momentum": tcfg.momentum, "weight_decay": tcfg.weight_decay,
                "batch_size": tcfg.batch_size, "epochs": ep, "schedule": "x0.1 at half", "augmentation": aug_name,
                "reported": "final-epoch test accuracy of each network"}
    return Recipe(key, net, tcfg, aug, desc, settings)


def _frepo(ds, size, steps, augment, batch_size, model) -> Recipe:
    n = ds.images.shape[0]
    total = steps or _FREPO_STEPS[table_row(_FREPO_STEPS, n)]
    b = batch_size or min(n, 500)
    per_epoch = math.ceil(n / b)
    ops = "color_crop_cutout_rotate" + ("" if ds.dataset in _NO_FLIP_FREPO else "_flip")
    aug = DSA(DSAConfig(strategy=ops, cutout=0.25, scale=1.25), image_size=size) if augment else None
    tcfg = TrainConfig(epochs=math.ceil(total / per_epoch), batch_size=b, optimizer="adam", lr=3e-4,
                       weight_decay=0.0, schedule="warmup_cosine", warmup_steps=min(500, total), final_lr=0.01,
                       loss="sq" if ds.label_kind == "regression" else "ce", shuffle=False)
    net = model or "frepo-convnn"
    desc = (f"FRePo protocol: {net}, {'½Σ_k(f−y)² on learned labels' if tcfg.loss == 'sq' else 'CE'}, Adam lr 3e-4 "
            f"(no weight decay), {tcfg.warmup_steps} warm-up steps then cosine to 0.01·lr, {total} steps, "
            f"batch {b} in stored order, augmentation {ops if aug else 'none'} (one op per batch)")
    settings = {"name": "frepo", "model": net, "loss": tcfg.loss, "label_kind": ds.label_kind, "optimizer": "Adam",
                "lr": 3e-4, "weight_decay": 0.0, "warmup_steps": tcfg.warmup_steps, "final_lr": "0.01*lr",
                "steps": total, "batch_size": b, "shuffle": False, "augmentation": ops if aug else "none",
                "reported": "final-step test accuracy of each network"}
    return Recipe("frepo", net, tcfg, aug, desc, settings, max_steps=total)


def _rfad(ds, max_steps, batch_size, model) -> Recipe:
    table = _RFAD_HYPERS.get(ds.dataset)
    if table is not None:
        row = table_row(table, ds.ipc)
        lr, scale, wd = table[row]
        centring, source = True, f"RFAD --use_best_hypers ({ds.dataset}, IPC {row})"
    else:
        lr, scale, wd, centring, source = 1e-2, 1.0, 0.0, False, "RFAD defaults (no tuned row for this dataset)"
    iters = max_steps or 20000
    b = batch_size or 513
    net_name = model or "rfad-convnet"
    settings = {"name": "kip", "model": net_name, "loss": "mean((f - f0 - s*y)^2)/s^2", "label_scale": scale,
                "centring": centring, "optimizer": "SGD", "momentum": 0.9, "lr": lr, "weight_decay_to_init": wd,
                "batch_size": b, "max_steps": iters, "patience": 500, "validate_every": 100,
                "validation": "500 training images per class", "hypers": source, "augmentation": "none",
                "reported": "test accuracy of the best-validation network"}
    desc = (f"KIP/RFAD finite-network protocol: {net_name}, centred output, loss mean((f−f₀−{scale:g}y)²)/{scale:g}², "
            f"SGD lr {lr:g} mom 0.9, wd {wd:g}·‖θ−θ₀‖², batch {b}, best of validation every 100 steps "
            f"(patience 500, at most {iters}), no augmentation; {source}")

    def fit(net, x, y, generator, validation):
        return _rfad_fit(net, x, y, generator, validation, lr=lr, scale=scale, wd=wd, centring=centring,
                         max_steps=iters, batch=b, num_classes=len(ds.class_names))

    # epochs = the step cap (as frepo's): the fit runs its own loop; this config only describes it
    tcfg = TrainConfig(epochs=iters, batch_size=b, lr=lr, weight_decay=0.0, schedule="constant", loss="mse")
    return Recipe("kip", net_name, tcfg, None, desc, settings, fit_fn=fit, needs_validation=True)


class Centred(nn.Module):
    """``f(x) − f₀(x)``: a network's output minus that of a frozen copy of its initial state
    (RFAD's centring; the NTK-style linearisation offset)."""

    def __init__(self, net: nn.Module, centre: bool = True):
        super().__init__()
        self.net = net
        self.init = copy.deepcopy(net).eval() if centre else None
        if self.init is not None:
            for p in self.init.parameters():
                p.requires_grad_(False)
        self.in_channels = getattr(net, "in_channels", None)
        self.image_size = getattr(net, "image_size", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.init is None:
            return out
        with torch.no_grad():
            base = self.init(x)
        return out - base  # outside no_grad: the gradient reaches self.net


def _rfad_fit(net, x, y, generator, validation, *, lr, scale, wd, centring, max_steps, batch,
              num_classes) -> nn.Module:
    if validation is None:
        raise ConfigError("the kip (RFAD) protocol selects on a validation sample of the real training set; "
                          "pass train= or let it load the training split")
    target = torch.nn.functional.one_hot(y, num_classes).float() if y.dim() == 1 else y.float()
    model = Centred(net, centring)
    theta0 = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    vx, vy = validation
    # The frozen f₀ is fixed and the protocol does not augment, so f₀ of the training images and of
    # the validation sample is computed once: (f − f₀ − s·y)² = (f − (s·y + f₀))². Exact, and it
    # saves the frozen network's forward pass on every step.
    shift_v = outputs(model.init, vx) if centring else None
    goal = scale * target + (outputs(model.init, x) if centring else 0.0)

    def loss_fn(m, xb, gb):
        loss = ((m(xb) - gb) ** 2).mean() / scale ** 2
        if wd > 0:
            loss = loss + wd * sum(((p - p0) ** 2).sum() if centring else (p ** 2).sum()
                                   for p, p0 in zip(net.parameters(), theta0, strict=True))
        return loss

    def val_accuracy() -> float:
        out = outputs(net, vx)
        if shift_v is not None:
            out = out - shift_v
        return float((out.argmax(1).cpu() == vy.cpu()).float().mean())

    chunk = TrainConfig(epochs=10 ** 9, batch_size=batch, lr=lr, weight_decay=0.0, schedule="constant", loss="mse")
    best, best_state, since, steps = -1.0, None, 0, 0
    while steps < max_steps and since < 500:
        n = min(100, max_steps - steps)
        train_model(net, x, goal, chunk, optimizer=opt, loss_fn=loss_fn, generator=generator, max_steps=n)
        steps += n
        acc = val_accuracy()
        if acc > best:
            best, best_state, since = acc, copy.deepcopy(net.state_dict()), 0
        else:
            since += n
    if best_state is not None:
        net.load_state_dict(best_state)
    model.selected = {"validation_accuracy": best, "steps": steps}
    return model

