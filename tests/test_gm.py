import math

import pytest
import torch

import ddkit
from ddkit.distill.gm import (
    class_gradients_loop,
    class_gradients_vmap,
    default_loops,
    gradient_distance,
    match_step_loss,
)
from ddkit.errors import ConfigError
from ddkit.models import get_model

TINY = {"batch_real": 8, "model": "convnet-w32", "checkpoint_every": 1}


@pytest.fixture(autouse=True)
def _one_thread():
    """Single-threaded: on a shared 2-core machine, 2 torch threads beside another busy
    process made these tiny runs ~30× slower (spinning workers)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cos_dist(a, b, eps=1e-6):
    """1 − cos of two 1-D lists of numbers, written out by hand."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return 1.0 - dot / (na * nb + eps)


def test_gradient_distance_matches_a_direct_computation():
    conv_s = torch.tensor([[[[1.0, 2.0]], [[0.0, -1.0]]], [[[3.0, 0.0]], [[1.0, 1.0]]]])  # 2×2×1×2
    conv_r = torch.tensor([[[[2.0, 1.0]], [[1.0, 0.0]]], [[[-1.0, 2.0]], [[0.5, 0.0]]]])
    lin_s = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]])
    lin_r = torch.tensor([[0.0, 1.0, 1.0], [-1.0, 1.0, 0.0]])
    bias_s, bias_r = torch.tensor([1.0, 2.0]), torch.tensor([-5.0, 3.0])  # skipped (1-D)
    expected = (_cos_dist([1, 2, 0, -1], [2, 1, 1, 0]) + _cos_dist([3, 0, 1, 1], [-1, 2, 0.5, 0])
                + _cos_dist([1, 0, 2], [0, 1, 1]) + _cos_dist([0, 1, 1], [-1, 1, 0]))
    got = gradient_distance([conv_s, bias_s, lin_s], [conv_r, bias_r, lin_r])
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # leading (class) dimension: the sum of the per-class distances
    two = gradient_distance([torch.stack([conv_s, conv_r]), torch.stack([lin_s, lin_r])],
                            [torch.stack([conv_r, conv_r]), torch.stack([lin_r, lin_s])], lead=1)
    one = (gradient_distance([conv_s, lin_s], [conv_r, lin_r]) + gradient_distance([conv_r, lin_r], [conv_r, lin_s]))
    torch.testing.assert_close(two, one)


def test_gradient_distance_is_zero_for_equal_and_scale_invariant_per_row():
    torch.manual_seed(0)
    g = [torch.randn(4, 3, 3, 3), torch.randn(4), torch.randn(10, 36)]
    assert gradient_distance(g, g).item() == pytest.approx(0.0, abs=1e-5)
    # rescale every output row of the synthetic side by its own positive factor
    scaled = [g[0] * torch.rand(4, 1, 1, 1).add(0.1) * 7, g[1] * -3, g[2] * torch.rand(10, 1).add(0.1)]
    assert gradient_distance(scaled, g).item() == pytest.approx(0.0, abs=1e-5)
    other = [torch.randn_like(t) for t in g]
    base = gradient_distance(other, g)
    assert base.item() > 1.0
    torch.testing.assert_close(gradient_distance([t * 5 for t in other], [t * 0.2 for t in g]), base,
                               rtol=1e-4, atol=1e-5)
    # opposite rows give the maximum, 2 per row (4 conv rows + 10 linear rows)
    assert gradient_distance([-t for t in g], g).item() == pytest.approx(2.0 * 14, rel=1e-5)
    # only 1-D parameters: nothing to match
    assert gradient_distance([g[1]], [-g[1]]).item() == 0.0


