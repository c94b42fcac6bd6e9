"""Backdoor detection for distilled sets that are not signed (``ddkit scan``).

A network is trained on the set (the evaluation protocol's training, ConvNet-3 by
default: :func:`ddkit.evaluate.train_networks`), then three detectors look at it:

* **Neural Cleanse** (Wang et al., "Neural Cleanse: Identifying and Mitigating Backdoor
  Attacks in Neural Networks", IEEE S&P 2019; the authors' Keras code
  bolunwang/backdoor: ``visualizer.py``, ``mad_outlier_detection.py``), written here in
  PyTorch because the adversarial-robustness-toolbox's version is Keras-only. For every
  class t, a mask m (H×W, shared by the channels) and a pattern p (C×H×W) are optimised so
  that the stamped inputs ``(1 − m)·x + m·p`` (pixel space) of the *other* classes are
  classified as t (:func:`reverse_engineer_trigger`), with the L1 norm of m penalised. A
  class whose mask is far smaller than the others' is a likely backdoor target: anomaly
  index = |‖m_t‖₁ − median| / (1.4826 · MAD) (:func:`mad_anomaly_index`), a class flagged
  when it is below the median and its index exceeds 2 (:func:`flagged_classes`).
* **Activation clustering** (Chen et al., "Detecting Backdoor Attacks on Deep Neural
  Networks by Activation Clustering", SafeAI@AAAI 2019): ART's ``ActivationDefence`` on the
  penultimate features of the set's own images, 2-means per class after PCA; a cluster is
  poisonous when it holds < 35 % of its class and the class's silhouette score exceeds 0.1
  (ART's ``silhouette-scores`` analysis).
* **Spectral signatures** (Tran et al., "Spectral Signatures in Backdoor Attacks", NeurIPS
  2018): ART's ``SpectralSignatureDefense`` on the same features; every image gets its
  outlier score (its projection on the class's top singular vector); ART flags the top
  ``1.5 · expected_poison`` share of each class. Since that share is fixed, a class is
  *flagged* here when its largest score is an outlier within the class by the modified
  z-score rule of Iglewicz & Hoaglin (1993): |s − median| / (1.4826 · MAD) > 3.5.

The verdict (:func:`scan`) is Neural Cleanse's: the set is *suspicious* when a class's
anomaly index exceeds the threshold (2); the two clustering detectors are reported beside
it with their own flags, since on a distilled set of a few images per class they see very
few images (see docs/methods.md, "Detection", for measured rates).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ddkit.artifact import DistilledSet
from ddkit.errors import ConfigError

__all__ = ["DETECTORS", "ReversedTrigger", "activation_clustering", "flagged_classes", "mad_anomaly_index",
           "neural_cleanse", "reverse_engineer_trigger", "scan", "spectral_signatures"]

DETECTORS = ("neural-cleanse", "activation-clustering", "spectral-signatures")
MAD_CONSISTENCY = 1.4826  # MAD → σ for normal data (NC's mad_outlier_detection.py)


def mad_anomaly_index(values) -> np.ndarray:
    """Anomaly index of each value: ``|v − median| / (1.4826 · median(|v − median|))``.

    Neural Cleanse's outlier test (``mad_outlier_detection.py``); 1.4826 makes the MAD a
    consistent estimate of σ for normal data.

    Args:
        values: K ≥ 3 finite numbers (e.g. the L1 norms of the reversed masks), any shape
            that flattens to (K,).

    Returns:
        float64 (K,), ≥ 0. Where the MAD is 0, values equal to the median get 0 and the
        others ``inf``.

    Raises:
        ConfigError: fewer than 3 values, or a value that is not finite.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size < 3 or not np.isfinite(v).all():
        raise ConfigError(f"the MAD anomaly index needs at least 3 finite values, got {v.tolist()}")
    med = np.median(v)
    dev = np.abs(v - med)
    mad = MAD_CONSISTENCY * np.median(dev)
    if mad == 0:
        return np.where(dev == 0, 0.0, np.inf)
    return dev / mad


