"""UniDD's spectral lens on dataset distillation: filters, FFC/FLC statistics, the loss.

Source: Deyu Bo, Songhua Liu, Xinchao Wang, *Understanding Dataset Distillation via
Spectral Filtering*, ICLR 2026, arXiv 2503.01212. Every matching objective is read as

    min_S ‖f(HᵀH) g(HᵀY) − f(H_sᵀH_s) g(H_sᵀY_s)‖_F²

with ``H`` features (n×d), ``Y`` labels (n×k), ``HᵀH`` the feature–feature correlation
(FFC), ``HᵀY`` the feature–label correlation (FLC), ``g`` the identity or the FLC, and
``f`` a filter on the FFC's eigenvalues: ``1`` (DM), ``λ`` (DC/DSA), ``(1 − αλ)^p`` (MTT),
``(λ + β)^-1`` (KRR: KIP, FRePo, RFAD). See ``docs/spectral.md``.

Example::

    from ddkit.spectral import feature_stats, get_filter, spectral_matching_loss
    real = feature_stats(H_real, y_real, num_classes=10)   # mean-normalised, float64
    syn = feature_stats(H_syn, y_syn, num_classes=10)
    loss = spectral_matching_loss(get_filter("inverse", beta=0.1), real, syn, g="flc")
"""

from ddkit.spectral.filters import (
    FILTERS,
    Filter,
    apply,
    custom,
    get_filter,
    identity,
    inverse,
    linear,
    polynomial,
    psd_tolerance,
)
from ddkit.spectral.loss import krr_predict, krr_predict_kernel, spectral_matching_loss, trace_ridge_krr
from ddkit.spectral.stats import (
    FeatureStats,
    RunningStats,
    centred_one_hot,
    class_feature_stats,
    feature_stats,
    label_matrix,
)

__all__ = [
    "FILTERS", "FeatureStats", "Filter", "RunningStats", "apply", "centred_one_hot",
    "class_feature_stats", "custom", "feature_stats",
    "get_filter", "identity", "inverse", "krr_predict", "krr_predict_kernel", "label_matrix", "linear",
    "polynomial", "psd_tolerance", "spectral_matching_loss", "trace_ridge_krr",
]
