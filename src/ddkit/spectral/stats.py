"""FFC and FLC: the feature statistics UniDD's spectral matching compares.

Source: UniDD (Bo, Liu, Wang, ICLR 2026, arXiv 2503.01212), the unified objective
``‖f(HᵀH) g(HᵀY) − f(H_sᵀH_s) g(H_sᵀY_s)‖_F²``. For features ``H`` (n×d) and labels ``Y``
(n×k, one-hot or soft):

* FFC, feature–feature correlation ``HᵀH`` (d×d, symmetric PSD);
* FLC, feature–label correlation ``HᵀY`` (d×k); for one-hot ``Y`` its column c is the sum
  of class c's features.

Normalisation: by default both are divided by n (``HᵀH/n``, ``HᵀY/n``), i.e. they are
means over samples, so a real batch and a synthetic set of different sizes are
comparable. With one-hot labels the normalised FLC column c is ``(n_c/n)·μ_c`` (class
prior times class-mean feature). ``normalize=False`` gives the raw sums of the paper's
formula. The class-conditional variant computes, per class c, ``Hᵀ diag(Y_c) H`` and
``Hᵀ Y_c`` (weights ``Y_c`` = column c of ``Y``), divided by the class weight ``Σ_i Y_ic``
when normalised: the class's own (weighted) second moment and mean feature.

All accumulation is in float64 (``dtype``), whatever the feature dtype; gradients flow
back to ``H`` (and ``Y``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from ddkit.errors import DDKitError

__all__ = ["FeatureStats", "RunningStats", "class_feature_stats", "feature_stats", "label_matrix"]


@dataclass(frozen=True)
class FeatureStats:
    """FFC and FLC of one set.

    Attributes:
        ffc: d×d (or K×d×d class-conditional) float64, or ``None`` if not computed.
        flc: d×k (or K×d×1 class-conditional) float64.
        count: the normaliser: scalar n (rows), or per-class weights (K,) class-conditional.
        n: number of rows (samples) seen.
        normalized: whether ``ffc``/``flc`` were divided by ``count``.
    """

    ffc: Tensor | None
    flc: Tensor
    count: Tensor
    n: int
    normalized: bool = True

    @property
    def class_conditional(self) -> bool:
        return self.flc.dim() == 3


def centred_one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """One-hot labels minus ``1/K``: the regression targets of KIP and FRePo (their codes'
    ``one_hot − 1/num_classes``).

    Args:
        labels: int64 (n,) class indices in ``0..K-1``. num_classes: K.

    Returns:
        float32 n×K; each row sums to 0.
    """
    return F.one_hot(labels.long(), num_classes).float() - 1.0 / num_classes


def label_matrix(y: Tensor, num_classes: int | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
    """Labels as an n×k float matrix: int64 class indices (n,) are one-hot encoded
    (``num_classes`` required); an n×k float matrix (soft labels) is cast to ``dtype``.

    Raises:
        DDKitError: wrong shape, or integer labels without ``num_classes`` / out of range.
    """
    if y.dim() == 1 and not y.is_floating_point():
        if num_classes is None:
            raise DDKitError("integer labels need num_classes to build the one-hot label matrix")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise DDKitError(f"labels must lie in 0..{num_classes - 1}")
        return F.one_hot(y.long(), num_classes).to(dtype)
    if y.dim() != 2:
        raise DDKitError(f"labels must be int64 (n,) or a float n×k matrix, got shape {tuple(y.shape)}")
    if num_classes is not None and y.shape[1] != num_classes:
        raise DDKitError(f"label matrix has {y.shape[1]} columns, expected {num_classes}")
    return y.to(dtype)


def _check(h: Tensor, y: Tensor) -> None:
    if h.dim() != 2:
        raise DDKitError(f"features must be n×d, got shape {tuple(h.shape)}")
    if y.shape[0] != h.shape[0]:
        raise DDKitError(f"features ({h.shape[0]} rows) and labels ({y.shape[0]} rows) differ in length")


def feature_stats(h: Tensor, y: Tensor, *, num_classes: int | None = None, normalize: bool = True,
                  ffc: bool = True, dtype: torch.dtype = torch.float64) -> FeatureStats:
    """FFC ``HᵀH`` and FLC ``HᵀY`` of one set, in one pass.

    Args:
        h: features H, n×d (any float dtype; may require grad).
        y: labels, int64 (n,) (with ``num_classes``) or float n×k (one-hot or soft).
        normalize: divide by n (default; mean statistics, comparable across set sizes).
        ffc: also compute the d×d FFC (skip it when the filter is ``identity``).
        dtype: accumulation dtype (float64).

    Returns:
        :class:`FeatureStats` with ``ffc`` d×d, ``flc`` d×k, ``count`` = n.

    Raises:
        DDKitError: shapes disagree, n = 0 with ``normalize``.
    """
    y = label_matrix(y, num_classes, dtype)
    _check(h, y)
    n = h.shape[0]
    if normalize and n == 0:
        raise DDKitError("cannot normalise statistics of an empty set")
    h = h.to(dtype)
    scale = 1.0 / n if normalize else 1.0
    a = (h.mT @ h) * scale if ffc else None
    b = (h.mT @ y.to(h.device)) * scale
    return FeatureStats(a, b, torch.tensor(float(n), dtype=dtype, device=h.device), n, normalize)


def class_feature_stats(h: Tensor, y: Tensor, *, num_classes: int | None = None, normalize: bool = True,
                        ffc: bool = True, dtype: torch.dtype = torch.float64) -> FeatureStats:
    """Class-conditional FFC and FLC: per class c, ``Hᵀ diag(Y_c) H`` and ``Hᵀ Y_c``.

    With one-hot labels these are the class's ``H_cᵀH_c`` and feature sum; normalised
    (default) by the class weight ``Σ_i Y_ic`` they become the class's second-moment
    matrix and mean feature ``μ_c``.

    Returns:
        :class:`FeatureStats` with ``ffc`` K×d×d, ``flc`` K×d×1, ``count`` (K,) class weights.

    Raises:
        DDKitError: shapes disagree; a class has zero weight with ``normalize``.
    """
    y = label_matrix(y, num_classes, dtype)
    _check(h, y)
    h = h.to(dtype)
    y = y.to(h.device)
    w = y.sum(0)
    a = torch.einsum("nc,nd,ne->cde", y, h, h) if ffc else None
    b = (h.mT @ y).mT.unsqueeze(-1)
    if normalize:
        if bool((w <= 0).any()):
            raise DDKitError("a class has no samples (zero label weight); cannot normalise its statistics")
        a = a / w.view(-1, 1, 1) if a is not None else None
        b = b / w.view(-1, 1, 1)
    return FeatureStats(a, b, w, h.shape[0], normalize)


class RunningStats:
    """Streamed FFC/FLC over batches; equals the full-batch result (float64 sums).

    Usage::

        rs = RunningStats(num_classes=10)
        for x, y in loader:
            rs.update(embed(x), y)
        rs.ffc(), rs.flc(), rs.n, rs.stats()

    Args:
        num_classes: k, needed when ``update`` gets integer labels.
        normalize: divide by n (or the class weights) on read-out (default True).
        class_conditional: accumulate per-class statistics (see :func:`class_feature_stats`).
        ffc: accumulate the FFC (d×d); ``False`` keeps only the FLC.
        dtype: accumulation dtype (float64).

    Sums are kept unnormalised and divided on read-out, so the result does not depend on
    how the data was split into batches (up to float64 rounding). Updates are out of place:
    gradients flow to every batch's features.
    """

    def __init__(self, num_classes: int | None = None, *, normalize: bool = True, class_conditional: bool = False,
                 ffc: bool = True, dtype: torch.dtype = torch.float64):
        self.num_classes, self.normalize, self.class_conditional = num_classes, normalize, class_conditional
        self.with_ffc, self.dtype = ffc, dtype
        self._hh: Tensor | None = None
        self._hy: Tensor | None = None
        self._w: Tensor | None = None
        self.n = 0

    def update(self, h: Tensor, y: Tensor) -> RunningStats:
        """Add a batch: features ``h`` n×d, labels int64 (n,) or float n×k. Returns ``self``.

        Raises:
            DDKitError: shapes disagree with each other or with earlier batches.
        """
        fn = class_feature_stats if self.class_conditional else feature_stats
        part = fn(h, y, num_classes=self.num_classes, normalize=False, ffc=self.with_ffc, dtype=self.dtype)
        if self._hy is not None and part.flc.shape != self._hy.shape:
            raise DDKitError(f"batch statistics of shape {tuple(part.flc.shape)} do not match earlier batches "
                             f"({tuple(self._hy.shape)}); same feature dimension and classes needed")
        if self._hy is None:
            self._hh, self._hy, self._w = part.ffc, part.flc, part.count
        else:
            self._hh = None if part.ffc is None else self._hh + part.ffc
            self._hy = self._hy + part.flc
            self._w = self._w + part.count
        self.n += part.n
        return self

    def _read(self, s: Tensor | None, what: str) -> Tensor:
        if self._hy is None:
            raise DDKitError("RunningStats has no data yet; call update(H, Y) first")
        if s is None:
            raise DDKitError(f"this RunningStats does not accumulate the {what} (ffc=False)")
        if not self.normalize:
            return s
        w = self._w.view(-1, 1, 1) if self.class_conditional else self._w
        if bool((w <= 0).any()):
            raise DDKitError("cannot normalise: a class (or the whole set) has zero weight")
        return s / w

    def ffc(self) -> Tensor:
        """``HᵀH`` (/n if normalised): d×d, or K×d×d class-conditional; float64."""
        return self._read(self._hh, "FFC")

    def flc(self) -> Tensor:
        """``HᵀY`` (/n if normalised): d×k, or K×d×1 class-conditional; float64."""
        return self._read(self._hy, "FLC")

    def stats(self) -> FeatureStats:
        """The accumulated statistics as a :class:`FeatureStats`."""
        return FeatureStats(self.ffc() if self.with_ffc else None, self.flc(), self._w, self.n, self.normalize)
