"""FRePo: feature-space KRR, LAMB, the model pool (ages, resets), labels, resume, API/CLI on Fashion-MNIST."""

import math

import pytest
import torch
from typer.testing import CliRunner

import ddkit
from ddkit.artifact import DistilledSet
from ddkit.cli import app
from ddkit.distill.base import Checkpoint
from ddkit.distill.frepo import (
    cosine_lr,
    frepo_krr_predict,
    frepo_loss,
    label_margin_loss,
)
from ddkit.errors import ConfigError
from ddkit.models.zoo import FRePoConvNet
from ddkit.optim import Lamb
from ddkit.spectral import centred_one_hot, krr_predict

TINY = {"width": 8, "depth": 2, "batch_real": 64, "num_models": 2, "max_online_updates": 2, "checkpoint_every": 1}


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny problems: threads only add contention
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("n_s,d", [(6, 15), (12, 4)])
def test_krr_prediction_equals_the_ridge_regression_head(n_s, d):
    g = torch.Generator().manual_seed(n_s)
    h_s = torch.randn(n_s, d, generator=g, dtype=torch.float64)
    h_t = torch.randn(9, d, generator=g, dtype=torch.float64)
    y_s = torch.randn(n_s, 3, generator=g, dtype=torch.float64)
    reg = 1e-2
    lam = reg * torch.trace(h_s @ h_s.T) / n_s
    direct = h_t @ torch.linalg.inv(h_s.T @ h_s + lam * torch.eye(d, dtype=torch.float64)) @ h_s.T @ y_s
    pred = frepo_krr_predict(h_s, y_s, h_t, reg)
    assert pred.dtype == torch.float64 and pred.shape == (9, 3)
    torch.testing.assert_close(pred, direct, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(pred, krr_predict(h_s, y_s, h_t, float(lam), form="primal"), rtol=1e-7, atol=1e-9)
    # the meta-gradient reaches the support features, through the solve and the trace-scaled ridge
    hs = h_s.clone().float().requires_grad_(True)
    frepo_loss(frepo_krr_predict(hs, y_s, h_t, reg), torch.zeros(9, 3)).backward()
    hs2 = h_s.clone().requires_grad_(True)
    lam2 = reg * torch.trace(hs2 @ hs2.T) / n_s
    ref = h_t @ torch.linalg.solve(hs2.T @ hs2 + lam2 * torch.eye(d, dtype=torch.float64), hs2.T @ y_s)
    (0.5 * (ref ** 2).sum(1).mean()).backward()
    torch.testing.assert_close(hs.grad.double(), hs2.grad, rtol=1e-4, atol=1e-6)


def test_krr_rejects_bad_reg_and_zero_features():
    with pytest.raises(ConfigError, match="reg"):
        frepo_krr_predict(torch.randn(3, 4), torch.randn(3, 2), torch.randn(5, 4), 0.0)
    with pytest.raises(ConfigError, match="zero"):
        frepo_krr_predict(torch.zeros(3, 4), torch.randn(3, 2), torch.randn(5, 4), 1e-6)


def test_loss_margin_schedule_and_lamb_step():
    assert float(frepo_loss(torch.ones(4, 3), torch.zeros(4, 3))) == pytest.approx(1.5)
    y = centred_one_hot(torch.tensor([0, 1]), 10)  # margin 1 ≥ 1/K
    assert float(label_margin_loss(y)) == pytest.approx(-0.1)
    assert float(label_margin_loss(torch.tensor([[0.3, 0.28, 0.0]]))) == pytest.approx(-0.02)
    assert cosine_lr(3e-4, 0, 100) == pytest.approx(3e-4)
    assert cosine_lr(3e-4, 50, 100) == pytest.approx(3e-4 * 0.55)
    assert cosine_lr(3e-4, 100, 100) == cosine_lr(3e-4, 500, 100) == pytest.approx(3e-5)
    # first LAMB step: u = g/(|g| + ε), p ← p − lr · ‖p‖/‖u‖ · u
    p = torch.tensor([3.0, -4.0], requires_grad=True)
    opt = Lamb([p], lr=0.1)
    p.grad = torch.tensor([0.5, 2.0])
    opt.step()
    u = torch.tensor([0.5, 2.0]) / (torch.tensor([0.5, 2.0]) + 1e-6)
    expected = torch.tensor([3.0, -4.0]) - 0.1 * 5.0 / u.norm() * u
    torch.testing.assert_close(p.detach(), expected)
    assert float(opt.state[p]["step"]) == 1.0


def test_frepo_conv_matches_the_published_architecture():
    net = FRePoConvNet(1, 10, 28)  # 28 → pad 3 → 32 → 16 → 8 → 4; widths 128/256/512
    assert net.feature_dim == 512 * 4 * 4
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 256, 512] and convs[0].padding == (3, 3)
    bns = [m for m in net.features if isinstance(m, torch.nn.BatchNorm2d)]
    assert [b.num_features for b in bns] == [128, 256] and bns[0].momentum == 0.9
    assert isinstance(net.features[0], torch.nn.Conv2d)  # no norm before the first conv
    assert FRePoConvNet(3, 10, 32, norm="none").feature_dim == 8192
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in FRePoConvNet(3, 10, 32, norm="none").modules())


