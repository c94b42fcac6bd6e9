import shutil

import pytest
import torch

import ddkit
from ddkit.augment import DSA
from ddkit.distill.coreset import herding_select
from ddkit.distill.dm import dm_loss, dm_loss_per_class
from ddkit.errors import ConfigError
from ddkit.models import get_model


def test_batched_dm_loss_equals_per_class_loss():
    torch.manual_seed(0)
    net = get_model("convnet", 1, 4, 28, width=16)
    real = torch.randn(4 * 8, 1, 28, 28)
    syn = torch.randn(4 * 2, 1, 28, 28, requires_grad=True)
    dsa = DSA(image_size=28)
    for seed in range(4):
        a = dm_loss(net.embed, real, syn, 4, dsa, torch.Generator().manual_seed(seed))
        (ga,) = torch.autograd.grad(a, syn)
        b = dm_loss_per_class(net.embed, real, syn, 4, dsa, torch.Generator().manual_seed(seed))
        (gb,) = torch.autograd.grad(b, syn)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ga, gb, rtol=1e-3, atol=1e-6)
    # and without augmentation the loss is the plain class-mean gap
    plain = dm_loss(net.embed, real, syn, 4)
    ref = sum(((net.embed(real[c * 8:(c + 1) * 8]).mean(0) - net.embed(syn[c * 2:(c + 1) * 2]).mean(0)) ** 2).sum()
              for c in range(4))
    torch.testing.assert_close(plain, ref, rtol=1e-4, atol=1e-5)


def test_herding_picks_the_mean_matching_point_first():
    feats = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, -1.0], [0.2, 0.1]], dtype=torch.float64)
    order = herding_select(feats, 3)
    assert order[0] == 0  # closest to the mean (0.05, 0.025)
    assert len(set(order.tolist())) == 3


def test_dm_resume_equals_unbroken_run(digits, tmp_path):
    real, _ = digits
    cfg = {"batch_real": 16, "checkpoint_every": 2, "model": "convnet-w32"}
    whole = ddkit.distill(real, "dm", 2, iterations=4, config=cfg, seed=5, device="cpu", progress=False)
    ck = tmp_path / "run.ckpt"
    ddkit.distill(real, "dm", 2, iterations=2, config=cfg, seed=5, device="cpu", progress=False, checkpoint=ck)
    assert ck.exists()
    resumed = ddkit.distill(real, "dm", 2, iterations=4, config=cfg, seed=5, device="cpu", progress=False,
                            checkpoint=ck, resume=True)
    assert resumed.extra["iterations_run"] == 2
    torch.testing.assert_close(resumed.images, whole.images, rtol=0, atol=1e-6)
    # and the run moved the images away from their real initialisation
    init = ddkit.distill(real, "dm", 2, iterations=0, config=cfg, seed=5, device="cpu", progress=False)
    assert (whole.images - init.images).abs().max() > 1e-3


def test_same_seed_same_set_different_seed_different_set(digits):
    real, _ = digits
    cfg = {"batch_real": 8, "model": "convnet-w32"}
    a = ddkit.distill(real, "dm", 1, iterations=2, config=cfg, seed=1, device="cpu", progress=False)
    b = ddkit.distill(real, "dm", 1, iterations=2, config=cfg, seed=1, device="cpu", progress=False)
    c = ddkit.distill(real, "dm", 1, iterations=2, config=cfg, seed=2, device="cpu", progress=False)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile's CPU backend needs a C++ compiler")
def test_compiled_embedding_gives_the_eager_run(digits):
    real, _ = digits
    cfg = {"batch_real": 16, "model": "convnet-w32"}
    eager = ddkit.distill(real, "dm", 2, iterations=3, config=cfg, seed=5, device="cpu", progress=False)
    comp = ddkit.distill(real, "dm", 2, iterations=3, config={**cfg, "compile": True}, seed=5, device="cpu",
                         progress=False)
    # same draws, same algorithm: equal up to float32 rounding of the features
    torch.testing.assert_close(comp.images, eager.images, rtol=0, atol=1e-4)
    assert comp.extra["warmup_seconds"] > 0 and "warmup_seconds" not in eager.extra
    assert comp.config["compile"] is True


def test_compile_auto_decides_by_budget_and_compiler_and_says_why(digits, monkeypatch):
    from ddkit.distill import feature_matching as fm

    cpu = torch.device("cpu")
    assert fm.decide_compile(True, 1, cpu) == (True, "set explicitly")
    assert fm.decide_compile(False, 10**6, cpu)[0] is False
    assert fm.decide_compile("auto", 199, cpu)[0] is False and "199" in fm.decide_compile("auto", 199, cpu)[1]
    monkeypatch.setattr(ddkit.utils.shutil, "which", lambda name: None)
    used, why = fm.decide_compile("auto", 20_000, cpu)
    assert not used and "no compiler" in why
    real, _ = digits
    ds = ddkit.distill(real, "dm", 1, iterations=2, config={"batch_real": 8, "model": "convnet-w32"}, device="cpu",
                       progress=False)
    assert ds.config["compile"] == "auto" and ds.extra["compiled"]["used"] is False
    assert "iterations" in ds.extra["compiled"]["reason"]