def flagged_classes(norms, threshold: float = 2.0) -> list[int]:
    """Classes whose value is below the median with an anomaly index above ``threshold``
    (Neural Cleanse: only unusually *small* masks point to a backdoor target), smallest
    first.

    Args:
        norms: K ≥ 3 finite numbers. threshold: > 0 (NC: 2).

    Raises:
        ConfigError: as :func:`mad_anomaly_index`, or a threshold ≤ 0.
    """
    if not threshold > 0:
        raise ConfigError(f"the anomaly threshold must be > 0, got {threshold}")
    v = np.asarray(norms, dtype=np.float64).reshape(-1)
    idx = mad_anomaly_index(v)
    med = np.median(v)
    out = [int(k) for k in np.argsort(v, kind="stable") if v[k] < med and idx[k] > threshold]
    return out


@dataclass
class ReversedTrigger:
    """The smallest trigger Neural Cleanse found for one target class.

    Attributes:
        target: the class. mask: H×W float32 in [0, 1]. pattern: C×H×W float32 in [0, 1]
            (pixel space). l1: ‖mask‖₁ (pixels). success: share in [0, 1] of the stamped
            inputs classified as ``target`` with this mask (on the optimisation inputs).
        reached: whether any epoch reached the success threshold (if not, ``mask`` is the
            last one, as in NC's code). epochs: epochs run. cost: the final L1 weight.
    """

    target: int
    mask: Tensor
    pattern: Tensor
    l1: float
    success: float
    reached: bool
    epochs: int
    cost: float


def _logit(p: Tensor) -> Tensor:
    p = p.clamp(1e-4, 1 - 1e-4)
    return torch.log(p) - torch.log1p(-p)


