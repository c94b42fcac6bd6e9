"""Distilled sets from other tools, and sets for other tools: ``ddkit import`` / ``ddkit export``.

Formats read (as the authors' codes write them; ``../shared/papers/interop.md``):

* ``dc``: the DC/DSA/DM code's ``res_<method>_<dataset>_<model>_<ipc>ipc.pt`` (also baadd's and
  DC-BENCH's): ``{'data': [[images, labels], ...one per experiment], 'accs_all_exps': ...}``,
  images standardised with the dataset's mean/std; ``exp`` picks the experiment.
* ``mtt``: a folder with MTT's ``images_best.pt`` and ``labels_best.pt`` (standardised, in
  ZCA space when distilled with ``--zca``), and DATM's ``lr_best.pt`` and soft labels.
* ``npz``: KIP / FRePo ``.npz`` arrays (``images``/``x_proto`` N×H×W×C, ``labels``/``y_proto``
  one-hot or learned targets), standardised.
* ``imagefolder``: ``PATH/<class>/*.png`` (class folders named by the dataset's class names or
  by their indices 0..K−1), pixels.

Loading never runs code from a file: ``torch.load(weights_only=True)``, widened only by an
explicit allow-list of NumPy scalar types that the DC code's accuracy lists hold;
``np.load(allow_pickle=False)``. Anything else (a pickle payload) is refused. After
de-standardising, the pixels must lie in [0, 1] within ``tolerance``: a set still in ZCA
space or standardised with other statistics scores ~10 % if taken as it is (the most common
complaint in these projects' issues), so it is refused with a message saying what to do.
Values outside [0, 1] within the tolerance are kept as they are (ddkit stores distilled
images unclamped, as the authors' code does); their fraction is recorded. The imported
set records its source file(s)' SHA-256.

ZCA (``zca=True``, MTT's ``--zca``): MTT whitens with kornia's ``ZCAWhitening(eps=0.1)``
fitted on the standardised training set; the transform is recomputed here the same way and
inverted. KIP's per-image standardisation + ZCA cannot be inverted and is refused.

Formats written (:func:`export_set`): ``pt`` (``images.pt`` standardised float32, ``labels.pt``,
``lr.pt`` when the set has a learned lr: what the DC/MTT evaluation scripts load) and
``imagefolder`` (one PNG per image in ``DIR/<class>/``: 8-bit, so values are rounded).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddkit.artifact import DistilledSet, pixel_overflow
from ddkit.data import ImageDataset, load_dataset
from ddkit.errors import ArtifactError, ConfigError, OutputError
from ddkit.utils import atomic_path

__all__ = ["EXPORT_FORMATS", "IMPORT_FORMATS", "export_set", "import_set"]

IMPORT_FORMATS = ("dc", "mtt", "npz", "imagefolder")
EXPORT_FORMATS = ("pt", "imagefolder")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _numpy_scalar_types() -> list[Any]:
    core = getattr(np, "_core", None) or np.core  # NumPy 2 / 1
    return [core.multiarray.scalar, np.dtype, *{type(np.dtype(t)) for t in (np.float64, np.float32, np.int64)}]


def _torch_load(path: Path, *, numpy_scalars: bool = False) -> Any:
    """``torch.load(weights_only=True)``; with ``numpy_scalars`` the allow-list adds NumPy's
    scalar and dtype types (data, not code). Any other object is refused."""
    if not path.is_file():
        raise ArtifactError(f"{str(path)!r} does not exist or is not a file")
    try:
        if numpy_scalars:
            with torch.serialization.safe_globals(_numpy_scalar_types()):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for a payload, RuntimeError for a non-torch file, ...
        first = next((ln for ln in str(exc).splitlines() if "Unsupported global" in ln), None)
        why = first.strip() if first else (str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__)
        raise ArtifactError(f"{str(path)!r} cannot be loaded as plain data (it may hold code, which ddkit never "
                            f"runs): {why}") from None


def _as_tensor(x: Any, what: str, path: Path) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise ArtifactError(f"{str(path)!r}: {what} is a {type(x).__name__}, not an array")
    return x.detach().cpu()


def _labels(y: torch.Tensor, n: int, k: int, label_kind: str | None, path: Path) -> tuple[torch.Tensor, str]:
    if y.shape[0] != n:
        raise ArtifactError(f"{str(path)!r}: {n} images but {y.shape[0]} labels")
    if y.dim() == 1:
        return y.long(), "hard"
    if y.dim() != 2 or y.shape[1] != k:
        raise ArtifactError(f"{str(path)!r}: labels of shape {tuple(y.shape)}, expected ({n},) or {n}×{k}")
    y = y.float()
    if label_kind == "hard" or (label_kind is None and bool(((y == 0) | (y == 1)).all())
                                and bool((y.sum(1) == 1).all())):
        return y.argmax(1), "hard"  # one-hot rows
    if label_kind is None:
        raise ConfigError(f"{str(path)!r} has N×K labels that are not one-hot: say what they are with "
                          f"label_kind='probabilities' (distributions, cross-entropy) or 'regression' (learned "
                          f"targets as KIP/FRePo write them, MSE)")
    return y, label_kind


def _zca(train: ImageDataset):
    from kornia.enhance import ZCAWhitening

    x = train.normalize(train.float_images())
    return ZCAWhitening(eps=0.1, compute_inv=True).fit(x)


def import_set(fmt: str, path: str | Path, dataset: str, *, exp: int = 0, zca: bool = False,
               label_kind: str | None = None, method: str | None = None, tolerance: float = 0.05,
               data_root: str | Path | None = None, download: bool = False,
               train: ImageDataset | None = None) -> DistilledSet:
    """Read another tool's distilled set as a :class:`DistilledSet` (see the module docstring).

    Args:
        fmt: ``dc``, ``mtt``, ``npz`` or ``imagefolder``.
        path: the file (``dc``, ``npz``) or folder (``mtt``, ``imagefolder``).
        dataset: the registry name of the dataset the set was distilled from (its mean/std,
            class names and, for ``zca``, its training set come from there).
        exp: the experiment of a ``dc`` file (0-based).
        zca: the images are in MTT's ZCA space (``mtt``): invert it.
        label_kind: what N×K labels are (``probabilities`` or ``regression``); one-hot rows
            become class indices by themselves.
        method: the method name to record (default: from a ``dc`` file name, else ``"imported"``).
        tolerance: how far outside [0, 1] de-standardised pixels may lie (kept unclipped).
        data_root, download, train: where the dataset comes from (``train``: already loaded).

    Returns:
        The set: images float32 N×C×H×W in pixel space (unclipped), class-major or as stored;
        ``extra["import"]`` records the format, source, SHA-256, experiment, ZCA and the
        fraction of values outside [0, 1] (``pixel_overflow``).

    Raises:
        ArtifactError: the file is missing, not loadable as plain data (a pickle payload),
            not of the format, of the wrong shape for the dataset, or its pixels are out of
            range after de-standardising (naming ZCA/normalisation as the likely cause).
        ConfigError: unknown format, an experiment out of range, N×K labels without a kind.
        DatasetNotFoundError: the dataset cannot be loaded.
    """
    if fmt not in IMPORT_FORMATS:
        raise ConfigError(f"unknown import format {fmt!r}; use one of {', '.join(IMPORT_FORMATS)}")
    if label_kind not in (None, "hard", "probabilities", "regression"):
        raise ConfigError(f"label_kind must be hard, probabilities or regression, got {label_kind!r}")
    p = Path(path)
    train = train if train is not None else load_dataset(dataset, "train", data_root=data_root, download=download)
    k, c, size = train.num_classes, train.channels, train.image_size[0]
    lr = None
    standardised = True
    sources: list[Path]
    if fmt == "dc":
        obj = _torch_load(p, numpy_scalars=True)
        if not isinstance(obj, dict) or not isinstance(obj.get("data"), list | tuple) or not obj["data"]:
            raise ArtifactError(f"{str(p)!r} is not a DC-code result file (no 'data' list of experiments)")
        if not 0 <= exp < len(obj["data"]):
            n_exp = len(obj["data"])
            raise ConfigError(f"{str(p)!r} has {n_exp} experiments; exp must be in 0..{n_exp - 1}")
        entry = obj["data"][exp]
        if not isinstance(entry, list | tuple) or len(entry) < 2:
            raise ArtifactError(f"{str(p)!r}: experiment {exp} is not an [images, labels] pair")
        x, y = _as_tensor(entry[0], "images", p), _as_tensor(entry[1], "labels", p)
        m = re.match(r"res_([A-Za-z0-9]+)_", p.name)
        method = method or (m.group(1).lower() if m else "imported")
        sources = [p]
    elif fmt == "mtt":
        if not p.is_dir():
            raise ArtifactError(f"{str(p)!r} is not a folder with images_best.pt and labels_best.pt")
        x = _as_tensor(_torch_load(p / "images_best.pt"), "images", p)
        y = _as_tensor(_torch_load(p / "labels_best.pt"), "labels", p)
        sources = [p / "images_best.pt", p / "labels_best.pt"]
        if (p / "lr_best.pt").exists():
            raw = _torch_load(p / "lr_best.pt")
            lr = torch.as_tensor(raw, dtype=torch.float32).reshape(())
            sources.append(p / "lr_best.pt")
        if zca:
            x = _zca(train).inverse_transform(x.float())
    elif fmt == "npz":
        if not p.is_file():
            raise ArtifactError(f"{str(p)!r} does not exist or is not a file")
        try:
            with np.load(p, allow_pickle=False) as z:
                arrays = {name: z[name] for name in z.files}
        except ValueError as exc:  # object arrays need pickle: refused
            raise ArtifactError(f"{str(p)!r} cannot be loaded as plain data: {str(exc).splitlines()[0]}") from None
        except Exception as exc:
            raise ArtifactError(f"{str(p)!r} is not an .npz file: {str(exc).splitlines()[0][:160]}") from None
        xk = next((n for n in ("images", "x_proto", "x") if n in arrays), None)
        yk = next((n for n in ("labels", "y_proto", "y") if n in arrays), None)
        if xk is None or yk is None:
            raise ArtifactError(f"{str(p)!r} has arrays {sorted(arrays)}; expected images/x_proto and labels/y_proto")
        x = _as_tensor(arrays[xk], "images", p)
        if x.dim() == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.permute(0, 3, 1, 2)  # NHWC → NCHW
        y = _as_tensor(arrays[yk], "labels", p)
        sources = [p]
    else:
        x, y, folder_digest = _read_folder(p, train)
        sources = [p]
        standardised = False
    x = x.float()
    if x.dim() != 4 or x.shape[1:] != (c, size, size):
        raise ArtifactError(f"{str(p)!r}: images of shape {tuple(x.shape)}, {dataset} needs N×{c}×{size}×{size}")
    labels, kind = _labels(y, x.shape[0], k, label_kind, p)
    if standardised:
        mean = torch.tensor(train.mean).view(-1, 1, 1)
        std = torch.tensor(train.std).view(-1, 1, 1)
        x = x * std + mean
    if not torch.isfinite(x).all():
        raise ArtifactError(f"{str(p)!r}: the images contain NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -tolerance or hi > 1 + tolerance:
        hint = ("the images look ZCA-whitened (MTT --zca: pass --zca) or standardised with other statistics"
                if standardised else "they are not 8-bit pixels")
        raise ArtifactError(f"{str(p)!r}: after de-standardising with {dataset}'s mean/std the pixels span "
                            f"[{lo:.2f}, {hi:.2f}], not [0, 1]; {hint}. Refused: taken as they are they would "
                            f"train networks to chance")
    digests = [folder_digest] if fmt == "imagefolder" else [_sha256(s) for s in sources]
    info = {"format": fmt, "source": [str(s) for s in sources], "sha256": digests,
            "exp": exp if fmt == "dc" else None, "zca_inverted": bool(zca), "pixel_overflow": pixel_overflow(x, 6)}
    counts = torch.bincount(labels if kind == "hard" else labels.argmax(1), minlength=k)
    return DistilledSet(images=x, labels=labels, label_kind=kind, method=method or "imported",
                        dataset=train.name, mean=train.mean, std=train.std, class_names=list(train.class_names),
                        ipc=max(1, int(counts.max())), seed=0, config={}, extra={"import": info}, lr=lr)


def _folder_name(name: str) -> str:
    """A class name as a folder name (path separators replaced)."""
    return name.replace("/", "_").replace("\\", "_")


def _read_folder(p: Path, train: ImageDataset) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Images N×C×H×W float32 [0, 1], labels int64 (N,), and one SHA-256 over the files read
    (their relative paths and contents, in order)."""
    from PIL import Image, UnidentifiedImageError

    if not p.is_dir():
        raise ArtifactError(f"{str(p)!r} is not a folder of class folders")
    names = [_folder_name(n) for n in train.class_names]
    images, labels, files = [], [], []
    folders = sorted(d for d in p.iterdir() if d.is_dir() and not d.is_symlink() and not d.name.startswith("."))
    if not folders:
        raise ArtifactError(f"{str(p)!r} has no class folders")
    for d in folders:
        if d.name in names:
            label = names.index(d.name)
        elif d.name.isdigit() and int(d.name) < len(names):
            label = int(d.name)
        else:
            raise ArtifactError(f"class folder {str(d)!r} is neither a class of {train.name} ({', '.join(names)}) nor "
                                f"an index 0..{len(names) - 1}")
        for f in sorted(f for f in d.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES and f.is_file()
                        and not f.is_symlink()):
            try:
                with Image.open(f) as im:
                    im = im.convert("L" if train.channels == 1 else "RGB")
                    arr = np.asarray(im, dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as exc:
                raise ArtifactError(f"{str(f)!r} is not a readable image: {str(exc).splitlines()[0]}") from None
            arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
            images.append(torch.from_numpy(arr.copy()).float() / 255.0)
            labels.append(label)
            files.append(f)
    if not images:
        raise ArtifactError(f"{str(p)!r} has no images")
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) > 1:
        raise ArtifactError(f"{str(p)!r} holds images of different sizes {sorted(shapes)}")
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(p).as_posix().encode())
        h.update(_sha256(f).encode())
    return torch.stack(images), torch.tensor(labels), h.hexdigest()


