"""Biased benchmarks (CMNIST-DD, CFMNIST-DD, CCIFAR10-DD), attributes, bias metrics and the remedies."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from typer.testing import CliRunner

import ddkit
from ddkit.data import ImageDataset, biased, registry
from ddkit.data.biased import MEAN_COLOURS, attribute_labels, colorize, parse_name
from ddkit.distill.debias import debias_weights, kde_weights, oracle_weights
from ddkit.distill.gm import class_gradients_loop, class_gradients_vmap
from ddkit.errors import ConfigError
from ddkit.evaluate.bias import bias_plan, summarise

MNIST_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
runner = CliRunner()


# ----------------------------------------------------------------------------- attributes
def test_attribute_blocks_hand_computed():
    # class 0 of 10 images at rho 0.5: milestones round(10·cumsum([.5, 1/18 × 9])) = 5,6,6,7,7,8,8,9,9,10
    labels = torch.zeros(10, dtype=torch.long)
    assert attribute_labels(labels, 0.5).tolist() == [0, 0, 0, 0, 0, 1, 3, 5, 7, 9]
    # class 3: milestones 1,1,2,7,7,8,8,9,9,10; its own attribute in the middle, in dataset order
    assert attribute_labels(torch.full((10,), 3), 0.5).tolist() == [0, 2, 3, 3, 3, 3, 3, 5, 7, 9]


@pytest.mark.parametrize("rho", [0.0, 0.1, 0.5, 0.8, 0.95, 1.0])
def test_attribute_ratios_exact(rho):
    g = torch.Generator().manual_seed(0)
    counts = [5923, 6742, 37, 100, 1, 0, 999, 5000, 12, 77]
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])[torch.randperm(sum(counts), generator=g)]
    a = attribute_labels(labels, rho)
    assert a.dtype == torch.int64 and a.shape == labels.shape
    for c, n in enumerate(counts):
        mine = a[labels == c]
        row = np.full(10, (1 - rho) / 9)
        row[c] = rho
        cum = np.round(n * np.cumsum(row))
        # how many images take an attribute ≤ b is exactly round(n·Σ_{≤b} r)
        assert [int((mine <= b).sum()) for b in range(10)] == cum.astype(int).tolist()
        assert bool((mine[1:] >= mine[:-1]).all())  # contiguous blocks in dataset order, 0 first
    if rho == 0.0:
        assert not bool((a == labels).any())  # fully bias-conflicting
    if rho == 1.0:
        assert bool((a == labels).all())


def test_attribute_bad_input():
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        attribute_labels(torch.zeros(3, dtype=torch.long), 1.2)
    with pytest.raises(ConfigError, match="0..9"):
        attribute_labels(torch.tensor([0, 10]), 0.5)


def test_image_dataset_attributes_survive_subsets_and_are_validated():
    n = 40
    labels = torch.arange(n) % 4
    attrs = (torch.arange(n) * 7) % 5
    ds = ImageDataset("toy", torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone(), labels,
                      list("abcd"), (0.5,), (0.5,), attributes=attrs.int())
    assert ds.attributes.dtype == torch.int64 and ds.has_attributes
    idx = torch.tensor([5, 0, 33])
    sub = ds.subset(idx)
    assert sub.attributes.tolist() == attrs[idx].tolist()
    pcs = ds.per_class_subset(3, seed=1)
    # every image kept its own attribute (the image's pixel value is its index)
    assert pcs.attributes.tolist() == attrs[pcs.images[:, 0, 0, 0].long()].tolist()
    assert ds.subset(idx).labels.tolist() == labels[idx].tolist()
    plain = ImageDataset("toy", ds.images, labels, list("abcd"), (0.5,), (0.5,))
    assert plain.subset(idx).attributes is None and not plain.has_attributes
    with pytest.raises(ConfigError, match="one per image"):
        ImageDataset("toy", ds.images, labels, list("abcd"), (0.5,), (0.5,), attributes=attrs[:-1])
    with pytest.raises(ConfigError, match="integers"):
        ImageDataset("toy", ds.images, labels, list("abcd"), (0.5,), (0.5,), attributes=attrs.float())
    with pytest.raises(ConfigError, match="≥ 0"):
        ImageDataset("toy", ds.images, labels, list("abcd"), (0.5,), (0.5,), attributes=attrs - 1)


# ----------------------------------------------------------------------------- colouring
def test_colorize_is_the_authors_formula():
    g = torch.Generator().manual_seed(3)
    digits = torch.randint(0, 256, (6, 1, 5, 5), generator=g, dtype=torch.uint8)
    digits[:, :, 0, 0] = 0
    attrs = torch.tensor([0, 3, 9, 4, 4, 1])
    noise = torch.randn(6, 3, 1, 1, generator=g) * 40  # large: the clamp to [0, 1] must act
    out = colorize(digits, attrs, 1, noise)
    assert out.shape == (6, 3, 5, 5) and out.dtype == torch.uint8
    for i in range(6):
        c = np.clip(np.float32(MEAN_COLOURS[int(attrs[i])]).reshape(3, 1, 1)
                    + noise[i].numpy().astype(np.float32) * np.float32(0.05), 0, 1).astype(np.float32)
        want = (c * digits[i].numpy().astype(np.float32)).astype(np.uint8)
        assert np.array_equal(out[i].numpy(), want)
    assert int(out[:, :, 0, 0].max()) == 0  # the background stays black
    with pytest.raises(ConfigError, match="severity"):
        colorize(digits, attrs, 5, noise)


def test_colour_noise_is_seeded_and_test_first():
    a_test, a_train = biased.colour_noise(3, 4, seed=42)
    b_test, b_train = biased.colour_noise(3, 4, seed=42)
    assert torch.equal(a_test, b_test) and torch.equal(a_train, b_train)
    g = torch.Generator().manual_seed(42)
    first = [torch.randn((3, 1, 1), generator=g) for _ in range(7)]
    assert torch.equal(a_test[0], first[0]) and torch.equal(a_train[0], first[3])
    assert not torch.equal(biased.colour_noise(3, 4, seed=1)[1], a_train)


# ----------------------------------------------------------------------------- names
def test_parse_names_and_bad_parameters():
    spec = parse_name("CMNIST_DD:severity=4, rho=0.95")
    assert spec.name == "cmnist-dd:rho=0.95,severity=4" and spec.base == "mnist" and spec.test_rho == 0.0
    assert parse_name("cfmnist-dd:rho=1,severity=1,seed=7,test_rho=0.5").name == \
        "cfmnist-dd:rho=1,severity=1,seed=7,test_rho=0.5"
    assert parse_name("ccifar10-dd:rho=0.8,severity=2").base == "cifar10"
    for bad, text in [("cmnist-dd:rho=1.5,severity=4", r"\[0, 1\]"), ("cmnist-dd:rho=-0.1,severity=4", r"\[0, 1\]"),
                      ("cmnist-dd:rho=nan,severity=4", r"\[0, 1\]"), ("cmnist-dd:rho=x,severity=4", "number"),
                      ("cmnist-dd:rho=0.5,severity=5", "1..4"), ("cmnist-dd:rho=0.5,severity=0", "1..4"),
                      ("cmnist-dd:rho=0.5,severity=2.5", "1..4"), ("cmnist-dd:rho=0.5,severity=4,colour=1", "unknown"),
                      ("cmnist-dd:severity=4", "needs rho="), ("cmnist-dd", "needs rho= and severity="),
                      ("cmnist-dd:rho=0.5,rho=0.4,severity=1", "twice"), ("cmnist-dd:rho", "key=value"),
                      ("cmnist-dd:rho=0.5,severity=1,seed=-2", "seed"),
                      ("cmnist-dd:rho=0.5,severity=1,test_rho=2", "test_rho")]:
        with pytest.raises(ConfigError, match=text):
            parse_name(bad)
        with pytest.raises(ConfigError):  # through the registry, before any data is read
            ddkit.load_dataset(bad, data_root="/nonexistent")


def test_cli_bad_parameter_is_one_line(tmp_path):
    from ddkit.cli import app

    res = runner.invoke(app, ["distill", "--dataset", "cmnist-dd:rho=2,severity=4", "--out",
                              str(tmp_path / "o.safetensors")])
    assert res.exit_code == 2 and "rho must be in [0, 1]" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) <= 2
    res = runner.invoke(app, ["distill", "--dataset", "digits", "--method", "random", "--debias", "oracle", "--out",
                              str(tmp_path / "o.safetensors")])
    assert res.exit_code == 2 and "per-sample weights" in res.stderr


# ----------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def cmnist():
    if not MNIST_ROOT.is_dir():
        pytest.skip(f"MNIST files not at {MNIST_ROOT}")
    name = "cmnist-dd:rho=0.95,severity=4"
    return (ddkit.load_dataset(name, "train", data_root=MNIST_ROOT),
            ddkit.load_dataset(name, "test", data_root=MNIST_ROOT))


@pytest.mark.e2e
def test_cmnist_dd_splits(cmnist, mnist):
    train, test = cmnist
    assert train.images.shape == (60000, 3, 28, 28) and train.images.dtype == torch.uint8
    assert train.name == "cmnist-dd:rho=0.95,severity=4" and len(train.mean) == 3 and test.mean == train.mean
    assert torch.equal(train.labels, mnist[0].labels)
    assert not bool((test.attributes == test.labels).any())  # the test split: rho = 0, all conflicting
    for c, n in enumerate(train.class_counts()):
        aligned = int(((train.labels == c) & (train.attributes == c)).sum())
        assert aligned == int(np.round(n * 0.95) if c == 0 else  # milestone differences, exact
                              np.round(n * ((1 - 0.95) / 9 * c + 0.95)) - np.round(n * (1 - 0.95) / 9 * c))
    # colour: the dominant channel ratios follow the attribute's mean colour (σ = 0.005)
    i = int(torch.nonzero((train.attributes == 4) & (train.labels == 4))[0])
    px = train.images[i].float()
    bright = mnist[0].images[i, 0] == 255
    assert torch.allclose(px[:, bright].mean(1) / 255, torch.tensor(MEAN_COLOURS[4]), atol=0.02)
    # deterministic: built again from scratch, the same bytes
    biased._split_arrays.cache_clear()
    biased._train_stats.cache_clear()
    again = ddkit.load_dataset("cmnist-dd:severity=4,rho=0.95", "train", data_root=MNIST_ROOT)
    assert torch.equal(again.images, train.images) and torch.equal(again.attributes, train.attributes)
    other = ddkit.load_dataset("cmnist-dd:rho=0.95,severity=4,seed=1", "test", data_root=MNIST_ROOT)
    assert not torch.equal(other.images, test.images) and torch.equal(other.attributes, test.attributes)


@pytest.mark.e2e
def test_test_split_at_rho(cmnist):
    half = biased.test_split_at("cmnist-dd:rho=0.95,severity=4", 0.5, data_root=MNIST_ROOT)
    assert half.split == "test" and abs(float((half.attributes == half.labels).double().mean()) - 0.5) < 0.01
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        biased.test_split_at("cmnist-dd:rho=0.95,severity=4", 1.1, data_root=MNIST_ROOT)


# ----------------------------------------------------------------------------- CCIFAR10-DD
def test_ccifar10_dd_from_cifar_on_disk_format(tmp_path, monkeypatch):
    from PIL import Image

    sample = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-sample"
    if not sample.is_dir():
        pytest.skip(f"CIFAR-10 sample not at {sample}")
    files = sorted(sample.glob("cifar10_*_*.png"))
    imgs = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    labels = [int(f.stem.split("_")[2]) for f in files]
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    flat = imgs.transpose(0, 3, 1, 2).reshape(len(imgs), -1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as f:
            pickle.dump({"data": flat, "labels": labels}, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": registry.CIFAR10_CLASSES}, f)
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    registry._load_cached.cache_clear()
    biased._split_arrays.cache_clear()
    try:
        name = "ccifar10-dd:rho=0.5,severity=2"
        test = ddkit.load_dataset(name, "test", data_root=tmp_path)
        assert test.images.shape == (20, 3, 32, 32) and test.name == name
        assert not bool((test.attributes == test.labels).any())
        original = torch.from_numpy(imgs).permute(0, 3, 1, 2)
        changed = (test.images.float() - original.float()).abs().mean((1, 2, 3))
        assert bool((changed > 0.5).all())  # every image carries its corruption
        biased._split_arrays.cache_clear()
        again = ddkit.load_dataset(name, "test", data_root=tmp_path)
        assert torch.equal(again.images, test.images)
        train = ddkit.load_dataset(name, "train", data_root=tmp_path)
        assert train.images.shape == (100, 3, 32, 32) and train.attributes.shape == (100,)
    finally:
        registry._load_cached.cache_clear()
        biased._split_arrays.cache_clear()
        biased._train_stats.cache_clear()


# ----------------------------------------------------------------------------- remedies
def _toy_biased(n_per_class: int = 120, conflicting: int = 12, seed: int = 0) -> ImageDataset:
    """2 classes of 3×8×8 images: a class-specific shape; colour = attribute (0 red, 1 blue);
    ``conflicting`` images per class carry the other class's colour."""
    g = torch.Generator().manual_seed(seed)
    imgs, labels, attrs = [], [], []
    colours = torch.tensor([[1.0, 0.1, 0.1], [0.1, 0.1, 1.0]]).view(2, 3, 1, 1)
    for c in range(2):
        shape = torch.zeros(1, 8, 8)
        if c == 0:
            shape[:, 2:6, 2:6] = 1
        else:
            shape[:, :, 3:5] = 1
        for i in range(n_per_class):
            a = 1 - c if i < conflicting else c
            x = (colours[a] * shape * (0.8 + 0.2 * torch.rand(1, generator=g))
                 + 0.05 * torch.rand(3, 8, 8, generator=g)).clamp(0, 1)
            imgs.append((x * 255).to(torch.uint8))
            labels.append(c)
            attrs.append(a)
    return ImageDataset("toy-biased", torch.stack(imgs), torch.tensor(labels), ["a", "b"], (0.2,) * 3, (0.3,) * 3,
                        attributes=torch.tensor(attrs))