def reverse_engineer_trigger(net: nn.Module, images: Tensor, target: int, mean: tuple[float, ...],
                             std: tuple[float, ...], *, epochs: int = 100, batch_size: int = 32, lr: float = 0.1,
                             init_cost: float = 1e-3, patience: int = 5, cost_multiplier: float = 2.0,
                             success_threshold: float = 0.99, early_stop_patience: int | None = None,
                             seed: int = 0) -> ReversedTrigger:
    """Neural Cleanse's trigger reverse engineering for one target class.

    Optimises ``m = sigmoid(w_m)`` (H×W) and ``p = sigmoid(w_p)`` (C×H×W) with Adam (``lr``,
    betas (0.5, 0.9), as NC's code) on ``CE(net(std((1 − m)·x + m·p)), target) + cost·‖m‖₁``
    over mini-batches of ``images``; the stamping happens in pixel space, then the images
    are standardised with ``mean``/``std``. Both start from uniform random values (NC's
    code). NC's cost schedule: the cost is 0 until the attack succeeds (≥
    ``success_threshold`` of an epoch's inputs) for ``patience`` epochs, then set to
    ``init_cost``; after that it is multiplied by ``cost_multiplier`` after ``patience``
    epochs in a row at or above the threshold and divided by ``cost_multiplier ** 1.5``
    after ``patience`` epochs in a row below it. The smallest mask of an epoch at or above
    the threshold is kept. Early stop as NC's code: once the cost has gone both up and
    down, after ``early_stop_patience`` (default ``5·patience``) epochs without a new best
    (a decrease of the best L1 norm).

    Args:
        net: takes standardised N×C×H×W input, returns N×K logits (put in eval mode during
            the call; its parameters are not changed).
        images: the inputs to flip, pixel space N×C×H×W float (N ≥ 1; NC: clean images of
            the other classes), on any device (moved to the network's).
        target: the class, 0 ≤ target < K. mean, std: the standardisation (C values each).
        epochs: passes over ``images`` (NC's "steps"; ≥ 1). batch_size: ≥ 1.
        seed: seeds the initial mask/pattern and the batch order.

    Returns:
        :class:`ReversedTrigger` (tensors on the CPU).

    Raises:
        ConfigError: empty or non-finite images, a target out of range, or settings out of
            range (epochs, batch size, patience < 1; lr, costs ≤ 0; threshold not in (0, 1]).
    """
    if images.dim() != 4 or images.shape[0] < 1 or not bool(torch.isfinite(images).all()):
        raise ConfigError(f"Neural Cleanse needs a non-empty, finite N×C×H×W image batch, got {tuple(images.shape)}")
    if min(epochs, batch_size, patience) < 1 or not lr > 0 or not init_cost > 0 or not cost_multiplier > 1 \
            or not 0 < success_threshold <= 1:
        raise ConfigError("Neural Cleanse: epochs, batch size and patience must be ≥ 1, lr and the initial cost > 0, "
                          "the cost multiplier > 1 and the success threshold in (0, 1]")
    dev = next(net.parameters()).device
    c, h, w = images.shape[1:]
    was_training = net.training
    net.eval()
    grads = [p.requires_grad for p in net.parameters()]
    for p in net.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        k = int(net(torch.zeros((1, c, h, w), device=dev)).shape[1])
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < k:
        raise ConfigError(f"the target must be a class index in 0..{k - 1}, got {target!r}")
    x_all = images.to(dev, torch.float32)
    m_t = torch.tensor(mean, device=dev, dtype=torch.float32).view(-1, 1, 1)
    s_t = torch.tensor(std, device=dev, dtype=torch.float32).view(-1, 1, 1)
    g = torch.Generator().manual_seed(int(seed))
    w_mask = _logit(torch.rand((1, 1, h, w), generator=g)).to(dev).requires_grad_(True)
    w_pattern = _logit(torch.rand((1, c, h, w), generator=g)).to(dev).requires_grad_(True)
    opt = torch.optim.Adam([w_mask, w_pattern], lr=lr, betas=(0.5, 0.9))
    n = x_all.shape[0]
    stop_patience = 5 * patience if early_stop_patience is None else early_stop_patience
    cost = 0.0
    best_l1, best = math.inf, None
    set_counter = up_counter = down_counter = stop_counter = 0
    up_flag = down_flag = False
    stop_best = math.inf
    last_success, ran = 0.0, 0
    try:
        for run in range(1, epochs + 1):
            order = torch.randperm(n, generator=g).to(dev)
            hits, l1_sum = 0, 0.0
            for s in range(0, n, batch_size):
                x = x_all[order[s:s + batch_size]]
                ran = run
                mask, pattern = torch.sigmoid(w_mask), torch.sigmoid(w_pattern)
                stamped = (1 - mask) * x + mask * pattern
                out = net((stamped - m_t) / s_t)
                y = torch.full((x.shape[0],), target, device=dev, dtype=torch.long)
                l1 = mask.sum()
                loss = F.cross_entropy(out, y) + cost * l1
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                hits += int((out.argmax(1) == target).sum())
                l1_sum += float(l1.detach()) * x.shape[0]
            success, l1_epoch = hits / n, l1_sum / n
            last_success = success
            if success >= success_threshold and l1_epoch < best_l1:
                best_l1 = l1_epoch
                best = (torch.sigmoid(w_mask).detach()[0, 0].cpu(), torch.sigmoid(w_pattern).detach()[0].cpu(),
                        success)
            # early stop (NC's code: only once a valid trigger exists and the cost has gone both ways)
            if best_l1 < math.inf:
                stop_counter = stop_counter + 1 if best_l1 >= stop_best else 0
            stop_best = min(stop_best, best_l1)
            if up_flag and down_flag and stop_counter >= stop_patience:
                break
            # the cost schedule
            if cost == 0 and success >= success_threshold:
                set_counter += 1
                if set_counter >= patience:
                    cost, up_counter, down_counter, up_flag, down_flag = init_cost, 0, 0, False, False
            else:
                set_counter = 0
            if success >= success_threshold:
                up_counter, down_counter = up_counter + 1, 0
            else:
                up_counter, down_counter = 0, down_counter + 1
            if cost > 0 and up_counter >= patience:
                up_counter, cost, up_flag = 0, cost * cost_multiplier, True
            elif cost > 0 and down_counter >= patience:
                down_counter, cost, down_flag = 0, cost / cost_multiplier ** 1.5, True
    finally:
        for p, r in zip(net.parameters(), grads, strict=True):
            p.requires_grad_(r)
        net.train(was_training)
    if best is None:
        mask, pattern = torch.sigmoid(w_mask).detach()[0, 0].cpu(), torch.sigmoid(w_pattern).detach()[0].cpu()
        return ReversedTrigger(target, mask, pattern, float(mask.sum()), last_success, False, ran, cost)
    mask, pattern, success = best
    return ReversedTrigger(target, mask, pattern, float(mask.sum()), success, True, ran, cost)


