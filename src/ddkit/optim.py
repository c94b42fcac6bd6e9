"""Optimisers the distillation methods need that ``torch.optim`` lacks.

:class:`Lamb` is FRePo's meta-optimiser as its JAX code runs it (``optax.lamb``). The
maintained PyTorch packages differ from it in ways that change results (``torch_optimizer``'s
``Lamb`` clips the weight norm at 10 and by default skips the bias correction), so ddkit
keeps this short implementation of optax's semantics.

:class:`AdaBelief` is RFAD's optimiser (Loo et al., NeurIPS 2022, yolky/RFAD
``distillation.py``: ``torch_optimizer.AdaBelief`` with ``eps=1e-16``); ddkit does not
depend on ``torch_optimizer``, so the update that package performs is written out here.
"""

from __future__ import annotations

import math

import torch

__all__ = ["AdaBelief", "Lamb"]


def _moment_states(opt: torch.optim.Optimizer, group: dict, second: str):
    """Yield ``(p, state, t)`` for each parameter of ``group`` that has a gradient: its state
    (created on first use with ``step`` 0, ``exp_avg`` and ``second`` zeros) after advancing
    ``step``, and the new step count ``t`` (float)."""
    for p in group["params"]:
        if p.grad is None:
            continue
        st = opt.state[p]
        if not st:
            st["step"] = torch.tensor(0.0)
            st["exp_avg"] = torch.zeros_like(p)
            st[second] = torch.zeros_like(p)
        st["step"] += 1
        yield p, st, float(st["step"])


class Lamb(torch.optim.Optimizer):
    """LAMB with ``optax.lamb`` semantics (You et al., ICLR 2020), no weight decay.

    Per tensor ``p``: Adam moments ``m, v`` with bias correction, ``u = m̂ / (√v̂ + ε)``, then
    ``p ← p − lr · r · u`` with the trust ratio ``r = ‖p‖ / ‖u‖`` (``r = 1`` when either norm
    is 0). State per tensor: ``step`` (float32 scalar tensor), ``exp_avg``, ``exp_avg_sq`` —
    the same keys as ``torch.optim.Adam``.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p, st, k in _moment_states(self, group, "exp_avg_sq"):
                st["exp_avg"].mul_(b1).add_(p.grad, alpha=1 - b1)
                st["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                u = (st["exp_avg"] / (1 - b1 ** k)) / ((st["exp_avg_sq"] / (1 - b2 ** k)).sqrt() + group["eps"])
                p_norm, u_norm = p.norm(), u.norm()
                ratio = torch.where((p_norm > 0) & (u_norm > 0), p_norm / u_norm.clamp_min(1e-30),
                                    torch.ones_like(p_norm))
                p.add_(u * ratio, alpha=-group["lr"])
        return None


class AdaBelief(torch.optim.Optimizer):
    """AdaBelief (Zhuang et al., NeurIPS 2020) as ``torch_optimizer.AdaBelief`` runs it with its
    defaults otherwise (no weight decay, no AMSGrad, no rectification).

    Per tensor ``p`` with gradient ``g``: ``m ← β1·m + (1−β1)·g``; ``s ← β2·s + (1−β2)·(g − m)² + ε``
    (the ε is added to the stored ``s``, as that package does); then
    ``p ← p − lr/(1−β1^t) · m / (√s / √(1−β2^t) + ε)``. Unlike Adam the second moment tracks the
    variance of the gradient around its running mean. State per tensor: ``step`` (float32
    scalar tensor), ``exp_avg`` (m), ``exp_avg_var`` (s). Param groups may set their own ``lr``.

    Raises:
        ValueError: ``lr`` ≤ 0, ``eps`` < 0 or a β outside [0, 1).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-16):
        if not lr > 0 or eps < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AdaBelief needs lr > 0, eps >= 0 and betas in [0, 1), got {lr}, {eps}, {betas}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            eps = group["eps"]
            for p, st, k in _moment_states(self, group, "exp_avg_var"):
                m, s = st["exp_avg"], st["exp_avg_var"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                resid = p.grad - m
                s.mul_(b2).addcmul_(resid, resid, value=1 - b2).add_(eps)
                denom = (s.sqrt() / math.sqrt(1 - b2 ** k)).add_(eps)
                p.addcdiv_(m, denom, value=-group["lr"] / (1 - b1 ** k))
        return None
