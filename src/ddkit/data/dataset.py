"""The in-memory labelled image dataset every ddkit component consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ddkit.errors import ConfigError


@dataclass
class ImageDataset:
    """A labelled image dataset held in memory.

    Attributes:
        name: registry name (``"fashion-mnist"``, ...).
        images: ``uint8`` tensor N×C×H×W with values 0..255 (pixel space).
        labels: ``int64`` tensor (N,) with values in ``0..num_classes-1``.
        class_names: one name per class, ``len == num_classes``.
        mean, std: per-channel normalisation constants in [0, 1] pixel units (C each).
        source: where the data was read from (a path, or ``"scikit-learn"``).
        split: ``"train"`` or ``"test"``.
        attributes: optional ``int64`` tensor (N,), one bias attribute per image (≥ 0; the
            biased benchmarks of :mod:`ddkit.data.biased` store the colour/corruption index
            0..9 there, LfF's protocol), or ``None``. Carried through :meth:`subset` and
            :meth:`per_class_subset`; bias metrics and ``debias="oracle"`` read it.

    Raises:
        ConfigError: images not N×C×H×W; labels, or attributes, not one per image; mean/std
            not one per channel; attributes not an integer tensor (1-D, values ≥ 0).
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""
    split: str = "train"
    attributes: torch.Tensor | None = None
    _by_class: list[torch.Tensor] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise ConfigError(f"dataset images must be N×C×H×W, got shape {tuple(self.images.shape)}")
        if self.images.shape[0] != self.labels.shape[0]:
            raise ConfigError("dataset images and labels differ in length")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError("dataset mean/std must have one entry per channel")
        self.labels = self.labels.long()
        if self.attributes is not None:
            self.attributes = _checked_attributes(self.attributes, self.images.shape[0])

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def float_images(self, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Images as ``float32`` in [0, 1], N×C×H×W (optionally only ``indices``)."""
        x = self.images if indices is None else self.images[indices]
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise pixel-space images (…×C×H×W in [0,1]) with the dataset mean/std."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`: standardised images back to pixel space."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return x * std + mean

    def class_indices(self) -> list[torch.Tensor]:
        """Per class, the ``int64`` indices of its samples (cached)."""
        if self._by_class is None:
            order = torch.argsort(self.labels, stable=True)
            counts = torch.bincount(self.labels, minlength=self.num_classes).tolist()
            self._by_class = list(torch.split(order, counts))
        return self._by_class

    def class_counts(self) -> list[int]:
        """Number of samples per class."""
        return [int(ix.numel()) for ix in self.class_indices()]

    @property
    def has_attributes(self) -> bool:
        """Whether the dataset carries a bias attribute per image (:attr:`attributes`)."""
        return self.attributes is not None

    def subset(self, indices: torch.Tensor) -> ImageDataset:
        """A new dataset with the samples at ``indices`` (int64 tensor), their attributes included."""
        return ImageDataset(
            self.name, self.images[indices], self.labels[indices], list(self.class_names),
            self.mean, self.std, self.source, self.split,
            None if self.attributes is None else self.attributes[indices],
        )

    def per_class_subset(self, n_per_class: int, seed: int = 0) -> ImageDataset:
        """A class-balanced random subset with ``n_per_class`` samples per class."""
        g = torch.Generator().manual_seed(seed)
        picks = [ix[torch.randperm(ix.numel(), generator=g)[:n_per_class]] for ix in self.class_indices()]
        return self.subset(torch.cat(picks))


def _checked_attributes(attributes, n: int) -> torch.Tensor:
    """``attributes`` as an int64 (n,) tensor; ConfigError when it is not one integer ≥ 0 per image."""
    a = attributes if isinstance(attributes, torch.Tensor) else torch.as_tensor(attributes)
    if a.dtype == torch.bool or a.dtype.is_floating_point or a.dtype.is_complex:
        raise ConfigError(f"dataset attributes must be integers (int64), got dtype {a.dtype}")
    if a.dim() != 1 or a.shape[0] != n:
        raise ConfigError(f"dataset attributes must be one per image, shape ({n},), got {tuple(a.shape)}")
    a = a.long()
    if n and int(a.min()) < 0:
        raise ConfigError("dataset attributes must be ≥ 0 (an attribute index per image)")
    return a
