"""``spectral``: generic spectral matching with a chosen UniDD filter (DM's training recipe).

Source of the objective: UniDD (Bo, Liu, Wang, ICLR 2026, arXiv 2503.01212), which reads
every matching method as ``‖f(HᵀH) HᵀY − f(H_sᵀH_s) H_sᵀY_s‖_F²`` for a filter ``f`` on
the feature–feature correlation. This method optimises that objective directly, with
``f`` one of ``identity`` (DM), ``linear`` (DC), ``inverse`` (KRR; ``beta``) or
``polynomial`` (MTT; ``alpha``, ``p``) — see :mod:`ddkit.spectral`.

Each iteration, like DM (Zhao & Bilen, WACV 2023): sample a freshly initialised network
(``model``, default ConvNet-3; never trained); draw one DSA transform per class, shared by
that class's real and synthetic images; embed ``batch_real`` real images per class and
the whole synthetic set with the penultimate features ``net.embed``; compute both sets'
mean-normalised float64 FFC ``HᵀH/n`` and FLC ``HᵀY/n`` with one-hot labels ``Y`` (the
real branch without autograd); minimise

    L = K² · ‖f(HᵀH/n) HᵀY/n − f(H_sᵀH_s/m) H_sᵀY_s/m‖_F²

by SGD on the synthetic images. UniDD gives no generic recipe for such a method, so the
optimisation is DM's, borrowed: SGD lr 1.0, momentum 0.5, real-image initialisation, 256
real images per class, 20 000 iterations, DSA ``color_crop_cutout_flip_scale_rotate``.

The factor K² (K classes) makes the identity filter *exactly* DM: with balanced classes
the FLC's column c is ``μ_c/K``, so ``L = Σ_c ‖μ_c − μ^s_c‖²``, DM's loss, with the same
gradient, and DM's learning rate carries over (tested against ``dm_loss``). For the
other filters the scale of ``L`` depends on the FFC's eigenvalues and ``lr_img`` may need
tuning. The filter parameters are ours, not the paper's: ``beta`` (0.1, CFM's β0 for
CIFAR), ``alpha`` (1e-3) and ``p`` (1) are in the units of the mean-normalised FFC's
eigenvalues, which grow with the feature dimension (ConvNet-3 on 32×32: d = 2048); the
polynomial filter needs ``alpha·λ_max < 1``.

All classes are embedded in one pass (for batch-norm feature maps: statistics over the
whole batch, as DM's reference code does for ``ConvNetBN``).
"""

from __future__ import annotations

import torch
from pydantic import Field, field_validator
from torch.nn import functional as F

from ddkit.augment import DSA
from ddkit.distill.base import LoopState, RunContext, SetParts, register
from ddkit.distill.feature_matching import EmbeddingMatchingConfig, EmbeddingMatchingDistiller
from ddkit.errors import ConfigError
from ddkit.spectral import Filter, feature_stats, get_filter, spectral_matching_loss

_FILTER_PARAMS = {"identity": (), "linear": (), "inverse": ("beta",), "polynomial": ("alpha", "p")}


class SpectralConfig(EmbeddingMatchingConfig):
    """Settings of ``spectral``; optimisation defaults borrowed from DM, filter parameters ours."""

    filter: str = "identity"  # identity, linear, inverse, polynomial
    beta: float = Field(0.1, gt=0, allow_inf_nan=False)  # inverse: f = (λ + β)^-1
    alpha: float = Field(1e-3, gt=0, allow_inf_nan=False)  # polynomial: f = (1 − αλ)^p
    p: float = Field(1.0, gt=0, allow_inf_nan=False)

    @field_validator("filter")
    @classmethod
    def _known_filter(cls, v: str) -> str:
        key = v.strip().lower()
        if key not in _FILTER_PARAMS:
            raise ValueError(f"unknown filter {v!r}; choose from {', '.join(_FILTER_PARAMS)}")
        return key

    def make_filter(self) -> Filter:
        """The configured filter (only its own parameters are passed on).

        Raises:
            ConfigError: unknown filter name or bad parameter value.
        """
        key = self.filter.strip().lower()
        if key not in _FILTER_PARAMS:
            raise ConfigError(f"unknown filter {self.filter!r} for method 'spectral'; "
                              f"choose from {', '.join(_FILTER_PARAMS)}")
        return get_filter(key, **{name: getattr(self, name) for name in _FILTER_PARAMS[key]})



def spectral_loss(embed, real: torch.Tensor, syn: torch.Tensor, num_classes: int, filt: Filter | str,
                  dsa: DSA | None = None, generator: torch.Generator | None = None,
                  real_embed=None) -> torch.Tensor:
    """K² · UniDD spectral matching loss (g = FLC) between a real batch and the synthetic set.

    Args:
        embed: the feature map (N×C×H×W → N×D).
        real: (K·B)×C×H×W standardised real images, class-major (B per class).
        syn: (K·S)×C×H×W standardised synthetic images, class-major (S per class).
        num_classes: K. filt: the filter. dsa: siamese augmentation (one draw per class).
        generator: for the DSA draw. All classes are embedded in one pass.
        real_embed: the feature map of the real branch (run without autograd); default ``embed``.

    Returns:
        Scalar float64 loss; gradient flows to ``syn`` only. With the identity filter it is
        DM's ``Σ_c ‖mean ψ(real_c) − mean ψ(syn_c)‖²``.
    """
    filt = get_filter(filt)
    k = num_classes
    b, s = real.shape[0] // k, syn.shape[0] // k
    y_real, y_syn = torch.arange(k).repeat_interleave(b), torch.arange(k).repeat_interleave(s)
    if dsa is not None:
        draw = dsa.draw(k, generator)
        real = dsa.apply(real, draw, y_real)
        syn = dsa.apply(syn, draw, y_syn)

    with torch.no_grad():
        h_real = (real_embed or embed)(real)
    h_syn = embed(syn)
    need_ffc = filt.kind != "identity"
    st_real = feature_stats(h_real, F.one_hot(y_real, k).to(h_real.device), ffc=need_ffc)
    st_syn = feature_stats(h_syn, F.one_hot(y_syn, k).to(h_syn.device), ffc=need_ffc)
    return (k * k) * spectral_matching_loss(filt, st_real, st_syn, g="flc")


@register
class SpectralDistiller(EmbeddingMatchingDistiller):
    """Spectral matching with a configurable UniDD filter. See the module docstring.

    Its loop makes the same draws as DM's, so the identity filter reproduces a DM run.
    """

    name = "spectral"
    Config = SpectralConfig

    def check(self, ctx: RunContext) -> None:
        ctx.aux["filter"] = ctx.config.make_filter()

    def title(self, ctx: RunContext) -> str:
        return f"spectral[{ctx.aux['filter'].name}] ipc={ctx.ipc}"

    def matching_loss(self, ctx, embed, real, syn, dsa, generator, weights, real_embed=None):
        return spectral_loss(embed, real, syn, ctx.num_classes, ctx.aux["filter"], dsa, generator, real_embed)

    def finish(self, state: LoopState, ctx: RunContext) -> SetParts:
        parts = super().finish(state, ctx)
        filt = ctx.aux["filter"]
        parts.extra.update(filter=filt.name, filter_params=filt.params)
        return parts
