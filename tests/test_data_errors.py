"""Bad dataset input gets one DatasetNotFoundError naming the path and the problem: broken image
folders, symbolic links (loops, links out of the folder), broken IDX files, CIFAR pickles that
fail the MD5 check (never unpickled), unreadable files; and nothing is downloaded unless asked."""

import gzip
import inspect
import os
import pickle
import signal
import stat
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddkit
from ddkit.data import registry
from ddkit.errors import DatasetNotFoundError, DDKitError


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No system copy, environment root or user cache is consulted; the load cache starts empty."""
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DDKIT_DATA", raising=False)
    real_roots = registry._candidate_roots
    monkeypatch.setattr(registry, "_candidate_roots",
                        lambda name, data_root: [r for r in real_roots(name, data_root)
                                                 if not str(r).startswith("/usr/share/datasets")])
    registry._load_cached.cache_clear()
    yield
    registry._load_cached.cache_clear()


@contextmanager
def _deadline(seconds: int):
    """Fail instead of hanging (the symlink-loop scan used to run forever)."""
    def _expired(*_):
        raise TimeoutError(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, _expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _png(path: Path, value: int = 0, size: tuple[int, int] = (4, 4), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    bands = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    arr = rng.integers(0, 256, size=(size[1], size[0], bands), dtype=np.uint8)
    Image.fromarray(arr[..., 0] if bands == 1 else arr, mode).save(path)
    return path


def _folder(root: Path, splits=("train", "test"), classes=("cat", "dog"), per_class: int = 2) -> Path:
    for split in splits:
        for c, name in enumerate(classes):
            for i in range(per_class):
                _png(root / split / name / f"{i}.png", value=100 * c + i)
    return root


def _load(root: Path, split: str = "train"):
    return ddkit.load_dataset(f"imagefolder:{root}", split)


# --------------------------------------------------------------------------- image folders


def test_imagefolder_matches_torchvision_imagefolder(tmp_path):
    """Own scan: the same samples, order, classes and pixels as torchvision's ImageFolder."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import pil_to_tensor

    root = tmp_path / "data"
    for split in ("train", "test"):
        _png(root / split / "b_dog" / "z.png", 1)
        _png(root / split / "b_dog" / "A.PNG", 2, mode="L")
        _png(root / split / "b_dog" / "sub" / "x.bmp", 3)
        _png(root / split / "b_dog" / "sub dir" / "y.png", 4, mode="RGBA")
        _png(root / split / "a_cat" / "1.png", 5)
        _png(root / split / "a_cat" / "deep" / "er" / "2.tiff", 6)
        (root / split / "a_cat" / "notes.txt").write_text("not an image, ignored")
        (root / split / "README").write_text("a file beside the class folders, ignored")
    ds = _load(root)
    tv = ImageFolder(str(root / "train"))
    assert ds.class_names == tv.classes == ["a_cat", "b_dog"]
    assert ds.labels.tolist() == tv.targets
    expected = torch.stack([pil_to_tensor(tv.loader(p).convert("RGB")) for p, _ in tv.samples])
    assert ds.images.dtype == torch.uint8 and torch.equal(ds.images, expected)
    test = _load(root, "test")
    assert test.class_names == ds.class_names and test.mean == ds.mean and test.std == ds.std


def test_imagefolder_empty_train_split(tmp_path):
    root = _folder(tmp_path / "p", splits=("test",))
    (root / "train").mkdir()
    with pytest.raises(DatasetNotFoundError, match="has no class folders") as exc:
        _load(root)
    assert repr(str(root / "train")) in str(exc.value) and "\n" not in str(exc.value)


def test_imagefolder_class_folder_without_images(tmp_path):
    root = _folder(tmp_path / "p")
    (root / "train" / "emu").mkdir()
    (root / "train" / "emu" / "notes.txt").write_text("x")
    with pytest.raises(DatasetNotFoundError, match="class folder .* has no images") as exc:
        _load(root)
    assert repr(str(root / "train" / "emu")) in str(exc.value)


