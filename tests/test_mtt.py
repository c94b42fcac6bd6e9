"""MTT: expert buffer (resume, settings), the unrolled student, the loss, the distiller and the CLI."""

import copy
import importlib
import json

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parameters_to_vector
from typer.testing import CliRunner

import ddkit
from ddkit.artifact import DistilledSet
from ddkit.cli import app
from ddkit.distill import make_config
from ddkit.distill.base import Checkpoint
from ddkit.distill.buffer import ExpertBuffer, expert_generator, train_experts
from ddkit.distill.mtt import (
    MTTDistiller,
    published_defaults,
    trajectory_matching_loss,
    unroll_memory_bytes,
    unroll_student,
)
from ddkit.errors import ArtifactError, ConfigError
from ddkit.models import get_model

buffer_mod = importlib.import_module("ddkit.distill.buffer")  # ddkit.distill is also a function
SMALL = {"model": "convnet-w32", "train_subset": 20, "device": "cpu", "progress": False}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def buf(fmnist, tmp_path_factory):
    """Two experts × 3 epochs of ConvNet-w32 on 20 Fashion-MNIST images per class."""
    out = tmp_path_factory.mktemp("buf")
    return train_experts(fmnist[0], out, experts=2, epochs=3, seed=1, **SMALL)


def _tiny_net_and_data(n=12, seed=0):
    torch.manual_seed(seed)
    net = get_model("convnet-w32", 1, 10, 8)
    g = torch.Generator().manual_seed(seed)
    return net, torch.randn(n, 1, 8, 8, generator=g), torch.arange(n) % 10


# ----------------------------------------------------------------- unrolled student and loss
def test_unrolled_student_equals_an_nn_module_sgd_loop():
    net, x, y = _tiny_net_and_data()
    start = parameters_to_vector(net.parameters()).detach()
    lr, steps = 0.05, 4
    ref = copy.deepcopy(net)
    opt = torch.optim.SGD(ref.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        opt.step()
    want = parameters_to_vector(ref.parameters()).detach()
    got = unroll_student(net, start.clone().requires_grad_(True), x, y, torch.tensor(lr), steps)
    assert got.requires_grad  # the meta-gradient graph is kept
    torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)
    assert (want - start).abs().max() > 1e-3  # the steps did move the parameters
    # the student never touches the module's own parameters
    torch.testing.assert_close(parameters_to_vector(net.parameters()).detach(), start)


def test_unrolled_student_minibatches_follow_the_permutation_chunks():
    net, x, y = _tiny_net_and_data(n=10, seed=3)
    start = parameters_to_vector(net.parameters()).detach()
    lr, steps, bsz = 0.1, 3, 4
    got = unroll_student(net, start, x, y, lr, steps, batch_syn=bsz, generator=torch.Generator().manual_seed(7),
                         create_graph=False)
    ref = copy.deepcopy(net)
    opt = torch.optim.SGD(ref.parameters(), lr=lr)
    chunks = list(torch.split(torch.randperm(10, generator=torch.Generator().manual_seed(7)), bsz))
    for _ in range(steps):  # chunks of 4, 4, 2 are used last-first
        idx = chunks.pop()
        opt.zero_grad()
        F.cross_entropy(ref(x[idx]), y[idx]).backward()
        opt.step()
    torch.testing.assert_close(got, parameters_to_vector(ref.parameters()).detach(), rtol=1e-5, atol=1e-6)


def test_loss_is_normalised_finite_and_gradients_reach_images_and_lr():
    net, x, y = _tiny_net_and_data()
    start = parameters_to_vector(net.parameters()).detach()
    target = start + 0.01 * torch.randn(start.shape, generator=torch.Generator().manual_seed(1))
    # zero student steps: the loss is exactly 1 (student = θ*_t)
    assert float(trajectory_matching_loss(start, start, target)) == pytest.approx(1.0)
    images = x.clone().requires_grad_(True)
    syn_lr = torch.tensor(0.01, requires_grad=True)
    end = unroll_student(net, start.clone().requires_grad_(True), images, y, syn_lr, 3)
    loss = trajectory_matching_loss(end, start, target)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert syn_lr.grad is not None and torch.isfinite(syn_lr.grad) and syn_lr.grad != 0
    # a perfect match: loss 0 with finite (zero) gradient; a degenerate expert stays finite
    images.grad = None
    end = unroll_student(net, start.clone().requires_grad_(True), images, y, syn_lr, 1)
    perfect = trajectory_matching_loss(end, start, end.detach())
    perfect.backward()
    assert float(perfect.detach()) == 0.0 and torch.isfinite(images.grad).all() and images.grad.abs().max() == 0
    with pytest.raises(ArtifactError, match="degenerate"):
        trajectory_matching_loss(start + 1, start, start)


