"""Remedies for biased real data: per-sample weights on the real images for distillation.

Two ways, labelled for what they are:

* ``kde`` — after Cui, Wang, Xiong, Hsieh, *Mitigating Bias in Dataset Distillation*
  (ICML 2024, arXiv 2406.06609): weight every real image by the inverse of a kernel
  density estimate of its embedding within its class, so images in sparse regions (the
  bias-conflicting ones, when the bias is a strong shortcut) count more. No attribute
  labels are used. The paper's feature extractor and bandwidth are not confirmed here
  (a summary of the paper names a supervised contrastive embedding); ddkit's reading,
  all of it in :class:`KDEConfig`: the embedding ψ (features before the classifier) of a
  zoo network (default ``mlp``) trained briefly with cross-entropy on a class-balanced
  seeded subset of the (biased) real set — a network that has learnt the shortcut places
  the conflicting images away from their class's bulk; per class, the embeddings are
  centred, projected on their first ``dims`` principal components (scikit-learn ``PCA``)
  and scaled to unit mean variance; a Gaussian ``KernelDensity`` (scikit-learn;
  bandwidth ``"scott"`` by default) is fitted on at most ``reference`` seeded images of the
  class and every image of the class is scored against them, its own kernel counted once
  whether or not it is a reference point (so a point is never scored against itself
  twice, nor never, and no weight exceeds 1/K(0) times the class's smallest density).
* ``oracle`` — inverse frequency of the *known* bias attribute within the class
  (:attr:`ImageDataset.attributes`): every attribute present in a class gets the same
  total weight. It needs the attribute labels a real dataset does not have: an upper
  bound for the label-free remedy, not a remedy.

Both return weights normalised per class to mean 1 (the class's total weight is its
size), which is what the distillation loop takes (``distill(..., sample_weights=w)``): DM
matches weighted class means, DC/DSA a weighted cross-entropy on the real side.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, PositiveInt, ValidationError

from ddkit.data import ImageDataset
from ddkit.errors import ConfigError

__all__ = ["DEBIAS", "KDEConfig", "debias_weights", "kde_weights", "oracle_weights"]

DEBIAS = ("kde", "oracle")


class KDEConfig(BaseModel):
    """Settings of :func:`kde_weights` (ddkit's defaults; see the module docstring).

    Attributes:
        model: zoo network whose embedding ψ is used. epochs, per_class, lr, batch_size:
            its brief cross-entropy training (SGD, momentum 0.9) on ``per_class`` seeded
            images per class (0 epochs: the randomly initialised network).
        dims: principal components kept per class. bandwidth: ``"scott"``,
            ``"silverman"`` or a positive number (in units of the unit-variance projection).
        reference: at most this many images per class define the density.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = "mlp"
    epochs: int = 5
    per_class: PositiveInt = 300
    lr: float = 0.01
    batch_size: PositiveInt = 64
    dims: PositiveInt = 4
    bandwidth: Literal["scott", "silverman"] | float = "scott"
    reference: PositiveInt = 1000


def _normalised(w: np.ndarray, labels: np.ndarray, k: int) -> torch.Tensor:
    out = np.empty_like(w, dtype=np.float64)
    for c in range(k):
        idx = labels == c
        if idx.any():
            out[idx] = w[idx] / w[idx].mean()
    return torch.from_numpy(out.astype(np.float32))


def oracle_weights(real: ImageDataset) -> torch.Tensor:
    """Inverse frequency of the bias attribute within each class (an upper bound, not a remedy).

    Args:
        real: a dataset with ``attributes`` (int64 (N,)).

    Returns:
        float32 (N,) > 0: w_i ∝ 1 / #{j : y_j = y_i, a_j = a_i}, normalised per class to mean
        1; every attribute present in a class gets the total weight n_c / A_c (A_c: the
        number of attributes present in class c).

    Raises:
        ConfigError: the dataset has no attributes.
    """
    if real.attributes is None:
        raise ConfigError(f"debias 'oracle' needs the bias attribute of every image; {real.name} has none "
                          "(use a biased dataset such as cmnist-dd:rho=0.95,severity=4, or debias 'kde')")
    y = real.labels.numpy()
    a = real.attributes.numpy()
    m = int(a.max()) + 1 if len(a) else 1
    pair = y * m + a
    counts = np.bincount(pair, minlength=real.num_classes * m)
    return _normalised(1.0 / counts[pair], y, real.num_classes)


def _config(config: KDEConfig | dict[str, Any] | None) -> KDEConfig:
    if isinstance(config, KDEConfig):
        return config
    try:
        cfg = KDEConfig(**(config or {}))
    except ValidationError as exc:
        raise ConfigError("kde settings: " + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                                         for e in exc.errors())) from None
    if isinstance(cfg.bandwidth, float) and not cfg.bandwidth > 0:
        raise ConfigError(f"kde bandwidth must be > 0, 'scott' or 'silverman', got {cfg.bandwidth}")
    if cfg.epochs < 0 or not cfg.lr > 0:
        raise ConfigError("kde settings: epochs must be ≥ 0 and lr > 0")
    return cfg


