"""`ddkit scan`: Neural Cleanse's MAD test and trigger reverse engineering, ART's detectors, the CLI."""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

import ddkit
from ddkit.artifact import DistilledSet
from ddkit.backdoor import Trigger
from ddkit.backdoor_scan import (
    activation_clustering,
    flagged_classes,
    mad_anomaly_index,
    neural_cleanse,
    reverse_engineer_trigger,
    scan,
    spectral_signatures,
)
from ddkit.cli import app
from ddkit.errors import ConfigError

runner = CliRunner()


def test_mad_anomaly_index_known_answer():
    norms = [4, 5, 6, 5, 4, 6, 5, 1]  # median 5; |dev| 1,0,1,0,1,1,0,4 → median 1 → MAD 1.4826
    idx = mad_anomaly_index(norms)
    np.testing.assert_allclose(idx, np.array([1, 0, 1, 0, 1, 1, 0, 4]) / 1.4826)
    assert idx[7] == pytest.approx(2.698, abs=1e-3) and flagged_classes(norms) == [7]
    assert flagged_classes([4, 5, 6, 5, 4, 6, 5, 9]) == []  # a large norm is not a backdoor sign
    assert flagged_classes(norms, threshold=3) == []
    assert flagged_classes([1, 2, 5, 5, 5, 5, 6, 4, 5, 6]) == [0, 1]  # MAD 1.4826: indices 2.70, 2.02
    assert list(mad_anomaly_index([3, 3, 3, 7])) == [0, 0, 0, np.inf]  # MAD 0
    for bad in ([1, 2], [1, 2, float("nan")]):
        with pytest.raises(ConfigError, match="at least 3 finite"):
            mad_anomaly_index(bad)
    with pytest.raises(ConfigError, match="threshold"):
        flagged_classes(norms, threshold=0)


class _Backdoored(nn.Module):
    """A linear classifier of 1×12×12 images by prototypes, with a hand-made backdoor: a
    bright 2×2 patch in the bottom-right corner adds a large logit to class 0."""

    def __init__(self, protos: torch.Tensor):
        super().__init__()
        self.protos = nn.Parameter(protos.clone())
        self.corner = torch.zeros(1, 12, 12)
        self.corner[:, 9:11, 9:11] = 1

    def forward(self, x):  # standardised input with mean 0.5, std 0.5: back to pixels
        pix = x * 0.5 + 0.5
        logits = 10 * torch.einsum("nchw,kchw->nk", pix, self.protos) / self.protos[0].numel()
        trigger = (pix * self.corner).sum((1, 2, 3)) / 4
        return logits + torch.nn.functional.pad(40 * trigger.unsqueeze(1), (0, logits.shape[1] - 1))


def test_neural_cleanse_finds_a_planted_backdoor_in_a_known_model():
    g = torch.Generator().manual_seed(0)
    protos = (torch.rand(5, 1, 12, 12, generator=g) > 0.5).float()
    protos[:, :, 8:, 8:] = 0  # clean images are dark in the corner
    labels = torch.arange(5).repeat_interleave(12)
    images = (protos[labels] * 0.8 + 0.2 * torch.rand(60, 1, 12, 12, generator=g)).clamp(0, 1)
    images[:, :, 8:, 8:] = 0
    net = _Backdoored(protos)
    assert (net((images - 0.5) / 0.5).argmax(1) == labels).float().mean() == 1.0
    one = reverse_engineer_trigger(net, images[labels != 0], 0, (0.5,), (0.5,), epochs=150, batch_size=16)
    assert one.reached and one.success >= 0.99 and one.mask.shape == (12, 12) and one.pattern.shape == (1, 12, 12)
    assert one.l1 < 8 and one.mask[8:, 8:].sum() > 0.8 * one.mask.sum()  # the corner, and little else
    res = neural_cleanse(net, images, labels, (0.5,), (0.5,), 5, epochs=150, batch_size=16)
    assert res["flagged"] == [0] and res["score"] > 2 and res["smallest_norm_class"] == 0
    assert min(res["norms"][1:]) > 3 * res["norms"][0] and res["mask_centres"][0][0] > 8
    assert net.protos.requires_grad and net.training  # gradient flags and train mode restored after the call
    with pytest.raises(ConfigError, match="target"):
        reverse_engineer_trigger(net, images, 5, (0.5,), (0.5,), epochs=1)
    with pytest.raises(ConfigError, match="epochs"):
        reverse_engineer_trigger(net, images, 0, (0.5,), (0.5,), epochs=0)


@pytest.fixture(scope="module")
def digits_net(digits):
    real, _ = digits
    ds = ddkit.distill(real, "random", 8, seed=0, progress=False)
    net = ddkit.train_networks(ds, model="convnet-w32", runs=1, epochs=30, augment=False, device="cpu").networks[0]
    return ds, net.eval()


