"""Optimisers the distillation methods need that ``torch.optim`` lacks.

:class:`Lamb` is FRePo's meta-optimiser as its JAX code runs it (``optax.lamb``). The
maintained PyTorch packages differ from it in ways that change results (``torch_optimizer``'s
``Lamb`` clips the weight norm at 10 and by default skips the bias correction), so ddkit
keeps this short implementation of optax's semantics.
"""

from __future__ import annotations

import torch

__all__ = ["Lamb"]


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
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = torch.tensor(0.0)
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)
                st["step"] += 1
                k = float(st["step"])
                st["exp_avg"].mul_(b1).add_(p.grad, alpha=1 - b1)
                st["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                u = (st["exp_avg"] / (1 - b1 ** k)) / ((st["exp_avg_sq"] / (1 - b2 ** k)).sqrt() + group["eps"])
                p_norm, u_norm = p.norm(), u.norm()
                ratio = torch.where((p_norm > 0) & (u_norm > 0), p_norm / u_norm.clamp_min(1e-30),
                                    torch.ones_like(p_norm))
                p.add_(u * ratio, alpha=-group["lr"])
        return None


