"""DM: Dataset Condensation with Distribution Matching (Zhao & Bilen, WACV 2023).

Each iteration samples a freshly initialised network ψ (ConvNet-3, never trained),
draws one DSA transform per class shared by that class's real and synthetic batches, and
minimises  L = Σ_c ‖ mean_i ψ(A(x^real_{c,i})) − mean_j ψ(A(s_{c,j})) ‖²  (paper eq. 4,
ψ = the network without its classifier) by SGD on the synthetic images (lr 1.0,
momentum 0.5), with 256 real images per class, 20 000 iterations, real-image
initialisation.

Batched form: all classes' real images go through ψ in one forward pass and all synthetic
images in another; per-class means come from a reshape. With per-sample normalisation
(instance norm, the default ConvNet) this is exactly the reference code's per-class loss
(tested); with batch norm it is what the reference code itself does (``main_DM.py``
concatenates the classes for ``ConvNetBN``: statistics over the whole batch).
Classes smaller than ``batch_real`` are sampled with replacement. The real
branch runs without autograd (its embedding is a constant of the loss).

Per-sample weights (``distill(..., sample_weights=w)``, not in the paper; for remedies of
biased data): each class's real mean becomes the weighted mean Σ_i w_i ψ(x_i) / Σ_i w_i over
that class's sampled batch; without weights the loss is the paper's.
"""

from __future__ import annotations

import torch

from ddkit.augment import DSA
from ddkit.distill.base import register
from ddkit.distill.feature_matching import EmbeddingMatchingConfig, EmbeddingMatchingDistiller


class DMConfig(EmbeddingMatchingConfig):
    """DM settings; defaults are the paper's (Zhao & Bilen 2023, Sec. 4 and code): 20 000
    iterations, 256 real images per class, SGD lr 1.0 momentum 0.5, real init, DSA."""


def dm_loss(embed, real: torch.Tensor, syn: torch.Tensor, num_classes: int,
            dsa: DSA | None = None, generator: torch.Generator | None = None,
            weights: torch.Tensor | None = None, real_embed=None) -> torch.Tensor:
    """DM loss over all classes, batched.

    Args:
        embed: the feature map ψ (N×C×H×W → N×D).
        real: (K·B)×C×H×W standardised real images, class-major (B per class).
        syn: (K·S)×C×H×W standardised synthetic images, class-major (S per class).
        num_classes: K. dsa: siamese augmentation (one draw per class) or ``None``.
        weights: optional (K·B,) non-negative weights of the real images (weighted class means).
        real_embed: the feature map of the real branch (run without autograd); default ``embed``
            (another only for a cheaper form of the same map, e.g. under bf16 autocast).

    Returns:
        Scalar Σ_c ‖mean ψ(real_c) − mean ψ(syn_c)‖² (gradient flows to ``syn`` only).
    """
    k = num_classes
    b, s = real.shape[0] // k, syn.shape[0] // k
    if dsa is not None:
        draw = dsa.draw(k, generator)
        real = dsa.apply(real, draw, torch.arange(k).repeat_interleave(b))
        syn = dsa.apply(syn, draw, torch.arange(k).repeat_interleave(s))
    with torch.no_grad():
        h = (real_embed or embed)(real).reshape(k, b, -1)
        if weights is None:
            mu_real = h.mean(1)
        else:
            w = weights.to(h.dtype).reshape(k, b, 1)
            mu_real = (h * w).sum(1) / w.sum(1)
    mu_syn = embed(syn).reshape(k, s, -1).mean(1)
    return ((mu_real - mu_syn) ** 2).sum()


def dm_loss_per_class(embed, real: torch.Tensor, syn: torch.Tensor, num_classes: int,
                      dsa: DSA | None = None, generator: torch.Generator | None = None,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
    """The same loss computed class by class, as the reference code does for models
    without batch norm (a test oracle for :func:`dm_loss`)."""
    k = num_classes
    b, s = real.shape[0] // k, syn.shape[0] // k
    draw = dsa.draw(k, generator) if dsa is not None else None
    loss = syn.new_zeros(())
    for c in range(k):
        r, y = real[c * b:(c + 1) * b], syn[c * s:(c + 1) * s]
        if draw is not None:
            r = dsa.apply(r, draw, torch.full((b,), c))
            y = dsa.apply(y, draw, torch.full((s,), c))
        with torch.no_grad():
            h = embed(r)
            if weights is None:
                mr = h.mean(0)
            else:
                w = weights[c * b:(c + 1) * b].to(h.dtype)[:, None]
                mr = (h * w).sum(0) / w.sum()
        loss = loss + ((mr - embed(y).mean(0)) ** 2).sum()
    return loss


@register
class DMDistiller(EmbeddingMatchingDistiller):
    """Distribution matching (DM). See the module docstring for the algorithm."""

    name = "dm"
    Config = DMConfig
    supports_sample_weights = True

    def matching_loss(self, ctx, embed, real, syn, dsa, generator, weights, real_embed=None):
        return dm_loss(embed, real, syn, ctx.num_classes, dsa, generator, weights, real_embed)