def test_oracle_weights_are_inverse_attribute_frequency():
    ds = _toy_biased()
    w = oracle_weights(ds)
    assert w.dtype == torch.float32 and w.shape == (len(ds),)
    for c in range(2):
        sel = ds.labels == c
        assert abs(float(w[sel].mean()) - 1.0) < 1e-5  # normalised per class
        freq = torch.tensor([int(((ds.labels == c) & (ds.attributes == a)).sum()) for a in ds.attributes[sel]])
        assert torch.allclose(w[sel] * freq, torch.full_like(w[sel], float(w[sel][0] * freq[0])))
        # every attribute present gets the same total weight
        totals = [float(w[sel & (ds.attributes == a)].sum()) for a in (0, 1)]
        assert abs(totals[0] - totals[1]) < 1e-3
    plain = ImageDataset("p", ds.images, ds.labels, ["a", "b"], ds.mean, ds.std)
    with pytest.raises(ConfigError, match="attribute"):
        oracle_weights(plain)
    with pytest.raises(ConfigError, match="attribute"):
        debias_weights(plain, "oracle")
    with pytest.raises(ConfigError, match="unknown debias"):
        debias_weights(ds, "magic")


def test_kde_weights_normalised_and_favour_the_rare_mode():
    ds = _toy_biased()
    plain = ImageDataset("p", ds.images, ds.labels, ["a", "b"], ds.mean, ds.std)  # kde never reads attributes
    cfg = {"epochs": 3, "per_class": 60, "dims": 2, "reference": 80}
    w, info = kde_weights(plain, cfg, seed=0)
    assert w.dtype == torch.float32 and bool(torch.isfinite(w).all()) and bool((w > 0).all())
    for c in range(2):
        assert abs(float(w[ds.labels == c].mean()) - 1.0) < 1e-5
    conflicting = ds.attributes != ds.labels
    assert float(w[conflicting].mean()) > 2 * float(w[~conflicting].mean())
    w2, _ = kde_weights(plain, cfg, seed=0)
    assert torch.equal(w, w2)  # deterministic given the seed
    assert info["dims"] == 2 and info["seed"] == 0 and len(info["bandwidth_per_class"]) == 2
    with pytest.raises(ConfigError, match="kde settings"):
        kde_weights(plain, {"kernel": "tophat"})


