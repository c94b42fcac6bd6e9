"""Dataset registry: real MNIST/Fashion-MNIST, and CIFAR/SVHN/ImageFolder in their on-disk formats
(written here from the 20 real CIFAR-10 test images in ../shared/data/cifar10-sample)."""

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddkit
from ddkit.data import registry
from ddkit.errors import DatasetNotFoundError

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-sample"


def _cifar_sample():
    if not SAMPLE.is_dir():
        pytest.skip(f"CIFAR-10 sample not at {SAMPLE}")
    files = sorted(SAMPLE.glob("cifar10_*_*.png"))
    imgs = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])  # N×32×32×3
    labels = [int(f.stem.split("_")[2]) for f in files]
    return files, imgs, labels


def test_real_fashion_mnist_and_mnist(fmnist, mnist):
    for (train, test), classes in ((fmnist, "Ankle boot"), (mnist, "9")):
        assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
        assert test.images.shape == (10000, 1, 28, 28)
        assert train.class_counts() and min(train.class_counts()) > 5000
        assert train.class_names[-1] == classes
        x = train.float_images(torch.arange(1000))
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # the registry's mean/std are those of the data
    x = fmnist[0].float_images(torch.arange(0, 60000, 7))
    assert abs(float(x.mean()) - fmnist[0].mean[0]) < 0.01 and abs(float(x.std()) - fmnist[0].std[0]) < 0.01


def test_unknown_and_missing(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFoundError, match="unknown dataset"):
        ddkit.load_dataset("imagenet-99")
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DDKIT_DATA", raising=False)
    with pytest.raises(DatasetNotFoundError, match="looked in") as exc:
        ddkit.load_dataset("cifar100", data_root=tmp_path / "nothing", download=False)
    assert "nothing" in str(exc.value) and "torchvision" in str(exc.value)


def test_cifar10_on_disk_format(tmp_path, monkeypatch):
    _, imgs, labels = _cifar_sample()
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    flat = imgs.transpose(0, 3, 1, 2).reshape(len(imgs), -1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as f:
            pickle.dump({"data": flat, "labels": labels}, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": registry.CIFAR10_CLASSES}, f)
    # torchvision checks the official MD5 sums; these files are ours, so skip that check only
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    registry._load_cached.cache_clear()
    train = ddkit.load_dataset("cifar10", data_root=tmp_path, download=False)
    assert train.images.shape == (100, 3, 32, 32) and train.class_names[0] == "airplane"
    assert torch.equal(train.images[0], torch.from_numpy(imgs[0]).permute(2, 0, 1))
    assert train.labels[:20].tolist() == labels
    registry._load_cached.cache_clear()


def test_svhn_on_disk_format(tmp_path, monkeypatch):
    from scipy.io import savemat
    from torchvision.datasets import SVHN

    _, imgs, labels = _cifar_sample()
    for split in ("train", "test"):
        savemat(tmp_path / f"{split}_32x32.mat",
                {"X": imgs.transpose(1, 2, 3, 0), "y": np.array([[lab if lab else 10] for lab in labels])})
    monkeypatch.setattr(SVHN, "_check_integrity", lambda self: True)
    registry._load_cached.cache_clear()
    test = ddkit.load_dataset("svhn", "test", data_root=tmp_path, download=False)
    assert test.images.shape == (20, 3, 32, 32) and test.labels.tolist() == labels
    registry._load_cached.cache_clear()


def test_imagefolder_with_real_rgb_images(tmp_path):
    files, _, labels = _cifar_sample()
    for split in ("train", "test"):
        for f, lab in zip(files, labels, strict=True):
            d = tmp_path / split / registry.CIFAR10_CLASSES[lab]
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, d / f.name)
    ds = ddkit.load_dataset(f"imagefolder:{tmp_path}")
    assert ds.images.shape == (20, 3, 32, 32) and ds.channels == 3 and len(ds.mean) == 3
    assert ds.num_classes == len(set(labels))
    syn = ddkit.distill(ds, "random", 1, progress=False)
    assert syn.images.shape == (ds.num_classes, 3, 32, 32)
    with pytest.raises(DatasetNotFoundError, match="train/"):
        ddkit.load_dataset(f"imagefolder:{tmp_path / 'train'}")


def test_digits_is_embedded():
    train = ddkit.load_dataset("digits")
    assert train.images.shape[1:] == (1, 8, 8) and train.num_classes == 10 and len(train) > 1000


def _write_idx_gz(folder: Path, n: int) -> None:
    """The 4 MNIST IDX files, gzip'd (the Debian package's layout), with n images each."""
    import gzip

    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(np.array([2051, n, 28, 28], dtype=">i4").tobytes() + imgs.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(np.array([2049, n], dtype=">i4").tobytes() + labels.tobytes())


def test_idx_staging_survives_a_concurrent_loader(tmp_path, monkeypatch):
    """Two processes decompressing the same IDX files into the cache at once (seen when two
    benchmarks started together) must both load: here a second load runs to completion while
    the first is halfway through writing its copy. With one fixed temporary name the first
    one's rename failed (its file had been renamed away by the second)."""
    src = tmp_path / "fashion-mnist"
    src.mkdir()
    _write_idx_gz(src, 30)
    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))
    loader = registry.DATASETS["fashion-mnist"].loader
    real_copy, nested, started = shutil.copyfileobj, [], []

    def copy_with_a_competitor(fin, fout, *a, **k):
        if not started:  # the competitor stages every file while we hold a half-written one
            started.append(True)
            nested.append(loader(tmp_path, "train", False))
        fout.write(fin.read(100))  # then we finish our copy
        return real_copy(fin, fout, *a, **k)

    monkeypatch.setattr(registry.shutil, "copyfileobj", copy_with_a_competitor)
    imgs, labels, _, _ = loader(tmp_path, "train", False)
    assert nested and imgs.shape == (30, 1, 28, 28) and np.array_equal(imgs, nested[0][0])
    assert labels.tolist() == (np.arange(30) % 10).tolist()
    raw = tmp_path / "cache" / "idx" / "fashion-mnist" / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(registry.MNIST_FILES)  # no temporary left over
