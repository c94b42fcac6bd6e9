"""Evaluate a distilled set: train fresh networks on it, test on the real test set.

The DC/DSA/DM protocol (Zhao et al. 2021; Zhao & Bilen 2021, 2023): ``runs`` networks
(default 5) of the chosen architecture, each trained from scratch on the distilled set
with the shared training loop (SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 256,
lr × 0.1 at half), for 1000 epochs with DSA augmentation (300 without); report mean ± std
of the test accuracy, and per class. A distilled set with a learned learning rate (MTT) is
trained with that rate. The loss follows the set's ``label_kind`` (written by the method):
cross-entropy for ``hard`` and ``probabilities``, MSE for ``regression`` targets (KIP/FRePo
learned labels), as those papers evaluate them.

``protocol="soft"`` selects the soft-label protocol of RDED/CFM instead (students learn a
teacher's online logits on CutMix batches; :mod:`ddkit.evaluate.soft`); ``"auto"`` (the
default) uses it exactly when the set ships a teacher (CFM) or a teacher is passed.

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
from typing import Any

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, PositiveInt, ValidationError, field_validator

from ddkit.artifact import DistilledSet
from ddkit.augment import DSA
from ddkit.data import ImageDataset, load_dataset
from ddkit.errors import ConfigError
from ddkit.evaluate import soft
from ddkit.models import get_model
from ddkit.train import TrainConfig, confusion, train_model
from ddkit.utils import atomic_path, resolve_device

__all__ = ["EvalConfig", "EvalResult", "TrainedNetworks", "evaluate", "train_networks"]


class EvalConfig(BaseModel):
    """Validated settings of :func:`train_networks` / :func:`evaluate` (see there)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = "convnet"
    runs: PositiveInt = 5
    epochs: PositiveInt | None = None
    augment: bool = True
    seed: int = 0
    batch_size: PositiveInt | None = None
    protocol: str = "auto"

    @field_validator("protocol")
    @classmethod
    def _known_protocol(cls, v: str) -> str:
        key = str(v).strip().lower()
        if key not in soft.PROTOCOLS:
            raise ValueError(f"unknown evaluation protocol {v!r}; use hard, soft or auto")
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
    their population std; ``std`` is the population std of ``accuracies``.
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
    model: str = "convnet",
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
) -> TrainedNetworks:
    """Train ``runs`` fresh networks on a distilled set with the evaluation protocol.

    Network i is initialised and trained under seed ``seed + i``. Arguments as
    :func:`evaluate`; ``on_network(i, net)`` is called as each network is done;
    ``run_indices`` trains only those of the runs 0..runs−1 (a process's share). ``elf``
    (an :class:`~ddkit.evaluate.elf.ELFConfig` or ``True``) trains with ELF's feature teacher
    (:mod:`ddkit.evaluate.elf`; its real training split is ``train`` or loaded by the set's
    dataset name from ``data_root``, downloaded only with ``download``).

    Raises:
        ArtifactError, ConfigError, ModelError: as :func:`evaluate`.
    """
    ds = distilled if isinstance(distilled, DistilledSet) else DistilledSet.load(distilled)
    cfg = _config(model=model, runs=runs, epochs=epochs, augment=augment, seed=seed, batch_size=batch_size,
                  protocol=protocol)
    chosen = soft.resolve_protocol(cfg.protocol, ds.has_teacher, teacher is not None)
    dev = resolve_device(device)
    c, size = ds.images.shape[1], ds.images.shape[-1]
    mean = torch.tensor(ds.mean, device=dev).view(-1, 1, 1)
    std = torch.tensor(ds.std, device=dev).view(-1, 1, 1)

    def normalize(b: torch.Tensor) -> torch.Tensor:
        return (b - mean) / std

    if chosen == "soft":
        t, source = soft.resolve_teacher(ds, teacher, dev)
        n = ds.images.shape[0]
        scfg = soft.SoftLabelConfig(epochs=cfg.epochs or 1000, augment=cfg.augment,
                                    batch_size=cfg.batch_size or soft.default_batch_size(ds.ipc, ds.num_classes, n))
        tcfg = scfg.train_config()
        x, y = ds.images.to(dev), ds.hard_labels().to(dev)
        parts: dict[str, Any] = {"augment": soft.SoftAugment(size, scfg, mean, std),
                                 "targets_fn": soft.teacher_targets(t.model)}
        desc = soft.describe(scfg, f"{t.describe()}; {source}", cfg.model)
        settings = soft.settings(scfg, t, source)
    else:
        epochs_ = cfg.epochs or (1000 if cfg.augment else 300)
        lr = float(ds.lr) if ds.lr is not None else TrainConfig().lr
        loss = "mse" if ds.label_kind == "regression" else "ce"
        tcfg = TrainConfig(epochs=epochs_, lr=lr, batch_size=cfg.batch_size or 256, loss=loss)
        x, y = ds.normalized_images().to(dev), ds.labels.to(dev)
        parts = {"augment": DSA(image_size=size) if cfg.augment else None}
        aug = "DSA" if cfg.augment else "no"
        desc = (f"hard-label CE, SGD lr {lr:g} mom 0.9 wd 5e-4, {epochs_} ep, {aug} augmentation"
                if ds.label_kind == "hard" else
                f"soft-label {'MSE (regression targets)' if loss == 'mse' else 'CE'} (stored labels), SGD lr {lr:g}, "
                f"{epochs_} ep, {aug} augmentation")
        settings = {"name": "hard", "loss": loss, "label_kind": ds.label_kind, "optimizer": "SGD", "lr": lr,
                    "momentum": tcfg.momentum, "weight_decay": tcfg.weight_decay, "batch_size": tcfg.batch_size,
                    "epochs": epochs_, "augmentation": "DSA" if cfg.augment else "none"}
    wrap = None
    if elf is not None and elf is not False:
        from ddkit.evaluate import elf as elf_mod

        ecfg = elf if isinstance(elf, elf_mod.ELFConfig) else elf_mod.ELFConfig()
        if chosen == "soft" or ds.label_kind != "hard":
            raise ConfigError("ELF evaluates hard-label sets with the hard-label protocol; this set has "
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
    nets: list[nn.Module] = []
    t0 = time.perf_counter()
    for i in (range(cfg.runs) if run_indices is None else run_indices):
        g = torch.Generator().manual_seed(cfg.seed + i)
        torch.manual_seed(cfg.seed + i)
        net = get_model(cfg.model, c, ds.num_classes, size).to(dev)
        if wrap is not None:
            net = wrap(net)
        train_model(net, x, y, tcfg, generator=g, **parts)
        nets.append(net)
        if on_network is not None:
            on_network(i, net)
    return TrainedNetworks(nets, normalize, desc, settings, tcfg.epochs, round(time.perf_counter() - t0, 2))


def evaluate(
    distilled: DistilledSet | str | Path,
    *,
    model: str = "convnet",
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
) -> EvalResult:
    """Train ``runs`` fresh networks on a distilled set and test them on the real test set.

    Args:
        distilled: a :class:`DistilledSet` or the path of one.
        model: zoo name of the evaluation network (default ConvNet-3).
        runs: number of networks (≥ 1). epochs: training epochs (≥ 1; default 1000 with
            DSA augmentation, 300 without, as in DC/DSA/DM; soft: 1000).
        augment: DSA augmentation during training (soft: its crop, flip and CutMix).
        device: ``auto``, ``cpu`` or ``cuda``. seed: seeds network i with ``seed + i``.
        test: the real test split (default: loaded from the registry by the set's dataset).
        batch_size: training batch (default 256 hard; soft: by IPC, see
            :func:`ddkit.evaluate.soft.default_batch_size`).
        progress: print one line per finished run.
        protocol: ``hard`` (the DC/DSA/DM protocol above), ``soft`` (RDED/CFM soft-label
            protocol: needs a teacher) or ``auto`` (soft when the set ships a teacher or
            one is given).
        teacher: for ``soft``/``auto``: a teacher file, a distilled set that ships one, or a
            :class:`~ddkit.teacher.Teacher`; default the set's own.
        download: let torchvision download the test split when no copy is found (off: a
            set's metadata names its dataset, and reading a file must not reach the network).
        elf: ``True`` or an :class:`~ddkit.evaluate.elf.ELFConfig`: train with ELF (the
            distillation model's features; :mod:`ddkit.evaluate.elf`); ``train`` is the real
            training split its feature teacher learns from (default: loaded by name).

    Returns:
        :class:`EvalResult` with accuracies in [0, 1], overall and per class.

    Raises:
        ArtifactError: the file is not a valid distilled set.
        ConfigError: runs < 1, epochs < 1, unknown protocol, soft protocol without a
            teacher, a teacher with ``hard``, a teacher that does not fit the set, or a
            test set whose image shape or classes differ from the set's.
        ModelError: the model does not fit the images.
        DatasetNotFoundError: the test set cannot be found.
    """
    from ddkit.evaluate import parallel

    ds = distilled if isinstance(distilled, DistilledSet) else DistilledSet.load(distilled)
    _config(model=model, runs=runs, epochs=epochs, augment=augment, seed=seed, batch_size=batch_size,
            protocol=protocol)
    test = _test_split(ds, test, data_root, download)
    k = ds.num_classes
    done: list[tuple[int, float, list[float]]] = []
    mean = torch.tensor(ds.mean).view(-1, 1, 1)
    std = torch.tensor(ds.std).view(-1, 1, 1)

    def score(i: int, net: nn.Module) -> None:
        dev = next(net.parameters()).device
        m, s = mean.to(dev), std.to(dev)
        conf = confusion(net, test.images, test.labels, k, normalize=lambda b: (b - m) / s).double()
        net.train()
        acc = float(conf.trace() / conf.sum().clamp_min(1))
        done.append((i, acc, (conf.diag() / conf.sum(1).clamp_min(1)).tolist()))
        if progress:
            print(f"  run {i + 1}/{runs}: {100 * acc:.2f} %", flush=True)

    mine = parallel.my_share(runs)  # all runs in one process; a share of them under torchrun
    trained = train_networks(ds, model=model, runs=runs, epochs=epochs, augment=augment,
                             device=parallel.rank_device(device), seed=seed, batch_size=batch_size,
                             protocol=protocol, teacher=teacher, on_network=score, run_indices=mine, elf=elf,
                             train=train, data_root=data_root, download=download)
    results = sorted(parallel.gather(done))
    accs = [acc for _, acc, _ in results]
    pc = torch.tensor([row for _, _, row in results], dtype=torch.float64)
    dev = str(next(trained.networks[0].parameters()).device) if trained.networks else str(device)
    return EvalResult(
        dataset=ds.dataset, method=ds.method, ipc=ds.ipc, model=model, runs=runs, epochs=trained.epochs,
        augment=augment, protocol=trained.protocol, accuracies=accs, mean=statistics.fmean(accs),
        std=statistics.pstdev(accs), seconds=trained.seconds, device=dev,
        distilled={"seed": ds.seed, "created": ds.created, "extra": ds.extra, "version": ds.version,
                   "label_kind": ds.label_kind},
        settings=trained.settings, per_class=[round(float(v), 6) for v in pc.mean(0)],
        per_class_std=[round(float(v), 6) for v in pc.std(0, unbiased=False)], class_names=list(ds.class_names),
    )