def test_channels_last_embedding_is_the_same_run(digits):
    real, _ = digits
    cfg = {"batch_real": 16, "model": "convnet-w32", "compile": False}
    a = ddkit.distill(real, "dm", 2, iterations=3, config={**cfg, "channels_last": True}, seed=4, device="cpu",
                      progress=False)
    b = ddkit.distill(real, "dm", 2, iterations=3, config={**cfg, "channels_last": False}, seed=4, device="cpu",
                      progress=False)
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=1e-4)


def test_a_failed_compilation_is_a_config_error_not_a_silent_eager_run(digits):
    import torch._inductor.config as inductor

    real, _ = digits
    # torch's own config patching (monkeypatch's undo leaves the inductor config module broken for
    # later compilations in the same process); a cached graph would not need the compiler
    with inductor.patch({"cpp.cxx": ("/nonexistent/g++",), "fx_graph_cache": False}):
        with pytest.raises(ConfigError, match="compiling ψ failed.*compile=False"):
            ddkit.distill(real, "dm", 1, iterations=1,
                          config={"compile": True, "batch_real": 8, "model": "convnet-w32"}, device="cpu",
                          progress=False)
    torch._dynamo.reset()  # no half-compiled state for later tests


@pytest.mark.parametrize("method,bad,word", [
    ("dm", {"batch_real": 0}, "batch_real"),  # reached a reshape inside torch before
    ("dm", {"lr_img": -1.0}, "lr_img"),  # reached torch.optim.SGD's ValueError before
    ("spectral", {"momentum": -0.5}, "momentum"),
    ("dm", {"checkpoint_every": -1}, "checkpoint_every"),  # was accepted
    ("dc", {"lr_img": 0.0}, "lr_img"),
    ("herding", {"feature_epochs": -1}, "feature_epochs"),  # was accepted
    ("kip", {"checkpoint_every": -5}, "checkpoint_every"),
    ("kip", {"kernel": "rbf"}, "kernel"),
    ("frepo", {"batch_syn": 0}, "batch_syn"),
    ("frepo", {"online_lr": 0.0}, "online_lr"),
])
def test_out_of_range_settings_are_config_errors(digits, method, bad, word):
    """Settings out of range are refused when the configuration is built, naming the setting."""
    real, _ = digits
    with pytest.raises(ConfigError, match=f"'{word}' of method '{method}'"):
        ddkit.distill(real, method, 1, iterations=1, config=bad, device="cpu", progress=False)
    with pytest.raises(ConfigError, match="'iterations'"):
        ddkit.distill(real, method, 1, iterations=-1, device="cpu", progress=False)


def test_bf16_real_branch_matches_fp32_to_bf16_rounding_and_is_recorded(digits):
    """real_bf16: only the no-grad real branch runs under autocast; the loss stays close to
    the FP32 one, the synthetic gradient is FP32, and the set records the precision."""
    from ddkit.distill.feature_matching import _bf16_embed

    torch.manual_seed(0)
    net = get_model("convnet", 1, 4, 28, width=16)
    real = torch.randn(4 * 8, 1, 28, 28)
    syn = torch.randn(4 * 2, 1, 28, 28, requires_grad=True)
    fp32 = dm_loss(net.embed, real, syn, 4)
    bf16 = dm_loss(net.embed, real, syn, 4, real_embed=_bf16_embed(net.embed, "cpu"))
    (g,) = torch.autograd.grad(bf16, syn)
    assert bf16.dtype == torch.float32 and g.dtype == torch.float32
    torch.testing.assert_close(bf16, fp32, rtol=3e-2, atol=1e-3)
    assert not torch.equal(bf16, fp32)  # the real branch did run in bf16
    real_ds, _ = digits
    cfg = {"batch_real": 8, "model": "convnet-w32", "compile": False}
    ds = ddkit.distill(real_ds, "dm", 1, iterations=2, config={**cfg, "real_bf16": True}, seed=1, device="cpu",
                       progress=False)
    assert ds.extra["precision"]["precision"] == "bf16" and "real branch" in ds.extra["precision"]["autocast"]
    plain = ddkit.distill(real_ds, "dm", 1, iterations=2, config=cfg, seed=1, device="cpu", progress=False)
    assert plain.extra["precision"] == {"precision": "fp32"}
    torch.testing.assert_close(ds.images, plain.images, rtol=0, atol=0.05)
