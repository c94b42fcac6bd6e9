"""Audit options: AutoAttack in the robustness part, ART's membership attacks in the privacy part."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import ddkit
from ddkit.audit.privacy import _art_split, art_membership
from ddkit.audit.robustness import adversarial_accuracy
from ddkit.cli import app
from ddkit.errors import ConfigError
from ddkit.train import predict


@pytest.fixture(scope="module")
def digits_nets(digits):
    real, test = digits
    ds = ddkit.distill(real, "random", 15, seed=0, progress=False)
    nets = ddkit.train_networks(ds, model="convnet-w32", runs=1, epochs=200, augment=False, device="cpu")
    return ds, nets, test


def test_autoattack_accuracy_falls_with_epsilon(digits_nets):
    ds, nets, test = digits_nets
    net, x, y = nets.networks[0], test.images[:60], test.labels[:60]
    clean = float((predict(net, x, nets.normalize) == y).float().mean())
    small = adversarial_accuracy(net, x, y, ds.mean, ds.std, attack="autoattack", eps=0.01)
    auto = adversarial_accuracy(net, x, y, ds.mean, ds.std, attack="autoattack", eps=0.1)
    pgd = adversarial_accuracy(net, x, y, ds.mean, ds.std, attack="pgd", eps=0.1)
    assert clean > 0.6 and auto < 0.3 * clean and auto <= small <= clean
    assert abs(auto - pgd) <= 0.1  # both far below the clean accuracy at ε = 0.1 on this weak network
    with pytest.raises(ConfigError, match="autoattack"):
        adversarial_accuracy(net, x, y, ds.mean, ds.std, attack="cw")


def test_art_rule_based_attack_is_the_accuracy_gap(digits_nets):
    ds, nets, test = digits_nets
    real = ddkit.load_dataset("digits")
    members = torch.as_tensor(ds.extra["source_indices"])[:100]  # images the networks were trained on
    images = torch.cat([real.float_images(members), test.float_images()[:100]])
    labels = torch.cat([real.labels[members], test.labels[:100]])
    is_member = np.r_[np.ones(len(members), bool), np.zeros(100, bool)]
    res = art_membership(nets.networks, images, labels, is_member, nets.normalize, 10, seed=3)
    fit = _art_split(is_member, 3)
    correct = (predict(nets.networks[0], images, nets.normalize) == labels).numpy()
    tpr, fpr = correct[~fit & is_member].mean(), correct[~fit & ~is_member].mean()
    rule = res["art_rule_based"]  # member iff correctly classified: one ROC point (FPR, TPR)
    assert rule["balanced_accuracy"] == pytest.approx(max(0.5, (1 + tpr - fpr) / 2))
    assert rule["auc"] == pytest.approx((1 + tpr - fpr) / 2)
    assert tpr == 1.0 and rule["auc"] > 0.5  # the set's own images are memorised
    assert 0 <= res["art_black_box"]["auc"] <= 1 and res["art_examples"] + res["art_attack_train"] == len(labels)
    assert res == art_membership(nets.networks, images, labels, is_member, nets.normalize, 10, seed=3)
    with pytest.raises(ConfigError, match="2 members"):
        art_membership(nets.networks, images[:3], labels[:3], np.array([True, False, False]), nets.normalize, 10)


def test_audit_cli_art_membership_and_autoattack_in_json_and_report(tmp_path):
    runner = CliRunner()
    s = tmp_path / "s.safetensors"
    res = runner.invoke(app, ["distill", "--dataset", "digits", "--method", "random", "--ipc", "5", "--out", str(s),
                              "--audit-split", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["audit", str(s), "--out", str(tmp_path / "a"), "--parts", "privacy,robustness",
                              "--model", "convnet-w32", "--runs", "1", "--epochs", "10", "--examples", "100",
                              "--eps", "0.1", "--corruptions", "none", "--test-images", "30", "--device", "cpu",
                              "--art-mia", "--autoattack"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "a" / "audit.json").read_text())
    for who in ("distilled", "random"):
        priv = data["privacy"][who]
        assert {"threshold", "art_rule_based", "art_black_box"} <= set(priv) and priv["art_examples"] == 100
    assert set(data["robustness"]["distilled"]["adversarial"]) == {"fgsm@0.1000", "pgd@0.1000", "autoattack@0.1000"}
    assert data["settings"]["art_mia"] and "autoattack" in data["settings"]["attacks"]
    page = (tmp_path / "a" / "report.html").read_text()
    assert "art_black_box" in page and "autoattack@0.1000" in page
    assert "membership inference (art_black_box)" in res.output
