"""Bias metrics of networks trained on a distilled set: unbiased, bias-aligned and
bias-conflicting test accuracy (Lu et al., arXiv 2403.16028; LfF, Nam et al. 2020).

On a test set whose images carry a bias attribute a beside the label y
(:attr:`ImageDataset.attributes <ddkit.data.dataset.ImageDataset>`):

* **unbiased accuracy**: accuracy on the ρ = 0 test split, where every image is
  bias-conflicting (a ≠ y), the Biased-DD protocol's test set; a network that learnt the
  shortcut fails it;
* **bias-aligned / bias-conflicting accuracy**: accuracy on the images with a = y / a ≠ y
  of a test split with 0 < ρ < 1 (default ρ = 0.5: half of each class aligned).

For the registered biased benchmarks (:mod:`ddkit.data.biased`) both splits are built
from the set's dataset name (same severity and seed; ρ = 0 and ρ = ``bias_rho``). For any
other test set with attributes, its own bias-conflicting images stand for the ρ = 0 split
and its own aligned / conflicting images give the split accuracies.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ddkit.data import ImageDataset
from ddkit.errors import ConfigError
from ddkit.train import predict

__all__ = ["BiasPlan", "bias_plan", "summarise"]


@dataclass
class BiasPlan:
    """The test images the bias metrics use.

    Attributes:
        unbiased: uint8 images and int64 labels of the ρ = 0 (all bias-conflicting) split, or
            ``None`` when that split is the evaluation's own test set (its accuracy is reused).
        split: images, labels and a bool "aligned" mask (a = y) of the ρ = ``split_rho`` split.
        split_rho: ρ of ``split`` (``None`` when it is the test set itself).
        source: how the splits were made (one line).
    """

    unbiased: tuple[torch.Tensor, torch.Tensor] | None
    split: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    split_rho: float | None
    source: str
    test_images: int = 0

    def score(self, net: nn.Module, normalize: Callable[[torch.Tensor], torch.Tensor],
              test_accuracy: float | None = None) -> dict[str, float | None]:
        """One network's accuracies in [0, 1]: ``unbiased``, ``aligned``, ``conflicting``
        (``None`` where the split has no such image); ``test_accuracy``: its accuracy on the
        test set, the unbiased accuracy when ``unbiased`` is ``None``."""
        if self.unbiased is None:
            unbiased = test_accuracy
        else:
            x, y = self.unbiased
            unbiased = float((predict(net, x, normalize) == y).double().mean()) if len(y) else None
        x, y, aligned = self.split
        right = predict(net, x, normalize) == y
        out: dict[str, float | None] = {"unbiased": unbiased}
        for key, mask in (("aligned", aligned), ("conflicting", ~aligned)):
            out[key] = float(right[mask].double().mean()) if bool(mask.any()) else None
        net.train()
        return out

    def counts(self) -> dict[str, int]:
        """Images behind each metric."""
        aligned = self.split[2]
        n = self.test_images if self.unbiased is None else int(len(self.unbiased[1]))
        return {"unbiased": n, "aligned": int(aligned.sum()),
                "conflicting": int((~aligned).sum())}


def bias_plan(dataset: str, test: ImageDataset, *, bias_rho: float = 0.5, data_root: str | Path | None = None,
              download: bool = False) -> BiasPlan:
    """The splits of the bias metrics for a set distilled from ``dataset``.

    Args:
        dataset: the set's dataset name (a biased benchmark's name builds the splits).
        test: the test split the set is evaluated on; it must carry ``attributes``.
        bias_rho: ρ of the split for the aligned / conflicting accuracies, in (0, 1).
        data_root, download: where the base data is found (biased benchmarks).

    Returns:
        :class:`BiasPlan`.

    Raises:
        ConfigError: ``test`` has no attributes (not a biased dataset); ``bias_rho`` not in (0, 1).
    """
    if test.attributes is None:
        raise ConfigError(f"bias metrics need a dataset with a bias attribute per image; {test.name} has none "
                          "(use a biased dataset such as cmnist-dd:rho=0.95,severity=4)")
    try:
        rho = float(bias_rho)
    except (TypeError, ValueError):
        raise ConfigError(f"bias_rho must be a number in (0, 1), got {bias_rho!r}") from None
    if not 0.0 < rho < 1.0:
        raise ConfigError(f"bias_rho must be in (0, 1) so that the split has aligned and conflicting images, "
                          f"got {bias_rho!r}")
    from ddkit.data import biased

    if biased.is_biased_name(dataset):
        unb = biased.test_split_at(dataset, 0.0, data_root=data_root, download=download)
        split = biased.test_split_at(dataset, rho, data_root=data_root, download=download)
        same = test.images is unb.images or (test.images.shape == unb.images.shape
                                              and torch.equal(test.images, unb.images)
                                              and torch.equal(test.labels, unb.labels))
        return BiasPlan(None if same else (unb.images, unb.labels),
                        (split.images, split.labels, split.attributes == split.labels), rho,
                        f"{biased.parse_name(dataset).family} test split at rho=0 (unbiased) and at rho={rho:g} "
                        "(aligned / conflicting)", len(test))
    aligned = test.attributes == test.labels
    conflicting = ~aligned
    return BiasPlan((test.images[conflicting], test.labels[conflicting]), (test.images, test.labels, aligned), None,
                    f"{test.name} test split: its bias-conflicting images (unbiased) and its aligned / "
                    "conflicting images")


def summarise(rows: list[dict[str, float | None]], plan: BiasPlan) -> dict[str, Any]:
    """Mean and population std over the runs of each metric (``None`` where undefined), the
    per-run values, the image counts and how the splits were made."""
    out: dict[str, Any] = {}
    for key in ("unbiased", "aligned", "conflicting"):
        vals = [r[key] for r in rows if r.get(key) is not None]
        out[key] = round(statistics.fmean(vals), 6) if vals else None
        out[f"{key}_std"] = round(statistics.pstdev(vals), 6) if vals else None
    gap = (out["aligned"] - out["conflicting"]) if out["aligned"] is not None and out["conflicting"] is not None \
        else None
    out["gap"] = round(gap, 6) if gap is not None else None
    out.update({"split_rho": plan.split_rho, "images": plan.counts(), "splits": plan.source, "per_run": rows})
    return out