def neural_cleanse(net: nn.Module, images: Tensor, labels: Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                   num_classes: int, *, threshold: float = 2.0, seed: int = 0, progress: bool = False,
                   **kwargs: Any) -> dict[str, Any]:
    """Neural Cleanse over every class: reversed masks, their L1 norms, the MAD anomaly index.

    For class t the inputs are the ``images`` whose label is not t (the paper's "samples
    from other labels"; NC's code uses its whole test set).

    Args:
        net: as :func:`reverse_engineer_trigger`. images: pixel-space N×C×H×W float;
            labels: int64 (N,) in 0..K−1 (at least 2 classes present). num_classes: K ≥ 3.
        threshold: anomaly index above which a small-norm class is flagged (NC: 2).
        kwargs: settings of :func:`reverse_engineer_trigger` (epochs, batch_size, ...).

    Returns:
        JSON-ready dict: ``norms`` (K floats), ``anomaly_index`` (K), ``flagged`` (class
        indices, smallest norm first), ``score`` (the anomaly index of the smallest norm, NC's
        "anomaly index" of the model), ``threshold``, ``success`` (K), ``reached`` (K),
        ``epochs`` (K), ``masks`` (K×H×W, 3 decimals), ``mask_centres`` (K (row, col) centres
        of mass).

    Raises:
        ConfigError: fewer than 3 classes, labels out of range, or bad settings.
    """
    from ddkit.progress import LoopProgress

    if num_classes < 3:
        raise ConfigError(f"Neural Cleanse's MAD test needs at least 3 classes, the set has {num_classes}")
    if labels.shape != (images.shape[0],) or int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ConfigError(f"labels must be {images.shape[0]} class indices in 0..{num_classes - 1}")
    rows = []
    with LoopProgress("neural cleanse", num_classes, enabled=progress) as bar:
        for t in range(num_classes):
            others = images[labels != t]
            if others.shape[0] == 0:
                raise ConfigError(f"Neural Cleanse needs images of classes other than {t}")
            rows.append(reverse_engineer_trigger(net, others, t, mean, std, seed=seed + t, **kwargs))
            bar.update(rows[-1].l1)
    norms = [r.l1 for r in rows]
    index = mad_anomaly_index(norms)
    h, w = rows[0].mask.shape
    grid_r, grid_c = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                    indexing="ij")
    centres = [[round(float((r.mask * grid_r).sum() / r.mask.sum().clamp_min(1e-12)), 2),
                round(float((r.mask * grid_c).sum() / r.mask.sum().clamp_min(1e-12)), 2)] for r in rows]
    smallest = int(np.argmin(norms))
    return {"norms": [round(v, 4) for v in norms], "anomaly_index": [round(float(v), 4) for v in index],
            "flagged": flagged_classes(norms, threshold), "score": round(float(index[smallest]), 4),
            "smallest_norm_class": smallest, "threshold": threshold,
            "success": [round(r.success, 4) for r in rows], "reached": [r.reached for r in rows],
            "epochs": [r.epochs for r in rows], "mask_centres": centres,
            "masks": [r.mask.numpy().round(3).tolist() for r in rows]}


class _Embedding(nn.Module):
    """``net.embed`` as a module (the penultimate features, N×D)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.embed(x)


class _PenultimateView(nn.Module):
    """A zoo network as ART sees it. ART's poison detectors read the activations of the
    *last* top-level module of a PyTorch model (``PyTorchClassifier.layer_names[-1]``); here
    that is the penultimate features (``embedding``, registered after ``head``), the layer
    both papers cluster, while ``forward`` still returns the logits."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.head = net.classifier
        self.embedding = _Embedding(net)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embedding(x))


