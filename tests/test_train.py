"""The one training loop: its parts (optimiser, schedule, loss, weights, steps) and predictions."""

import pytest
import torch

from ddkit.errors import ConfigError
from ddkit.models import get_model
from ddkit.train import TrainConfig, accuracy, confusion, outputs, predict, train_loss, train_model


@pytest.fixture()
def data(digits):
    real, test = digits
    sub = real.per_class_subset(10, seed=0)
    return real.normalize(sub.float_images()), sub.labels, test


def _net(seed=0):
    torch.manual_seed(seed)
    return get_model("convnet-w32", 1, 10, 8)


def test_equal_sample_weights_are_the_plain_loss(data):
    x, y, _ = data
    a, b = _net(), _net()
    cfg = TrainConfig(epochs=2, batch_size=32)
    train_model(a, x, y, cfg, generator=torch.Generator().manual_seed(1))
    train_model(b, x, y, cfg, generator=torch.Generator().manual_seed(1), sample_weights=torch.ones(len(y)))
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match="sample_weights"):
        train_model(_net(), x, y, cfg, sample_weights=torch.zeros(len(y)))
    out, tgt = torch.randn(4, 10), torch.tensor([0, 1, 2, 3])
    w = torch.tensor([1.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(train_loss(out, tgt, cfg, w), torch.nn.functional.cross_entropy(out[:1], tgt[:1]))


def test_max_steps_and_a_continued_optimiser(data):
    x, y, _ = data
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    steps = []
    opt.register_step_post_hook(lambda *a: steps.append(1))
    # a continued optimiser keeps its lr: no schedule is applied to it
    train_model(net, x, y, TrainConfig(epochs=3, batch_size=16, lr=0.9), optimizer=opt, max_steps=2)
    assert len(steps) == 2 and opt.param_groups[0]["lr"] == 0.05


def test_schedules_and_losses():
    p = torch.zeros(1, requires_grad=True)
    for schedule, last in (("step", 0.001), ("cosine", 0.0), ("constant", 0.01)):
        from ddkit.train import _scheduler, make_optimizer

        cfg = TrainConfig(epochs=4, schedule=schedule)
        opt = make_optimizer([p], cfg)
        sched = _scheduler(opt, cfg)
        for _ in range(4):
            opt.step()
            if sched is not None:
                sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(last, abs=1e-12)
    out, y = torch.ones(2, 3), torch.zeros(2, 3)
    assert float(train_loss(out, y, TrainConfig(loss="sq"))) == pytest.approx(1.5)
    assert float(train_loss(out, y, TrainConfig(loss="mse"))) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        TrainConfig(loss="hinge")


def test_confusion_and_per_class_accuracy(data):
    x, y, test = data
    net = train_model(_net(), x, y, TrainConfig(epochs=30, batch_size=32), generator=torch.Generator().manual_seed(0))
    conf = confusion(net, test.images, test.labels, 10, normalize=test.normalize)
    assert conf.shape == (10, 10) and int(conf.sum()) == len(test) and conf.sum(1).tolist() == test.class_counts()
    acc = accuracy(net, test.images, test.labels, normalize=test.normalize)
    assert acc == pytest.approx(float(conf.trace()) / len(test)) and acc > 0.25  # chance: 0.1
    assert torch.equal(predict(net, test.images, test.normalize), predict(net, test.images, test.normalize))
    assert net.training  # left in train mode


def test_compiled_training_is_the_eager_run_up_to_rounding(data, digits):
    """compile=True trains the same network as eager (inductor's fused kernels round
    differently in the last digits); evaluation records the decision and its reason."""
    import ddkit
    from ddkit.utils import decide_compile

    x, y, _ = data
    a, b = _net(), _net()
    cfg = TrainConfig(epochs=3)  # one batch of the 100 images: one compiled graph for the whole test
    train_model(a, x, y, cfg, generator=torch.Generator().manual_seed(1))
    train_model(b, x, y, cfg, generator=torch.Generator().manual_seed(1), compile=True)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)
    real, test = digits
    ds = ddkit.distill(real, "random", 10, seed=0, progress=False)
    on = ddkit.train_networks(ds, model="convnet-w32", runs=1, epochs=2, device="cpu", compile=True)
    assert on.settings["compiled"] == {"used": True, "reason": "set explicitly"}
    auto = ddkit.train_networks(ds, model="convnet-w32", runs=1, epochs=2, device="cpu")
    assert auto.settings["compiled"]["used"] is False and "2 optimiser steps" in auto.settings["compiled"]["reason"]
    cpu = torch.device("cpu")
    assert decide_compile("auto", 1000, cpu, threshold=500)[0] == decide_compile("auto", 10**6, cpu)[0]
    with pytest.raises(ConfigError, match="compile"):
        ddkit.evaluate(ds, model="convnet-w32", runs=1, epochs=2, device="cpu", compile="sometimes", test=test)


def test_a_training_that_does_not_compile_is_a_config_error(data):
    import torch._inductor.config as inductor

    x, y, _ = data
    # no compiler, and no cached graph that would not need one
    with inductor.patch({"cpp.cxx": ("/nonexistent/g++",), "fx_graph_cache": False}):
        with pytest.raises(ConfigError, match="torch.compile failed on ConvNet.*compile=False"):
            train_model(_net(), x, y, TrainConfig(epochs=1, batch_size=64), compile=True)
    torch._dynamo.reset()  # no half-compiled state for later tests


def test_bf16_training_runs_under_autocast_keeps_fp32_weights_and_is_recorded(data, digits):
    """precision="bf16": the forward runs in bf16 (checked inside the network), the weights
    stay FP32, the network still learns; evaluation records the setting; bad values and the
    protocols with their own FP32 loop are refused."""
    import ddkit

    x, y, _ = data
    net, ref = _net(), _net()
    seen = []
    hook = net.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    cfg = TrainConfig(epochs=30, batch_size=100)
    train_model(net, x, y, cfg, generator=torch.Generator().manual_seed(1), precision="bf16")
    train_model(ref, x, y, cfg, generator=torch.Generator().manual_seed(1))
    hook.remove()
    assert set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in net.parameters())
    with torch.no_grad():
        before, got, want = (float(torch.nn.functional.cross_entropy(m(x), y)) for m in (_net(), net, ref))
    assert got < before - 0.05  # it learned, and as far as the FP32 run up to bf16 rounding
    assert abs(got - want) < 0.01 and not torch.equal(net.classifier.weight, ref.classifier.weight)
    with pytest.raises(ConfigError, match="precision must be fp32 or bf16"):
        train_model(_net(), x, y, cfg, precision="fp16")
    real, test = digits
    ds = ddkit.distill(real, "random", 10, seed=0, progress=False)
    got = ddkit.train_networks(ds, model="convnet-w32", runs=1, epochs=2, device="cpu", precision="bf16")
    assert got.settings["precision"]["precision"] == "bf16"
    assert "bf16_units" in got.settings["precision"]
    assert got.protocol.endswith("bf16 autocast (forward and loss)")
    assert ddkit.train_networks(ds, model="convnet-w32", runs=1, epochs=1, device="cpu"
                                ).settings["precision"] == {"precision": "fp32"}
    with pytest.raises(ConfigError, match="precision"):
        ddkit.evaluate(ds, model="convnet-w32", runs=1, epochs=1, device="cpu", precision="half", test=test)
    with pytest.raises(ConfigError, match="kip protocol runs its own loop in FP32"):
        ddkit.train_networks(ds, model="convnet-w32", runs=1, epochs=1, device="cpu", precision="bf16",
                             protocol="kip", train=real)


def test_outputs_batches_and_restores_mode():
    net = get_model("mlp", 1, 10, 8)
    net.train()
    x = torch.rand(7, 1, 8, 8)
    out = outputs(net, x, batch_size=3)
    assert out.shape == (7, 10) and net.training
    net.eval()
    torch.testing.assert_close(out, net(x))