def test_weighted_class_gradients():
    torch.manual_seed(0)
    net = ddkit.get_model("convnet-w32", 3, 2, 8)
    x = torch.randn(2, 5, 3, 8, 8)
    plain = class_gradients_loop(net, x)
    ones = class_gradients_loop(net, x, weights=torch.ones(2, 5))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, ones, strict=True))
    w = torch.zeros(2, 5)
    w[:, 2] = 3.0  # only image 2 of each class counts
    only = class_gradients_loop(net, x, weights=w)
    single = class_gradients_loop(net, x[:, 2:3])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(only, single, strict=True))
    w = torch.rand(2, 5) + 0.1
    vm = class_gradients_vmap(net, x, weights=w)
    lp = class_gradients_loop(net, x, weights=w)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(vm, lp, strict=True))


@pytest.mark.parametrize("method", ["dm", "dc"])
def test_distill_records_the_remedy(method):
    ds = _toy_biased(n_per_class=40, conflicting=4)
    cfg = {"batch_real": 8, "model": "convnet-w32"}
    if method == "dc":
        cfg.update(outer_loop=1, inner_loop=0)
    syn = ddkit.distill(ds, method, 1, iterations=1, config=cfg, seed=0, device="cpu", progress=False,
                        debias="oracle")
    rec = syn.extra["debias"]
    assert rec["method"] == "oracle" and rec["weights"]["conflicting_weight_share"] == pytest.approx(0.5, abs=1e-4)
    with pytest.raises(ConfigError, match="not both"):
        ddkit.distill(ds, method, 1, iterations=1, config=cfg, progress=False, debias="oracle",
                      sample_weights=torch.ones(len(ds)))
    with pytest.raises(ConfigError, match="per-sample weights"):
        ddkit.distill(ds, "herding", 1, progress=False, debias="kde")