def test_imagefolder_text_file_named_png(tmp_path):
    root = _folder(tmp_path / "p")
    bad = root / "train" / "cat" / "x.png"
    bad.write_text("hello, I am not a PNG")
    with pytest.raises(DatasetNotFoundError, match="is not a readable image: cannot identify image file") as exc:
        _load(root)
    assert repr(str(bad)) in str(exc.value) and "\n" not in str(exc.value)


def test_imagefolder_truncated_image(tmp_path):
    root = _folder(tmp_path / "p")
    bad = _png(root / "train" / "dog" / "big.png", 7, size=(4, 4))
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(DatasetNotFoundError, match="is not a readable image") as exc:
        _load(root)
    assert repr(str(bad)) in str(exc.value)


def test_imagefolder_images_of_different_sizes(tmp_path):
    root = _folder(tmp_path / "p")
    odd = _png(root / "train" / "dog" / "wide.png", 8, size=(6, 4))
    with pytest.raises(DatasetNotFoundError, match="differ in size") as exc:
        _load(root)
    assert repr(str(odd)) in str(exc.value) and "6×4" in str(exc.value)


def test_imagefolder_test_classes_must_match_train(tmp_path):
    root = _folder(tmp_path / "p", splits=("train",), classes=("cat", "dog"))
    _folder(root, splits=("test",), classes=("bird", "cat", "dog"))
    train = _load(root)
    assert train.class_names == ["cat", "dog"]
    with pytest.raises(DatasetNotFoundError, match=r"differ \(only in test: \['bird'\]; only in train: none\)"):
        _load(root, "test")
    # same number of classes, other names: also refused
    other = _folder(tmp_path / "q", splits=("train",), classes=("cat", "dog"))
    _folder(other, splits=("test",), classes=("cat", "emu"))
    with pytest.raises(DatasetNotFoundError, match=r"only in test: \['emu'\]; only in train: \['dog'\]"):
        _load(other, "test")
    # a test split lacking a class would shift the labels: refused too
    fewer = _folder(tmp_path / "r", splits=("train",), classes=("cat", "dog"))
    _folder(fewer, splits=("test",), classes=("dog",))
    with pytest.raises(DatasetNotFoundError, match=r"only in train: \['cat'\]"):
        _load(fewer, "test")