def test_batched_class_gradients_equal_the_loop():
    torch.manual_seed(1)
    net = get_model("convnet-w32", 1, 4, 8)
    real = torch.randn(4, 6, 1, 8, 8)
    syn = torch.randn(4, 2, 1, 8, 8, requires_grad=True)
    for a, b in zip(class_gradients_loop(net, real), class_gradients_vmap(net, real), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    la = match_step_loss(net, real, syn, batched=False)
    (ga,) = torch.autograd.grad(la, syn)
    lb = match_step_loss(net, real, syn, batched=True)
    (gb,) = torch.autograd.grad(lb, syn)
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ga, gb, rtol=1e-3, atol=1e-5)
    assert ga.abs().max() > 0  # second-order gradient reaches the images


def test_default_loops_by_ipc():
    assert default_loops(1) == (1, 1)
    assert default_loops(10) == (10, 50)
    assert default_loops(50) == (50, 10)
    assert default_loops(20) == (20, 25)  # reference code's table
    assert default_loops(2) == (1, 1)  # nearest tabulated IPC
    assert default_loops(7) == (10, 50)
    assert default_loops(15) == (10, 50)  # tie: the smaller IPC
    assert default_loops(100) == (50, 10)
    with pytest.raises(ConfigError):
        default_loops(0)


@pytest.mark.parametrize("method", ["dc", "dsa"])
def test_dc_and_dsa_distil_digits_and_change_the_images(digits, method):
    real, _ = digits
    out = ddkit.distill(real, method, 1, iterations=2, config=TINY, device="cpu", progress=False)
    init = ddkit.distill(real, method, 1, iterations=0, config=TINY, device="cpu", progress=False)
    assert out.images.shape == (10, 1, 8, 8) and out.method == method
    assert out.labels.tolist() == list(range(10))
    assert (out.images - init.images).abs().max() > 1e-4
    assert out.extra["iterations"] == 2 and out.extra["iterations_run"] == 2
    assert (out.config["outer_loop"], out.config["inner_loop"]) == (1, 1)
    assert out.config["dsa"] is (method == "dsa")


def test_dc_uses_the_ipc_loops_and_batched_flag(digits):
    real, _ = digits
    cfg = {**TINY, "batched": True}
    out = ddkit.distill(real, "dc", 2, iterations=1, config=cfg, device="cpu", progress=False)
    assert (out.config["outer_loop"], out.config["inner_loop"]) == (1, 1)
    cfg = {**TINY, "outer_loop": 2, "inner_loop": 1}
    out = ddkit.distill(real, "dc", 2, iterations=1, config=cfg, device="cpu", progress=False)
    assert (out.config["outer_loop"], out.config["inner_loop"]) == (2, 1)
    with pytest.raises(ConfigError):
        ddkit.distill(real, "dc", 1, iterations=1, config={**TINY, "model": "convnetbn"}, device="cpu",
                      progress=False)
    for bad, word in [({"init": "zeros"}, "init"), ({"outer_loop": -1}, "outer_loop"), ({"lr_net": 0}, "lr_net"),
                      ({"batch_train": 0}, "batch_train"), ({"batch_real": 0}, "batch_real")]:
        with pytest.raises(ConfigError, match=word):
            ddkit.distill(real, "dsa", 1, iterations=1, config={**TINY, **bad}, device="cpu", progress=False)


@pytest.mark.parametrize("method", ["dc", "dsa"])
def test_resume_equals_unbroken_run(digits, tmp_path, method):
    real, _ = digits
    cfg = {**TINY, "outer_loop": 2, "inner_loop": 2}
    whole = ddkit.distill(real, method, 1, iterations=2, config=cfg, seed=5, device="cpu", progress=False)
    ck = tmp_path / "run.ckpt"
    ddkit.distill(real, method, 1, iterations=1, config=cfg, seed=5, device="cpu", progress=False, checkpoint=ck)
    assert ck.exists()
    resumed = ddkit.distill(real, method, 1, iterations=2, config=cfg, seed=5, device="cpu", progress=False,
                            checkpoint=ck, resume=True)
    assert resumed.extra["iterations_run"] == 1
    torch.testing.assert_close(resumed.images, whole.images, rtol=0, atol=1e-6)
