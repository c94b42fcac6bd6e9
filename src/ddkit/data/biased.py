"""Biased benchmarks for dataset distillation: CMNIST-DD, CFMNIST-DD and CCIFAR10-DD.

Sources: Lu, Gu, Chen, Vahidian, Xuan, *Exploring the Impact of Dataset Bias on Dataset
Distillation* (arXiv 2403.16028), whose builders are in github: yaolu-zjut/Biased-DD
(``biased_mnist_v1.py``, ``biased_cifar10.py``, ``corrupted_cifar10_protocol.py``,
``colors.th``); both follow LfF (Nam et al. 2020). Read there, written here.

Every image gets a *bias attribute* a ∈ {0..9} beside its label y (stored in
:attr:`ImageDataset.attributes <ddkit.data.dataset.ImageDataset>`):

* Attribute assignment (:func:`attribute_labels`): in class y with n_y images, the ratio
  row r = ρ·e_y + (1 − ρ)/9·(1 − e_y), the milestones round(n_y · cumsum(r)) (NumPy's
  round half to even); the i-th image of the class in dataset order takes the first
  attribute whose milestone exceeds i, so attributes come in contiguous blocks, 0 first.
  A share ρ is *bias-aligned* (a = y), the rest spread evenly over the other nine.
* **CMNIST-DD** (``cmnist-dd``, MNIST): image = trunc(clamp(c_a + N(0, σ²)·1₃, 0, 1) ×
  digit) as uint8, 3×28×28: one 3×1×1 colour draw per image around the attribute's mean
  colour c_a (:data:`MEAN_COLOURS`, the authors' ``colors.th``), σ by severity 1..4 =
  0.05, 0.02, 0.01, 0.005 (:data:`COLOUR_STD`; higher severity, less jitter, a stronger
  shortcut), multiplied into the uint8 digit (0..255) in float32 and truncated to uint8.
  One ``torch.Generator`` seeded with ``seed`` (default 42, the authors') draws
  ``randn(3, 1, 1)`` per image, the test split's images first, then the training split's,
  each in dataset order: the order of the authors' script in its first grid cell (their
  later cells continue one global stream over the ρ × severity grid; ddkit starts every
  dataset from the seed, so only that first cell can coincide draw for draw).
* **CFMNIST-DD** (``cfmnist-dd``): the same colouring of Fashion-MNIST. Not in the
  Biased-DD repository: ddkit's extension (bias.md calls it a natural third benchmark).
* **CCIFAR10-DD** (``ccifar10-dd``, CIFAR-10, 3×32×32): the attribute picks a corruption,
  in the order of :data:`CORRUPTIONS` (snow, frost, fog, brightness, contrast, spatter,
  elastic, JPEG, pixelate, saturate); severity s applies level s + 1 of the CIFAR-10-C
  parameters (:mod:`ddkit.data.corruptions`, which says where its port differs). Built
  only where CIFAR-10 is on disk (or downloaded when asked).

The **test split uses ρ = 0** (every image bias-conflicting, a ≠ y), as the authors'
script; ``test_rho=R`` in the name builds it at another ρ (for bias-aligned /
bias-conflicting accuracies). Normalisation mean/std are those of the training split.

Names (:func:`parse_name`): ``FAMILY:rho=R,severity=S[,seed=N][,test_rho=T]`` with
ρ, T in [0, 1], S in 1..4, N ≥ 0, e.g. ``cmnist-dd:rho=0.95,severity=4``; the canonical
spelling (what a distilled set records) leaves out defaults. Deterministic: the same
name, data and versions give the same images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ddkit.data.dataset import ImageDataset
from ddkit.errors import ConfigError

__all__ = ["COLOUR_STD", "CORRUPTIONS", "DEFAULT_SEED", "FAMILIES", "MEAN_COLOURS", "BiasedSpec", "attribute_labels",
           "colorize", "is_biased_name", "load_biased", "parse_name"]

#: the ten mean colours c_0..c_9 (RGB in [0, 1]), the float32 values of the authors' ``colors.th``
MEAN_COLOURS: tuple[tuple[float, float, float], ...] = (
    (0.9836823344230652, 0.31251901388168335, 0.16857534646987915),
    (0.9905296564102173, 0.9156052470207214, 0.35151219367980957),
    (0.6729639768600464, 0.4610704779624939, 0.5798081755638123),
    (0.783251941204071, 0.8315559029579163, 0.6013293862342834),
    (0.08801579475402832, 0.7779633402824402, 0.9818077683448792),
    (0.32139337062835693, 0.9610545635223389, 0.446449875831604),
    (0.024615883827209473, 0.23565047979354858, 0.7586662769317627),
    (0.5552469491958618, 0.10158014297485352, 0.7617631554603577),
    (0.2077232003211975, 0.3929485082626343, 0.018702387809753418),
    (0.8336576223373413, 0.2024092674255371, 0.266943097114563),
)
#: σ of the colour jitter by severity (``biased_mnist_v1.py``: severity 1..4)
COLOUR_STD: dict[int, float] = {1: 0.05, 2: 0.02, 3: 0.01, 4: 0.005}
#: CCIFAR10-DD's corruption per attribute, in the authors' order
CORRUPTIONS: tuple[str, ...] = ("snow", "frost", "fog", "brightness", "contrast", "spatter", "elastic", "jpeg",
                                "pixelate", "saturate")
#: the authors' seed (``biased_mnist(seed=42)``)
DEFAULT_SEED = 42
#: family → (base dataset, what the attribute is)
FAMILIES: dict[str, tuple[str, str]] = {
    "cmnist-dd": ("mnist", "colour"),
    "cfmnist-dd": ("fashion-mnist", "colour"),
    "ccifar10-dd": ("cifar10", "corruption"),
}
NUM_ATTRIBUTES = 10
_KEYS = ("rho", "severity", "seed", "test_rho")
_EXAMPLE = "cmnist-dd:rho=0.95,severity=4"


@dataclass(frozen=True)
class BiasedSpec:
    """A biased dataset's parameters: ``family`` (a key of :data:`FAMILIES`), the training
    split's ``rho`` in [0, 1], ``severity`` 1..4, the colour/corruption ``seed`` and the test
    split's ``test_rho`` in [0, 1] (0: every test image bias-conflicting)."""

    family: str
    rho: float
    severity: int
    seed: int = DEFAULT_SEED
    test_rho: float = 0.0

    @property
    def name(self) -> str:
        """The canonical name, e.g. ``cmnist-dd:rho=0.95,severity=4`` (defaults left out)."""
        parts = [f"rho={_num(self.rho)}", f"severity={self.severity}"]
        if self.seed != DEFAULT_SEED:
            parts.append(f"seed={self.seed}")
        if self.test_rho != 0.0:
            parts.append(f"test_rho={_num(self.test_rho)}")
        return f"{self.family}:{','.join(parts)}"

    @property
    def base(self) -> str:
        """The registry name of the unbiased dataset it is built from."""
        return FAMILIES[self.family][0]

    def rho_of(self, split: str) -> float:
        """ρ of ``split``: ``rho`` for ``"train"``, ``test_rho`` for ``"test"``."""
        return self.rho if split == "train" else self.test_rho

    def with_test_rho(self, test_rho: float) -> BiasedSpec:
        """The same dataset with its test split built at ``test_rho`` (ConfigError outside [0, 1])."""
        return BiasedSpec(self.family, self.rho, self.severity, self.seed, _ratio("test_rho", test_rho))


