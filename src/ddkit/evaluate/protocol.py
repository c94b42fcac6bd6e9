"""Evaluate a distilled set: train fresh networks on it, test on the real test set.

The DC/DSA/DM protocol (Zhao et al. 2021; Zhao & Bilen 2021, 2023): ``runs`` networks
(default 5) of the chosen architecture, each trained from scratch on the distilled set
with the shared training loop (SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 256,
lr × 0.1 at half), for 1000 epochs with DSA augmentation (300 without); report mean ± std
of the test accuracy. A distilled set with a learned learning rate (MTT) is trained with
that rate. Soft labels that are distributions are trained with cross-entropy against them;
learned labels that are not (KIP/FRePo regression targets) with MSE, as those papers do.

``protocol="soft"`` selects the soft-label protocol of RDED/CFM instead (students learn a
teacher's online logits on CutMix batches; :mod:`ddkit.evaluate.soft`); ``"auto"`` (the
default) uses it exactly when the set ships a teacher (CFM) or a teacher is passed.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ddkit.artifact import DistilledSet
from ddkit.augment import DSA
from ddkit.data import ImageDataset, load_dataset
from ddkit.errors import ConfigError
from ddkit.models import get_model
from ddkit.train import TrainConfig, accuracy, train_model
from ddkit.utils import atomic_path, resolve_device


@dataclass
class EvalResult:
    """Accuracies in [0, 1] of ``runs`` networks trained on one distilled set."""

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

    def summary(self) -> str:
        """``"83.10 ± 0.42 %"`` style one-liner."""
        return f"{100 * self.mean:.2f} ± {100 * self.std:.2f} %"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def save(self, path: str | Path) -> None:
        """Write the result as JSON, atomically."""
        with atomic_path(path) as tmp:
            tmp.write_text(self.to_json())


def _test_split(ds: DistilledSet, test: ImageDataset | None, data_root: str | Path | None) -> ImageDataset:
    """The real test split for ``ds`` (given, or loaded by the set's dataset name), checked
    to have the set's image shape (ConfigError otherwise)."""
    test = test if test is not None else load_dataset(ds.dataset, "test", data_root=data_root)
    if test.images.shape[1:] != ds.images.shape[1:]:
        raise ConfigError(f"distilled images {tuple(ds.images.shape[1:])} do not match test images "
                          f"{tuple(test.images.shape[1:])} of {test.name}")
    return test


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
) -> EvalResult:
    """Train ``runs`` fresh networks on a distilled set and test them on the real test set.

    Args:
        distilled: a :class:`DistilledSet` or the path of one.
        model: zoo name of the evaluation network (default ConvNet-3).
        runs: number of networks (≥ 1). epochs: training epochs (default 1000 with DSA
            augmentation, 300 without, as in DC/DSA/DM).
        augment: DSA augmentation during training.
        device: ``auto``, ``cpu`` or ``cuda``. seed: seeds network i with ``seed + i``.
        test: the real test split (default: loaded from the registry by the set's dataset).
        batch_size: training batch (default 256 hard; soft: by IPC, see
            :func:`ddkit.evaluate.soft.default_batch_size`).
        progress: print one line per finished run.
        protocol: ``hard`` (the DC/DSA/DM protocol above), ``soft`` (RDED/CFM soft-label
            protocol: needs a teacher; epochs default 1000, ``augment`` toggles its crop,
            flip and CutMix) or ``auto`` (soft when the set ships a teacher or one is given).
        teacher: for ``soft``/``auto``: a teacher file, a distilled set that ships one, or a
            :class:`~ddkit.distill.cfm.Teacher`; default the set's own.

    Returns:
        :class:`EvalResult` with accuracies in [0, 1]; ``std`` is the population std.

    Raises:
        ArtifactError: the file is not a valid distilled set.
        ConfigError: runs < 1 or epochs < 1, unknown protocol, soft protocol without a
            teacher, a teacher with ``hard``, or a teacher that does not fit the set.
        ModelError: the model does not fit the images.
        DatasetNotFoundError: the test set cannot be found.
    """
    ds = distilled if isinstance(distilled, DistilledSet) else DistilledSet.load(distilled)
    if runs < 1:
        raise ConfigError(f"runs must be ≥ 1, got {runs}")
    from ddkit.evaluate.soft import resolve_protocol

    chosen = resolve_protocol(protocol, ds.has_teacher, teacher is not None)
    if chosen == "soft":
        return _evaluate_soft(ds, teacher, model=model, runs=runs, epochs=epochs, augment=augment, device=device,
                              seed=seed, test=test, data_root=data_root, batch_size=batch_size, progress=progress)
    batch_size = 256 if batch_size is None else batch_size
    epochs = epochs if epochs is not None else (1000 if augment else 300)
    if epochs < 1:
        raise ConfigError(f"epochs must be ≥ 1, got {epochs}")
    dev = resolve_device(device)
    test = _test_split(ds, test, data_root)
    size = ds.images.shape[-1]
    x = ds.normalized_images().to(dev)
    y = ds.labels.to(dev)
    lr = float(ds.lr) if ds.lr is not None else TrainConfig.lr
    # learned labels that are not distributions (KIP/FRePo regression targets) are trained
    # with MSE, as those papers evaluate them; probability labels with cross-entropy
    regression = ds.soft_labels and not (bool((ds.labels >= 0).all())
                                         and torch.allclose(ds.labels.sum(1), torch.ones(len(ds.labels)), atol=1e-3))
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, loss="mse" if regression else "ce")
    dsa = DSA(image_size=size) if augment else None
    mean = torch.tensor(ds.mean, device=dev).view(-1, 1, 1)
    std = torch.tensor(ds.std, device=dev).view(-1, 1, 1)
    accs: list[float] = []
    t0 = time.perf_counter()
    for i in range(runs):
        g = torch.Generator().manual_seed(seed + i)
        torch.manual_seed(seed + i)
        net = get_model(model, ds.images.shape[1], ds.num_classes, size).to(dev)
        train_model(net, x, y, cfg, augment=dsa, generator=g)
        acc = accuracy(net, test.images, test.labels, normalize=lambda b: (b - mean) / std)
        accs.append(acc)
        if progress:
            print(f"  run {i + 1}/{runs}: {100 * acc:.2f} %", flush=True)
    protocol = (f"hard-label CE, SGD lr {lr:g} mom 0.9 wd 5e-4, {epochs} ep, "
                f"{'DSA' if augment else 'no'} augmentation" if not ds.soft_labels else
                f"soft-label {'MSE (regression targets)' if regression else 'CE'} (stored labels), SGD lr {lr:g}, "
                f"{epochs} ep, "
                f"{'DSA' if augment else 'no'} augmentation")
    return EvalResult(
        dataset=ds.dataset, method=ds.method, ipc=ds.ipc, model=model, runs=runs, epochs=epochs,
        augment=augment, protocol=protocol, accuracies=accs, mean=statistics.fmean(accs),
        std=statistics.pstdev(accs), seconds=round(time.perf_counter() - t0, 2), device=str(dev),
        distilled={"seed": ds.seed, "created": ds.created, "extra": ds.extra, "version": ds.version},
        settings={"name": "hard", "loss": cfg.loss, "optimizer": "SGD", "lr": lr, "momentum": 0.9,
                  "weight_decay": 5e-4, "batch_size": batch_size, "epochs": epochs,
                  "augmentation": "DSA" if augment else "none"},
    )