def test_published_defaults_by_ipc_and_overrides(buf):
    assert published_defaults(1) == {"syn_steps": 50, "expert_epochs": 2, "max_start_epoch": 2, "lr_lr": 1e-7,
                                     "lr_teacher": 0.01, "lr_img": 1000.0}
    assert published_defaults(10)["max_start_epoch"] == 20 and published_defaults(5)["lr_teacher"] == 0.001
    assert published_defaults(50)["max_start_epoch"] == 40 and published_defaults(20)["syn_steps"] == 30
    cfg = make_config(MTTDistiller, {"buffer": str(buf.root), "syn_steps": 7})
    assert cfg.iterations == 5000 and cfg.dsa and cfg.init == "real" and cfg.batch_syn is None
    real = ddkit.load_dataset("digits", "train")  # resolving depends on the IPC only
    resolved = MTTDistiller(cfg).resolve(10, real)
    assert resolved.syn_steps == 7 and resolved.lr_lr == 1e-5 and resolved.lr_img == 1000.0
    assert MTTDistiller(cfg).resolve(1, real).lr_teacher == 0.01  # the 'ceil' rule: IPC 1 → row 1
    assert MTTDistiller(cfg).resolve(11, real).max_start_epoch == 40  # IPC > 10 → row 50


# ------------------------------------------------------------------------------ the buffer
def test_buffer_layout_and_contents(buf, fmnist):
    assert len(buf) == 2 and buf.epochs == 3 and buf.model == "convnet-w32"
    s = json.loads((buf.root / "manifest.json").read_text())
    assert s["lr"] == 0.01 and s["momentum"] == 0.0 and s["weight_decay"] == 0.0 and s["batch_size"] == 256
    assert s["augmentation"].startswith("dsa:color_crop") and s["train_subset"] == 20 and s["train_images"] == 200
    assert s["dataset"] == "fashion-mnist" and s["ddkit_version"] == ddkit.__version__
    expert_generator(1, 0, -1)
    init = parameters_to_vector(get_model("convnet-w32", 1, 10, 28).parameters()).detach()
    torch.testing.assert_close(buf.params(0, 0), init, rtol=0, atol=0)
    assert buf.params(0, 0).shape == (buf.num_params,)
    assert (buf.params(0, 3) - buf.params(0, 0)).abs().max() > 1e-4  # trained
    assert (buf.params(1, 0) - buf.params(0, 0)).abs().max() > 1e-4  # distinct experts
    buf.check_compatible(fmnist[0])