def _embedding_network(real: ImageDataset, cfg: KDEConfig, seed: int, device: torch.device) -> torch.nn.Module:
    from ddkit.models import get_model
    from ddkit.train import TrainConfig, train_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = get_model(cfg.model, real.channels, real.num_classes, real.image_size[0]).to(device)
    if cfg.epochs > 0:
        sub = real.per_class_subset(cfg.per_class, seed=seed)
        x = sub.normalize(sub.float_images()).to(device)
        train_model(net, x, sub.labels.to(device),
                    TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, schedule="constant"),
                    generator=torch.Generator().manual_seed(seed))
    return net.eval()


def _embed(net: torch.nn.Module, real: ImageDataset, idx: torch.Tensor, device: torch.device,
           batch: int = 1000) -> np.ndarray:
    out = []
    with torch.no_grad():
        for s in range(0, idx.numel(), batch):
            x = real.normalize(real.float_images(idx[s:s + batch])).to(device)
            out.append(net.embed(x).flatten(1).double().cpu())
    return torch.cat(out).numpy()


def class_log_density(z: np.ndarray, cfg: KDEConfig, rng: np.random.Generator) -> np.ndarray:
    """log of Σ_{j ∈ R, j ≠ i} K(z_i, z_j) + K(0) for every row i of ``z`` (n×d, float64),
    R: at most ``cfg.reference`` seeded rows; a Gaussian kernel of scikit-learn's
    ``KernelDensity`` (its bandwidth rule), up to a constant shared by the class."""
    from sklearn.neighbors import KernelDensity

    n, d = z.shape
    ref = np.sort(rng.permutation(n)[:cfg.reference]) if n > cfg.reference else np.arange(n)
    kde = KernelDensity(kernel="gaussian", bandwidth=cfg.bandwidth).fit(z[ref])
    h = float(kde.bandwidth_)
    log_k0 = -0.5 * d * np.log(2.0 * np.pi * h * h)
    log_sum = kde.score_samples(z) + np.log(len(ref))  # log Σ_{j∈R} K(z_i, z_j), self included for i ∈ R
    in_ref = np.zeros(n, dtype=bool)
    in_ref[ref] = True
    return np.where(in_ref, log_sum, np.logaddexp(log_sum, log_k0))