def test_imagefolder_ignores_hidden_entries(tmp_path):
    """macOS '._x.png' companions and '.ipynb_checkpoints' folders are not images/classes."""
    root = _folder(tmp_path / "p")
    (root / "train" / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    _png(root / "train" / ".ipynb_checkpoints" / "c.png")
    ds = _load(root)
    assert ds.class_names == ["cat", "dog"] and len(ds) == 4


def test_imagefolder_symlink_loop_is_refused_quickly(tmp_path):
    root = _folder(tmp_path / "p")
    os.symlink("..", root / "train" / "cat" / "loop")  # cat/loop/cat/loop/... for ever
    with _deadline(10), pytest.raises(DatasetNotFoundError, match="symbolic link to a folder") as exc:
        _load(root)
    assert repr(str(root / "train" / "cat" / "loop")) in str(exc.value)


def test_imagefolder_linked_folders_are_not_followed(tmp_path):
    elsewhere = _folder(tmp_path / "elsewhere", splits=("x",))
    root = _folder(tmp_path / "p")
    os.symlink(elsewhere / "x" / "cat", root / "train" / "emu")  # a linked class folder
    with pytest.raises(DatasetNotFoundError, match="emu' is a symbolic link to a folder"):
        _load(root)
    root2 = _folder(tmp_path / "p2")
    os.symlink(elsewhere / "x" / "cat", root2 / "train" / "cat" / "more")  # a linked subfolder
    with pytest.raises(DatasetNotFoundError, match="not followed"):
        _load(root2)
    root3 = _folder(tmp_path / "p3", splits=("test",))
    os.symlink(elsewhere / "x", root3 / "train")  # a split folder leading out of PATH
    with pytest.raises(DatasetNotFoundError, match="outside"):
        _load(root3)


def test_imagefolder_linked_files(tmp_path):
    root = _folder(tmp_path / "p")
    target = root / "train" / "cat" / "0.png"
    os.symlink(target, root / "train" / "dog" / "linked.png")  # inside PATH: read
    ds = _load(root)
    assert len(ds) == 5 and torch.equal(ds.images[4], ds.images[0])  # dog: 0, 1, linked

    outside = _png(tmp_path / "outside.png", 9)
    root2 = _folder(tmp_path / "p2")
    os.symlink(outside, root2 / "train" / "dog" / "out.png")
    with pytest.raises(DatasetNotFoundError, match="outside") as exc:
        _load(root2)
    assert repr(str(root2 / "train" / "dog" / "out.png")) in str(exc.value)

    root3 = _folder(tmp_path / "p3")
    os.symlink(root3 / "train" / "dog" / "self.png", root3 / "train" / "dog" / "self.png")  # loops on itself
    os.symlink(tmp_path / "missing.png", root3 / "train" / "dog" / "zz.png")
    with pytest.raises(DatasetNotFoundError, match="self.png' is a broken symbolic link"):
        _load(root3)


def test_imagefolder_refuses_special_files(tmp_path):
    root = _folder(tmp_path / "p")
    os.mkfifo(root / "train" / "cat" / "fifo.png")  # reading it would block for ever
    with _deadline(10), pytest.raises(DatasetNotFoundError, match="fifo.png' is not a regular file"):
        _load(root)


def test_imagefolder_entry_limit(tmp_path, monkeypatch):
    root = _folder(tmp_path / "p", per_class=4)
    monkeypatch.setattr(registry, "MAX_FOLDER_ENTRIES", 5)
    with pytest.raises(DatasetNotFoundError, match="more than 5 files and folders") as exc:
        _load(root)
    assert repr(str(root / "train")) in str(exc.value)


def test_imagefolder_permission_denied(tmp_path, monkeypatch):
    root = _folder(tmp_path / "p")
    img = root / "train" / "dog" / "1.png"
    real_open = Image.open

    def refuse(fp, *a, **k):
        if str(fp) == str(img):
            raise PermissionError(13, "Permission denied", str(fp))
        return real_open(fp, *a, **k)

    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(DatasetNotFoundError, match="not a readable image: .*Permission denied") as exc:
        _load(root)
    assert repr(str(img)) in str(exc.value)

    real_scandir = os.scandir
    cat = str(root / "train" / "cat")
    monkeypatch.setattr(registry.os, "scandir",
                        lambda p: (_ for _ in ()).throw(PermissionError(13, "Permission denied", p))
                        if str(p) == cat else real_scandir(p))
    with pytest.raises(DatasetNotFoundError, match="cannot be read: .*Permission denied") as exc:
        _load(root)
    assert repr(cat) in str(exc.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_imagefolder_unreadable_file_for_real(tmp_path):
    root = _folder(tmp_path / "p")
    img = root / "train" / "dog" / "1.png"
    img.chmod(0)
    try:
        with pytest.raises(DatasetNotFoundError, match="Permission denied"):
            _load(root)
    finally:
        img.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_imagefolder_path_problems(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="needs a folder"):
        ddkit.load_dataset("imagefolder:")
    with pytest.raises(DatasetNotFoundError, match="is not a folder"):
        _load(tmp_path / "absent")
    (tmp_path / "f").write_text("x")
    with pytest.raises(DatasetNotFoundError, match="is not a folder"):
        _load(tmp_path / "f")


# --------------------------------------------------------------------------- IDX (MNIST family)


def _idx(images: np.ndarray, labels: np.ndarray) -> tuple[bytes, bytes]:
    n = len(images)
    return (np.array([2051, n, 28, 28], dtype=">i4").tobytes() + images.tobytes(),
            np.array([2049, n], dtype=">i4").tobytes() + labels.astype(np.uint8).tobytes())


def _write_idx(folder: Path, n: int = 12, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        blobs = _idx(rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), np.arange(n) % 10)
        for kind, blob in zip(("images-idx3", "labels-idx1"), blobs, strict=True):
            name = folder / f"{prefix}-{kind}-ubyte"
            if gz:
                with gzip.open(f"{name}.gz", "wb") as f:
                    f.write(blob)
            else:
                name.write_bytes(blob)
    return folder


def test_idx_truncated_gz(tmp_path):
    root = _write_idx(tmp_path / "data" / "fashion-mnist")
    gz = root / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:200])
    with pytest.raises(DatasetNotFoundError, match="could not be decompressed") as exc:
        ddkit.load_dataset("fashion-mnist", data_root=tmp_path / "data")
    assert repr(str(gz)) in str(exc.value) and "\n" not in str(exc.value)


