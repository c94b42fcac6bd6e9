"""The dataset registry and its loaders (torchvision's formats and loaders).

Lookup order for a dataset's files (``load_dataset``):

1. ``data_root`` (the CLI's ``--data-root``),
2. the ``DDKIT_DATA`` environment variable,
3. the system copy (``/usr/share/datasets/<name>``, e.g. the Debian package
   ``dataset-fashion-mnist``),
4. torchvision's download into ``~/.cache/ddkit`` (``DDKIT_CACHE`` overrides).

Inside a root, a dataset is found in torchvision's layout (``ROOT/FashionMNIST/raw``,
``ROOT/cifar-10-batches-py``, ``ROOT/train_32x32.mat``) or as a folder of IDX files
(``.gz`` or not) named as the official distribution, at ``ROOT`` or ``ROOT/<name>``.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ddkit.data.dataset import ImageDataset
from ddkit.errors import DatasetNotFoundError
from ddkit.utils import atomic_path

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]


@dataclass(frozen=True)
class DatasetInfo:
    """What the registry knows of a dataset before loading it.

    ``mean``/``std`` are per-channel constants in pixel units [0, 1] (``None``: computed
    from the training split at load time).
    """

    name: str
    channels: int
    image_size: int
    num_classes: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    how_to_get: str
    loader: Callable[[Path | None, str, bool], tuple[np.ndarray, np.ndarray, list[str], str]]


def cache_dir() -> Path:
    """Where downloads and decompressed copies go: ``$DDKIT_CACHE`` or ``~/.cache/ddkit``."""
    return Path(os.environ.get("DDKIT_CACHE", Path.home() / ".cache" / "ddkit"))


def _candidate_roots(name: str, data_root: str | Path | None) -> list[Path]:
    roots: list[Path] = []
    if data_root:
        roots.append(Path(data_root))
    if os.environ.get("DDKIT_DATA"):
        roots.append(Path(os.environ["DDKIT_DATA"]))
    roots.append(Path("/usr/share/datasets") / name)
    roots.append(cache_dir())
    return roots


# --------------------------------------------------------------------------- MNIST family


def _find_idx_folder(root: Path, name: str, tv_name: str) -> Path | None:
    """A folder holding the 4 IDX files (gz or raw), torchvision layout or flat."""
    for folder in (root / tv_name / "raw", root / name, root / tv_name, root):
        if all((folder / f).exists() or (folder / f"{f}.gz").exists() for f in MNIST_FILES):
            return folder
    return None


def _mnist_like(name: str, tv_name: str, classes: list[str]):
    def load(root: Path | None, split: str, download: bool):
        from torchvision import datasets

        folder = _find_idx_folder(root, name, tv_name) if root is not None else None
        if folder is None:
            if not download:
                return None
            target = cache_dir()
            getattr(datasets, tv_name)(str(target), train=True, download=True)
            getattr(datasets, tv_name)(str(target), train=False, download=True)
            folder = target / tv_name / "raw"
        # torchvision's reader needs uncompressed IDX files in ROOT/<TvName>/raw: give it
        # one, decompressing system copies once into the cache.
        tv_root = folder.parent.parent if folder.name == "raw" and folder.parent.name == tv_name else None
        if tv_root is None or not all((folder / f).exists() for f in MNIST_FILES):
            tv_root = cache_dir() / "idx" / name
            raw = tv_root / tv_name / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            for f in MNIST_FILES:
                if not (raw / f).exists():
                    src = folder / f
                    # a unique temporary name: processes staging the same file at once must
                    # not write into, or rename away, each other's copy
                    with atomic_path(raw / f) as tmp:
                        if src.exists():
                            shutil.copyfile(src, tmp)
                        else:
                            with gzip.open(folder / f"{f}.gz", "rb") as fin, open(tmp, "wb") as fout:
                                shutil.copyfileobj(fin, fout)
        ds = getattr(datasets, tv_name)(str(tv_root), train=(split == "train"), download=False)
        images = ds.data.numpy()[:, None]
        labels = ds.targets.numpy()
        return images, labels, classes, str(folder)

    return load


# --------------------------------------------------------------------------- CIFAR / SVHN


def _cifar(tv_name: str, folder_name: str):
    def load(root: Path | None, split: str, download: bool):
        from torchvision import datasets

        cls = getattr(datasets, tv_name)
        if root is not None and (root / folder_name).is_dir():
            use = root
        elif download:
            use = cache_dir()
        else:
            return None
        ds = cls(str(use), train=(split == "train"), download=download and use == cache_dir())
        images = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))
        return images, np.asarray(ds.targets), list(ds.classes), str(use / folder_name)

    return load


def _svhn(root: Path | None, split: str, download: bool):
    from torchvision import datasets

    fname = "train_32x32.mat" if split == "train" else "test_32x32.mat"
    if root is not None and (root / fname).exists():
        use = root
    elif root is not None and (root / "svhn" / fname).exists():
        use = root / "svhn"
    elif download:
        use = cache_dir() / "svhn"
    else:
        return None
    ds = datasets.SVHN(str(use), split=split, download=download and use == cache_dir() / "svhn")
    return np.ascontiguousarray(ds.data), np.asarray(ds.labels), [str(i) for i in range(10)], str(use)


# --------------------------------------------------------------------------- digits, folders


def _digits(root: Path | None, split: str, download: bool):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = np.clip(d.images * 16.0, 0, 255).astype(np.uint8)[:, None]  # 0..16 -> 0..255
    idx = np.arange(len(d.target))
    tr, te = train_test_split(idx, test_size=0.2, random_state=0, stratify=d.target)
    pick = tr if split == "train" else te
    return images[pick], d.target[pick], [str(i) for i in range(10)], "scikit-learn load_digits"


def _image_folder(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import pil_to_tensor

    if not path.is_dir():
        raise DatasetNotFoundError(f"imagefolder: {str(path)!r} is not a folder")
    names = {"train": ("train",), "test": ("test", "val")}[split]
    sub = next((path / n for n in names if (path / n).is_dir()), None)
    if sub is None:
        raise DatasetNotFoundError(
            f"imagefolder: {str(path)!r} needs subfolders train/ and test/ (or val/), "
            "each with one folder of images per class"
        )
    ds = ImageFolder(str(sub))
    if len(ds) == 0:
        raise DatasetNotFoundError(f"imagefolder: no images under {str(sub)!r}")
    images = [pil_to_tensor(ds.loader(p).convert("RGB")) for p, _ in ds.samples]
    sizes = {tuple(t.shape) for t in images}
    if len(sizes) != 1:
        raise DatasetNotFoundError(
            f"imagefolder: images under {str(sub)!r} differ in size {sorted(sizes)[:3]}; resize them to one size"
        )
    return torch.stack(images).numpy(), np.asarray(ds.targets), list(ds.classes), str(sub)


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        "mnist", 1, 28, 10, (0.1307,), (0.3081,),
        "torchvision download, or point --data-root/DDKIT_DATA at a folder with the 4 IDX files",
        _mnist_like("mnist", "MNIST", [str(i) for i in range(10)]),
    ),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", 1, 28, 10, (0.2861,), (0.3530,),
        "apt-get install dataset-fashion-mnist (Debian, as root), or torchvision download",
        _mnist_like("fashion-mnist", "FashionMNIST", FASHION_CLASSES),
    ),
    "cifar10": DatasetInfo(
        "cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
        "torchvision download (cifar-10-batches-py)", _cifar("CIFAR10", "cifar-10-batches-py"),
    ),
    "cifar100": DatasetInfo(
        "cifar100", 3, 32, 100, (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762),
        "torchvision download (cifar-100-python)", _cifar("CIFAR100", "cifar-100-python"),
    ),
    "svhn": DatasetInfo(
        "svhn", 3, 32, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
        "torchvision download (train_32x32.mat, test_32x32.mat)", _svhn,
    ),
    "digits": DatasetInfo(
        "digits", 1, 8, 10, None, None, "ships inside scikit-learn (load_digits)", _digits,
    ),
}


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    aliases = {"fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist", "cifar-10": "cifar10",
               "cifar-100": "cifar100"}
    return aliases.get(key, key)


def _unknown(name: str) -> DatasetNotFoundError:
    known = ", ".join([*DATASETS, "imagefolder:PATH"])
    return DatasetNotFoundError(f"unknown dataset {name!r}; known: {known}")


def dataset_status(name: str, data_root: str | Path | None = None) -> tuple[str | None, str]:
    """Where ``name``'s files are (a path or ``None``) and how to get them if absent.

    Checks without downloading. Raises ``DatasetNotFoundError`` for an unknown name.
    """
    key = _canonical(name)
    if key not in DATASETS:
        raise _unknown(name)
    info = DATASETS[key]
    if key == "digits":
        return "scikit-learn (embedded)", info.how_to_get
    for root in _candidate_roots(key, data_root):
        try:
            found = info.loader(root, "test", False)
        except Exception as exc:  # a partial or corrupt copy: say so rather than hide it
            return f"unreadable copy under {root} ({type(exc).__name__}: {str(exc)[:80]})", info.how_to_get
        if found is not None:
            return found[3], info.how_to_get
    return None, info.how_to_get


@lru_cache(maxsize=16)
def _load_cached(key: str, split: str, data_root: str | None, download: bool) -> ImageDataset:
    if key.startswith("imagefolder:"):
        path = Path(key.split(":", 1)[1]).expanduser()
        imgs, labels, classes, source = _image_folder(path, split)
        train_imgs = imgs if split == "train" else _image_folder(path, "train")[0]
        mean, std = _stats(train_imgs)
        return _make(key, imgs, labels, classes, mean, std, source, split)
    info = DATASETS[key]
    looked: list[str] = []
    for root in _candidate_roots(key, data_root):
        looked.append(str(root))
        try:
            found = info.loader(root, split, False)
        except (OSError, RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as exc:
            raise DatasetNotFoundError(f"{key}: files under {str(root)!r} could not be read ({exc})") from None
        if found is not None:
            break
    else:
        found = None
        if download:
            try:
                found = info.loader(None, split, True)
            except Exception as exc:  # offline or refused: report below, with where we looked
                looked.append(f"download failed: {type(exc).__name__}: {str(exc)[:120]}")
    if found is None:
        raise DatasetNotFoundError(
            f"dataset {key!r} not found (looked in: {'; '.join(looked)}); get it by: {info.how_to_get}"
        )
    imgs, labels, classes, source = found
    if info.mean is not None:
        mean, std = info.mean, info.std
    else:  # computed from the training split
        mean, std = _stats(imgs if split == "train" else info.loader(root, "train", False)[0])
    return _make(key, imgs, labels, classes, mean, std, source, split)


def _stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.astype(np.float64) / 255.0
    return tuple(float(v) for v in x.mean(axis=(0, 2, 3))), tuple(float(v) for v in x.std(axis=(0, 2, 3)))


def _make(name, imgs, labels, classes, mean, std, source, split) -> ImageDataset:
    return ImageDataset(
        name=name,
        images=torch.from_numpy(np.ascontiguousarray(imgs, dtype=np.uint8)),
        labels=torch.from_numpy(np.asarray(labels, dtype=np.int64)),
        class_names=list(classes), mean=tuple(mean), std=tuple(std), source=source, split=split,
    )


def load_dataset(
    name: str, split: str = "train", *, data_root: str | Path | None = None, download: bool = True
) -> ImageDataset:
    """Load a registered dataset split into memory.

    Args:
        name: ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``, ``svhn``, ``digits``,
            or ``imagefolder:PATH`` (PATH/train/<class>/*.png and PATH/test|val/<class>/*).
        split: ``"train"`` or ``"test"``.
        data_root: a folder searched first (see the module docstring for the order).
        download: allow torchvision's download when no local copy is found.

    Returns:
        An :class:`ImageDataset` with ``uint8`` images N×C×H×W (0..255) and int64 labels.
        Results are cached per process; treat the tensors as read-only.

    Raises:
        DatasetNotFoundError: unknown name, or not found anywhere and not downloadable
            (the message lists where it looked and how to get the data).
    """
    if split not in ("train", "test"):
        raise DatasetNotFoundError(f"split must be 'train' or 'test', got {split!r}")
    key = name if name.startswith("imagefolder:") else _canonical(name)
    if not key.startswith("imagefolder:") and key not in DATASETS:
        raise _unknown(name)
    return _load_cached(key, split, str(data_root) if data_root else None, download)