def kde_weights(real: ImageDataset, config: KDEConfig | dict[str, Any] | None = None, *, seed: int = 0,
                device: str | torch.device = "cpu") -> tuple[torch.Tensor, dict[str, Any]]:
    """Label-free weights ∝ 1 / (kernel density of the image's embedding within its class).

    Args:
        real: the real training set (uint8 N×C×H×W, int64 labels; attributes not used).
        config: :class:`KDEConfig` or a dict of its fields (unknown keys are errors).
        seed: drives the embedding network's initialisation and training subset and the
            reference draw. device: where the network runs.

    Returns:
        (float32 (N,) > 0 weights normalised per class to mean 1; a JSON-able record of the
        settings, the bandwidth per class and the seconds taken).

    Raises:
        ConfigError: bad settings; a class with fewer than 2 images.
        ModelError: ``model`` does not fit the images.
    """
    from sklearn.decomposition import PCA

    from ddkit.utils import resolve_device

    cfg = _config(config)
    dev = resolve_device(device)
    t0 = time.perf_counter()
    net = _embedding_network(real, cfg, seed, dev)
    rng = np.random.default_rng(seed)
    log_w = np.zeros(len(real), dtype=np.float64)
    bandwidths = []
    for c, idx in enumerate(real.class_indices()):
        if idx.numel() < 2:
            raise ConfigError(f"debias 'kde' needs at least 2 images per class; class {c} has {idx.numel()}")
        h = _embed(net, real, idx, dev)
        h = h - h.mean(0)
        dims = max(1, min(cfg.dims, h.shape[1], idx.numel() - 1))
        z = PCA(n_components=dims, random_state=seed).fit_transform(h)
        scale = np.sqrt(z.var(0).mean())
        z = z / scale if scale > 0 else z
        log_dens = class_log_density(z, cfg, rng)
        log_w[idx.numpy()] = -log_dens
        bandwidths.append(_bandwidth(cfg, z))
    # exp(log w − max per class) before normalising: no overflow
    labels = real.labels.numpy()
    for c in range(real.num_classes):
        sel = labels == c
        if sel.any():
            log_w[sel] -= log_w[sel].max()
    weights = _normalised(np.exp(log_w), labels, real.num_classes)
    info = {"kind": "kde", **cfg.model_dump(), "seed": seed, "bandwidth_per_class": bandwidths,
            "seconds": round(time.perf_counter() - t0, 2)}
    return weights, info


def _bandwidth(cfg: KDEConfig, z: np.ndarray) -> float:
    n, d = min(z.shape[0], cfg.reference), z.shape[1]
    if cfg.bandwidth == "scott":
        return round(float(n ** (-1.0 / (d + 4))), 6)
    if cfg.bandwidth == "silverman":
        return round(float((n * (d + 2) / 4.0) ** (-1.0 / (d + 4))), 6)
    return float(cfg.bandwidth)


def weight_summary(weights: torch.Tensor, real: ImageDataset) -> dict[str, Any]:
    """Min, max, and the effective sample size (Σw)²/Σw² as a share of each class's size,
    averaged over classes; with attributes, the share of weight on bias-conflicting images."""
    ess = []
    for idx in real.class_indices():
        w = weights[idx].double()
        ess.append(float(w.sum() ** 2 / (w * w).sum() / idx.numel()))
    out: dict[str, Any] = {"min": round(float(weights.min()), 6), "max": round(float(weights.max()), 6),
                           "effective_share": round(sum(ess) / len(ess), 6)}
    if real.attributes is not None:
        conflicting = real.attributes != real.labels
        out["conflicting_weight_share"] = round(float(weights[conflicting].sum() / weights.sum()), 6)
        out["conflicting_image_share"] = round(float(conflicting.double().mean()), 6)
    return out


def debias_weights(real: ImageDataset, debias: str, *, seed: int = 0, device: str | torch.device = "cpu",
                   config: KDEConfig | dict[str, Any] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """The per-sample weights of a remedy, and its record for the distilled set's metadata.

    Args:
        real: the real training set. debias: ``"kde"`` or ``"oracle"``.
        seed, device, config: for ``kde`` (:func:`kde_weights`); ``config`` must be
            ``None`` for ``oracle``.

    Returns:
        (float32 (N,) weights, normalised per class to mean 1; ``{"method": debias, ...,
        "weights": summary}`` with :func:`weight_summary`).

    Raises:
        ConfigError: unknown remedy; ``oracle`` on a dataset without attributes; bad
            ``kde`` settings.
    """
    key = str(debias).strip().lower()
    if key not in DEBIAS:
        raise ConfigError(f"unknown debias remedy {debias!r}; use one of {', '.join(DEBIAS)}")
    if key == "oracle":
        if config:
            raise ConfigError("debias 'oracle' takes no settings")
        t0 = time.perf_counter()
        w = oracle_weights(real)
        info: dict[str, Any] = {"kind": "oracle", "note": "inverse attribute frequency per class: an upper bound "
                                                          "that uses the bias labels",
                                "seconds": round(time.perf_counter() - t0, 2)}
    else:
        w, info = kde_weights(real, config, seed=seed, device=device)
    info = {"method": key, **{k: v for k, v in info.items() if k != "kind"}, "weights": weight_summary(w, real)}
    return w, info
