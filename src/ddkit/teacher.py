"""Teachers: networks trained on real data that label images (CFM, the soft-label protocol).

A teacher is a zoo network trained on a real training set and frozen. CFM (UniDD)
optimises its synthetic images against one and ships it inside the distilled set; the
soft-label evaluation protocol (RDED/UniDD, :mod:`ddkit.evaluate.soft`) trains students on
its online logits. This module holds what both need: the :class:`Teacher` type, its file
format (a :mod:`ddkit.io` container, format ``ddkit.teacher/2``; files of 0.1.0's
``ddkit.teacher/1`` still load), :func:`load_teacher` and :func:`train_teacher`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ddkit import io
from ddkit.data import ImageDataset
from ddkit.errors import ArtifactError, ConfigError, ModelError
from ddkit.models import get_model
from ddkit.progress import LoopProgress
from ddkit.train import TrainConfig, accuracy, train_model
from ddkit.utils import iteration_generator, resolve_device
from ddkit.version import __version__

__all__ = ["TEACHER_FORMAT", "Teacher", "load_teacher", "train_teacher"]

TEACHER_FORMAT = "ddkit.teacher/2"
TEACHER_FORMAT_V1 = "ddkit.teacher/1"


@dataclass
class Teacher:
    """A trained network that labels images (CFM's teacher; the soft-label protocol's).

    Attributes:
        model: a zoo network (``info["model"]``) in eval mode, parameters frozen; maps
            standardised N×C×H×W float32 images to N×K logits.
        info: JSON description: ``model`` (zoo name), ``dataset``, ``channels``,
            ``num_classes``, ``image_size``, ``mean``, ``std``, ``test_accuracy`` (in [0, 1] or
            ``None``), ``epochs``, ``images_per_class`` (``None`` = all), ``seed``, ``version``.
    """

    model: nn.Module
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> Teacher:
        self.model.to(device)
        return self

    def state_dict(self) -> dict[str, Tensor]:
        """The model's state dict on the CPU (contiguous copies)."""
        return {k: v.detach().cpu().contiguous().clone() for k, v in self.model.state_dict().items()}

    def describe(self) -> str:
        acc = self.info.get("test_accuracy")
        acc_s = f", test accuracy {100 * acc:.2f} %" if isinstance(acc, (int, float)) else ""
        return f"{self.info.get('model')} trained on {self.info.get('dataset')}{acc_s}"

    @classmethod
    def from_state(cls, state: dict[str, Tensor], info: dict[str, Any], device: torch.device | str = "cpu"
                   ) -> Teacher:
        """Rebuild a teacher from its state dict and ``info`` (zoo model name and data shape).

        Raises:
            ArtifactError: ``info`` lacks the model/shape, names an unknown model, or the
                weights do not fit that model.
        """
        try:
            name, c, k, s = info["model"], int(info["channels"]), int(info["num_classes"]), int(info["image_size"])
        except (KeyError, TypeError, ValueError):
            raise ArtifactError(f"teacher description is incomplete (needs model, channels, num_classes, "
                                f"image_size): {info}") from None
        try:
            model = get_model(name, c, k, s)
        except ModelError as exc:
            raise ArtifactError(f"teacher model cannot be built: {exc}") from None
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise ArtifactError(f"teacher weights do not fit model {name!r} ({c}×{s}×{s}, {k} classes): {first}") \
                from None
        return cls(model.to(device), dict(info))

    def check_fits(self, dataset: str, channels: int, num_classes: int, image_size: int) -> None:
        """Raise :class:`ConfigError` unless the teacher was trained on ``dataset`` with this shape."""
        i = self.info
        want = (dataset, channels, num_classes, image_size)
        have = (i.get("dataset"), i.get("channels"), i.get("num_classes"), i.get("image_size"))
        if have != want:
            raise ConfigError(f"teacher ({have[0]}, {have[1]}×{have[3]}×{have[3]}, {have[2]} classes) does not fit "
                              f"{dataset} ({channels}×{image_size}×{image_size}, {num_classes} classes)")

    def save(self, path: str | Path) -> Path:
        """Write the teacher (state dict + JSON ``info``) as a :mod:`ddkit.io` container, atomically.

        Raises:
            OutputError: the destination cannot be written.
        """
        return io.write(path, self.state_dict(), dict(self.info), fmt=TEACHER_FORMAT)


