"""The dataset registry and its loaders (own IDX and image-folder readers, torchvision's
CIFAR/SVHN readers and downloads).

Lookup order for a dataset's files (``load_dataset``):

1. ``data_root`` (the CLI's ``--data-root``),
2. the ``DDKIT_DATA`` environment variable,
3. the system copy (``/usr/share/datasets/<name>``, e.g. the Debian package
   ``dataset-fashion-mnist``),
4. ``~/.cache/ddkit`` (``DDKIT_CACHE`` overrides), where downloads go,
5. only when asked for (``download=True``): torchvision's download into that cache.

Nothing is downloaded unless the caller asks: a distilled set names its dataset, and
evaluating it must not reach the network behind the user's back.

Inside a root, a dataset is found in torchvision's layout (``ROOT/FashionMNIST/raw``,
``ROOT/cifar-10-batches-py``, ``ROOT/train_32x32.mat``) or as a folder of IDX files
(``.gz`` or not) named as the official distribution, at ``ROOT`` or ``ROOT/<name>``.

Every problem with the files (missing, truncated, corrupt, unreadable, a CIFAR pickle that
fails torchvision's MD5 check, an image folder without classes or with a file that is not an
image) raises one :class:`~ddkit.errors.DatasetNotFoundError` naming the path and the problem.
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ddkit.data.dataset import ImageDataset
from ddkit.errors import DatasetNotFoundError, DDKitError, OutputError
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
#: files of an image folder's class folders that are read (torchvision's IMG_EXTENSIONS); others are ignored
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: the most entries (files and folders, hidden ones included) one split of an image folder may hold
MAX_FOLDER_ENTRIES = 1_000_000
#: how to ask for a download (never done unless asked for)
DOWNLOAD_HINT = "load_dataset(..., download=True), ddkit CLI --download"


@dataclass(frozen=True)
class DatasetInfo:
    """What the registry knows of a dataset before loading it.

    ``mean``/``std`` are per-channel constants in pixel units [0, 1] (``None``: computed
    from the training split at load time). ``loader(root, split, download)`` returns
    ``(images uint8 N×C×H×W, labels int N, class names, source)``, or ``None`` when the
    dataset is not under ``root``; it raises ``DatasetNotFoundError`` for a broken copy.
    """

    name: str
    channels: int
    image_size: int
    num_classes: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    how_to_get: str
    loader: Callable[[Path | None, str, bool], tuple[np.ndarray, np.ndarray, list[str], str] | None]


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


def _reason(exc: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none), at most 200 characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# --------------------------------------------------------------------------- MNIST family


def _find_idx_folder(root: Path, name: str, tv_name: str) -> Path | None:
    """A folder holding the 4 IDX files (gz or raw), torchvision layout or flat."""
    for folder in (root / tv_name / "raw", root / name, root / tv_name, root):
        if all((folder / f).exists() or (folder / f"{f}.gz").exists() for f in MNIST_FILES):
            return folder
    return None


def _read_idx(path: Path, shown: Path, magic: int, item_shape: tuple[int, ...], *, compressed: bool = False,
              name: str = "") -> np.ndarray:
    """A ``uint8`` IDX file (MNIST's format) as an array ``(n, *item_shape)``.

    ``shown`` is the file named in errors (the ``.gz`` a staged copy was decompressed from).
    Checks the magic number, the item shape and that the file holds exactly the announced
    number of items, before reading the data.

    Raises:
        DatasetNotFoundError: the file cannot be read, is not such an IDX file, or is truncated.
    """
    what = "labels" if not item_shape else "images"
    head_len = 4 * (2 + len(item_shape))
    per_item = math.prod(item_shape)
    where = f"{name}: {str(shown)!r}" if name else repr(str(shown))
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
            head = f.read(head_len)
            got = int.from_bytes(head[:4], "big") if len(head) >= 4 else None
            if got != magic:
                found = "it is too short" if got is None else f"magic number 0x{got:08x}, expected 0x{magic:08x}"
                raise DatasetNotFoundError(f"{where} is not an IDX {what} file ({found}); replace it with the "
                                           "official file")
            if len(head) < head_len:
                raise DatasetNotFoundError(f"{where} is truncated: it ends inside its header")
            dims = tuple(int.from_bytes(head[4 * i:4 * i + 4], "big") for i in range(1, 2 + len(item_shape)))
            if dims[1:] != item_shape:
                raise DatasetNotFoundError(f"{where} holds {what} of shape {dims[1:]}, expected {item_shape}")
            count = dims[0] * per_item
            if compressed:  # read at most one byte more than announced (a gzip bomb must not fill the memory)
                chunks, have = [], 0
                while have <= count and (chunk := f.read(min(1 << 24, count + 1 - have))):
                    chunks.append(chunk)
                    have += len(chunk)
                data = np.frombuffer(bytearray(b"".join(chunks)), dtype=np.uint8)
            else:
                have = os.fstat(f.fileno()).st_size - head_len
        if have != count:
            state = "truncated" if have < count else "corrupt"
            holds = "more" if compressed and have > count else f"{have + head_len} bytes"
            raise DatasetNotFoundError(f"{where} is {state}: its header announces {dims[0]} {what} ({count + head_len} "
                                       f"bytes), the file holds {holds}")
        if not compressed:
            data = np.fromfile(path, dtype=np.uint8, count=count, offset=head_len)
    except DDKitError:
        raise
    except Exception as exc:  # OSError (permissions, I/O), gzip's EOFError/BadGzipFile/zlib.error, ...
        raise DatasetNotFoundError(f"{where} could not be read: {_reason(exc)}") from None
    return data.reshape(dims[0], *item_shape)


def _idx_files(folder: Path, name: str, tv_name: str) -> dict[str, tuple[Path, Path, bool]]:
    """Per IDX file: (the file to read, the file to name in errors, whether it is gzip'd).

    Uncompressed files are read in place; ``.gz`` ones are decompressed once into the cache
    (``CACHE/idx/<name>/<TvName>/raw``), or read compressed when the cache cannot be written.
    """
    files: dict[str, tuple[Path, Path, bool]] = {}
    for f in MNIST_FILES:
        if (folder / f).exists():
            files[f] = (folder / f, folder / f, False)
            continue
        gz = folder / f"{f}.gz"
        staged = cache_dir() / "idx" / name / tv_name / "raw" / f
        if not staged.exists():
            try:
                # a unique temporary name: processes staging the same file at once must
                # not write into, or rename away, each other's copy
                with atomic_path(staged) as tmp, gzip.open(gz, "rb") as fin, open(tmp, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
            except OutputError:  # the cache cannot be written: decompress in memory instead
                files[f] = (gz, gz, True)
                continue
            except Exception as exc:  # truncated or not gzip (EOFError, BadGzipFile, zlib.error), unreadable
                raise DatasetNotFoundError(f"{name}: {str(gz)!r} could not be decompressed: {_reason(exc)}") from None
        files[f] = (staged, gz, False)
    return files


def _mnist_like(name: str, tv_name: str, classes: list[str]):
    def load(root: Path | None, split: str, download: bool):
        folder = _find_idx_folder(root, name, tv_name) if root is not None else None
        if folder is None:
            if not download:
                return None
            from torchvision import datasets

            target = cache_dir()
            getattr(datasets, tv_name)(str(target), train=True, download=True)
            getattr(datasets, tv_name)(str(target), train=False, download=True)
            folder = target / tv_name / "raw"
        files = _idx_files(folder, name, tv_name)

        def read(f: str, magic: int, item_shape: tuple[int, ...]) -> np.ndarray:
            path, shown, compressed = files[f]
            try:
                return _read_idx(path, shown, magic, item_shape, compressed=compressed, name=name)
            except DatasetNotFoundError:
                if path != shown and not compressed:  # a bad staged copy: decompress again next time
                    path.unlink(missing_ok=True)
                raise

        prefix = "train" if split == "train" else "t10k"
        images = read(f"{prefix}-images-idx3-ubyte", 0x00000803, (28, 28))
        labels = read(f"{prefix}-labels-idx1-ubyte", 0x00000801, ())
        if len(images) != len(labels):
            raise DatasetNotFoundError(
                f"{name}: {str(files[f'{prefix}-images-idx3-ubyte'][1])!r} holds {len(images)} images but "
                f"{str(files[f'{prefix}-labels-idx1-ubyte'][1])!r} {len(labels)} labels"
            )
        return images[:, None], labels.astype(np.int64), list(classes), str(folder)

    return load


# --------------------------------------------------------------------------- CIFAR / SVHN


def _corrupt(what: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{what} is incomplete or corrupt: its files do not match the official MD5 sums (torchvision's check), so "
        f"they are not read; delete it and get the official files again (download: {DOWNLOAD_HINT})"
    )


def _cifar(tv_name: str, folder_name: str):
    def load(root: Path | None, split: str, download: bool):
        from torchvision import datasets

        cls = getattr(datasets, tv_name)
        if root is not None and (root / folder_name).is_dir():
            use, fetch = root, False
        elif download:
            use, fetch = cache_dir(), True
        else:
            return None
        # torchvision checks every file's MD5 sum before unpickling any: a crafted or damaged
        # folder is refused here, never unpickled
        try:
            ds = cls(str(use), train=(split == "train"), download=fetch)
        except RuntimeError as exc:
            if "corrupted" not in str(exc):
                raise
            raise _corrupt(repr(str(use / folder_name))) from None
        images = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))
        return images, np.asarray(ds.targets), list(ds.classes), str(use / folder_name)

    return load


def _svhn(root: Path | None, split: str, download: bool):
    from torchvision import datasets

    fname = "train_32x32.mat" if split == "train" else "test_32x32.mat"
    if root is not None and (root / fname).exists():
        use, fetch = root, False
    elif root is not None and (root / "svhn" / fname).exists():
        use, fetch = root / "svhn", False
    elif download:
        use, fetch = cache_dir() / "svhn", True
    else:
        return None
    try:
        ds = datasets.SVHN(str(use), split=split, download=fetch)
    except RuntimeError as exc:
        if "corrupted" not in str(exc):
            raise
        raise _corrupt(repr(str(use / fname))) from None
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


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


class _FolderScan:
    """Lists one split of an image folder without following linked folders (bounded)."""

    def __init__(self, split_dir: Path, inside: Path) -> None:
        self.split_dir, self.inside = split_dir, inside
        self.left = MAX_FOLDER_ENTRIES

    def entries(self, folder: str) -> list[os.DirEntry]:
        """The non-hidden entries of ``folder``, sorted by name."""
        found = []
        try:
            with os.scandir(folder) as it:
                for e in it:
                    self.left -= 1
                    if self.left < 0:
                        raise DatasetNotFoundError(
                            f"imagefolder: {str(self.split_dir)!r} holds more than {MAX_FOLDER_ENTRIES} files and "
                            "folders; point imagefolder: at a smaller folder"
                        )
                    if not e.name.startswith("."):
                        found.append(e)
        except OSError as exc:
            raise DatasetNotFoundError(f"imagefolder: folder {folder!r} cannot be read: {_reason(exc)}") from None
        return sorted(found, key=lambda e: e.name)

    def linked_folder(self, e: os.DirEntry) -> DatasetNotFoundError:
        return DatasetNotFoundError(
            f"imagefolder: {e.path!r} is a symbolic link to a folder; linked folders are not followed (they can "
            f"loop, or lead out of {str(self.inside)!r}): replace it by a real folder"
        )

    def linked_file(self, e: os.DirEntry) -> None:
        """Accept a symbolic link to an image only if it resolves to a regular file inside the image folder."""
        try:
            target = Path(e.path).resolve(strict=True)
            mode = os.stat(target).st_mode
        except (OSError, RuntimeError) as exc:  # dangling, looping, unreadable
            raise DatasetNotFoundError(f"imagefolder: {e.path!r} is a broken symbolic link: {_reason(exc)}") from None
        if not target.is_relative_to(self.inside):
            raise DatasetNotFoundError(
                f"imagefolder: {e.path!r} is a symbolic link to {str(target)!r}, outside {str(self.inside)!r}; "
                "only links to files inside the image folder are followed: copy the file instead"
            )
        if not stat.S_ISREG(mode):
            raise DatasetNotFoundError(f"imagefolder: {e.path!r} links to {str(target)!r}, not a regular file")

    def classes(self) -> list[str]:
        """The class folders' names, sorted (hidden folders ignored)."""
        names = []
        for e in self.entries(str(self.split_dir)):
            if e.is_symlink():
                if os.path.isdir(e.path):
                    raise self.linked_folder(e)
                continue  # a linked file, or a dangling link: not a class, as other files
            if e.is_dir(follow_symlinks=False):
                names.append(e.name)
        return names

    def images(self, class_dir: str) -> list[str]:
        """The image files under ``class_dir`` (subfolders included), in torchvision's order:
        folders sorted by path, files sorted by name within each."""
        by_folder: dict[str, list[str]] = {}
        stack = [class_dir]
        while stack:
            folder = stack.pop()
            names = by_folder.setdefault(folder, [])
            for e in self.entries(folder):
                if e.is_symlink():
                    if os.path.isdir(e.path):
                        raise self.linked_folder(e)
                    if _is_image_name(e.name):
                        self.linked_file(e)
                        names.append(e.name)
                elif e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif _is_image_name(e.name):
                    if not e.is_file(follow_symlinks=False):
                        raise DatasetNotFoundError(f"imagefolder: {e.path!r} is not a regular file")
                    names.append(e.name)
        return [os.path.join(folder, n) for folder in sorted(by_folder) for n in sorted(by_folder[folder])]


def _read_images(paths: list[str], split_dir: Path) -> np.ndarray:
    """The images as RGB ``uint8`` N×3×H×W (read with PIL as torchvision's default loader); all one size."""
    from PIL import Image

    out: np.ndarray | None = None
    first, size = "", (0, 0)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                if out is None:
                    first, size = p, im.size
                elif im.size != size:
                    raise DatasetNotFoundError(
                        f"imagefolder: images under {str(split_dir)!r} differ in size ({first!r} is "
                        f"{size[0]}×{size[1]}, {p!r} {im.size[0]}×{im.size[1]}); resize them to one size"
                    )
                rgb = np.asarray(im.convert("RGB"))
        except DDKitError:
            raise
        except Exception as exc:  # PIL's UnidentifiedImageError, a truncated file, permission denied, ...
            raise DatasetNotFoundError(f"imagefolder: {p!r} is not a readable image: {_reason(exc)}") from None
        if out is None:
            try:
                out = np.empty((len(paths), 3, size[1], size[0]), dtype=np.uint8)
            except MemoryError:
                raise DatasetNotFoundError(
                    f"imagefolder: {len(paths)} images of {size[0]}×{size[1]} under {str(split_dir)!r} do not fit "
                    "in memory"
                ) from None
        out[i] = rgb.transpose(2, 0, 1)
    assert out is not None  # paths is never empty
    return out


def _image_folder(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """One split of an image folder: ``PATH/train/<class>/*`` or ``PATH/test|val/<class>/*``.

    Returns:
        images ``uint8`` N×3×H×W (RGB, as torchvision's ``ImageFolder`` with its default
        loader), labels ``int64`` (N,), the class names (the class folders' names, sorted;
        label ``i`` is ``classes[i]``), and the split folder's path.

    Image files are those ending in :data:`IMAGE_EXTENSIONS` (any case), in the class folder
    or its subfolders; other files and hidden entries (``.name``) are ignored. Symbolic links
    to folders are refused (never followed); links to files are read only if they resolve to
    a regular file inside ``PATH``. At most :data:`MAX_FOLDER_ENTRIES` entries are listed.

    Raises:
        DatasetNotFoundError: naming the path and the problem: no such folder, no split
            folder, no class folders, a class folder without images, a file that is not a
            readable image, images of different sizes, a linked folder, a link leading out
            of ``PATH``, too many entries, a folder that cannot be read.
    """
    try:
        if not path.is_dir():
            raise DatasetNotFoundError(f"imagefolder: {str(path)!r} is not a folder")
        names = {"train": ("train",), "test": ("test", "val")}[split]
        sub = next((path / n for n in names if (path / n).is_dir()), None)
        if sub is None:
            raise DatasetNotFoundError(
                f"imagefolder: {str(path)!r} needs subfolders train/ and test/ (or val/), "
                "each with one folder of images per class"
            )
        inside = path.resolve()
        if sub.is_symlink() and not sub.resolve().is_relative_to(inside):
            raise DatasetNotFoundError(
                f"imagefolder: {str(sub)!r} is a symbolic link to {str(sub.resolve())!r}, outside {str(inside)!r}"
            )
        scan = _FolderScan(sub, inside)
        classes = scan.classes()
        if not classes:
            raise DatasetNotFoundError(
                f"imagefolder: {str(sub)!r} has no class folders (expected {str(sub / '<class>')!r} folders of images)"
            )
        paths: list[str] = []
        labels: list[int] = []
        for index, name in enumerate(classes):
            found = scan.images(str(sub / name))
            if not found:
                raise DatasetNotFoundError(
                    f"imagefolder: class folder {str(sub / name)!r} has no images "
                    f"(files ending in {', '.join(IMAGE_EXTENSIONS)})"
                )
            paths += found
            labels += [index] * len(found)
        images = _read_images(paths, sub)
    except DDKitError:
        raise
    except OSError as exc:  # e.g. permission denied on PATH itself
        where = exc.filename if exc.filename else path
        raise DatasetNotFoundError(f"imagefolder: {str(where)!r} cannot be read: {_reason(exc)}") from None
    return images, np.asarray(labels, dtype=np.int64), classes, str(sub)


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        "mnist", 1, 28, 10, (0.1307,), (0.3081,),
        "point --data-root/DDKIT_DATA at a folder with the 4 IDX files (.gz or not), or download=True "
        "(CLI --download)",
        _mnist_like("mnist", "MNIST", [str(i) for i in range(10)]),
    ),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", 1, 28, 10, (0.2861,), (0.3530,),
        "apt-get install dataset-fashion-mnist (Debian, as root), or download=True (CLI --download)",
        _mnist_like("fashion-mnist", "FashionMNIST", FASHION_CLASSES),
    ),
    "cifar10": DatasetInfo(
        "cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
        "put the official cifar-10-batches-py folder under --data-root, or download=True (CLI --download)",
        _cifar("CIFAR10", "cifar-10-batches-py"),
    ),
    "cifar100": DatasetInfo(
        "cifar100", 3, 32, 100, (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762),
        "put the official cifar-100-python folder under --data-root, or download=True (CLI --download)",
        _cifar("CIFAR100", "cifar-100-python"),
    ),
    "svhn": DatasetInfo(
        "svhn", 3, 32, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
        "put train_32x32.mat and test_32x32.mat under --data-root, or download=True (CLI --download)", _svhn,
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
    from ddkit.data.biased import FAMILIES

    known = ", ".join([*DATASETS, "imagefolder:PATH", *(f"{f}:rho=R,severity=S" for f in FAMILIES)])
    return DatasetNotFoundError(f"unknown dataset {name!r}; known: {known}")


def _call_loader(key: str, info: DatasetInfo, root: Path, split: str):
    """``info.loader(root, split, False)`` with any reader error turned into a DatasetNotFoundError."""
    try:
        return info.loader(root, split, False)
    except DDKitError:
        raise
    except Exception as exc:  # a reader's own error (torchvision, scipy, numpy, OSError)
        raise DatasetNotFoundError(f"{key}: files under {str(root)!r} could not be read: {_reason(exc)}") from None


def dataset_status(name: str, data_root: str | Path | None = None) -> tuple[str | None, str]:
    """Where ``name``'s files are (a path or ``None``) and how to get them if absent.

    Checks without downloading (it reads the test split). A broken copy is reported as
    ``"unreadable copy under ROOT (problem)"``. Raises ``DatasetNotFoundError`` for an unknown name.
    """
    from ddkit.data import biased

    if biased.is_biased_name(name):  # built from its base dataset: where that one is
        spec = biased.parse_name(name)
        where, how = dataset_status(spec.base, data_root)
        return where, f"built from {spec.base}: {how}"
    key = _canonical(name)
    if key not in DATASETS:
        raise _unknown(name)
    info = DATASETS[key]
    if key == "digits":
        return "scikit-learn (embedded)", info.how_to_get
    for root in _candidate_roots(key, data_root):
        try:
            found = _call_loader(key, info, root, "test")
        except DDKitError as exc:  # a partial or corrupt copy: say so rather than hide it
            return f"unreadable copy under {root} ({str(exc)[:160]})", info.how_to_get
        if found is not None:
            return found[3], info.how_to_get
    return None, info.how_to_get


def _checked(key: str, found: tuple, info: DatasetInfo | None) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """The loader's arrays, checked to be an image dataset of the registered shape."""
    imgs, labels, classes, source = found
    imgs, labels = np.asarray(imgs), np.asarray(labels)
    problem = ""
    if imgs.ndim != 4 or imgs.dtype != np.uint8:
        problem = f"images of shape {imgs.shape} and type {imgs.dtype}, not uint8 N×C×H×W"
    elif info is not None and imgs.shape[1:] != (info.channels, info.image_size, info.image_size):
        problem = f"images of shape {imgs.shape[1:]}, expected {(info.channels, info.image_size, info.image_size)}"
    elif labels.shape != (len(imgs),):
        problem = f"{len(imgs)} images but labels of shape {labels.shape}"
    elif len(imgs) == 0:
        problem = "no images"
    elif not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= len(classes):
        problem = f"labels outside 0..{len(classes) - 1}"
    if problem:
        raise DatasetNotFoundError(f"{key}: the data read from {source!r} is not usable: {problem}")
    return imgs, labels, list(classes), source


@lru_cache(maxsize=16)
def _load_cached(key: str, split: str, data_root: str | None, download: bool) -> ImageDataset:
    if key.startswith("imagefolder:"):
        path = Path(key.split(":", 1)[1]).expanduser()
        imgs, labels, classes, source = _checked(key, _image_folder(path, split), None)
        if split == "train":
            mean, std = _stats(imgs)
        else:  # normalised with the training split's statistics; its classes must be the same
            train = _load_cached(key, "train", data_root, download)
            if list(train.class_names) != classes:
                only_test = sorted(set(classes) - set(train.class_names))
                only_train = sorted(set(train.class_names) - set(classes))
                raise DatasetNotFoundError(
                    f"imagefolder: the class folders of {source!r} and {train.source!r} differ (only in {split}: "
                    f"{only_test[:5] or 'none'}; only in train: {only_train[:5] or 'none'}); labels would not "
                    "match: give both splits the same class folders"
                )
            mean, std = train.mean, train.std
        return _make(key, imgs, labels, classes, mean, std, source, split)
    info = DATASETS[key]
    looked: list[str] = []
    found = None
    for root in _candidate_roots(key, data_root):
        looked.append(str(root))
        found = _call_loader(key, info, root, split)
        if found is not None:
            break
    if found is None and download:
        try:
            found = info.loader(None, split, True)
        except Exception as exc:  # offline or refused: report below, with where we looked
            looked.append(f"download failed: {type(exc).__name__}: {_reason(exc)}")
    if found is None:
        hint = "" if download else (" (nothing is downloaded unless asked; torchvision downloads into "
                                    f"{str(cache_dir())!r})")
        raise DatasetNotFoundError(
            f"dataset {key!r} not found (looked in: {'; '.join(looked)}); get it by: {info.how_to_get}{hint}"
        )
    imgs, labels, classes, source = _checked(key, found, info)
    if info.mean is not None:
        mean, std = info.mean, info.std
    elif split == "train":
        mean, std = _stats(imgs)
    else:  # computed from the training split
        train = _load_cached(key, "train", data_root, download)
        mean, std = train.mean, train.std
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
    name: str, split: str = "train", *, data_root: str | Path | None = None, download: bool = False
) -> ImageDataset:
    """Load a registered dataset split into memory.

    Args:
        name: ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``, ``svhn``, ``digits``,
            ``imagefolder:PATH`` (PATH/train/<class>/*.png and PATH/test|val/<class>/*), or a
            biased benchmark ``cmnist-dd:rho=R,severity=S``, ``cfmnist-dd:...``,
            ``ccifar10-dd:...`` (:mod:`ddkit.data.biased`: 3-channel images with an ``int64``
            bias attribute per image in ``attributes``; its test split has ρ = 0).
        split: ``"train"`` or ``"test"``.
        data_root: a folder searched first (see the module docstring for the order).
        download: allow torchvision's download into the cache when no local copy is found.
            Off by default: nothing is downloaded unless the caller asks (the CLI's ``--download``).

    Returns:
        An :class:`ImageDataset` with ``uint8`` images N×C×H×W (0..255), ``int64`` labels (N,)
        in ``0..num_classes-1`` and one class name per class (for ``imagefolder:``, the class
        folders' names, sorted; images converted to RGB, so C = 3). The test split is
        normalised with the training split's mean/std. Results are cached per process;
        treat the tensors as read-only.

    Raises:
        DatasetNotFoundError: unknown name; not found anywhere (the message lists where it
            looked and how to get the data, e.g. ``download=True``); a copy that cannot be read
            (truncated or corrupt files, a wrong IDX magic number, permission denied, CIFAR
            files failing torchvision's MD5 check: the message names the path and the problem);
            for ``imagefolder:``, any problem of the folder (see :func:`_image_folder`) and a
            test split whose class folders differ from the training split's.
        ConfigError: a biased benchmark's name with a bad parameter (ρ outside [0, 1],
            severity outside 1..4, an unknown key; :func:`ddkit.data.biased.parse_name`).
    """
    if split not in ("train", "test"):
        raise DatasetNotFoundError(f"split must be 'train' or 'test', got {split!r}")
    from ddkit.data import biased

    if biased.is_biased_name(name):
        return biased.load_biased(name, split, data_root=data_root, download=download)
    if name.startswith("imagefolder:"):
        if not name.split(":", 1)[1].strip():
            raise DatasetNotFoundError("imagefolder: needs a folder, as in imagefolder:PATH")
        key = name
    else:
        key = _canonical(name)
        if key not in DATASETS:
            raise _unknown(name)
    return _load_cached(key, split, str(data_root) if data_root else None, download)