def _num(x: float) -> str:
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


def _ratio(key: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number in [0, 1], got {value!r}") from None
    if not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise ConfigError(f"{key} must be in [0, 1] (the bias-aligned share), got {value!r}")
    return v


def family_of(name: str) -> str | None:
    """The biased family a dataset name belongs to (``"cmnist-dd"``, ...), or ``None``."""
    head = str(name).split(":", 1)[0].strip().lower().replace("_", "-")
    return head if head in FAMILIES else None


def is_biased_name(name: str) -> bool:
    """Whether ``name`` names one of the biased families (well-formed or not)."""
    return family_of(name) is not None


def parse_name(name: str) -> BiasedSpec:
    """Parse ``FAMILY:rho=R,severity=S[,seed=N][,test_rho=T]``.

    Args:
        name: e.g. ``cmnist-dd:rho=0.95,severity=4``; FAMILY one of :data:`FAMILIES`
            (case and ``_``/``-`` ignored), keys in any order.

    Returns:
        The :class:`BiasedSpec` (its ``name`` is the canonical spelling).

    Raises:
        ConfigError: not a biased family, a missing ``rho`` or ``severity``, a key given
            twice or unknown, ρ or T outside [0, 1], S outside 1..4, N not an integer ≥ 0.
    """
    family = family_of(name)
    if family is None:
        raise ConfigError(f"{name!r} is not a biased dataset; use one of {', '.join(FAMILIES)}, as in {_EXAMPLE}")
    rest = str(name).split(":", 1)[1] if ":" in str(name) else ""
    values: dict[str, str] = {}
    for item in (p.strip() for p in rest.split(",")):
        if not item:
            continue
        if "=" not in item:
            raise ConfigError(f"{family}: parameter {item!r} is not key=value, as in {_EXAMPLE}")
        key, raw = (s.strip().lower() for s in item.split("=", 1))
        if key not in _KEYS:
            raise ConfigError(f"{family}: unknown parameter {key!r}; known: {', '.join(_KEYS)}")
        if key in values:
            raise ConfigError(f"{family}: parameter {key!r} is given twice")
        values[key] = raw
    missing = [k for k in ("rho", "severity") if k not in values]
    if missing:
        raise ConfigError(f"{family} needs {' and '.join(f'{k}=' for k in missing)}, as in "
                          f"{family}:rho=0.95,severity=4")
    rho = _ratio("rho", values["rho"])
    try:
        severity = int(values["severity"])
    except ValueError:
        severity = -1
    if severity not in COLOUR_STD:
        raise ConfigError(f"severity must be an integer 1..4, got {values['severity']!r}")
    seed = DEFAULT_SEED
    if "seed" in values:
        try:
            seed = int(values["seed"])
        except ValueError:
            seed = -1
        if seed < 0:
            raise ConfigError(f"seed must be an integer ≥ 0, got {values['seed']!r}")
    test_rho = _ratio("test_rho", values["test_rho"]) if "test_rho" in values else 0.0
    return BiasedSpec(family, rho, severity, seed, test_rho)


def attribute_labels(labels: torch.Tensor, rho: float, num_attributes: int = NUM_ATTRIBUTES) -> torch.Tensor:
    """The bias attribute of every image, assigned in contiguous blocks per class (LfF, Biased-DD).

    Args:
        labels: int64 (N,) class labels in 0..num_attributes−1 (one attribute per class).
        rho: the bias-aligned share in [0, 1].
        num_attributes: K (10 for the benchmarks).

    Returns:
        int64 (N,) attributes in 0..K−1. Within class y (n_y images, dataset order), image i
        takes the first attribute a with round(n_y · Σ_{b≤a} r_b) > i, r = ρ·e_y +
        (1 − ρ)/(K − 1)·(1 − e_y): exactly round(n_y·ρ)-ish aligned images (the milestones'
        differences), the others in blocks over the other attributes. ρ = 0 gives no
        aligned image at all.

    Raises:
        ConfigError: ρ outside [0, 1]; labels not integers in 0..K−1; K < 2.
    """
    rho = _ratio("rho", rho)
    if num_attributes < 2:
        raise ConfigError(f"a biased dataset needs at least 2 attributes, got {num_attributes}")
    y = torch.as_tensor(labels)
    if y.dtype.is_floating_point or y.dim() != 1:
        raise ConfigError("labels must be a 1-D integer tensor")
    y = y.long().cpu().numpy()
    if len(y) and (y.min() < 0 or y.max() >= num_attributes):
        raise ConfigError(f"labels must lie in 0..{num_attributes - 1} (one attribute per class)")
    k = num_attributes
    eye = np.eye(k)
    row = rho * eye + (1.0 - rho) / (k - 1) * (1.0 - eye)
    counts = np.bincount(y, minlength=k)
    milestones = (counts[:, None] * np.cumsum(row, axis=1)).round()
    out = np.zeros(len(y), dtype=np.int64)
    for c in range(k):
        idx = np.flatnonzero(y == c)
        # first attribute whose milestone exceeds the position; the last milestone is n_y
        out[idx] = np.minimum(np.searchsorted(milestones[c], np.arange(len(idx)), side="right"), k - 1)
    return torch.from_numpy(out)


def colour_noise(n_test: int, n_train: int, seed: int = DEFAULT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """The colour draws ε ~ N(0, 1), float32 (n, 3, 1, 1) per image, test split first.

    One ``torch.Generator`` seeded with ``seed`` draws ``randn(3, 1, 1)`` once per image
    (the authors' per-image call, so the stream is the one their first grid cell used):
    the test split's n_test images, then the training split's n_train.
    """
    g = torch.Generator().manual_seed(int(seed))
    draws = [torch.randn((3, 1, 1), generator=g) for _ in range(n_test + n_train)]
    if not draws:
        empty = torch.zeros((0, 3, 1, 1))
        return empty, empty
    allx = torch.stack(draws)
    return allx[:n_test], allx[n_test:]


def colorize(images: torch.Tensor, attributes: torch.Tensor, severity: int, noise: torch.Tensor,
             chunk: int = 8192) -> torch.Tensor:
    """Colour grey images by attribute: trunc(clamp(c_a + σ·ε, 0, 1) × digit) (Biased-DD's ``colorize``).

    Args:
        images: uint8 N×1×H×W grey images (0..255).
        attributes: int64 (N,) in 0..9 (the index into :data:`MEAN_COLOURS`).
        severity: 1..4 (σ = :data:`COLOUR_STD`).
        noise: float32 (N, 3, 1, 1) standard normal draws, one per image (:func:`colour_noise`).

    Returns:
        uint8 N×3×H×W: the float32 product truncated toward zero, as ``np.uint8`` does.

    Raises:
        ConfigError: shapes that do not match, an attribute outside 0..9, a severity outside 1..4.
    """
    if severity not in COLOUR_STD:
        raise ConfigError(f"severity must be an integer 1..4, got {severity!r}")
    if images.dim() != 4 or images.shape[1] != 1 or images.dtype != torch.uint8:
        raise ConfigError(f"colorize takes uint8 N×1×H×W images, got {images.dtype} {tuple(images.shape)}")
    n = images.shape[0]
    if attributes.shape != (n,) or noise.shape != (n, 3, 1, 1):
        raise ConfigError(f"colorize needs one attribute and one (3, 1, 1) draw per image ({n})")
    if n and (int(attributes.min()) < 0 or int(attributes.max()) >= len(MEAN_COLOURS)):
        raise ConfigError(f"attributes must lie in 0..{len(MEAN_COLOURS) - 1}")
    mean = torch.tensor(MEAN_COLOURS, dtype=torch.float32).view(-1, 3, 1, 1)
    std = torch.tensor(COLOUR_STD[severity], dtype=torch.float32)
    out = torch.empty((n, 3, *images.shape[2:]), dtype=torch.uint8)
    for s in range(0, n, chunk):
        e = slice(s, s + chunk)
        colour = (mean[attributes[e]] + noise[e].float() * std).clamp_(0.0, 1.0)
        out[e] = (colour * images[e].float()).to(torch.uint8)  # values in [0, 255]: truncation, as np.uint8
    return out


def _channel_stats(images: torch.Tensor, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std in [0, 1] units of uint8 N×C×H×W images."""
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for i in range(0, images.shape[0], chunk):
        x = images[i:i + chunk].double().div_(255.0)
        s += x.sum((0, 2, 3))
        s2 += (x * x).sum((0, 2, 3))
    m = images.shape[0] * images.shape[2] * images.shape[3]
    mean = s / m
    std = (s2 / m - mean * mean).clamp_min(0).sqrt()
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


@lru_cache(maxsize=6)
def _split_arrays(family: str, rho: float, severity: int, seed: int, split: str, data_root: str | None,
                  download: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[str, ...], str]:
    """(uint8 images N×3×H×W, int64 labels, int64 attributes, class names, source) of one split at ρ."""
    from ddkit.data.registry import load_dataset

    base_name, kind = FAMILIES[family]
    base_train = load_dataset(base_name, "train", data_root=data_root, download=download)
    base_test = load_dataset(base_name, "test", data_root=data_root, download=download)
    if base_train.num_classes != NUM_ATTRIBUTES:
        raise ConfigError(f"{family} needs a 10-class base dataset; {base_name} has {base_train.num_classes}")
    base = base_train if split == "train" else base_test
    attrs = attribute_labels(base.labels, rho, NUM_ATTRIBUTES)
    if kind == "colour":
        noise_test, noise_train = colour_noise(len(base_test), len(base_train), seed)
        images = colorize(base.images, attrs, severity, noise_train if split == "train" else noise_test)
        source = (f"{base.source} ({base_name}), coloured as Biased-DD's CMNIST-DD"
                  + (" (ddkit's extension to Fashion-MNIST)" if family == "cfmnist-dd" else ""))
    else:
        from ddkit.data.corruptions import corrupt_images

        images = corrupt_images(base.images, [CORRUPTIONS[int(a)] for a in attrs], severity + 1, seed=seed,
                                stream=0 if split == "train" else 1)
        source = f"{base.source} ({base_name}), corrupted as Biased-DD's CCIFAR10-DD (CIFAR-10-C levels)"
    return images, base.labels.clone(), attrs, tuple(base.class_names), source


@lru_cache(maxsize=8)
def _train_stats(family: str, rho: float, severity: int, seed: int, data_root: str | None,
                 download: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return _channel_stats(_split_arrays(family, rho, severity, seed, "train", data_root, download)[0])


def _load(spec: BiasedSpec, split: str, data_root: str | None, download: bool) -> ImageDataset:
    images, labels, attrs, classes, source = _split_arrays(spec.family, spec.rho_of(split), spec.severity, spec.seed,
                                                           split, data_root, download)
    mean, std = _train_stats(spec.family, spec.rho, spec.severity, spec.seed, data_root, download)
    return ImageDataset(name=spec.name, images=images, labels=labels, class_names=list(classes), mean=mean, std=std,
                        source=source, split=split, attributes=attrs)


def load_biased(name: str, split: str = "train", *, data_root: str | Path | None = None,
                download: bool = False) -> ImageDataset:
    """Build one split of a biased benchmark (see the module docstring).

    Args:
        name: ``cmnist-dd:rho=R,severity=S[,seed=N][,test_rho=T]``, likewise ``cfmnist-dd``
            and ``ccifar10-dd``.
        split: ``"train"`` (ρ = R) or ``"test"`` (ρ = T, default 0: all bias-conflicting).
        data_root, download: where the base dataset (MNIST, Fashion-MNIST, CIFAR-10) is
            looked for first, and whether torchvision may download it
            (:func:`ddkit.data.load_dataset`).

    Returns:
        :class:`ImageDataset` named by the canonical name, uint8 N×3×H×W images (28×28 for
        the MNIST families, 32×32 for CIFAR-10), int64 labels, int64 ``attributes`` in 0..9,
        mean/std of the training split (per channel, [0, 1] units). Cached per process;
        treat the tensors as read-only.

    Raises:
        ConfigError: a malformed name or parameter (:func:`parse_name`), a split other than
            train/test.
        DatasetNotFoundError: the base dataset is not on disk (and not downloaded).
    """
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    spec = parse_name(name)
    return _load(spec, split, str(data_root) if data_root else None, download)


def test_split_at(name: str, rho: float, *, data_root: str | Path | None = None,
                  download: bool = False) -> ImageDataset:
    """The test split of the biased dataset ``name`` built at ρ = ``rho`` (for the
    bias-aligned / bias-conflicting accuracies); as :func:`load_biased` otherwise.

    Raises:
        ConfigError: ``name`` is not a biased dataset, ρ outside [0, 1].
    """
    spec = parse_name(name).with_test_rho(rho)
    return _load(spec, "test", str(data_root) if data_root else None, download)