def test_buffer_resume_equals_unbroken_run_and_refuses_other_settings(fmnist, tmp_path, monkeypatch):
    real = fmnist[0]
    whole = train_experts(real, tmp_path / "whole", experts=1, epochs=3, seed=4, **SMALL)
    writes = {"n": 0}
    real_write = buffer_mod._write_expert

    def stop_after_two(path, traj, info):
        real_write(path, traj, info)
        writes["n"] += 1
        if writes["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(buffer_mod, "_write_expert", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        train_experts(real, tmp_path / "broken", experts=1, epochs=3, seed=4, **SMALL)
    monkeypatch.setattr(buffer_mod, "_write_expert", real_write)
    partial = ExpertBuffer(tmp_path / "broken")
    assert len(partial) == 0  # the partly trained expert is not used yet
    with pytest.raises(ConfigError, match="no finished expert"):
        partial.check_compatible(real)
    resumed = train_experts(real, tmp_path / "broken", experts=1, epochs=3, seed=4, **SMALL)
    assert len(resumed) == 1
    for e in range(4):
        torch.testing.assert_close(resumed.params(0, e), whole.params(0, e), rtol=0, atol=0)
    # a finished expert is skipped (file untouched); more experts extend the buffer
    before = (tmp_path / "whole" / "expert_0000.safetensors").stat().st_mtime_ns
    more = train_experts(real, tmp_path / "whole", experts=2, epochs=3, seed=4, **SMALL)
    assert len(more) == 2 and (tmp_path / "whole" / "expert_0000.safetensors").stat().st_mtime_ns == before
    with pytest.raises(ConfigError, match="other settings"):
        train_experts(real, tmp_path / "whole", experts=2, epochs=3, seed=4, lr=0.02, **SMALL)
    with pytest.raises(ConfigError, match="train_subset"):
        train_experts(real, tmp_path / "x", experts=1, epochs=1, train_subset=10**6, device="cpu", progress=False)


# ---------------------------------------------------------------------------- the distiller
def _cfg(buf, **kw):
    return {"buffer": str(buf.root), "syn_steps": 3, "max_start_epoch": 2, "checkpoint_every": 1, **kw}


def test_mtt_distils_fashion_mnist_with_a_learned_lr(buf, fmnist, tmp_path):
    real, _ = fmnist
    kw = {"config": _cfg(buf), "seed": 2, "device": "cpu", "progress": False}
    init = ddkit.distill(real, "mtt", 2, iterations=0, **kw)
    out = ddkit.distill(real, "mtt", 2, iterations=2, **kw)
    assert out.images.shape == (20, 1, 28, 28) and bool(torch.isfinite(out.images).all())
    # stored as optimised (unclamped, like the authors' code); the fraction outside [0, 1] is recorded
    assert out.extra["pixel_overflow"] == pytest.approx(float(((out.images < 0) | (out.images > 1)).float().mean()),
                                                        abs=1e-6)
    assert torch.equal(out.labels, torch.arange(10).repeat_interleave(2))
    assert (out.images - init.images).abs().max() > 1e-3
    assert float(init.lr) == pytest.approx(0.001)  # IPC 2..10: the CIFAR-10 IPC-10 row
    assert float(out.lr) > 0 and abs(float(out.lr) - 0.001) > 1e-7
    e = out.extra
    assert e["iterations"] == 2 and e["iterations_run"] == 2 and e["seconds"] >= 0 and e["device"] == "cpu"
    assert out.config["syn_steps"] == 3 and out.config["lr_img"] == 1000.0 and e["buffer"]["experts"] == 2
    assert e["final_loss"] > 0 and e["syn_lr"] == pytest.approx(float(out.lr))
    path = tmp_path / "mtt.safetensors"
    out.save(path)
    assert float(DistilledSet.load(path).lr) == pytest.approx(float(out.lr))


def test_mtt_resume_equals_unbroken_run(buf, fmnist, tmp_path):
    real, _ = fmnist
    kw = {"config": _cfg(buf, batch_syn=7), "seed": 5, "device": "cpu", "progress": False}
    whole = ddkit.distill(real, "mtt", 1, iterations=3, **kw)
    ck = tmp_path / "mtt.ckpt"
    ddkit.distill(real, "mtt", 1, iterations=2, checkpoint=ck, **kw)
    saved = set(Checkpoint.read(ck).tensors)
    assert {"t.syn", "o.img.0.momentum_buffer", "t.syn_lr", "o.lr.0.momentum_buffer"} <= saved
    resumed = ddkit.distill(real, "mtt", 1, iterations=3, checkpoint=ck, resume=True, **kw)
    assert resumed.extra["iterations_run"] == 1
    torch.testing.assert_close(resumed.images, whole.images, rtol=0, atol=1e-6)
    torch.testing.assert_close(resumed.lr, whole.lr, rtol=0, atol=1e-9)
    with pytest.raises(ConfigError, match="other settings"):
        ddkit.distill(real, "mtt", 1, iterations=3, checkpoint=ck, resume=True,
                      **{**kw, "config": _cfg(buf, batch_syn=8)})


def test_mtt_bad_settings_are_config_errors(buf, fmnist, digits, tmp_path):
    real, _ = fmnist
    with pytest.raises(ConfigError, match="expert-trajectory buffer"):
        make_config(MTTDistiller, {})
    with pytest.raises(ConfigError, match="not an expert buffer"):
        make_config(MTTDistiller, {"buffer": str(tmp_path)})
    with pytest.raises(ConfigError, match="syn_steps"):
        make_config(MTTDistiller, _cfg(buf, syn_steps=0))
    with pytest.raises(ConfigError, match="needs trajectories of at least"):  # IPC-10 row: T+ = 20 > 3 epochs
        ddkit.distill(real, "mtt", 10, iterations=1, config={"buffer": str(buf.root)}, device="cpu", progress=False)
    with pytest.raises(ConfigError, match="differs from the buffer"):
        ddkit.distill(real, "mtt", 1, iterations=1, config=_cfg(buf, model="convnet"), device="cpu", progress=False)
    with pytest.raises(ConfigError, match="does not match the real set"):
        ddkit.distill(digits[0], "mtt", 1, iterations=1, config=_cfg(buf), device="cpu", progress=False)


def test_unroll_memory_estimate_and_the_refusal_when_it_does_not_fit(buf, fmnist, monkeypatch):
    net = get_model("convnet-w32", 1, 10, 28)
    one = unroll_memory_bytes(net, (1, 28, 28), 10, 10, 1)
    assert one > 10 * 32 * 32 * 32 * 4  # at least the first conv's output per image
    assert unroll_memory_bytes(net, (1, 28, 28), 10, 10, 3) == 3 * one  # linear in the steps
    assert unroll_memory_bytes(net, (1, 28, 28), 10, 20, 1) > 1.5 * one  # ~linear in the batch
    # measured against the saved tensors of a real 2-step unroll on 10 images
    theta = torch.cat([q.detach().flatten() for q in net.parameters()]).requires_grad_(True)
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        unroll_student(net, theta, torch.randn(10, 1, 28, 28, requires_grad=True), torch.arange(10), 0.01, 2)
    assert 0.8 < 2 * one / sum(seen.values()) < 1.25
    # a run whose graph cannot fit is refused up front with the fix named, not OOM-killed
    mtt = importlib.import_module("ddkit.distill.mtt")
    monkeypatch.setattr(mtt, "available_memory_bytes", lambda device: 2**20)
    with pytest.raises(ConfigError, match=r"GiB for the backward pass.*batch_syn=\d+"):
        ddkit.distill(fmnist[0], "mtt", 1, iterations=1, config=_cfg(buf), device="cpu", progress=False)


# ------------------------------------------------------------------------------------- CLI
def test_cli_buffer_then_distill(tmp_path):
    runner = CliRunner()
    bdir, out = tmp_path / "b", tmp_path / "m.safetensors"
    args = ["buffer", "fashion-mnist", "--out", str(bdir), "--experts", "1", "--epochs", "2", "--model", "convnet-w32",
            "--train-subset", "10", "--quiet", "--device", "cpu"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "1 finished expert" in res.output and (bdir / "expert_0000.safetensors").exists()
    res = runner.invoke(app, [*args[:-2], "--lr", "0.5", "--device", "cpu"])
    assert res.exit_code == 2 and "other settings" in res.stderr and "Traceback" not in res.stderr
    res = runner.invoke(app, ["distill", "--dataset", "fashion-mnist", "--method", "mtt", "--out", str(out)])
    assert res.exit_code == 2 and "expert-trajectory buffer" in res.stderr
    res = runner.invoke(app, ["distill", "--dataset", "fashion-mnist", "--method", "mtt", "--ipc", "1", "--iterations",
                              "1", "--set", f"buffer={bdir}", "--set", "syn_steps=2", "--set", "max_start_epoch=1",
                              "--device", "cpu", "--quiet", "--out", str(out)])
    assert res.exit_code == 0, res.output
    ds = DistilledSet.load(out)
    assert ds.method == "mtt" and ds.lr is not None and ds.extra["iterations"] == 1


def test_buffers_written_by_ddkit_0_1_still_load(tmp_path):
    """A format-/1 buffer (ddkit 0.1.0, expert files without a hash; kept in tests/data) is read."""
    import shutil
    from pathlib import Path

    legacy = tmp_path / "v1"
    shutil.copytree(Path(__file__).parent / "data" / "v1_buffer_digits", legacy)
    buf = ExpertBuffer(legacy)
    assert len(buf) == 1 and buf.epochs == 2 and buf.params(0, 2).shape == (buf.num_params,)
    real = ddkit.load_dataset("digits", "train")
    out = ddkit.distill(real, "mtt", 1, iterations=1, device="cpu", progress=False,
                        config={"buffer": str(legacy), "syn_steps": 2, "expert_epochs": 1, "max_start_epoch": 1})
    assert out.images.shape == (10, 1, 8, 8) and float(out.lr) > 0
    with pytest.raises(ConfigError, match="other settings"):  # it cannot be extended in the new format
        train_experts(real, legacy, experts=2, epochs=2, model="convnet-w32", train_subset=10, seed=0,
                      device="cpu", progress=False)