def test_pool_ages_are_staggered_and_networks_reset_past_the_age_limit(digits, tmp_path):
    real, _ = digits
    kw = {"seed": 1, "device": "cpu", "progress": False}
    # four networks, limit 8: initial ages 0, 2, 4, 6; after one step exactly one is one older
    ck = tmp_path / "a.ckpt"
    ddkit.distill(real, "frepo", 1, iterations=1, checkpoint=ck,
                  config={**TINY, "num_models": 4, "max_online_updates": 8}, **kw)
    ages = Checkpoint.read(ck).values["ages"]
    assert sum(ages) == 13 and len({0, 2, 4, 6} & set(ages)) == 3
    # one network, limit 2: trained at ages 0, 1, 2 (→ 3), re-initialised at iteration 4
    cfg = {**TINY, "num_models": 1, "max_online_updates": 2}
    states = {}
    for n in (1, 2, 3, 4):
        path = tmp_path / f"r{n}.ckpt"
        out = ddkit.distill(real, "frepo", 1, iterations=n, checkpoint=path, config={**cfg, "lr_decay_steps": 4}, **kw)
        states[n] = Checkpoint.read(path).tensors
        assert out.extra["resets"] == (1 if n == 4 else 0)
        assert Checkpoint.read(path).values["ages"][0] == [1, 2, 3, 0][n - 1]
    w = "m.pool0.features.0.weight"
    assert (states[2][w] - states[1][w]).abs().max() > 0  # online training moves the network
    assert "o.pool0.0.exp_avg" in states[3] and "o.pool0.0.exp_avg" not in states[4]  # fresh optimiser
    fresh = FRePoConvNet(1, 10, 8, width=8, depth=2).features[0].weight
    assert (states[4][w] - states[3][w]).abs().max() > 0
    assert float(states[4][w].std()) == pytest.approx(float(fresh.detach().std()), rel=0.5)  # a new LeCun-normal draw


def test_labels_learn_only_when_asked(digits):
    real, _ = digits
    kw = {"seed": 3, "device": "cpu", "progress": False}
    init = ddkit.distill(real, "frepo", 2, iterations=0, config=TINY, **kw)
    out = ddkit.distill(real, "frepo", 2, iterations=3, config=TINY, **kw)
    torch.testing.assert_close(init.labels, centred_one_hot(torch.arange(10).repeat_interleave(2), 10))
    assert out.labels.dtype == torch.float32 and out.labels.shape == (20, 10)
    assert (out.labels - init.labels).abs().max() > 1e-5
    assert (out.images - init.images).abs().max() > 1e-4
    fixed = ddkit.distill(real, "frepo", 2, iterations=3, config={**TINY, "learn_labels": False}, **kw)
    assert fixed.labels.dtype == torch.int64 and torch.equal(fixed.labels, torch.arange(10).repeat_interleave(2))
    assert (fixed.images - init.images).abs().max() > 1e-4


def test_options_flip_zoo_model_adam_and_bad_settings(digits):
    real, _ = digits
    kw = {"seed": 0, "device": "cpu", "progress": False}
    a = ddkit.distill(real, "frepo", 1, iterations=2, config={**TINY, "flip": True}, **kw)
    b = ddkit.distill(real, "frepo", 1, iterations=2, config={**TINY, "flip": False}, **kw)
    assert a.extra["flip"] and not b.extra["flip"] and (a.images - b.images).abs().max() > 0
    zoo = {k: v for k, v in TINY.items() if k not in ("width", "depth")}
    out = ddkit.distill(real, "frepo", 1, iterations=2, config={**zoo, "model": "convnet-w32", "optimizer": "adam"},
                        **kw)
    assert out.extra["model"] == "convnet-w32" and torch.isfinite(out.images).all()
    for bad, text in (({"optimizer": "sgd"}, "optimizer"), ({"model": "convnetbn", "width": 8}, "width"),
                      ({"reg": 0.0}, "reg"), ({"num_models": 0}, "num_models"), ({"norm": "group"}, "norm")):
        with pytest.raises(ConfigError, match=text):
            ddkit.distill(real, "frepo", 1, iterations=1, config=bad, **kw)