# ----------------------------------------------------------------------------- bias metrics
class _ShortcutNet(nn.Module):
    """Predicts the attribute encoded in the first pixel (value 20·a): a network that learnt the shortcut."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        a = torch.round(x[:, 0, 0, 0] * 255 / 20).long().clamp(0, 9)
        return F.one_hot(a, 10).float() + 0 * self.p


def test_bias_metrics_of_a_shortcut_network():
    labels = torch.arange(60) % 10
    attrs = torch.where(torch.arange(60) < 30, labels, (labels + 1) % 10)  # half aligned, half conflicting
    images = (attrs * 20).to(torch.uint8).view(60, 1, 1, 1).expand(60, 1, 4, 4).clone()
    test = ImageDataset("toy", images, labels, [str(i) for i in range(10)], (0.0,), (1.0,), split="test",
                        attributes=attrs)
    plan = bias_plan("toy", test, bias_rho=0.5)
    net = _ShortcutNet()
    row = plan.score(net, lambda b: b)
    assert row == {"unbiased": 0.0, "aligned": 1.0, "conflicting": 0.0}
    out = summarise([row, row], plan)
    assert out["gap"] == 1.0 and out["images"] == {"unbiased": 30, "aligned": 30, "conflicting": 30}
    plain = ImageDataset("toy", images, labels, [str(i) for i in range(10)], (0.0,), (1.0,), split="test")
    with pytest.raises(ConfigError, match="bias attribute"):
        bias_plan("toy", plain)
    with pytest.raises(ConfigError, match=r"\(0, 1\)"):
        bias_plan("toy", test, bias_rho=0.0)


def test_evaluate_reports_bias_metrics_and_refuses_plain_data():
    train = ddkit.load_dataset("digits", "train")
    test = ddkit.load_dataset("digits", "test")
    syn = ddkit.distill(train, "random", 2, progress=False)
    attrs = torch.where(torch.arange(len(test)) % 2 == 0, test.labels, (test.labels + 3) % 10)
    with_attrs = ImageDataset(test.name, test.images, test.labels, test.class_names, test.mean, test.std,
                              split="test", attributes=attrs)
    res = ddkit.evaluate(syn, runs=1, epochs=1, device="cpu", test=with_attrs, protocol="dc")
    b = res.bias
    assert set(b) >= {"unbiased", "aligned", "conflicting", "gap", "per_run", "images"}
    assert 0 <= b["unbiased"] <= 1 and b["unbiased"] == pytest.approx(b["per_run"][0]["conflicting"], abs=1e-6)
    assert b["images"]["aligned"] + b["images"]["conflicting"] == len(test)
    assert '"bias"' in res.to_json()
    assert ddkit.evaluate(syn, runs=1, epochs=1, device="cpu", test=with_attrs, protocol="dc", bias=False).bias == {}
    with pytest.raises(ConfigError, match="bias attribute"):
        ddkit.evaluate(syn, runs=1, epochs=1, device="cpu", test=test, bias=True)


# ----------------------------------------------------------------------------- end to end
@pytest.mark.e2e
def test_cli_distill_cfmnist_dd_with_debias(tmp_path, fmnist):
    from ddkit.cli import app

    out = tmp_path / "cf.safetensors"
    res = runner.invoke(app, ["distill", "--dataset", "cfmnist-dd:rho=0.95,severity=4", "--method", "dm", "--ipc",
                              "1", "--iterations", "2", "--set", "batch_real=8", "--debias", "kde", "--device", "cpu",
                              "--quiet", "--out", str(out)])
    assert res.exit_code == 0, res.output
    syn = ddkit.DistilledSet.load(out)
    assert syn.dataset == "cfmnist-dd:rho=0.95,severity=4" and syn.images.shape == (10, 3, 28, 28)
    rec = syn.extra["debias"]
    assert rec["method"] == "kde" and rec["weights"]["conflicting_image_share"] == pytest.approx(0.05, abs=1e-3)
    assert rec["weights"]["conflicting_weight_share"] > 0.05  # the remedy moved weight to the rare images