def test_art_detectors_read_the_penultimate_features(digits_net):
    ds, net = digits_net
    k = ds.num_classes
    ss = spectral_signatures(net, ds.images, ds.labels, ds.mean, ds.std, k, expected_poison=0.2)
    with torch.no_grad():
        feats = net.embed(ds.normalized_images()).numpy()
    for row in ss["per_class"]:  # |⟨f, v₁⟩|, v₁ the top right-singular vector of the centred features (ART)
        f = feats[(ds.labels == row["class"]).numpy()]
        v = np.linalg.svd(f - f.mean(0), full_matrices=False)[2][0]
        np.testing.assert_allclose(row["scores"], np.abs(f @ v), rtol=1e-3, atol=1e-3)
        assert len(row["suspicious"]) == 8 - int(np.sum(np.abs(f @ v) < np.quantile(np.abs(f @ v), 0.7)))
    assert sorted(ss["suspicious"]) == sorted(i for r in ss["per_class"] for i in r["suspicious"])
    ac = activation_clustering(net, ds.images, ds.labels, ds.mean, ds.std, k, seed=0)
    assert len(ac["per_class"]) == k and ac["settings"]["nb_dims"] == 8
    for row in ac["per_class"]:
        assert sum(row["cluster_sizes"]) == 8 and -1 <= row["silhouette"] <= 1
        assert row["flagged"] == (min(row["cluster_sizes"]) / 8 < 0.35 and row["silhouette"] > 0.1)
    assert ac == activation_clustering(net, ds.images, ds.labels, ds.mean, ds.std, k, seed=0)  # seeded
    small = ds.labels < 2
    with pytest.raises(ConfigError, match="at least 3 images"):
        spectral_signatures(net, ds.images[small][:3], ds.labels[small][:3], ds.mean, ds.std, k)


def test_scan_runs_and_records_its_inputs(digits_net, tmp_path):
    ds, _ = digits_net
    res = scan(ds, epochs=5, nc_epochs=2, device="cpu")
    assert set(res.detectors) == {"neural-cleanse", "activation-clustering", "spectral-signatures"}
    assert res.detectors["neural-cleanse"]["inputs"] == "the set's own images"
    assert res.verdict["by"] == "neural-cleanse" and res.verdict["threshold"] == 2.0
    assert res.verdict["suspicious"] == bool(res.detectors["neural-cleanse"]["flagged"])
    data = json.loads(res.to_json())
    assert len(data["detectors"]["neural-cleanse"]["masks"]) == 10 and data["seconds"]["total"] > 0
    only = scan(ds, detectors=("spectral-signatures",), epochs=2, device="cpu")
    assert only.verdict["by"] == "spectral-signatures" and set(only.detectors) == {"spectral-signatures"}
    with pytest.raises(ConfigError, match="unknown detector"):
        scan(ds, detectors=("strip",))


def test_scan_cli_output_and_bad_inputs(digits_net, tmp_path):
    ds, _ = digits_net
    path = tmp_path / "d.safetensors"
    ds.save(path)
    out = tmp_path / "scan.json"
    res = runner.invoke(app, ["scan", str(path), "--epochs", "3", "--nc-epochs", "1", "--quiet", "--device", "cpu",
                              "--detectors", "neural-cleanse", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "verdict:" in res.output and "Neural Cleanse" in res.output
    assert json.loads(out.read_text())["file"] == str(path)
    for args, text in (([str(tmp_path / "missing.safetensors")], "no such file"),
                       ([str(path), "--detectors", "strip"], "unknown detector"),
                       ([str(path), "--detectors", "neural-cleanse", "--clean-data", "nodata"], "nodata"),
                       ([str(path), "--nc-epochs", "0"], "must be ≥ 1")):
        res = runner.invoke(app, ["scan", *args, "--quiet", "--device", "cpu"])
        assert res.exit_code == 2, res.output
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in res.stderr and text in res.stderr, res.stderr


def _planted(train, per: int, size: int, target: int = 0) -> tuple[DistilledSet, Trigger]:
    """10 real images per class plus, from each other class, ``per`` copies carrying a
    white ``size``-pixel patch relabelled ``target``."""
    real = train.per_class_subset(10, seed=0)
    x, y = real.float_images(), real.labels
    trig = Trigger(size=size, inset=1)
    pick = torch.cat([torch.nonzero(y == k).flatten()[:per] for k in range(10) if k != target])
    xp = trig.apply(x[pick], real.mean, real.std)
    ds = DistilledSet(images=torch.cat([x, xp]), labels=torch.cat([y, torch.full((len(pick),), target)]),
                      method="random", dataset=train.name, mean=real.mean, std=real.std,
                      class_names=list(real.class_names), ipc=10, seed=0)
    return ds, trig


@pytest.mark.e2e
def test_neural_cleanse_flags_a_planted_patch_on_fashion_mnist(fmnist):
    train, _ = fmnist
    ds, _ = _planted(train, per=3, size=4, target=0)
    res = scan(ds, detectors=("neural-cleanse",), model="convnet-w32", epochs=100, nc_epochs=60, device="cpu")
    nc = res.detectors["neural-cleanse"]
    assert res.verdict["suspicious"] and nc["flagged"] == [0], nc["anomaly_index"]
    assert min(nc["mask_centres"][0]) > 18  # the reversed mask sits in the bottom-right corner
    clean = DistilledSet(**{**ds.__dict__, "images": ds.images[:100], "labels": ds.labels[:100]})
    res = scan(clean, detectors=("neural-cleanse",), model="convnet-w32", epochs=100, nc_epochs=60, device="cpu")
    assert 0 not in res.detectors["neural-cleanse"]["flagged"]