def test_idx_not_gzip(tmp_path):
    root = _write_idx(tmp_path / "data")
    gz = root / "t10k-labels-idx1-ubyte.gz"
    gz.write_bytes(b"plain text, not gzip")
    with pytest.raises(DatasetNotFoundError, match="could not be decompressed: Not a gzipped file") as exc:
        ddkit.load_dataset("mnist", "test", data_root=tmp_path / "data")
    assert repr(str(gz)) in str(exc.value)


def test_idx_wrong_magic_then_fixed(tmp_path):
    root = _write_idx(tmp_path / "data")
    gz = root / "train-images-idx3-ubyte.gz"
    good = gz.read_bytes()
    with gzip.open(gz, "wb") as f:
        f.write(np.array([2049, 12], dtype=">i4").tobytes() + bytes(12))  # a labels file in its place
    with pytest.raises(DatasetNotFoundError, match=r"is not an IDX images file \(magic number 0x00000801, "
                                                   r"expected 0x00000803\)") as exc:
        ddkit.load_dataset("mnist", data_root=tmp_path / "data")
    assert repr(str(gz)) in str(exc.value)
    gz.write_bytes(good)  # the bad decompressed copy was dropped: the fixed file is read
    assert ddkit.load_dataset("mnist", data_root=tmp_path / "data").images.shape == (12, 1, 28, 28)


def test_idx_truncated_raw_and_count_mismatch(tmp_path):
    root = _write_idx(tmp_path / "data", gz=False)
    raw = root / "train-images-idx3-ubyte"
    raw.write_bytes(raw.read_bytes()[:-100])
    with pytest.raises(DatasetNotFoundError, match="is truncated: its header announces 12 images") as exc:
        ddkit.load_dataset("mnist", data_root=tmp_path / "data")
    assert repr(str(raw)) in str(exc.value)
    (root / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.zeros((3, 28, 28), np.uint8), np.arange(3))[1])
    with pytest.raises(DatasetNotFoundError, match="holds 12 images but .* 3 labels"):
        ddkit.load_dataset("mnist", "test", data_root=tmp_path / "data")
    (root / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.zeros((12, 28, 28), np.uint8), np.arange(12) + 5)[1])
    with pytest.raises(DatasetNotFoundError, match=r"labels outside 0\.\.9"):
        ddkit.load_dataset("mnist", "test", data_root=tmp_path / "data")


def test_idx_unreadable_file(tmp_path, monkeypatch):
    root = _write_idx(tmp_path / "data", gz=False)
    raw = root / "train-labels-idx1-ubyte"
    raw.unlink()
    raw.mkdir()  # unreadable, even for root
    with pytest.raises(DatasetNotFoundError, match="could not be read: .*Is a directory") as exc:
        ddkit.load_dataset("mnist", data_root=tmp_path / "data")
    assert repr(str(raw)) in str(exc.value)

    root2 = _write_idx(tmp_path / "data2", gz=False)
    denied = str(root2 / "t10k-images-idx3-ubyte")
    real_open = open

    def refuse(file, *a, **k):
        if str(file) == denied:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr(registry, "open", refuse, raising=False)
    with pytest.raises(DatasetNotFoundError, match="could not be read: .*Permission denied") as exc:
        ddkit.load_dataset("mnist", "test", data_root=tmp_path / "data2")
    assert repr(denied) in str(exc.value)


