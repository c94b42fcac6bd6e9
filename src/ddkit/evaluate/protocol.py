"""Evaluate a distilled set: train fresh networks on it, test on the real test set.

``runs`` networks (default 5), each trained from scratch on the distilled set with the
shared training loop under network i's seed ``seed + i``; reported: mean ± std of the
test accuracy, and per class. *How* they are trained is the protocol
(:mod:`ddkit.evaluate.recipes`): by default (``protocol="auto"``) the one of the paper
whose method made the set — ``dc`` (DC: 300 epochs, no augmentation), ``frepo`` (FRePo:
Adam, warm-up + cosine, no-norm conv net), ``kip`` (RFAD's centred finite network),
``soft`` (RDED/CFM: a teacher's online soft labels, :mod:`ddkit.evaluate.soft`; whenever
the set ships a teacher) — and ``dsa`` for every other set (DSA/DM/MTT: ConvNet-3, SGD lr
0.01 or the set's learned lr, momentum 0.9, weight decay 5e-4, batch 256, lr × 0.1 at
half, 1000 epochs with DSA). Any protocol can be asked for by name to compare sets on
common terms; ``hard`` is ``dsa``. The result records the protocol's name and settings.

:func:`train_networks` returns the trained networks (for audits); :func:`evaluate` is
built on it.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, PositiveInt, ValidationError, field_validator

from ddkit.artifact import DistilledSet
from ddkit.data import ImageDataset, load_dataset
from ddkit.errors import ConfigError
from ddkit.evaluate import recipes, soft
from ddkit.models import get_model
from ddkit.train import confusion, train_model
from ddkit.utils import atomic_path, decide_compile, describe_precision, resolve_device

__all__ = ["EvalConfig", "EvalResult", "TrainedNetworks", "evaluate", "train_networks"]


class EvalConfig(BaseModel):
    """Validated settings of :func:`train_networks` / :func:`evaluate` (see there)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = None
    runs: PositiveInt = 5
    epochs: PositiveInt | None = None
    augment: bool = True
    seed: int = 0
    batch_size: PositiveInt | None = None
    protocol: str = "auto"
    compile: bool | Literal["auto"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"

    @field_validator("protocol")
    @classmethod
    def _known_protocol(cls, v: str) -> str:
        key = str(v).strip().lower()
        if key not in recipes.PROTOCOLS:
            raise ValueError(f"unknown evaluation protocol {v!r}; use one of {', '.join(recipes.PROTOCOLS)}")
        return key


@dataclass
class TrainedNetworks:
    """Networks trained on a distilled set by one protocol.

    Attributes:
        networks: the trained networks (train mode, on the device), one per run.
        normalize: maps a float [0, 1] pixel batch to the networks' input space.
        protocol: one-line description. settings: machine-readable settings.
        epochs: epochs each network was trained. seconds: wall-clock training time.
    """

    networks: list[nn.Module]
    normalize: Callable[[torch.Tensor], torch.Tensor]
    protocol: str
    settings: dict[str, Any]
    epochs: int
    seconds: float


@dataclass
class EvalResult:
    """Accuracies in [0, 1] of ``runs`` networks trained on one distilled set.

    ``per_class``: K mean accuracies (over the runs) on each test class, ``per_class_std``
    their population std; ``std`` is the population std of ``accuracies``. ``bias``: for
    a dataset with bias attributes, the bias metrics (:mod:`ddkit.evaluate.bias`):
    ``unbiased`` (ρ = 0 test split), ``aligned`` / ``conflicting`` (a ρ = ``split_rho``
    split), each with ``_std``, ``gap`` = aligned − conflicting, ``per_run``, ``images``;
    empty otherwise.
    """

    dataset: str
    method: str
    ipc: int
    model: str
    runs: int
    epochs: int
    augment: bool
    protocol: str
    accuracies: list[float]
    mean: float
    std: float
    seconds: float
    device: str
    distilled: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # the protocol's settings, machine-readable
    per_class: list[float] = field(default_factory=list)
    per_class_std: list[float] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    bias: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """``"83.10 ± 0.42 %"`` style one-liner."""
        return f"{100 * self.mean:.2f} ± {100 * self.std:.2f} %"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def save(self, path: str | Path) -> None:
        """Write the result as JSON, atomically."""
        with atomic_path(path) as tmp:
            tmp.write_text(self.to_json())


def _test_split(ds: DistilledSet, test: ImageDataset | None, data_root: str | Path | None,
                download: bool = False) -> ImageDataset:
    """The real test split for ``ds`` (given, or loaded by the set's dataset name, without a
    download unless asked), checked to have the set's image shape and classes (ConfigError
    otherwise)."""
    test = test if test is not None else load_dataset(ds.dataset, "test", data_root=data_root, download=download)
    if test.images.shape[1:] != ds.images.shape[1:]:
        raise ConfigError(f"distilled images {tuple(ds.images.shape[1:])} do not match test images "
                          f"{tuple(test.images.shape[1:])} of {test.name}")
    if test.num_classes != ds.num_classes or list(test.class_names) != list(ds.class_names):
        raise ConfigError(f"the distilled set has {ds.num_classes} classes, the test set {test.name} "
                          f"{test.num_classes}, or their names differ; evaluate on a test set of the same classes")
    return test


def _config(**kwargs) -> EvalConfig:
    try:
        return EvalConfig(**kwargs)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                    for e in exc.errors()]
        raise ConfigError("evaluation settings: " + "; ".join(problems)) from None