def _art_classifier(net: nn.Module, shape: tuple[int, int, int], num_classes: int):
    from art.estimators.classification import PyTorchClassifier

    if not (hasattr(net, "embed") and hasattr(net, "classifier")):
        raise ConfigError("the activation detectors need a zoo network with penultimate features (embed/classifier)")
    dev = next(net.parameters()).device
    net.eval()
    return PyTorchClassifier(model=_PenultimateView(net), loss=nn.CrossEntropyLoss(), input_shape=shape,
                             nb_classes=num_classes, device_type="gpu" if dev.type == "cuda" else "cpu")


def _art_inputs(images: Tensor, labels: Tensor, mean, std, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    x = ((images.float().cpu() - m) / s).numpy().astype(np.float32)
    y = np.eye(num_classes, dtype=np.float32)[labels.cpu().numpy()]
    return x, y


def _check_per_class(labels: Tensor, num_classes: int, least: int, what: str) -> None:
    counts = torch.bincount(labels.cpu(), minlength=num_classes)
    if int(counts.min()) < least:
        raise ConfigError(f"{what} needs at least {least} images in every class, the smallest class has "
                          f"{int(counts.min())}; leave it out with --detectors neural-cleanse")


def activation_clustering(net: nn.Module, images: Tensor, labels: Tensor, mean: tuple[float, ...],
                          std: tuple[float, ...], num_classes: int, *, nb_dims: int = 10,
                          seed: int = 0) -> dict[str, Any]:
    """Activation clustering (Chen et al. 2019) with ART's ``ActivationDefence``.

    ART's ``PyTorchClassifier`` wraps ``net`` so that its detector reads the penultimate
    features; per class, PCA to ``min(nb_dims, class size)`` dimensions, 2-means, and ART's
rule of its ``silhouette-scores`` analysis with its defaults: a cluster is poisonous when it
    holds less than 35 % of its class and the class's silhouette score (scikit-learn) is
    above 0.1. ART clusters (``ActivationDefence.cluster_activations``); the rule is applied
    here because ART 1.20.1's analyses fail under NumPy 2. ART's k-means is not seeded:
    NumPy's global generator is seeded with ``seed`` before the call.

    Args:
        net: a zoo network (``embed``/``classifier``) taking standardised input.
        images: pixel-space N×C×H×W float; labels: int64 (N,), ≥ 3 images in every class.
        mean, std: the standardisation. num_classes: K.

    Returns:
        JSON-ready dict: ``flagged`` (classes with a poisonous cluster), ``suspicious``
        (indices of the images in poisonous clusters), ``per_class`` (cluster sizes,
        silhouette score, flag), the settings.

    Raises:
        ConfigError: a class with fewer than 3 images, or a network without penultimate features.
    """
    from art.defences.detector.poison import ActivationDefence
    from sklearn.metrics import silhouette_score

    _check_per_class(labels, num_classes, 3, "activation clustering")
    x, y = _art_inputs(images, labels, mean, std, num_classes)
    classifier = _art_classifier(net, tuple(x.shape[1:]), num_classes)
    dims = int(min(nb_dims, int(torch.bincount(labels.cpu(), minlength=num_classes).min())))
    defence = ActivationDefence(classifier, x, y)
    np.random.seed(seed)
    # ART 1.20.1's cluster analyses ("relative-size", "silhouette-scores") fail under NumPy 2
    # (an ambiguous truth value, an IndexError), so ART clusters and the rule is applied here.
    clusters_by_class, reduced_by_class = defence.cluster_activations(nb_clusters=2, nb_dims=dims, reduce="PCA")
    labels_np = labels.cpu().numpy()
    size_clean = np.ones(len(labels_np), dtype=int)
    for k in range(num_classes):
        idx = np.flatnonzero(labels_np == k)
        share = np.bincount(clusters_by_class[k], minlength=2) / len(idx)
        size_clean[idx[share[clusters_by_class[k]] < 0.35]] = 0
    is_clean = np.ones(len(size_clean), dtype=int)
    per_class, flagged = [], []
    for k in range(num_classes):
        idx = np.flatnonzero(labels_np == k)
        clusters = clusters_by_class[k]
        sil = float(silhouette_score(reduced_by_class[k], clusters)) \
            if 1 < len(np.unique(clusters)) < len(clusters) else 0.0
        small = bool((size_clean[idx] == 0).any())
        poisoned = small and sil > 0.1
        if poisoned:
            flagged.append(k)
            is_clean[idx] = size_clean[idx]
        per_class.append({"class": k, "cluster_sizes": np.bincount(clusters, minlength=2).tolist(),
                          "silhouette": round(sil, 4), "small_cluster": small, "flagged": poisoned,
                          "suspicious": idx[is_clean[idx] == 0].tolist()})
    suspicious = np.flatnonzero(is_clean == 0).tolist()
    return {"flagged": flagged, "suspicious": sorted(int(i) for i in suspicious), "per_class": per_class,
            "settings": {"nb_clusters": 2, "nb_dims": dims, "reduce": "PCA", "size_threshold": 0.35,
                         "silhouette_threshold": 0.1, "layer": "penultimate features"}}


def spectral_signatures(net: nn.Module, images: Tensor, labels: Tensor, mean: tuple[float, ...],
                        std: tuple[float, ...], num_classes: int, *, expected_poison: float = 0.1,
                        eps_multiplier: float = 1.5, outlier_threshold: float = 3.5) -> dict[str, Any]:
    """Spectral signatures (Tran et al. 2018) with ART's ``SpectralSignatureDefense``.

    Per class, the outlier score of each image is the norm of the projection of its centred
    penultimate features on their top right-singular vector (ART's
    ``spectral_signature_scores``). ART marks the ``eps_multiplier · expected_poison`` share
    of each class with the highest scores (``suspicious``). A class is *flagged* when its
    highest score is an outlier within the class by the modified z-score rule
    (Iglewicz & Hoaglin 1993): ``|s − median| / (1.4826 · MAD) > outlier_threshold``.

    Args:
        net, images, labels, mean, std, num_classes: as :func:`activation_clustering`
            (≥ 3 images in every class).
        expected_poison: the share of poisoned images ART assumes, in (0, 1].

    Returns:
        JSON-ready dict: ``flagged``, ``suspicious`` (image indices), ``per_class`` (the
        largest score's modified z-score, flag, scores), settings.

    Raises:
        ConfigError: a class with fewer than 3 images, ``expected_poison`` outside (0, 1].
    """
    from art.defences.detector.poison import SpectralSignatureDefense

    if not 0 < expected_poison <= 1 or not eps_multiplier > 0:
        raise ConfigError(f"expected_poison must be in (0, 1] and eps_multiplier > 0, got {expected_poison}, "
                          f"{eps_multiplier}")
    _check_per_class(labels, num_classes, 3, "spectral signatures")
    x, y = _art_inputs(images, labels, mean, std, num_classes)
    classifier = _art_classifier(net, tuple(x.shape[1:]), num_classes)
    defence = SpectralSignatureDefense(classifier, x, y, expected_pp_poison=expected_poison,
                                       eps_multiplier=eps_multiplier, batch_size=128)
    _, is_clean = defence.detect_poison()
    is_clean = np.asarray(is_clean)
    feats = classifier.get_activations(x, layer=len(classifier.layer_names) - 1, batch_size=128)
    feats = np.reshape(feats, (feats.shape[0], -1))
    labels_np = labels.cpu().numpy()
    per_class, flagged = [], []
    for k in range(num_classes):
        idx = np.flatnonzero(labels_np == k)
        scores = SpectralSignatureDefense.spectral_signature_scores(feats[idx]).reshape(-1)
        z = mad_anomaly_index(scores)
        top = int(np.argmax(scores))
        flag = bool(z[top] > outlier_threshold)
        if flag:
            flagged.append(k)
        per_class.append({"class": k, "max_z": round(float(z[top]), 4) if np.isfinite(z[top]) else None,
                          "flagged": flag, "top_image": int(idx[top]), "suspicious": idx[is_clean[idx] == 0].tolist(),
                          "scores": [round(float(s), 4) for s in scores]})
    suspicious = np.flatnonzero(is_clean == 0).tolist()
    return {"flagged": flagged, "suspicious": suspicious, "per_class": per_class,
            "settings": {"expected_poison": expected_poison, "eps_multiplier": eps_multiplier,
                         "outlier_threshold": outlier_threshold, "layer": "penultimate features"}}


@dataclass
class ScanResult:
    """What :func:`scan` found: per-detector results and the verdict (JSON via :meth:`to_json`)."""

    file: str | None
    set: dict[str, Any]
    verdict: dict[str, Any]
    detectors: dict[str, Any]
    settings: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        import json

        return json.dumps(asdict(self), indent=2)


def scan(distilled: DistilledSet | str | Path, *, detectors: tuple[str, ...] = DETECTORS,
         model: str = "convnet-w32", epochs: int = 100, augment: bool = False, nc_epochs: int = 60,
         nc_batch_size: int = 32,
         threshold: float = 2.0, clean_data: str | None = None, clean_images: int = 500,
         expected_poison: float = 0.1, seed: int = 0, device: str | torch.device = "auto",
         data_root: str | Path | None = None, download: bool = False, progress: bool = False) -> ScanResult:
    """Score how likely a distilled set carries a backdoor (see the module docstring).

    One ``model`` network is trained on the set with the evaluation protocol's training
    (``hard``: SGD lr 0.01, momentum 0.9, ``epochs`` epochs; DSA only with ``augment``: the
    scan wants the network to learn what the set's pixels teach, a corner patch included).
    The default is ConvNet-3 of width 32 (``convnet-w32``): Neural Cleanse runs K
    optimisations through the network, and on a 2-core CPU one forward and backward pass
    costs ~12 ms per 28×28 image with width 128 against ~2 ms with width 32. Neural
    Cleanse flips the set's own images (the default: a user without raw data) or, with
    ``clean_data``, ``clean_images`` real test images of that dataset (class-balanced,
    drawn with ``seed``); the clustering detectors always look at the set's own images.

    Args:
        distilled: a hard-label distilled set (or its path). detectors: a subset of
            :data:`DETECTORS`. threshold: NC's anomaly-index threshold (2).
        nc_epochs, nc_batch_size: Neural Cleanse's epochs and batch per class.
        expected_poison: spectral signatures' assumed poisoned share.

    Returns:
        :class:`ScanResult`; ``verdict["suspicious"]`` is Neural Cleanse's flag (a class with
        anomaly index > ``threshold``), ``verdict["flags"]`` each detector's.

    Raises:
        ConfigError: unknown or no detectors, a set with soft labels or fewer than 3
            classes, bad settings. ArtifactError, DatasetNotFoundError, ModelError: a bad
            file, clean data not found, a model that does not fit.
    """
    from ddkit.evaluate import train_networks
    from ddkit.utils import resolve_device

    t_all = time.perf_counter()
    detectors = tuple(detectors)
    unknown = [d for d in detectors if d not in DETECTORS]
    if unknown or not detectors:
        raise ConfigError(f"unknown detector(s) {', '.join(unknown) or '(none given)'}; choose from "
                          f"{', '.join(DETECTORS)}")
    path = None if isinstance(distilled, DistilledSet) else str(distilled)
    ds = distilled if isinstance(distilled, DistilledSet) else DistilledSet.load(distilled)
    if ds.label_kind != "hard":
        raise ConfigError(f"the scan needs a hard-label set, this one has {ds.label_kind} labels")
    k = ds.num_classes
    if k < 3:
        raise ConfigError(f"the scan's outlier tests need at least 3 classes, the set has {k}")
    if min(epochs, nc_epochs, nc_batch_size, clean_images) < 1:
        raise ConfigError("epochs, Neural Cleanse epochs, its batch size and clean images must be ≥ 1")
    dev = resolve_device(device)
    timings: dict[str, float] = {}
    clean_source = "the set's own images"
    nc_x, nc_y = ds.images, ds.labels
    if "neural-cleanse" in detectors and clean_data is not None:
        from ddkit.data import load_dataset

        real = load_dataset(clean_data, "test", data_root=data_root, download=download)
        if real.num_classes != k or real.channels != ds.images.shape[1] or \
                tuple(real.image_size) != tuple(ds.images.shape[-2:]):
            raise ConfigError(f"--clean-data {clean_data}: {real.num_classes} classes of {real.channels}×"
                              f"{real.image_size[0]}×{real.image_size[1]} images do not match the set's {k} classes "
                              f"of {tuple(ds.images.shape[1:])}")
        per = max(1, clean_images // k)
        sub = real.per_class_subset(per, seed=seed)
        nc_x, nc_y = sub.float_images(), sub.labels
        clean_source = f"{len(sub)} real test images of {clean_data} ({per} per class, seed {seed})"
    t0 = time.perf_counter()
    trained = train_networks(ds, model=model, runs=1, epochs=epochs, augment=augment, seed=seed, device=dev,
                             protocol="hard")
    net = trained.networks[0].eval()
    timings["training"] = round(time.perf_counter() - t0, 2)
    results: dict[str, Any] = {}
    if "neural-cleanse" in detectors:
        t0 = time.perf_counter()
        results["neural-cleanse"] = {**neural_cleanse(net, nc_x, nc_y, ds.mean, ds.std, k, threshold=threshold,
                                                      seed=seed, progress=progress, epochs=nc_epochs,
                                                      batch_size=nc_batch_size),
                                     "inputs": clean_source}
        timings["neural-cleanse"] = round(time.perf_counter() - t0, 2)
    if "activation-clustering" in detectors:
        t0 = time.perf_counter()
        results["activation-clustering"] = activation_clustering(net, ds.images, ds.labels, ds.mean, ds.std, k,
                                                                 seed=seed)
        timings["activation-clustering"] = round(time.perf_counter() - t0, 2)
    if "spectral-signatures" in detectors:
        t0 = time.perf_counter()
        results["spectral-signatures"] = spectral_signatures(net, ds.images, ds.labels, ds.mean, ds.std, k,
                                                             expected_poison=expected_poison)
        timings["spectral-signatures"] = round(time.perf_counter() - t0, 2)
    flags = {name: bool(r["flagged"]) for name, r in results.items()}
    if "neural-cleanse" in results:
        nc = results["neural-cleanse"]
        verdict = {"suspicious": bool(nc["flagged"]), "by": "neural-cleanse", "score": nc["score"],
                   "threshold": threshold, "target_candidates": nc["flagged"], "flags": flags,
                   "rule": f"suspicious when a class's reversed-mask L1 norm is below the median with MAD anomaly "
                           f"index > {threshold:g} (Neural Cleanse)"}
    else:
        verdict = {"suspicious": any(flags.values()), "by": "+".join(results), "score": None, "threshold": None,
                   "target_candidates": sorted({c for r in results.values() for c in r["flagged"]}), "flags": flags,
                   "rule": "suspicious when a detector flags a class (Neural Cleanse not run)"}
    timings["total"] = round(time.perf_counter() - t_all, 2)
    settings = {"detectors": list(detectors), "model": model, "epochs": epochs, "augment": augment,
                "protocol": trained.protocol, "nc_epochs": nc_epochs, "nc_batch_size": nc_batch_size,
                "threshold": threshold, "clean_data": clean_data, "clean_images": clean_images if clean_data else None,
                "expected_poison": expected_poison, "seed": seed, "device": str(dev)}
    info = {"method": ds.method, "dataset": ds.dataset, "ipc": ds.ipc, "images": int(ds.images.shape[0]),
            "classes": k, "backdoor_record": ds.extra.get("backdoor", {}).get("attack")
            if isinstance(ds.extra.get("backdoor"), dict) else None}
    return ScanResult(path, info, verdict, results, settings, timings)
