"""Cross-architecture evaluation: one distilled set, several networks, beside a random subset.

A distilled set is distilled with one network (ConvNet-3 for most methods) and is only as
useful as the other networks it trains. The field's cross-architecture tables (DC, DSA, DM,
MTT papers) train each architecture on the set with the evaluation protocol and report
mean ± std per architecture; a random real subset of the same size, trained the same way,
shows the gain over real images per architecture.

:func:`evaluate_models` runs :func:`ddkit.evaluate.evaluate` for each architecture (same
protocol, runs, epochs and seeds) on the set and, with ``baseline="random"``, on a random
real subset of the same IPC drawn with the same seed (evaluated under the same protocol:
a set that ships a teacher is compared with a random subset under that teacher).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ddkit.artifact import DistilledSet
from ddkit.data import ImageDataset, load_dataset
from ddkit.errors import ConfigError
from ddkit.evaluate.protocol import EvalResult, evaluate, resolve
from ddkit.utils import atomic_path

__all__ = ["BASELINES", "CrossArchResult", "evaluate_models", "random_subset"]

BASELINES = ("random", "none")


@dataclass
class CrossArchResult:
    """Per-architecture results of one distilled set (and of its baseline, if any).

    ``rows``: one dict per architecture with ``model``, ``distilled`` (an
    :class:`EvalResult` as a dict), ``baseline`` (the same for the random subset, or
    ``None``) and ``elf`` (the set evaluated with ELF, or ``None``: not asked, or the
    architecture has no split point); accuracies in [0, 1].
    """

    dataset: str
    method: str
    ipc: int
    baseline: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    elf: bool = False

    def columns(self) -> list[str]:
        """Column titles of :meth:`table` (the ELF columns only when ELF was run)."""
        cols = ["architecture", self.method, self.baseline, "gain (points)"]
        return cols + ["ELF", "ELF gain (points)"] if self.elf else cols

    def table(self) -> list[tuple[str, ...]]:
        """Rows of (architecture, distilled mean ± std %, baseline mean ± std %, gain in points
        [, ELF mean ± std %, ELF's gain over plain in points])."""

        def cell(r):
            return f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}" if r else "—"

        out = []
        for r in self.rows:
            d, b, e = r["distilled"], r["baseline"], r.get("elf")
            row = (r["model"], cell(d), cell(b), f"{100 * (d['mean'] - b['mean']):+.2f}" if b else "—")
            if self.elf:
                row += (cell(e), f"{100 * (e['mean'] - d['mean']):+.2f}" if e else "— (no split point)")
            out.append(row)
        return out

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def save(self, path: str | Path) -> None:
        """Write the result as JSON, atomically."""
        with atomic_path(path) as tmp:
            tmp.write_text(self.to_json())

    def plot(self, path: str | Path) -> Path:
        """A grouped bar chart (mean ± std per architecture, distilled beside the baseline) as PNG.

        Raises:
            OutputError: the file cannot be written.
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        models = [r["model"] for r in self.rows]
        series = [(f"{self.method} IPC {self.ipc}", "distilled")]
        if self.baseline != "none":
            series.append((f"{self.baseline} IPC {self.ipc}", "baseline"))
        if self.elf:
            series.append((f"{self.method} + ELF", "elf"))
        x = torch.arange(len(models)).float()
        fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(models) + 2), 3.6))
        width = 0.8 / len(series)
        for j, (label, key) in enumerate(series):
            means = [100 * r[key]["mean"] if r[key] else 0.0 for r in self.rows]
            errs = [100 * r[key]["std"] if r[key] else 0.0 for r in self.rows]
            ax.bar((x - 0.4 + width * (j + 0.5)).tolist(), means, width, yerr=errs, capsize=3, label=label)
        ax.set_xticks(x.tolist(), models, rotation=20)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{self.dataset}: {self.method} IPC {self.ipc} across architectures")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)
        return Path(path)


def random_subset(ds: DistilledSet, train: ImageDataset, seed: int) -> DistilledSet:
    """A random real subset with the set's IPC, drawn with ``seed`` (the same images as
    ``ddkit.distill(train, "random", ipc, seed=seed)``), carrying the set's teacher if it
    ships one, so that it is evaluated under the same protocol.

    Raises:
        ConfigError: the set's IPC is larger than a class of ``train``.
    """
    if ds.ipc > min(train.class_counts()):
        raise ConfigError(f"IPC {ds.ipc} is larger than the smallest class of {train.name}")
    sub = train.per_class_subset(ds.ipc, seed=seed)
    return DistilledSet(images=sub.float_images(), labels=sub.labels, method="random", dataset=train.name,
                        mean=train.mean, std=train.std, class_names=list(train.class_names), ipc=ds.ipc, seed=seed,
                        teacher=ds.teacher, teacher_info=ds.teacher_info)


def _has_split(name: str) -> bool:
    from ddkit.models import MODELS

    return hasattr(MODELS[name](1, 10, 32), "split")


def evaluate_models(
    distilled: DistilledSet | str | Path,
    models: list[str],
    *,
    baseline: str = "random",
    runs: int = 5,
    epochs: int | None = None,
    augment: bool = True,
    device: str | torch.device = "auto",
    seed: int = 0,
    test: ImageDataset | None = None,
    train: ImageDataset | None = None,
    data_root: str | Path | None = None,
    download: bool = False,
    protocol: str = "auto",
    progress: bool = False,
    elf: Any = None,
    compile: bool | str = "auto",
    precision: str = "fp32",
) -> CrossArchResult:
    """Evaluate a distilled set on several architectures, beside a random real subset.

    Args:
        distilled: a :class:`DistilledSet` or the path of one.
        models: zoo names (e.g. ``["convnet", "mlp", "lenet", "alexnet", "vgg11", "resnet18",
            "resnet18-bn"]``); every zoo model takes 1- or 3-channel 28×28 and 32×32 images.
        baseline: ``random`` (a random real subset of the same IPC, drawn with ``seed``) or
            ``none``.
        runs, epochs, augment, device, seed, protocol: as :func:`ddkit.evaluate` (the same
            for every architecture and for the baseline).
        test, train: the real test/train splits (default: loaded by the set's dataset name;
            the train split only for the baseline). data_root, download: where to look.
        progress: print one line per finished architecture.
        compile: as :func:`ddkit.evaluate.evaluate` (``torch.compile`` of each network's
            training; ``"auto"``: from 500 optimiser steps on). precision: as
            :func:`ddkit.evaluate.evaluate` (``"fp32"`` or ``"bf16"`` autocast).
        elf: ``True`` or an :class:`~ddkit.evaluate.elf.ELFConfig`: also evaluate each
            architecture that has a split point (ConvNet, VGG-11, ResNet-18 families) with
            ELF, beside the plain result.

    Returns:
        :class:`CrossArchResult` (accuracies in [0, 1]).

    Raises:
        ConfigError: no models, an unknown baseline, or any error of :func:`ddkit.evaluate`.
        ModelError: an unknown model name.
    """
    from ddkit.models import MODELS

    ds = distilled if isinstance(distilled, DistilledSet) else DistilledSet.load(distilled)
    names = [m.strip().lower() for m in models if m.strip()]
    if not names:
        raise ConfigError("give at least one architecture (e.g. --models convnet,mlp,resnet18)")
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        raise ConfigError(f"unknown models {unknown}; known: {', '.join(MODELS)}")
    if baseline not in BASELINES:
        raise ConfigError(f"unknown baseline {baseline!r}; use {' or '.join(BASELINES)}")
    if test is None:
        test = load_dataset(ds.dataset, "test", data_root=data_root, download=download)
    base_set = None
    if baseline == "random":
        train = train if train is not None else load_dataset(ds.dataset, "train", data_root=data_root,
                                                             download=download)
        base_set = random_subset(ds, train, seed)
    # the set's protocol, resolved once, so the random subset is trained the same way (``auto``
    # would give the subset the ``dsa`` protocol of a "random" set, e.g. beside a FRePo set)
    protocol = resolve(protocol, ds, False)
    t0 = time.perf_counter()
    result = CrossArchResult(ds.dataset, ds.method, ds.ipc, baseline, elf=bool(elf))
    kw = {"runs": runs, "epochs": epochs, "augment": augment, "device": device, "seed": seed, "test": test,
          "compile": compile, "precision": precision,
          "protocol": protocol}
    for name in names:
        got: EvalResult = evaluate(ds, model=name, **kw)
        base = evaluate(base_set, model=name, **kw) if base_set is not None else None
        with_elf = None
        if elf and _has_split(name):
            with_elf = evaluate(ds, model=name, elf=elf, train=train, data_root=data_root, download=download, **kw)
        result.rows.append({"model": name, "distilled": asdict(got), "baseline": asdict(base) if base else None,
                            "elf": asdict(with_elf) if with_elf else None})
        if progress:
            extra = f", {baseline} {base.summary()}" if base else ""
            print(f"  {name}: {got.summary()}{extra}", flush=True)
    result.seconds = round(time.perf_counter() - t0, 2)
    return result
