"""Tabular regression helpers beside the SVR (:mod:`ddkit.svr`): KIP for tables, kernels.

:func:`kip_tabular` distils a tabular regression set with the KIP objective (Nguyen, Chen,
Lee, ICLR 2021; the same trace-scaled KRR loss as the image method,
:func:`ddkit.distill.kip.kip_loss`); ``bench/svr.py`` compares SVRs fitted on its output.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ddkit.distill.kip import kip_loss

__all__ = ["kip_tabular", "median_bandwidth", "rbf_kernel", "relu_nngp_kernel"]


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances by expansion (finite gradient at zero distance)."""
    d = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None, :] - 2 * a @ b.mT
    return d.clamp_min(0)


def rbf_kernel(a: Tensor, b: Tensor, bandwidth: float) -> Tensor:
    """``exp(−‖a_i − b_j‖² / (2 h²))``; a: (n, d), b: (m, d) → (n, m)."""
    return torch.exp(-_sq_dists(a, b) / (2.0 * bandwidth ** 2))


def median_bandwidth(x: Tensor) -> float:
    """Median heuristic: the median pairwise Euclidean distance of the rows of ``x`` (n, d).

    Returns 1.0 when there are fewer than two rows or all rows coincide.
    """
    n = x.shape[0]
    d2 = _sq_dists(x, x)[~torch.eye(n, dtype=torch.bool, device=x.device)]
    h = float(d2.sqrt().median()) if d2.numel() else 1.0
    return h if h > 0 else 1.0


def relu_nngp_kernel(a: Tensor, b: Tensor, weight_var: float = 2.0, bias_var: float = 0.01) -> Tensor:
    """NNGP of a one-hidden-layer ReLU MLP (arc-cosine kernel of order 1, Cho & Saul 2009).

    With ``K0(x, x') = σ_b² + σ_w² x·x'/d`` (input layer), the hidden ReLU layer gives
    ``K1 = σ_b² + σ_w²/(2π) · √(K0(x,x) K0(x',x')) · (sin θ + (π − θ) cos θ)``,
    ``cos θ = K0(x,x') / √(K0(x,x) K0(x',x'))``. ``cos θ`` is clamped to ``±(1 − 1e-7)``
    so the gradient of ``arccos`` stays finite on the diagonal.

    Parameters
    ----------
    a : Tensor of shape (n, d); b : Tensor of shape (m, d)
    weight_var, bias_var : float
        σ_w² (2: He initialisation) and σ_b².

    Returns
    -------
    Tensor of shape (n, m)
    """
    d = a.shape[1]
    k_ab = bias_var + weight_var * (a @ b.mT) / d
    k_aa = bias_var + weight_var * (a * a).sum(1) / d
    k_bb = bias_var + weight_var * (b * b).sum(1) / d
    norm = torch.sqrt(k_aa[:, None] * k_bb[None, :])
    cos = (k_ab / norm).clamp(-1 + 1e-7, 1 - 1e-7)
    theta = torch.arccos(cos)
    return bias_var + weight_var / (2 * math.pi) * norm * (torch.sin(theta) + (math.pi - theta) * cos)


def kip_tabular(X, y, n_support: int, *, kernel: str = "rbf", reg: float = 1e-6, iterations: int = 300,
                lr: float = 0.01, batch: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Distil a tabular regression set to ``n_support`` rows with KIP (learned X and y).

    X is standardised with its own mean and s.d. and y with its own mean and s.d.; the
    support set starts from ``n_support`` random rows and (X_s, y_s) are optimised by Adam on
    ``½ · mean((y_t − K_ts (K_ss + λ tr(K_ss)/m I)^-1 y_s)²)`` over target batches of the
    training rows (the same core as the image method, :func:`kip_loss`). The result is
    returned in the original units of X and y, so any regressor can be fitted on it.

    Parameters
    ----------
    X : array-like of shape (n, d)
        Training inputs (finite floats).
    y : array-like of shape (n,)
        Training responses (finite floats).
    n_support : int
        m, rows of the distilled set, ``1 <= m <= n``.
    kernel : {'rbf', 'nngp'}
        'rbf': Gaussian kernel with the median heuristic, bandwidth h = median pairwise
        distance of the standardised training rows (fixed during the optimisation).
        'nngp': arc-cosine NNGP of a one-hidden-layer ReLU MLP (:func:`relu_nngp_kernel`).
    reg : float
        λ > 0 of the trace-scaled ridge.
    iterations : int
        Adam steps (≥ 0).
    lr : float
        Adam learning rate (in standardised units).
    batch : int, optional
        Target rows per step; default all training rows (full batch).
    seed : int
        Seeds the initial rows and the target batches.

    Returns
    -------
    X_s : ndarray, float64 of shape (m, d)
    y_s : ndarray, float64 of shape (m,)

    Raises
    ------
    ValueError
        Bad shapes, non-finite data, ``n_support`` out of range, unknown ``kernel``,
        ``reg``/``lr`` not > 0 or negative ``iterations``.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).ravel()
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ValueError(f"X must be (n, d) and y (n,), got {X.shape} and {y.shape}")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise ValueError("X and y must be finite")
    n = X.shape[0]
    if not isinstance(n_support, (int, np.integer)) or not 1 <= n_support <= n:
        raise ValueError(f"n_support must be an integer in 1..{n}, got {n_support!r}")
    if kernel not in ("rbf", "nngp"):
        raise ValueError(f"kernel must be 'rbf' or 'nngp', got {kernel!r}")
    if not reg > 0 or not lr > 0 or iterations < 0:
        raise ValueError("need reg > 0, lr > 0 and iterations >= 0")
    mx, sx = X.mean(0), X.std(0)
    sx = np.where(sx > 0, sx, 1.0)
    my, sy = float(y.mean()), float(y.std()) or 1.0
    xt = torch.as_tensor((X - mx) / sx)
    yt = torch.as_tensor((y - my) / sy)[:, None]
    g = torch.Generator().manual_seed(int(seed))
    init = torch.randperm(n, generator=g)[:n_support]
    xs = xt[init].clone().requires_grad_(True)
    ys = yt[init].clone().requires_grad_(True)
    if kernel == "rbf":
        h = median_bandwidth(xt)

        def kern(a, b):
            return rbf_kernel(a, b, h)
    else:
        kern = relu_nngp_kernel
    opt = torch.optim.Adam([xs, ys], lr=lr)
    bsz = n if batch is None else max(1, min(int(batch), n))
    for _ in range(iterations):
        idx = torch.randperm(n, generator=g)[:bsz] if bsz < n else torch.arange(n)
        loss = kip_loss(kern(xt[idx], xs), kern(xs, xs), ys, yt[idx], reg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    X_s = xs.detach().numpy() * sx + mx
    y_s = ys.detach().numpy()[:, 0] * sy + my
    return X_s, y_s