def train_networks(
    distilled: DistilledSet | str | Path,
    *,
    model: str | None = None,
    runs: int = 5,
    epochs: int | None = None,
    augment: bool = True,
    device: str | torch.device = "auto",
    seed: int = 0,
    batch_size: int | None = None,
    protocol: str = "auto",
    teacher: Any = None,
    on_network: Callable[[int, nn.Module], None] | None = None,
    run_indices: list[int] | None = None,
    elf: Any = None,
    train: ImageDataset | None = None,
    data_root: str | Path | None = None,
    download: bool = False,
    compile: bool | str = "auto",
    precision: str = "fp32",
) -> TrainedNetworks:
    """Train ``runs`` fresh networks on a distilled set with the evaluation protocol.

    Network i is initialised and trained under seed ``seed + i``. Arguments as
    :func:`evaluate`; ``on_network(i, net)`` is called as each network is done;
    ``run_indices`` trains only those of the runs 0..runs−1 (a process's share); ``compile``
    and ``precision`` as :func:`evaluate` (recorded in ``settings["compiled"]`` and
    ``settings["precision"]``). ``elf``
    (an :class:`~ddkit.evaluate.elf.ELFConfig` or ``True``) trains with ELF's feature teacher
    (:mod:`ddkit.evaluate.elf`; its real training split is ``train`` or loaded by the set's
    dataset name from ``data_root``, downloaded only with ``download``).

    Raises:
        ArtifactError, ConfigError, ModelError: as :func:`evaluate`.
    """
    ds = distilled if isinstance(distilled, DistilledSet) else DistilledSet.load(distilled)
    cfg = _config(model=model, runs=runs, epochs=epochs, augment=augment, seed=seed, batch_size=batch_size,
                  protocol=protocol, compile=compile, precision=precision)
    chosen = resolve(cfg.protocol, ds, teacher is not None)
    dev = resolve_device(device)
    c, size = ds.images.shape[1], ds.images.shape[-1]
    mean = torch.tensor(ds.mean, device=dev).view(-1, 1, 1)
    std = torch.tensor(ds.std, device=dev).view(-1, 1, 1)

    def normalize(b: torch.Tensor) -> torch.Tensor:
        return (b - mean) / std

    recipe = None
    arch = cfg.model or "convnet"
    if chosen == "soft":
        t, source = soft.resolve_teacher(ds, teacher, dev)
        n = ds.images.shape[0]
        scfg = soft.SoftLabelConfig(epochs=cfg.epochs or 1000, augment=cfg.augment,
                                    batch_size=cfg.batch_size or soft.default_batch_size(ds.ipc, ds.num_classes, n))
        tcfg = scfg.train_config()
        x, y = ds.images.to(dev), ds.hard_labels().to(dev)
        parts: dict[str, Any] = {"augment": soft.SoftAugment(size, scfg, mean, std),
                                 "targets_fn": soft.teacher_targets(t.model)}
        desc = soft.describe(scfg, f"{t.describe()}; {source}", arch)
        settings = soft.settings(scfg, t, source)
    else:
        recipe = recipes.make_recipe(chosen, ds, epochs=cfg.epochs, augment=cfg.augment, batch_size=cfg.batch_size,
                                     model=cfg.model)
        arch, tcfg, desc, settings = recipe.model, recipe.train, recipe.desc, recipe.settings
        if recipe.fit_fn is not None and cfg.precision != "fp32":
            raise ConfigError(f"precision {cfg.precision} applies to the dsa, dc, frepo and soft protocols; the "
                              f"{recipe.name} protocol runs its own loop in FP32")
        x, y = ds.normalized_images().to(dev), ds.labels.to(dev)
        parts = {}
    validation = None
    if recipe is not None and recipe.needs_validation:
        real = train if train is not None else load_dataset(ds.dataset, "train", data_root=data_root,
                                                            download=download)
        sub = real.per_class_subset(500, seed=cfg.seed)
        validation = (normalize(sub.float_images(torch.arange(len(sub))).to(dev)), sub.labels.to(dev))
    wrap = None
    if elf is not None and elf is not False:
        from ddkit.evaluate import elf as elf_mod

        ecfg = elf if isinstance(elf, elf_mod.ELFConfig) else elf_mod.ELFConfig()
        if chosen not in ("dsa", "dc") or ds.label_kind != "hard":
            raise ConfigError("ELF evaluates hard-label sets with the dsa or dc protocol; this set has "
                              f"{ds.label_kind} labels / the {chosen} protocol")
        real = train if train is not None else load_dataset(ds.dataset, "train", data_root=data_root,
                                                            download=download)
        teacher = elf_mod.feature_teacher(real, ecfg, dev)
        feats = elf_mod.teacher_features(teacher, x)
        parts["loss_fn"] = elf_mod.elf_loss_fn(ecfg, feats, y)
        y = torch.arange(x.shape[0], device=dev)  # the loss looks up labels and features by sample index

        def wrap(net: nn.Module) -> nn.Module:
            return elf_mod.ELFNet(net, tuple(feats.shape[1:])).to(dev)

        desc += (f"; ELF ({ecfg.mode}, {ecfg.feature_loss} feature loss, teacher {ecfg.teacher_model} "
                 f"{ecfg.teacher_epochs} ep on {ecfg.teacher_subset or 'all'} images/class)")
        settings["elf"] = {**ecfg.model_dump(), "teacher": {k: teacher.info.get(k) for k in
                                                            ("model", "epochs", "images_per_class", "seconds")}}
    if recipe is not None and recipe.fit_fn is not None:
        use, why = False, f"the {recipe.name} protocol runs its own loop (eager)"
    elif "loss_fn" in parts:
        use, why = False, "ELF's loss calls the network's parts (eager)"
    else:
        steps = tcfg.epochs * -(-x.shape[0] // tcfg.batch_size)
        if recipe is not None and recipe.max_steps is not None:
            steps = min(steps, recipe.max_steps)
        use, why = decide_compile(cfg.compile, steps, dev, unit="optimiser steps per network", threshold=500)
        parts["compile"] = use
    if recipe is None or recipe.fit_fn is None:
        parts["precision"] = cfg.precision
    settings["compiled"] = {"used": use, "reason": why}
    settings["precision"] = describe_precision(cfg.precision, dev, "forward and loss of each training step")
    if cfg.precision == "bf16":
        desc += "; bf16 autocast (forward and loss)"
    nets: list[nn.Module] = []
    t0 = time.perf_counter()
    for i in (range(cfg.runs) if run_indices is None else run_indices):
        g = torch.Generator().manual_seed(cfg.seed + i)
        torch.manual_seed(cfg.seed + i)
        net = get_model(arch, c, ds.num_classes, size).to(dev)
        if wrap is not None:
            net = wrap(net)
        if recipe is not None:
            net = recipe.fit(net, x, y, g, validation, **parts)
        else:
            train_model(net, x, y, tcfg, generator=g, **parts)
        nets.append(net)
        if on_network is not None:
            on_network(i, net)
    settings = {**settings, "model": arch}
    return TrainedNetworks(nets, normalize, desc, settings, tcfg.epochs, round(time.perf_counter() - t0, 2))


def resolve(protocol: str, ds: DistilledSet, teacher_given: bool) -> str:
    """The protocol name ``protocol`` means for ``ds``: ``auto`` → the set's paper's
    (:func:`ddkit.evaluate.recipes.default_protocol`, ``soft`` when a teacher is given),
    ``hard`` → ``dsa``.

    Raises:
        ConfigError: ``soft`` without any teacher; a teacher given with a hard protocol.
    """
    p = str(protocol).strip().lower()
    if p == "auto":
        return "soft" if teacher_given else recipes.default_protocol(ds.method, ds.has_teacher)
    if p in ("soft", "hard"):
        p2 = soft.resolve_protocol(p, ds.has_teacher, teacher_given)
        return "dsa" if p2 == "hard" else p2
    if teacher_given:
        raise ConfigError("a teacher only applies to the soft-label protocol; use --protocol soft or auto")
    return p


def evaluate(
    distilled: DistilledSet | str | Path,
    *,
    model: str | None = None,
    runs: int = 5,
    epochs: int | None = None,
    augment: bool = True,
    device: str | torch.device = "auto",
    seed: int = 0,
    test: ImageDataset | None = None,
    data_root: str | Path | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    protocol: str = "auto",
    teacher: Any = None,
    download: bool = False,
    elf: Any = None,
    train: ImageDataset | None = None,
    bias: bool | None = None,
    bias_rho: float = 0.5,
    compile: bool | str = "auto",
    precision: str = "fp32",
) -> EvalResult:
    """Train ``runs`` fresh networks on a distilled set and test them on the real test set.

    Args:
        distilled: a :class:`DistilledSet` or the path of one.
        model: zoo name of the evaluation network (default: the protocol's — ConvNet-3;
            ``frepo-convnn`` for ``frepo``; ``rfad-convnet``, width 1024, for ``kip``).
        runs: number of networks (≥ 1). epochs: training epochs (≥ 1; default the
            protocol's: ``dsa`` 1000, ``dc`` 300 (MNIST 1000), ``soft`` 1000; for ``frepo``
            and ``kip`` the number of optimiser steps: FRePo's table, RFAD's 20 000 cap).
        augment: the protocol's augmentation (``dsa``: DSA; ``dc``: MNIST's crop/scale/
            rotate; ``frepo``: FRePo's op list; ``soft``: crop, flip, CutMix); ``False``: none.
        device: ``auto``, ``cpu`` or ``cuda``. seed: seeds network i with ``seed + i``.
        test: the real test split (default: loaded from the registry by the set's dataset).
        batch_size: training batch (default the protocol's: 256 ``dsa``/``dc``, min(N, 500)
            ``frepo``, 513 ``kip``; soft: by IPC, see :func:`ddkit.evaluate.soft.default_batch_size`).
        progress: print one line per finished run.
        protocol: ``auto`` (the protocol of the paper whose method made the set; ``soft``
            when the set ships a teacher or one is given), ``dsa`` (= ``hard``), ``dc``,
            ``frepo``, ``kip`` or ``soft`` (needs a teacher); :mod:`ddkit.evaluate.recipes`.
        teacher: for ``soft``/``auto``: a teacher file, a distilled set that ships one, or a
            :class:`~ddkit.teacher.Teacher`; default the set's own.
        download: let torchvision download the test split when no copy is found (off: a
            set's metadata names its dataset, and reading a file must not reach the network).
        elf: ``True`` or an :class:`~ddkit.evaluate.elf.ELFConfig`: train with ELF (the
            distillation model's features; :mod:`ddkit.evaluate.elf`); ``train`` is the real
            training split its feature teacher learns from (default: loaded by name).
        bias: the bias metrics (:mod:`ddkit.evaluate.bias`): ``None`` (default) computes
            them whenever the test set carries bias attributes (the biased benchmarks of
            :mod:`ddkit.data.biased`), ``True`` requires them, ``False`` skips them.
        bias_rho: ρ in (0, 1) of the test split for the bias-aligned / bias-conflicting
            accuracies (default 0.5).
        compile: train through ``torch.compile`` (:func:`ddkit.train.train_model`):
            ``"auto"`` (default) when a network takes ≥ 500 optimiser steps and a compiler
            is present (a C++ compiler on CPU, Triton on CUDA), ``True``/``False`` to force.
            Not for protocols with their own loop (``kip``) or ELF. Same algorithm, float
            rounding differs from eager; on a 2-core AMD EPYC about 1.4× faster per
            ConvNet-3 step, 1.28× for a whole 300-epoch network with its compiling first step
            (docs/methods.md, "Speed"). Recorded in ``settings["compiled"]``.
        precision: ``"fp32"`` (default, the papers') or ``"bf16"``: each training step's
            forward and loss under bf16 autocast (weights, gradients, optimiser and the test
            pass FP32). Not exact, so never the default; pays only with bf16 matrix units
            (Intel AMX, ``avx512_bf16``, CUDA); not for ``kip`` (its own FP32 loop).
            Recorded in ``settings["precision"]`` with the units found.

    Returns:
        :class:`EvalResult` with accuracies in [0, 1], overall and per class, and ``bias``.

    Raises:
        ArtifactError: the file is not a valid distilled set.
        ConfigError: runs < 1, epochs < 1, unknown protocol, soft protocol without a
            teacher, a teacher with ``hard``, a teacher that does not fit the set, or a
            test set whose image shape or classes differ from the set's; bias metrics asked
            (``bias=True``) of a dataset without attributes; ``bias_rho`` outside (0, 1);
            ``compile`` not ``True``/``False``/``"auto"``, or a network that does not compile;
            ``precision`` not fp32/bf16, or bf16 with the ``kip`` protocol.
        ModelError: the model does not fit the images.
        DatasetNotFoundError: the test set cannot be found.
    """
    from ddkit.evaluate import parallel

    ds = distilled if isinstance(distilled, DistilledSet) else DistilledSet.load(distilled)
    _config(model=model, runs=runs, epochs=epochs, augment=augment, seed=seed, batch_size=batch_size,
            protocol=protocol, compile=compile, precision=precision)
    test = _test_split(ds, test, data_root, download)
    plan = None
    if bias or (bias is None and test.attributes is not None):
        from ddkit.evaluate.bias import bias_plan

        plan = bias_plan(ds.dataset, test, bias_rho=bias_rho, data_root=data_root, download=download)
    k = ds.num_classes
    done: list[tuple[int, float, list[float], dict | None]] = []
    mean = torch.tensor(ds.mean).view(-1, 1, 1)
    std = torch.tensor(ds.std).view(-1, 1, 1)

    def score(i: int, net: nn.Module) -> None:
        dev = next(net.parameters()).device
        m, s = mean.to(dev), std.to(dev)
        conf = confusion(net, test.images, test.labels, k, normalize=lambda b: (b - m) / s).double()
        net.train()
        acc = float(conf.trace() / conf.sum().clamp_min(1))
        scores = plan.score(net, lambda b: (b - m) / s, acc) if plan is not None else None
        done.append((i, acc, (conf.diag() / conf.sum(1).clamp_min(1)).tolist(), scores))
        if progress:
            print(f"  run {i + 1}/{runs}: {100 * acc:.2f} %", flush=True)

    mine = parallel.my_share(runs)  # all runs in one process; a share of them under torchrun
    trained = train_networks(ds, model=model, runs=runs, epochs=epochs, augment=augment,
                             device=parallel.rank_device(device), seed=seed, batch_size=batch_size,
                             protocol=protocol, teacher=teacher, on_network=score, run_indices=mine, elf=elf,
                             train=train, data_root=data_root, download=download, compile=compile,
                             precision=precision)
    results = sorted(parallel.gather(done), key=lambda r: r[0])
    accs = [acc for _, acc, _, _ in results]
    pc = torch.tensor([row for _, _, row, _ in results], dtype=torch.float64)
    bias_out: dict[str, Any] = {}
    if plan is not None:
        from ddkit.evaluate.bias import summarise

        bias_out = summarise([b for _, _, _, b in results], plan)
    dev = str(next(trained.networks[0].parameters()).device) if trained.networks else str(device)
    chosen = [getattr(net, "selected", None) for net in trained.networks]
    if any(c is not None for c in chosen):  # kip: each network's best validation accuracy and steps run
        trained.settings["selected"] = chosen
    return EvalResult(
        dataset=ds.dataset, method=ds.method, ipc=ds.ipc, model=trained.settings["model"], runs=runs,
        epochs=trained.epochs,
        augment=augment, protocol=trained.protocol, accuracies=accs, mean=statistics.fmean(accs),
        std=statistics.pstdev(accs), seconds=trained.seconds, device=dev,
        distilled={"seed": ds.seed, "created": ds.created, "extra": ds.extra, "version": ds.version,
                   "label_kind": ds.label_kind},
        settings=trained.settings, per_class=[round(float(v), 6) for v in pc.mean(0)],
        per_class_std=[round(float(v), 6) for v in pc.std(0, unbiased=False)], class_names=list(ds.class_names),
        bias=bias_out,
    )
