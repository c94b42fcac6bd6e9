"""The spectral matching loss of UniDD and kernel ridge regression in both forms.

Source: UniDD (Bo, Liu, Wang, ICLR 2026, arXiv 2503.01212): every matching objective is
read as ``min_S ‖f(HᵀH) g − f(H_sᵀH_s) g_s‖_F²`` with ``g`` the identity or the FLC; the
KRR methods (KIP, FRePo) are the filter ``(λ + β)^-1`` because their predictor is
``H_q (H_sᵀH_s + βI)^-1 H_sᵀY_s``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ddkit.errors import ConfigError, DDKitError
from ddkit.spectral.filters import Filter, apply, get_filter
from ddkit.spectral.stats import FeatureStats, RunningStats

__all__ = ["krr_predict", "krr_predict_kernel", "spectral_matching_loss"]


def _as_stats(s: FeatureStats | RunningStats, which: str) -> FeatureStats:
    if isinstance(s, RunningStats):
        return s.stats()
    if not isinstance(s, FeatureStats):
        raise DDKitError(f"{which} must be FeatureStats or RunningStats, got {type(s).__name__}")
    return s


def spectral_matching_loss(filt: Filter | str, stats_real: FeatureStats | RunningStats,
                           stats_syn: FeatureStats | RunningStats, g: str = "identity") -> Tensor:
    """UniDD's spectral matching loss between a real and a synthetic set.

    * ``g="flc"``: ``‖f(A) B − f(A_s) B_s‖_F²`` with ``A`` the FFC and ``B`` the FLC of
      each set (:mod:`ddkit.spectral.stats`);
    * ``g="identity"``: ``‖f(A) − f(A_s)‖_F²`` (FFC only; identically 0 for the identity
      filter).

    Class-conditional statistics (K×d×d, K×d×1) give the sum over classes.

    With the ``identity`` filter, ``g="flc"``, mean-normalised statistics and one-hot labels
    the loss is ``Σ_c ‖(n_c/n) μ_c − (m_c/m) μ^s_c‖²`` (μ_c: class-mean feature; n_c/n, m_c/m:
    class shares of the real and synthetic set). With balanced classes in both sets
    (n_c/n = m_c/m = 1/K) it is exactly ``(1/K²) Σ_c ‖μ_c − μ^s_c‖²``, i.e. DM's loss
    (Zhao & Bilen 2023, eq. 4) divided by K².

    Args:
        filt: a :class:`~ddkit.spectral.filters.Filter` or a parameter-free name.
        stats_real, stats_syn: :class:`FeatureStats` (or :class:`RunningStats`) of the two
            sets, same feature dimension d, classes k and normalisation. The FFC is not
            needed (may be ``None``) for the identity filter with ``g="flc"``.
        g: ``"flc"`` or ``"identity"``.

    Returns:
        A scalar tensor in the statistics' dtype (float64 by default), differentiable with
        respect to the features that produced the statistics.

    Raises:
        ConfigError: unknown ``g`` or filter name.
        DDKitError: the two sets' statistics do not match in shape or normalisation, or a
            needed FFC is missing.
    """
    if g not in ("flc", "identity"):
        raise ConfigError(f"g must be 'flc' or 'identity', got {g!r}")
    filt = get_filter(filt)
    r, s = _as_stats(stats_real, "stats_real"), _as_stats(stats_syn, "stats_syn")
    if r.flc.shape != s.flc.shape:
        raise DDKitError(f"real and synthetic statistics differ in shape: FLC {tuple(r.flc.shape)} vs "
                         f"{tuple(s.flc.shape)} (same feature map, classes and class-conditioning needed)")
    if r.normalized != s.normalized:
        raise DDKitError("one set's statistics are normalised by n and the other's are not; use the same setting")
    if filt.kind == "identity":
        if g == "identity":
            return (s.flc * 0).sum()
        return ((r.flc - s.flc) ** 2).sum()
    if r.ffc is None or s.ffc is None:
        raise DDKitError(f"filter {filt.name!r} needs the FFC; compute the statistics with ffc=True")
    if g == "flc":
        diff = apply(filt, r.ffc, r.flc) - apply(filt, s.ffc, s.flc)
    else:
        diff = apply(filt, r.ffc) - apply(filt, s.ffc)
    return (diff ** 2).sum()


def _check_beta(beta: float) -> float:
    try:
        b = float(beta)
    except (TypeError, ValueError):
        raise ConfigError(f"KRR ridge beta must be a number, got {beta!r}") from None
    if not b > 0 or b == float("inf"):
        raise ConfigError(f"KRR ridge beta must be a finite number > 0, got {beta!r}")
    return b


def _spd_solve(m: Tensor, rhs: Tensor) -> Tensor:
    """Solve ``m x = rhs`` for symmetric positive definite ``m`` (Cholesky, LU fallback)."""
    chol, info = torch.linalg.cholesky_ex(m)
    if bool((info != 0).any()):
        return torch.linalg.solve(m, rhs)
    return torch.cholesky_solve(rhs, chol)


def krr_predict(h_support: Tensor, y_support: Tensor, h_query: Tensor, beta: float, *,
                form: str = "primal") -> Tensor:
    """Kernel ridge regression with the linear kernel of features H.

    * ``form="primal"`` (feature space): ``H_q (H_sᵀH_s + βI_d)^-1 H_sᵀY_s`` — a d×d solve;
      ``(H_sᵀH_s + βI)^-1 H_sᵀY_s`` is the inverse filter applied to the FLC.
    * ``form="dual"`` (kernel space): ``K_qs (K_ss + βI_n)^-1 Y_s`` with ``K = H Hᵀ`` — an
      n_s×n_s solve (:func:`krr_predict_kernel`). Equal to the primal by the push-through
      identity ``(HᵀH + βI)^-1 Hᵀ = Hᵀ(HHᵀ + βI)^-1``.
    * ``form="auto"``: whichever system is smaller.

    Args:
        h_support: H_s, n_s×d. y_support: Y_s, n_s×k float (or int64 (n_s,) — one-hot,
            k = max+1). h_query: H_q, n_q×d. beta: ridge β > 0 (unnormalised Gram matrices).

    Returns:
        n_q×k predictions, in the promoted dtype of the inputs (computed in float64).

    Raises:
        ConfigError: β not a finite number > 0, unknown ``form``.
        DDKitError: shapes disagree.

    The inverse filter on *mean-normalised* statistics, ``(HᵀH/n + βI)^-1 HᵀY/n``, equals
    these KRR weights with ridge ``nβ``.
    """
    b = _check_beta(beta)
    if form not in ("primal", "dual", "auto"):
        raise ConfigError(f"KRR form must be 'primal', 'dual' or 'auto', got {form!r}")
    if y_support.dim() == 1 and not y_support.is_floating_point():
        y_support = torch.nn.functional.one_hot(y_support.long()).to(h_support.dtype)
    if h_support.dim() != 2 or h_query.dim() != 2 or y_support.dim() != 2:
        raise DDKitError("krr_predict needs H_support n_s×d, Y_support n_s×k and H_query n_q×d")
    if h_support.shape[0] != y_support.shape[0] or h_support.shape[1] != h_query.shape[1]:
        raise DDKitError(f"shape mismatch: H_support {tuple(h_support.shape)}, Y_support {tuple(y_support.shape)}, "
                         f"H_query {tuple(h_query.shape)}")
    out_dtype = torch.promote_types(torch.promote_types(h_support.dtype, y_support.dtype), h_query.dtype)
    hs, ys, hq = (t.to(torch.float64) for t in (h_support, y_support, h_query))
    n, d = hs.shape
    if form == "auto":
        form = "dual" if n < d else "primal"
    if form == "dual":
        return krr_predict_kernel(hq @ hs.mT, hs @ hs.mT, ys, b).to(out_dtype)
    eye = torch.eye(d, dtype=torch.float64, device=hs.device)
    w = _spd_solve(hs.mT @ hs + b * eye, hs.mT @ ys)
    return (hq @ w).to(out_dtype)


def krr_predict_kernel(k_query_support: Tensor, k_support: Tensor, y_support: Tensor, beta: float) -> Tensor:
    """Dual KRR from kernel matrices: ``K_qs (K_ss + βI)^-1 Y_s``.

    Args:
        k_query_support: K_qs, n_q×n_s. k_support: K_ss, n_s×n_s symmetric PSD.
        y_support: Y_s, n_s×k float. beta: ridge β > 0.

    Returns:
        n_q×k predictions (computed in float64, returned in the promoted input dtype).
        Works for any PSD kernel (NTK, NNGP, ...), not only ``H Hᵀ``.

    Raises:
        ConfigError: bad β. DDKitError: shapes disagree.
    """
    b = _check_beta(beta)
    n = k_support.shape[-1]
    if k_support.shape[-2:] != (n, n) or k_query_support.shape[-1] != n or y_support.shape[0] != n:
        raise DDKitError(f"shape mismatch: K_qs {tuple(k_query_support.shape)}, K_ss {tuple(k_support.shape)}, "
                         f"Y_s {tuple(y_support.shape)}")
    out_dtype = torch.promote_types(torch.promote_types(k_query_support.dtype, k_support.dtype), y_support.dtype)
    kss = k_support.to(torch.float64)
    kss = (kss + kss.mT) / 2
    eye = torch.eye(n, dtype=torch.float64, device=kss.device)
    alpha = _spd_solve(kss + b * eye, y_support.to(torch.float64))
    return (k_query_support.to(torch.float64) @ alpha).to(out_dtype)


def trace_ridge_krr(k_ts: Tensor, k_ss: Tensor, y_s: Tensor, reg: float) -> Tensor:
    """KRR with the trace-scaled ridge of KIP and FRePo: ``K_ts (K_ss + λ' I)^-1 Y_s``,
    ``λ' = reg · tr(K_ss) / n_s`` (KIP's and FRePo's ``nfr`` code).

    The ridge's dependence on ``K_ss`` (through the trace) is differentiated, as both
    authors' codes do (``jax.grad`` through the trace): it enters the graph as a
    zero-valued term ``(λ' − stop_grad(λ')) I``.

    Args:
        k_ts: n_t×n_s target–support kernel. k_ss: n_s×n_s symmetric PSD support kernel.
        y_s: n_s×k support labels (regression targets). reg: λ > 0 (dimensionless).

    Returns:
        n_t×k predictions (float64 inside; see :func:`krr_predict_kernel` for the dtype),
        differentiable with respect to every input.

    Raises:
        ConfigError: ``reg`` not > 0, or the kernel's trace is not positive (all-zero features).
    """
    if not reg > 0:
        raise ConfigError(f"the KRR ridge factor reg must be > 0, got {reg!r}")
    n = k_ss.shape[0]
    ridge = float(reg) * torch.diagonal(k_ss).sum().double() / n
    if not float(ridge.detach()) > 0:
        raise ConfigError("the support kernel has a non-positive trace (all-zero features?)")
    eye = torch.eye(n, dtype=torch.float64, device=k_ss.device)
    kss = k_ss.double() + (ridge - ridge.detach()) * eye
    return krr_predict_kernel(k_ts, kss, y_s, float(ridge.detach()))