def test_idx_gz_read_when_the_cache_is_not_writable(tmp_path, monkeypatch):
    _write_idx(tmp_path / "data")
    (tmp_path / "not-a-folder").write_text("x")
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "not-a-folder"))
    ds = ddkit.load_dataset("mnist", "test", data_root=tmp_path / "data")
    assert ds.images.shape == (12, 1, 28, 28) and ds.labels.tolist() == (np.arange(12) % 10).tolist()


# --------------------------------------------------------------------------- CIFAR / SVHN


class _CreatesFile:
    """Unpickling this creates ``path`` (what a crafted CIFAR pickle could do, and worse)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_crafted_cifar_pickle_is_refused_unread(tmp_path):
    probe = tmp_path / "probe-created"
    with open(pickle.loads(pickle.dumps(_CreatesFile(probe))).name):  # the payload works ...
        pass
    assert probe.exists()
    marker = tmp_path / "marker-created"
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(pickle.dumps({"data": _CreatesFile(marker), "labels": [0]}))
    for split in ("train", "test"):
        for download in (False, True):  # a local copy that is broken is refused, not replaced
            with pytest.raises(DatasetNotFoundError, match="do not match the official MD5 sums") as exc:
                ddkit.load_dataset("cifar10", split, data_root=tmp_path / "data", download=download)
            assert repr(str(folder)) in str(exc.value)
    where, _ = registry.dataset_status("cifar10", tmp_path / "data")
    assert where.startswith("unreadable copy")
    assert not marker.exists()  # ... and was never unpickled


def test_corrupt_svhn_is_refused(tmp_path):
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file, but not really")
    with pytest.raises(DatasetNotFoundError, match="MD5") as exc:
        ddkit.load_dataset("svhn", "test", data_root=tmp_path)
    assert repr(str(tmp_path / "test_32x32.mat")) in str(exc.value)


# --------------------------------------------------------------------------- downloads


def test_no_download_unless_asked(tmp_path, monkeypatch):
    from torchvision import datasets

    calls = []
    for cls in (datasets.CIFAR10, datasets.MNIST, datasets.SVHN):
        monkeypatch.setattr(cls, "download", lambda self, cls=cls: calls.append(cls.__name__))
    assert inspect.signature(ddkit.load_dataset).parameters["download"].default is False
    for name in ("cifar10", "mnist", "svhn"):
        with pytest.raises(DatasetNotFoundError, match="looked in") as exc:
            ddkit.load_dataset(name, "test", data_root=tmp_path / "empty")
        msg = str(exc.value)
        assert "empty" in msg and "download=True" in msg and "--download" in msg and str(tmp_path / "cache") in msg
    assert calls == []
    # an explicit opt-in still downloads (here the stub fetches nothing: reported as a failed download)
    with pytest.raises(DatasetNotFoundError, match="download failed"):
        ddkit.load_dataset("cifar10", "test", data_root=tmp_path / "empty", download=True)
    assert calls == ["CIFAR10"]


def test_loader_output_is_checked(monkeypatch):
    from dataclasses import replace

    info = registry.DATASETS["digits"]

    def bad_labels(root, split, download):
        return np.zeros((3, 1, 8, 8), np.uint8), np.array([0, 1, 12]), [str(i) for i in range(10)], "here"

    monkeypatch.setitem(registry.DATASETS, "digits", replace(info, loader=bad_labels))
    with pytest.raises(DatasetNotFoundError, match=r"digits: the data read from 'here' is not usable: labels outside"):
        ddkit.load_dataset("digits")

    def bad_shape(root, split, download):
        return np.zeros((3, 1, 9, 8), np.uint8), np.array([0, 1, 2]), [str(i) for i in range(10)], "here"

    monkeypatch.setitem(registry.DATASETS, "digits", replace(info, loader=bad_shape))
    with pytest.raises(DatasetNotFoundError, match=r"images of shape \(1, 9, 8\), expected \(1, 8, 8\)"):
        ddkit.load_dataset("digits", "test")
    assert issubclass(DatasetNotFoundError, DDKitError)
