"""Spectral filters of UniDD and the matrix function ``f(A)`` of a symmetric PSD matrix.

Source: Deyu Bo, Songhua Liu, Xinchao Wang, *Understanding Dataset Distillation via
Spectral Filtering*, ICLR 2026, arXiv 2503.01212 (the unified objective and its table of
filters; see ``/work/shared/papers/unidd-cfm.md``). A *filter* is a scalar function ``f``
applied to the eigenvalues of the feature–feature correlation ``A = HᵀH``:
``f(A) = U diag(f(λ)) Uᵀ`` for ``A = U diag(λ) Uᵀ``. The methods of the field differ only
in ``f``:

==============  =====================  ==========================================
name            f(λ)                   method it reads (UniDD table)
==============  =====================  ==========================================
``identity``    1                      DM (low-pass: class means only)
``linear``      λ                      DC / DSA gradient matching (low-pass)
``inverse``     (λ + β)^-1, β > 0      KRR: KIP, FRePo, RFAD (high-pass)
``polynomial``  (1 − αλ)^p, α, p > 0   MTT trajectory matching (high-pass, αλ < 1)
``custom``      any elementwise f      user-supplied
==============  =====================  ==========================================

Filters are small frozen objects (:class:`Filter`) built with :func:`get_filter`;
:func:`apply` evaluates ``f(A)`` (or ``f(A) B``) for a batch of symmetric matrices.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ddkit.errors import ConfigError, DDKitError

__all__ = ["FILTERS", "Filter", "apply", "custom", "get_filter", "identity", "inverse", "linear", "polynomial",
           "psd_tolerance"]

# Above this integer power, (I - αA)^p is formed by repeated squaring instead of p products.
_MAX_DIRECT_POWER = 64


@dataclass(frozen=True)
class Filter:
    """A spectral filter: a scalar function applied elementwise to eigenvalues.

    Attributes:
        name: ``identity``, ``linear``, ``inverse``, ``polynomial`` or a custom name.
        kind: which closed-form path :func:`apply` may use (the built-in name, or
            ``"custom"``: always the eigendecomposition path).
        params: the filter's parameters as a dict (``{"beta": 0.1}``, ...), read-only copy.

    Call ``filt.f(lam)`` (or ``filt(lam)``) with a tensor of eigenvalues (any shape, float)
    to get ``f(λ)`` of the same shape and dtype. Build filters with :func:`get_filter`.
    """

    name: str
    fn: Callable[[Tensor], Tensor] = field(repr=False)
    df: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)
    param_items: tuple[tuple[str, Any], ...] = ()
    kind: str = "custom"

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.param_items)

    def f(self, lam: Tensor) -> Tensor:
        """``f(λ)`` elementwise (same shape and dtype as ``lam``)."""
        return self.fn(lam)

    __call__ = f

    def derivative(self, lam: Tensor) -> Tensor:
        """``f'(λ)`` elementwise: the closed form for built-ins, autograd for custom filters."""
        if self.df is not None:
            return self.df(lam)
        with torch.enable_grad():
            x = lam.detach().clone().requires_grad_(True)
            y = self.fn(x)
            if not y.requires_grad:  # a constant function of λ
                return torch.zeros_like(lam)
            (d,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
        return torch.zeros_like(lam) if d is None else d.detach()


def _number(name: str, filt: str, value: Any, *, positive: bool = True) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"filter {filt!r}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or (positive and v <= 0):
        raise ConfigError(f"filter {filt!r}: {name} must be a finite number > 0, got {value!r}")
    return v


def identity() -> Filter:
    """``f(λ) = 1``: ``f(A) = I``; with ``g = FLC`` the loss matches class means (DM)."""
    return Filter("identity", torch.ones_like, torch.zeros_like, (), "identity")


def linear() -> Filter:
    """``f(λ) = λ``: ``f(A) = A`` (DC / DSA gradient matching, as a bound)."""
    return Filter("linear", lambda lam: lam, torch.ones_like, (), "linear")


def inverse(beta: float) -> Filter:
    """``f(λ) = (λ + β)^-1``, ``β > 0`` (KRR methods: KIP, FRePo, RFAD).

    Small ``β`` weights small eigenvalues (high frequencies) strongly; large ``β`` is almost
    flat, ``(A + βI)^-1 ≈ (I − A/β)/β`` (DM-like). ``β`` is in the units of the FFC's
    eigenvalues (with mean-normalised statistics: per-sample feature energy).

    Raises:
        ConfigError: ``β`` not a finite number > 0.
    """
    b = _number("beta", "inverse", beta)
    return Filter("inverse", lambda lam: 1.0 / (lam + b), lambda lam: -1.0 / (lam + b) ** 2,
                  (("beta", b),), "inverse")


def polynomial(alpha: float, p: float) -> Filter:
    """``f(λ) = (1 − αλ)^p`` with ``α > 0``, ``p > 0`` (MTT, as a bound; ``p`` steps of size ``α``).

    The filter is meant for ``αλ < 1`` (every eigenvalue). For integer ``p`` it is the
    plain power, defined for any λ. For non-integer ``p`` the base ``1 − αλ`` is clamped at
    0 (``f = 0`` for ``αλ ≥ 1``) so that ``f`` stays real.

    Raises:
        ConfigError: ``α`` or ``p`` not a finite number > 0.
    """
    a = _number("alpha", "polynomial", alpha)
    q = _number("p", "polynomial", p)
    if q.is_integer():
        qi = int(q)

        def fn(lam: Tensor) -> Tensor:
            return (1.0 - a * lam) ** qi

        def df(lam: Tensor) -> Tensor:
            return -a * qi * (1.0 - a * lam) ** (qi - 1)

        return Filter("polynomial", fn, df, (("alpha", a), ("p", qi)), "polynomial")

    def fn_real(lam: Tensor) -> Tensor:
        return (1.0 - a * lam).clamp_min(0.0) ** q

    def df_real(lam: Tensor) -> Tensor:
        base = 1.0 - a * lam
        return torch.where(base > 0, -a * q * base.clamp_min(0.0) ** (q - 1), torch.zeros_like(base))

    return Filter("polynomial", fn_real, df_real, (("alpha", a), ("p", q)), "polynomial")


def custom(fn: Callable[[Tensor], Tensor], *, name: str = "custom", df: Callable[[Tensor], Tensor] | None = None,
           **params: Any) -> Filter:
    """Wrap a user function ``fn(λ) -> f(λ)`` (elementwise, torch ops) as a filter.

    Args:
        fn: maps a float tensor of eigenvalues to a tensor of the same shape.
        name: a label for reports. df: optional derivative ``f'(λ)``; without it autograd
            differentiates ``fn`` (needed only for gradients through :func:`apply`).
        **params: recorded in ``params`` (for provenance only).

    :func:`apply` always evaluates custom filters by eigendecomposition.

    Raises:
        ConfigError: ``fn`` (or ``df``) is not callable.
    """
    if not callable(fn) or (df is not None and not callable(df)):
        raise ConfigError(f"custom filter needs a callable fn(lam) (and optional callable df), got {fn!r}")
    return Filter(str(name), fn, df, tuple(sorted(params.items())), "custom")


FILTERS: dict[str, Callable[..., Filter]] = {
    "identity": identity, "linear": linear, "inverse": inverse, "polynomial": polynomial, "custom": custom,
}
_PARAMS = {"identity": (), "linear": (), "inverse": ("beta",), "polynomial": ("alpha", "p")}


def get_filter(name: str | Filter, **params: Any) -> Filter:
    """The filter called ``name`` with ``params``.

    Args:
        name: ``identity``, ``linear``, ``inverse`` (needs ``beta``), ``polynomial`` (needs
            ``alpha``, ``p``) or ``custom`` (needs ``fn``; see :func:`custom`). A
            :class:`Filter` is returned unchanged (no params allowed then).
        **params: the filter's parameters.

    Raises:
        ConfigError: unknown name, a missing or unknown parameter, or a bad value
            (``β ≤ 0``, ``α ≤ 0``, ``p ≤ 0``, not finite, not a number).
    """
    if isinstance(name, Filter):
        if params:
            raise ConfigError(f"get_filter got a Filter and parameters {sorted(params)}; pass one or the other")
        return name
    key = str(name).strip().lower()
    if key not in FILTERS:
        raise ConfigError(f"unknown spectral filter {name!r}; known: {', '.join(FILTERS)}")
    if key == "custom":
        if "fn" not in params:
            raise ConfigError("filter 'custom' needs fn=callable(lam)")
        return custom(**params)
    wanted = _PARAMS[key]
    unknown = sorted(set(params) - set(wanted))
    missing = [p for p in wanted if p not in params]
    if unknown or missing:
        takes = ", ".join(wanted) if wanted else "no parameters"
        raise ConfigError(f"filter {key!r} takes {takes}; "
                          + (f"unknown: {', '.join(unknown)}" if unknown else f"missing: {', '.join(missing)}"))
    return FILTERS[key](**params)


def psd_tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance for negative eigenvalues of a PSD matrix of ``dtype``.

    ``max(sqrt(eps(dtype)), 1e-6)``: 1e-6 for float64, ≈ 3.5e-4 for float32, ≈ 0.03 for
    float16 and ≈ 0.09 for bfloat16. An eigenvalue λ with ``-tol·max|λ| ≤ λ < 0`` is
    rounding noise and clamped to 0; a more negative one means the matrix is not PSD.
    """
    return max(math.sqrt(torch.finfo(dtype).eps), 1e-6)


def _sym(a: Tensor) -> Tensor:
    return (a + a.mT) / 2


def _check_matrix(a: Tensor, b: Tensor | None) -> None:
    if not isinstance(a, Tensor) or a.dim() < 2 or a.shape[-1] != a.shape[-2]:
        shape = tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__
        raise DDKitError(f"spectral filters need square matrices …×d×d, got {shape}")
    if not a.is_floating_point():
        raise DDKitError(f"spectral filters need a floating-point matrix, got {a.dtype}")
    if b is not None and (b.dim() < 2 or b.shape[-2] != a.shape[-1]):
        raise DDKitError(f"f(A) B needs B of shape …×{a.shape[-1]}×k, got {tuple(b.shape)}")
    if not bool(torch.isfinite(a).all()):
        raise DDKitError("the matrix given to a spectral filter has NaN or infinite entries "
                         "(check the features / the synthetic images for divergence)")


class _EighFunction(torch.autograd.Function):
    """``f(A)`` by eigendecomposition, with a Daleckii–Krein backward.

    ``d f(A) = U (F ∘ (Uᵀ dA U)) Uᵀ`` with the Loewner matrix ``F_ij = (f(λ_i) − f(λ_j)) /
    (λ_i − λ_j)``, and ``F_ij = f'((λ_i + λ_j)/2)`` where ``|λ_i − λ_j| ≤ 1e-8·max|λ|``.
    Unlike autograd through ``eigh`` (whose backward divides by eigenvalue gaps and gives
    inf/NaN for repeated eigenvalues), this stays finite and exact for repeated eigenvalues.
    The clamp of tiny negative eigenvalues is treated as a constant projection.
    """

    @staticmethod
    def forward(ctx, a: Tensor, filt: Filter, rtol: float) -> Tensor:
        lam, u = torch.linalg.eigh(a)
        scale = lam.abs().amax(-1, keepdim=True)
        worst = (lam + rtol * scale).amin()
        if float(worst) < 0:
            raise DDKitError(f"matrix is not positive semi-definite: eigenvalue {float(lam.amin()):.3g} is below "
                             f"-{rtol:.1g}·max|λ| (FFC matrices HᵀH are PSD; pass a symmetric PSD matrix)")
        lam = lam.clamp_min(0.0)
        fl = filt.f(lam)
        ctx.save_for_backward(u, lam, fl)
        ctx.filt = filt
        return (u * fl.unsqueeze(-2)) @ u.mT

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        u, lam, fl = ctx.saved_tensors
        li, lj = lam.unsqueeze(-1), lam.unsqueeze(-2)
        diff = li - lj
        scale = lam.abs().amax(-1, keepdim=True).unsqueeze(-1)
        close = diff.abs() <= 1e-8 * scale.clamp_min(torch.finfo(lam.dtype).tiny)
        divided = (fl.unsqueeze(-1) - fl.unsqueeze(-2)) / torch.where(close, torch.ones_like(diff), diff)
        loewner = torch.where(close, ctx.filt.derivative((li + lj) / 2), divided)
        inner = u.mT @ _sym(grad) @ u
        return u @ (loewner * inner) @ u.mT, None, None


def _eigh_apply(filt: Filter, a: Tensor, rtol: float) -> Tensor:
    return _EighFunction.apply(a, filt, rtol)


def _rhs(a: Tensor, b: Tensor) -> Tensor:
    """``b`` broadcast over the batch dimensions it shares with ``a``."""
    return b.expand(*torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]), *b.shape[-2:])


def apply(filt: Filter | str, a: Tensor, b: Tensor | None = None, *, rtol: float | None = None) -> Tensor:
    """The matrix function ``f(A)`` (or ``f(A) B``) of symmetric PSD matrices.

    Args:
        filt: a :class:`Filter` or a parameter-free filter name (``identity``, ``linear``).
        a: …×d×d symmetric positive semi-definite matrices (FFC ``HᵀH``); any float dtype.
            Only the symmetric part ``(A + Aᵀ)/2`` is used.
        b: optional …×d×k right factor (FLC ``HᵀY``); then ``f(A) B`` is returned without
            forming ``f(A)`` where a cheaper exact path exists.
        rtol: relative tolerance for negative eigenvalues (eigendecomposition path only);
            default :func:`psd_tolerance` of ``a``'s dtype.

    Returns:
        ``f(A)`` (…×d×d) or ``f(A) B`` (…×d×k), in ``a``'s dtype (with ``b``: the promoted
        dtype of ``a`` and ``b``). Differentiable with respect to ``a`` and ``b``.

    Numerics (all computation in float64, whatever the input dtype; the result is cast back):

    * ``identity``: ``I`` (``B``); ``linear``: ``A`` (``A B``); ``polynomial`` with integer
      ``p``: ``(I − αA)^p`` by matrix products (``p`` products with ``B`` when ``p ≤ 64``,
      else repeated squaring). These are polynomials of ``A``: exact, no eigendecomposition,
      so their gradients are stable even for repeated eigenvalues.
    * ``inverse``: ``A + βI`` is symmetric positive definite (eigenvalues ≥ β for PSD A), so
      a Cholesky factorisation exists and ``cholesky_solve`` gives ``(A + βI)^-1 B`` (or the
      inverse) backward-stably and with a plain, gap-free gradient. If Cholesky fails
      (β negligible next to ``‖A‖``, or A not PSD), the eigendecomposition path is used.
    * everything else (``custom``, non-integer ``p``): ``torch.linalg.eigh`` of the
      symmetrised matrix; eigenvalues λ with ``-rtol·max|λ| ≤ λ < 0`` are clamped to 0,
      and ``U diag(f(λ)) Uᵀ`` is returned. Its gradient uses the Daleckii–Krein formula
      (divided differences of ``f``, ``f'`` for (near-)equal eigenvalues), finite for
      repeated eigenvalues. Second derivatives are not supported on this path.

    The PSD check runs on the eigendecomposition path only; the closed-form paths accept
    any symmetric matrix for which their formula is defined.

    Raises:
        DDKitError: ``a`` is not …×d×d floating point, has NaN/inf entries, ``b`` has the
            wrong shape, or (eigendecomposition path) ``a`` has an eigenvalue below
            ``-rtol·max|λ|``.
        ConfigError: ``filt`` is an unknown name or needs parameters.

    Source: UniDD (Bo, Liu, Wang, ICLR 2026, arXiv 2503.01212), ``f(A) = U f(Λ) Uᵀ``.
    """
    filt = get_filter(filt)
    _check_matrix(a, b)
    out_dtype = a.dtype if b is None else torch.promote_types(a.dtype, b.dtype)
    tol = psd_tolerance(a.dtype) if rtol is None else float(rtol)
    a64 = _sym(a.to(torch.float64))
    b64 = None if b is None else b.to(torch.float64)
    d = a.shape[-1]
    eye = torch.eye(d, dtype=torch.float64, device=a.device)
    params = filt.params
    if filt.kind == "identity":
        out = eye.expand_as(a64).clone() if b64 is None else _rhs(a64, b64).clone()
    elif filt.kind == "linear":
        out = a64 if b64 is None else a64 @ b64
    elif filt.kind == "polynomial" and float(params["p"]).is_integer():
        p, m = int(params["p"]), eye - params["alpha"] * a64
        if b64 is not None and p <= _MAX_DIRECT_POWER:
            out = _rhs(a64, b64)
            for _ in range(p):
                out = m @ out
        else:
            out = torch.linalg.matrix_power(m, p)
            out = out if b64 is None else out @ b64
    elif filt.kind == "inverse":
        chol, info = torch.linalg.cholesky_ex(a64 + params["beta"] * eye)
        if not bool((info != 0).any()):
            rhs = eye.expand_as(a64) if b64 is None else _rhs(a64, b64)
            out = torch.cholesky_solve(rhs, chol.expand(*rhs.shape[:-2], d, d))
            out = _sym(out) if b64 is None else out
        else:
            out = _eigh_apply(filt, a64, tol)
            out = out if b64 is None else out @ b64
    else:
        out = _eigh_apply(filt, a64, tol)
        out = out if b64 is None else out @ b64
    return out.to(out_dtype)