def _evaluate_soft(ds: DistilledSet, teacher: Any, *, model: str, runs: int, epochs: int | None, augment: bool,
                   device: str | torch.device, seed: int, test: ImageDataset | None, data_root: str | Path | None,
                   batch_size: int | None, progress: bool) -> EvalResult:
    """The soft-label branch of :func:`evaluate` (see :mod:`ddkit.evaluate.soft`)."""
    from ddkit.evaluate.soft import run_soft_protocol

    if epochs is not None and epochs < 1:
        raise ConfigError(f"epochs must be ≥ 1, got {epochs}")
    dev = resolve_device(device)
    test = _test_split(ds, test, data_root)
    t0 = time.perf_counter()
    accs, protocol, settings = run_soft_protocol(ds, teacher, test, model=model, runs=runs, epochs=epochs,
                                                 augment=augment, device=dev, seed=seed, batch_size=batch_size,
                                                 progress=progress)
    return EvalResult(
        dataset=ds.dataset, method=ds.method, ipc=ds.ipc, model=model, runs=runs, epochs=settings["epochs"],
        augment=augment, protocol=protocol, accuracies=accs, mean=statistics.fmean(accs),
        std=statistics.pstdev(accs), seconds=round(time.perf_counter() - t0, 2), device=str(dev),
        distilled={"seed": ds.seed, "created": ds.created, "extra": ds.extra, "version": ds.version},
        settings=settings,
    )