def export_set(ds: DistilledSet, fmt: str, out_dir: str | Path) -> list[Path]:
    """Write ``ds`` for other tools into the folder ``out_dir`` (created; files written atomically).

    ``pt``: ``images.pt`` (float32 N×C×H×W, standardised with the set's mean/std, as the
    DC/MTT evaluation scripts take them), ``labels.pt`` (int64 (N,) or float32 N×K), and
    ``lr.pt`` (float32 scalar) when the set has a learned lr; plain tensors, loadable with
    ``torch.load(weights_only=True)``. ``imagefolder``: ``out_dir/<class name>/<i>.png``,
    8-bit grey or RGB (values rounded to 1/255; N×K labels by their argmax).

    Returns:
        The files written.

    Raises:
        ConfigError: unknown format. OutputError: the folder cannot be written.
    """
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"export target {str(out)!r} exists and is not a folder")
    written: list[Path] = []
    if fmt == "pt":
        items = {"images.pt": ds.normalized_images(), "labels.pt": ds.labels}
        if ds.lr is not None:
            items["lr.pt"] = ds.lr
        for name, t in items.items():
            with atomic_path(out / name) as tmp:
                torch.save(t.clone(), tmp)
            written.append(out / name)
        return written
    from PIL import Image

    hard = ds.hard_labels()
    for i in range(ds.images.shape[0]):
        cls = _folder_name(ds.class_names[int(hard[i])]) or str(int(hard[i]))
        arr = (ds.images[i].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        img = Image.fromarray(arr[0], mode="L") if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0),
                                                                                          mode="RGB")
        path = out / cls / f"{i:05d}.png"
        with atomic_path(path) as tmp:
            img.save(tmp, format="PNG")
        written.append(path)
    return written