def test_resume_equals_unbroken_run(digits, tmp_path):
    real, _ = digits
    # batch norm (running statistics), labels, LAMB state, a reset across the break
    cfg = {**TINY, "max_online_updates": 1, "lr_decay_steps": 5}
    kw = {"config": cfg, "seed": 5, "device": "cpu", "progress": False}
    whole = ddkit.distill(real, "frepo", 2, iterations=5, **kw)
    ck = tmp_path / "f.ckpt"
    ddkit.distill(real, "frepo", 2, iterations=3, checkpoint=ck, **kw)
    saved = Checkpoint.read(ck).tensors
    assert {"t.syn", "t.labels", "o.img.0.exp_avg", "o.img.0.exp_avg_sq", "o.img.0.step", "o.img.1.exp_avg",
            "m.pool0.features.3.running_mean", "m.pool1.features.3.running_var"} <= set(saved)
    assert float(saved["o.img.0.step"]) == 3.0
    resumed = ddkit.distill(real, "frepo", 2, iterations=5, checkpoint=ck, resume=True, **kw)
    assert resumed.extra["iterations_run"] == 2 and whole.extra["resets"] >= 1
    torch.testing.assert_close(resumed.images, whole.images, rtol=0, atol=1e-6)
    torch.testing.assert_close(resumed.labels, whole.labels, rtol=0, atol=1e-6)
    # the cosine horizon is part of the settings: another one is refused
    with pytest.raises(ConfigError, match="other settings"):
        ddkit.distill(real, "frepo", 2, iterations=6, checkpoint=ck, resume=True,
                      config={**cfg, "lr_decay_steps": 0}, seed=5, device="cpu", progress=False)


@pytest.mark.e2e
def test_fashion_mnist_api_and_evaluation(fmnist):
    train, test = fmnist
    real = train.per_class_subset(100, seed=0)
    out = ddkit.distill(real, "frepo", 2, iterations=3, config={**TINY, "batch_real": 128}, seed=0, device="cpu",
                        progress=False)
    assert out.images.shape == (20, 1, 28, 28) and bool(torch.isfinite(out.images).all())  # unclamped, as optimised
    assert out.labels.shape == (20, 10) and out.method == "frepo" and out.dataset == "fashion-mnist"
    assert out.extra["iterations"] == 3 and out.extra["iterations_run"] == 3 and out.extra["device"] == "cpu"
    # FRePo's own protocol by default (100 of its steps here): Adam, warm-up + cosine, ½Σ_k loss on the labels
    res = ddkit.evaluate(out, runs=1, epochs=100, augment=False, device="cpu", test=test.per_class_subset(30, seed=1))
    assert res.settings["name"] == "frepo" and res.settings["loss"] == "sq" and res.model == "frepo-convnn"
    assert res.settings["steps"] == 100 and len(res.accuracies) == 1
    assert res.mean > 0.3  # 2 images per class of Fashion-MNIST, 10 classes: well above chance


def test_fashion_mnist_cli(tmp_path):
    runner = CliRunner()
    out = tmp_path / "frepo.safetensors"
    sets = [f"--set={k}={v}" for k, v in {**TINY, "num_models": 2}.items()]
    res = runner.invoke(app, ["distill", "--dataset", "fashion-mnist", "--method", "frepo", "--ipc", "1",
                              "--iterations", "2", "--device", "cpu", "--quiet", "--out", str(out), *sets])
    assert res.exit_code == 0, res.output
    ds = DistilledSet.load(out)
    assert ds.method == "frepo" and ds.images.shape == (10, 1, 28, 28) and ds.labels.dtype == torch.float32
    assert ds.extra["iterations"] == 2 and not (tmp_path / "frepo.safetensors.ckpt").exists()
    bad = runner.invoke(app, ["distill", "--dataset", "digits", "--method", "frepo", "--iterations", "1",
                              "--set", "optimizer=sgd", "--out", str(tmp_path / "b.safetensors"), "--quiet"])
    assert bad.exit_code == 2 and "optimizer" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "b.safetensors").exists()
    assert math.isfinite(float(ds.images.sum()))