def load_teacher(path: str | Path, device: torch.device | str = "cpu") -> Teacher:
    """Load a teacher written by :meth:`Teacher.save`, or the teacher shipped in a distilled set.

    Args:
        path: a teacher ``.safetensors`` file, or a distilled set that ships a teacher (CFM).
        device: where to put the model.

    Raises:
        ArtifactError: missing file, not a safetensors file, neither a teacher nor a
            distilled set with a teacher, SHA-256 mismatch, or weights that do not fit the
            named model.
    """
    from ddkit.artifact import FORMAT, FORMAT_V1, DistilledSet

    p = Path(path)
    try:
        fmt = io.read_header(p, (FORMAT, FORMAT_V1), what="teacher").get("format")
    except ArtifactError:
        fmt = None
    if fmt is not None:  # a distilled set: use the teacher it ships
        ds = DistilledSet.load(p)
        if not ds.has_teacher:
            raise ArtifactError(f"{str(p)!r} is a distilled set without a teacher")
        return Teacher.from_state(ds.teacher, ds.teacher_info, device)
    # 0.1.0 wrote teachers under the metadata key "ddkit_teacher"
    tensors, info = io.read(p, (TEACHER_FORMAT, TEACHER_FORMAT_V1), what="teacher",
                            header_keys=(io.HEADER_KEY, "ddkit_teacher"))
    info.pop("format", None)
    return Teacher.from_state(tensors, info, device)


class _CropFlipNormalize:
    """Random crop (4 px zero padding) and optional horizontal flip in pixel space
    (kornia, per image, global RNG), then standardisation: the teacher's batch transform."""

    def __init__(self, size: int, flip: bool, augment: bool, normalize):
        import kornia.augmentation as K

        ops: list[nn.Module] = [K.RandomCrop((size, size), padding=4)]
        if flip:
            ops.append(K.RandomHorizontalFlip())
        self.aug = nn.Sequential(*ops) if augment else None
        self.normalize = normalize

    def to(self, device: torch.device) -> _CropFlipNormalize:
        if self.aug is not None:
            self.aug.to(device)
        return self

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.normalize(self.aug(x) if self.aug is not None else x)


def train_teacher(real: ImageDataset, model: str = "convnet", epochs: int = 200, *,
                  images_per_class: int | None = None, lr: float = 0.1, momentum: float = 0.9,
                  weight_decay: float = 5e-4, batch_size: int = 128, augment: bool = True, flip: bool = True,
                  seed: int = 0, device: torch.device | str = "auto", test: ImageDataset | None = None,
                  progress: bool = True) -> Teacher:
    """Train a teacher on real data (UniDD ``pretrain_small.py`` recipe) with the shared loop.

    Cross-entropy, SGD (lr 0.1, momentum 0.9, weight decay 5e-4), batch 128, cosine
    annealing of the lr over ``epochs`` (to 0, stepped per epoch), random crop with 4 px
    zero padding and horizontal flip (pixel space, per image, kornia).

    Args:
        real: training split (uint8 N×C×H×W, int64 labels).
        model: zoo name (default ``convnet``: ConvNet-3 width 128).
        epochs: passes over the (sub)set (paper: 200 on CIFAR-10); 0 gives the untrained network.
        images_per_class: train on a seeded class-balanced subset of this many images per
            class (a deviation for CPU budgets; ``None`` = the whole set).
        augment, flip: the crop/flip augmentation; ``flip=False`` keeps the crop only.
        seed: drives the initialisation, shuffling and augmentation (same seed and device ⇒
            same teacher).
        device: ``auto``, ``cpu``, ``cuda``. test: if given, the teacher's test accuracy is
            measured and stored in ``info["test_accuracy"]``.
        progress: show a progress bar (one step per epoch).

    Returns:
        :class:`Teacher` in eval mode on ``device``.

    Raises:
        ConfigError: ``epochs < 0``, ``batch_size < 1``, ``lr <= 0`` or ``images_per_class < 1``.
        ModelError: the model does not fit the images.
    """
    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise ConfigError(f"teacher training needs epochs ≥ 0, batch_size ≥ 1, lr > 0; got {epochs}, "
                          f"{batch_size}, {lr}")
    if images_per_class is not None and images_per_class < 1:
        raise ConfigError(f"teacher images_per_class must be ≥ 1 or None, got {images_per_class}")
    dev = resolve_device(device)
    data = real if images_per_class is None else real.per_class_subset(images_per_class, seed=seed)
    c, k, size = real.channels, real.num_classes, real.image_size[0]
    g = iteration_generator(seed, -2)  # also seeds the global RNG: initialisation and kornia draws
    net = get_model(model, c, k, size).to(dev)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
                      schedule="cosine")
    transform = _CropFlipNormalize(size, flip, augment, real.normalize).to(dev)
    t0 = time.perf_counter()
    with LoopProgress(f"teacher {model}", epochs, enabled=progress) as bar:
        train_model(net, data.float_images().to(dev), data.labels.to(dev), cfg, augment=transform, generator=g,
                    on_epoch=lambda _e, loss: bar.update(loss))
    test_acc = None
    if test is not None:
        test_acc = accuracy(net, test.images, test.labels, normalize=real.normalize)
    info = {"model": model, "dataset": real.name, "channels": c, "num_classes": k, "image_size": size,
            "mean": list(real.mean), "std": list(real.std), "test_accuracy": test_acc, "epochs": epochs,
            "images_per_class": images_per_class, "train_images": len(data), "seed": seed, "lr": lr,
            "batch_size": batch_size, "augment": ("crop+flip" if flip else "crop") if augment else "none",
            "seconds": round(time.perf_counter() - t0, 2), "version": __version__}
    return Teacher(net, info)
