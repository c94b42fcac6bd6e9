"""CFM (UniDD): conv statistics, filters and loss, β schedules, EMU, teachers, the distiller
on real Fashion-MNIST (API, CLI, resume), the shipped teacher and soft-label evaluation."""

import json
import math
import struct

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import ddkit
from ddkit import io
from ddkit.artifact import FORMAT, DistilledSet
from ddkit.cli import app
from ddkit.distill import base
from ddkit.distill.cfm import (
    ConvStatsRecorder,
    beta_schedule,
    cfm_layer_loss,
    conv_input_stats,
    conv_layers,
    emu_update,
    make_filter,
    real_statistics,
)
from ddkit.errors import ArtifactError, ConfigError
from ddkit.evaluate.soft import SoftLabelConfig, default_batch_size
from ddkit.models import get_model
from ddkit.teacher import Teacher, load_teacher, train_teacher
from ddkit.train import TrainConfig, make_optimizer, train_loss

FAST = {"teacher_model": "convnet-w32", "teacher_subset": 20, "teacher_epochs": 1, "stats_images": 300,
        "measure_teacher": False}
KW = {"device": "cpu", "progress": False}


@pytest.fixture(scope="module")
def small_test(fmnist):
    return fmnist[1].per_class_subset(50, seed=1)


@pytest.fixture(scope="module")
def teacher_file(fmnist, tmp_path_factory):
    real, _ = fmnist
    t = train_teacher(real, "convnet-w32", 1, images_per_class=20, seed=0, device="cpu", progress=False)
    path = tmp_path_factory.mktemp("teacher") / "t.safetensors"
    t.save(path)
    return path


@pytest.fixture(scope="module")
def cfm_set(fmnist, teacher_file):
    real, _ = fmnist
    return ddkit.distill(real, "cfm", 2, iterations=6, config={**FAST, "teacher": str(teacher_file)}, seed=1, **KW)


# ------------------------------------------------------------------ statistics
def test_conv_input_stats_equal_torch_cov_and_mean():
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    cov, mean = conv_input_stats(x)
    flat = x.permute(1, 0, 2, 3).reshape(5, -1)
    torch.testing.assert_close(cov, torch.cov(flat, correction=0))
    torch.testing.assert_close(mean, x.mean((0, 2, 3)))
    cov1, _ = conv_input_stats(x[:, :1])
    assert cov1.shape == (1, 1)  # torch.cov would give a 0-d tensor for one channel


def test_recorder_reads_each_conv_input_and_skips_shortcuts():
    torch.manual_seed(0)
    net = get_model("convnet-w32", 1, 10, 28).eval()
    x = torch.randn(4, 1, 28, 28)
    with ConvStatsRecorder(net) as rec:
        net(x)
    stats = rec.stats
    assert len(stats) == 3
    inputs = [x, net.features[:4](x), net.features[:8](x)]  # conv, norm, act, pool per block
    for (cov, mean), a in zip(stats, inputs, strict=True):
        flat = a.detach().transpose(0, 1).reshape(a.shape[1], -1)
        torch.testing.assert_close(cov, torch.cov(flat, correction=0).reshape(cov.shape), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(mean, flat.mean(1), rtol=1e-4, atol=1e-6)
    res = get_model("resnet18", 3, 10, 16)
    names = [n for n, _ in conv_layers(res)]
    assert len(names) == 17 and not any("shortcut" in n for n in names)  # 20 convs, 3 shortcuts


def test_real_statistics_are_the_batch_weighted_mean():
    torch.manual_seed(0)
    net = get_model("convnet-w32", 1, 10, 28)
    x = torch.randn(10, 1, 28, 28)
    stats = real_statistics(net, x, batch_size=4, device="cpu")  # batches of 4, 4, 2
    with ConvStatsRecorder(net) as rec:
        parts = []
        for s in (0, 4, 8):
            net(x[s:s + 4])
            parts.append((rec.stats, x[s:s + 4].shape[0] / 10))
    for layer in range(3):
        want_cov = sum(w * st[layer][0] for st, w in parts)
        want_mean = sum(w * st[layer][1] for st, w in parts)
        torch.testing.assert_close(stats[layer][0], want_cov, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(stats[layer][1], want_mean, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ loss, schedules, EMU
def test_hfm_and_lfm_layer_loss_on_fixed_matrices():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 20, generator=g, dtype=torch.float64), torch.randn(3, 20, generator=g, dtype=torch.float64)
    s_r, s_s = a @ a.T / 20, b @ b.T / 20
    m_r, m_s = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), torch.tensor([0.3, 0.1, -1.0], dtype=torch.float64)
    beta = 0.1
    eye = torch.eye(3, dtype=torch.float64)
    f_r, f_s = torch.linalg.inv(s_r + beta * eye), torch.linalg.inv(s_s + beta * eye)
    want_hfm = torch.linalg.norm(f_r - f_s) + torch.linalg.norm(f_r @ m_r - f_s @ m_s)
    want_lfm = torch.linalg.norm(s_r - s_s) + torch.linalg.norm(s_r @ m_r - s_s @ m_s)
    hfm, lfm = make_filter("hfm", beta), make_filter("lfm", beta)
    torch.testing.assert_close(cfm_layer_loss(hfm, s_r, m_r, s_s, m_s), want_hfm)
    torch.testing.assert_close(cfm_layer_loss(lfm, s_r, m_r, s_s, m_s), want_lfm)
    assert float(want_hfm) > 0 and float(want_lfm) > 0 and not torch.isclose(want_hfm, want_lfm)
    assert float(cfm_layer_loss(hfm, s_r, m_r, s_r.clone(), m_r.clone())) == pytest.approx(0, abs=1e-10)
    assert float(cfm_layer_loss(lfm, s_r, m_r, s_r.clone(), m_r.clone())) == 0
    s_s.requires_grad_(True)
    cfm_layer_loss(hfm, s_r, m_r, s_s, m_s).backward()
    assert torch.isfinite(s_s.grad).all() and s_s.grad.abs().sum() > 0
    with pytest.raises(ConfigError):
        make_filter("band", 0.1)


def test_beta_schedules():
    b0, big_b = 0.1, 10
    for kind in ("cosine", "linear", "fixed"):
        assert beta_schedule(kind, b0, 0, big_b) == pytest.approx(b0)
    assert beta_schedule("cosine", b0, big_b - 1, big_b) == pytest.approx(b0 * (1 + math.cos(math.pi * 0.9)) / 2)
    assert beta_schedule("linear", b0, big_b - 1, big_b) == pytest.approx(b0 / big_b)
    assert beta_schedule("fixed", b0, big_b - 1, big_b) == b0
    assert beta_schedule("cosine", b0, 5, big_b) == pytest.approx(b0 / 2)
    with pytest.raises(ConfigError, match="schedule"):
        beta_schedule("step", b0, 0, big_b)
    with pytest.raises(ConfigError):
        beta_schedule("cosine", b0, big_b, big_b)


def test_emu_running_mean_equals_mean_over_batches():
    g = torch.Generator().manual_seed(0)
    batches = [[(torch.randn(4, 4, generator=g), torch.randn(4, generator=g)) for _ in range(2)] for _ in range(5)]
    run = None
    for count, cur in enumerate(batches):
        run = emu_update(run, cur, count)
    for layer in range(2):
        torch.testing.assert_close(run[layer][0], torch.stack([b[layer][0] for b in batches]).mean(0))
        torch.testing.assert_close(run[layer][1], torch.stack([b[layer][1] for b in batches]).mean(0))


# ------------------------------------------------------------------ teachers
def test_teacher_roundtrip_and_errors(fmnist, teacher_file, tmp_path):
    real, _ = fmnist
    t = load_teacher(teacher_file)
    assert t.info["model"] == "convnet-w32" and t.info["dataset"] == "fashion-mnist"
    assert t.info["images_per_class"] == 20 and t.info["channels"] == 1 and t.info["num_classes"] == 10
    again = train_teacher(real, "convnet-w32", 1, images_per_class=20, seed=0, device="cpu", progress=False)
    x = real.normalize(real.float_images(torch.arange(8)))
    torch.testing.assert_close(t.model(x), again.model(x))  # deterministic for a seed, saved exactly
    # tampered bytes
    raw = bytearray(teacher_file.read_bytes())
    raw[-7] ^= 0x40
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="SHA-256"):
        load_teacher(bad)
    # weights that do not fit the model the file names
    Teacher(get_model("convnet-w32", 1, 10, 28), {**t.info, "model": "convnet"}).save(tmp_path / "wrong.safetensors")
    with pytest.raises(ArtifactError, match="do not fit"):
        load_teacher(tmp_path / "wrong.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 32)
    with pytest.raises(ArtifactError, match="not a teacher"):
        load_teacher(tmp_path / "junk.safetensors")
    with pytest.raises(ArtifactError, match="does not exist"):
        load_teacher(tmp_path / "none.safetensors")
    with pytest.raises(ConfigError, match="does not fit"):
        t.check_fits("mnist", 1, 10, 28)


# ------------------------------------------------------------------ the distiller
def test_cfm_on_fashion_mnist_via_api(fmnist, cfm_set):
    real, _ = fmnist
    ds = cfm_set
    assert ds.method == "cfm" and ds.images.shape == (20, 1, 28, 28)
    assert ds.images.min() >= 0 and ds.images.max() <= 1
    assert torch.equal(ds.labels, torch.arange(10).repeat_interleave(2))
    assert ds.has_teacher and ds.teacher_info["model"] == "convnet-w32"
    e = ds.extra
    assert e["iterations"] == 6 and e["iterations_per_batch"] == 3 and e["iterations_run"] == 6
    assert e["betas"] == [pytest.approx(0.1), pytest.approx(0.05)] and ds.config["lr_img"] == 0.25
    assert ds.config["iterations"] == 6 and ds.config["band"] == "hfm" and ds.label_kind == "hard"
    assert 0 <= e["teacher_agreement"] <= 1 and math.isfinite(e["final_loss"])
    cfg = {**FAST, "teacher": ds.teacher_info["source"]}
    init = ddkit.distill(real, "cfm", 2, iterations=0, config=cfg, seed=1, **KW)
    assert (ds.images - init.images).abs().max() > 1e-3  # the optimisation moved the real initialisation
    for i in (0, 13):  # the initialisation is real images of the right class
        cls = real.float_images(real.class_indices()[int(init.labels[i])])
        assert (cls - init.images[i]).flatten(1).abs().amax(1).min() < 1e-5
    # other flags run: LFM, linear schedule, no EMU, final-image EMU statistics, no flip
    other = ddkit.distill(real, "cfm", 2, iterations=4, seed=1, config={
        **cfg, "band": "lfm", "schedule": "linear", "emu_stats": "final", "flip": False, "jitter": 0}, **KW)
    assert other.extra["betas"] == [pytest.approx(0.1), pytest.approx(0.05)]
    assert not torch.equal(other.images, ds.images)
    with pytest.raises(ConfigError, match="band"):
        ddkit.distill(real, "cfm", 1, config={"band": "mid"}, **KW)
    with pytest.raises(ConfigError, match="multiple of IPC 2; got 5, use 4 or 6"):
        ddkit.distill(real, "cfm", 2, iterations=5, config=cfg, **KW)


def test_cfm_trains_its_own_teacher_and_is_deterministic(fmnist):
    real, _ = fmnist
    a = ddkit.distill(real, "cfm", 1, iterations=2, config=FAST, seed=4, **KW)
    b = ddkit.distill(real, "cfm", 1, iterations=2, config=FAST, seed=4, **KW)
    assert a.teacher_info["source"] == "trained by cfm" and a.teacher_info["images_per_class"] == 20
    assert torch.equal(a.images, b.images)
    for k in a.teacher:
        assert torch.equal(a.teacher[k], b.teacher[k])


def test_cfm_resume_equals_unbroken_run(fmnist, teacher_file, tmp_path, monkeypatch):
    real, _ = fmnist
    cfg = {**FAST, "teacher": str(teacher_file), "checkpoint_every": 1}
    whole = ddkit.distill(real, "cfm", 2, iterations=6, config=cfg, seed=2, **KW)
    ck = tmp_path / "cfm.ckpt"
    saves = {"n": 0}
    original = base.Distiller._save

    def interrupting_save(self, *args):
        original(self, *args)
        saves["n"] += 1
        if saves["n"] == 6:  # teacher ready, then steps 1..5 of 6: batch 0 finished, batch 1 at step 2 of 3
            raise KeyboardInterrupt

    monkeypatch.setattr(base.Distiller, "_save", interrupting_save)
    with pytest.raises(KeyboardInterrupt):
        ddkit.distill(real, "cfm", 2, iterations=6, config=cfg, seed=2, checkpoint=ck, **KW)
    monkeypatch.setattr(base.Distiller, "_save", original)
    saved = base.Checkpoint.read(ck)
    assert saved.iteration == 5
    assert {"t.done", "t.cur", "o.cur.0.exp_avg", "t.emu_cov.0", "t.real_cov.2"} <= set(saved.tensors)
    resumed = ddkit.distill(real, "cfm", 2, iterations=6, config=cfg, seed=2, checkpoint=ck, resume=True, **KW)
    assert resumed.extra["iterations_run"] == 1
    torch.testing.assert_close(resumed.images, whole.images, rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="other settings"):
        ddkit.distill(real, "cfm", 2, iterations=8, config=cfg, seed=2, checkpoint=ck, resume=True, **KW)


# ------------------------------------------------------------------ artifact with a teacher
def _tensor_span(path, name):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    lo, hi = header[name]["data_offsets"]
    return 8 + n + lo, 8 + n + hi


def test_artifact_with_teacher_roundtrip_and_tamper(cfm_set, tmp_path):
    p = tmp_path / "cfm.safetensors"
    cfm_set.save(p)
    back = DistilledSet.load(p)
    assert back.has_teacher and back.teacher_info == cfm_set.teacher_info
    assert set(back.teacher) == set(cfm_set.teacher)
    for k, v in cfm_set.teacher.items():
        assert torch.equal(back.teacher[k], v)
    assert load_teacher(p).info["model"] == "convnet-w32"  # a CFM set doubles as a teacher file
    # flip one byte of one teacher weight: the SHA-256 covers the teacher
    lo, _ = _tensor_span(p, "teacher.classifier.weight")
    raw = bytearray(p.read_bytes())
    raw[lo + 2] ^= 0x10
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="SHA-256"):
        DistilledSet.load(bad)
    # teacher tensors without teacher_info (hash made valid) are refused; unknown tensors still are
    tensors = {"images": back.images, "labels": back.labels, "teacher.w": torch.ones(2)}
    meta = back._meta()
    meta.pop("teacher_info")
    meta_json = json.dumps({**meta, "format": FORMAT}, sort_keys=True)
    save_file(tensors, str(tmp_path / "odd.safetensors"),
              metadata={"ddkit": meta_json, "sha256": io.tensor_digest(tensors, meta_json)})
    with pytest.raises(ArtifactError, match="teacher"):
        DistilledSet.load(tmp_path / "odd.safetensors")
    tensors = {"images": back.images, "labels": back.labels, "extra_thing": torch.ones(2)}
    save_file(tensors, str(tmp_path / "odd2.safetensors"),
              metadata={"ddkit": meta_json, "sha256": io.tensor_digest(tensors, meta_json)})
    with pytest.raises(ArtifactError, match="unexpected tensors"):
        DistilledSet.load(tmp_path / "odd2.safetensors")
    plain = DistilledSet(images=back.images, labels=back.labels, method="random", dataset="fashion-mnist",
                         mean=back.mean, std=back.std, class_names=back.class_names, ipc=2)
    assert "teacher_info" not in plain._meta() and set(plain._tensors()) == {"images", "labels"}


# ------------------------------------------------------------------ soft-label evaluation
def test_soft_protocol_pieces():
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    want = (torch.softmax(t / 20, 1) * (torch.log_softmax(t / 20, 1) - torch.log_softmax(s / 20, 1))).sum(1).mean()
    cfg = SoftLabelConfig(epochs=100).train_config()
    assert (cfg.loss, cfg.optimizer, cfg.schedule, cfg.temperature) == ("kd", "adamw", "half_cosine", 20.0)
    torch.testing.assert_close(train_loss(s, t, cfg), want)
    assert float(train_loss(t, t, cfg)) == pytest.approx(0, abs=1e-7)
    from ddkit.train import _scheduler

    opt = make_optimizer([torch.zeros(1, requires_grad=True)], cfg)
    sched = _scheduler(opt, cfg)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-3) and lrs[50] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5e-3)  # after E epochs: half the initial lr
    assert TrainConfig(epochs=10).schedule == "step"
    assert [default_batch_size(i, 10, 10 * i) for i in (1, 10, 50)] == [10, 50, 100]
    assert default_batch_size(10, 100, 1000) == 100 and default_batch_size(2, 10, 20) == 20


def test_soft_label_evaluation_of_the_cfm_set(cfm_set, small_test, fmnist):
    r = ddkit.evaluate(cfm_set, model="convnet-w32", runs=1, epochs=2, device="cpu", test=small_test)
    assert r.settings["name"] == "soft" and r.settings["temperature"] == 20 and r.settings["cutmix_alpha"] == 1
    assert r.settings["optimizer"] == "AdamW" and r.settings["epochs"] == 2 and r.settings["batch_size"] == 20
    assert r.settings["teacher"]["model"] == "convnet-w32"
    for text in ("soft-label", "T=20", "CutMix", "AdamW lr 0.001", "2 ep", "final-epoch"):
        assert text in r.protocol
    assert 0 <= r.mean <= 1 and r.epochs == 2
    assert json.loads(r.to_json())["settings"]["name"] == "soft"
    hard = ddkit.evaluate(cfm_set, model="convnet-w32", runs=1, epochs=1, device="cpu", test=small_test,
                          protocol="hard")
    assert hard.protocol.startswith("DSA protocol") and hard.settings["name"] == "dsa"
    with pytest.raises(ConfigError, match="only applies"):
        ddkit.evaluate(cfm_set, runs=1, epochs=1, device="cpu", test=small_test, protocol="hard", teacher="x")
    with pytest.raises(ConfigError, match="unknown evaluation protocol"):
        ddkit.evaluate(cfm_set, runs=1, epochs=1, device="cpu", test=small_test, protocol="kd")
    rnd = ddkit.distill(fmnist[0], "random", 1, seed=0, progress=False)
    with pytest.raises(ConfigError, match="needs a teacher"):
        ddkit.evaluate(rnd, runs=1, epochs=1, device="cpu", test=small_test, protocol="soft")


# ------------------------------------------------------------------ CLI
@pytest.mark.e2e
def test_cfm_cli_distill_and_soft_evaluate(teacher_file, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cfm.safetensors"
    res = runner.invoke(app, ["distill", "--dataset", "fashion-mnist", "--method", "cfm", "--ipc", "1",
                              "--iterations", "2", "--out", str(out), "--quiet", "--device", "cpu",
                              "--set", f"teacher={teacher_file}", "--set", "stats_images=300"])
    assert res.exit_code == 0, res.output
    ds = DistilledSet.load(out)
    assert ds.method == "cfm" and ds.has_teacher and ds.extra["iterations"] == 2
    assert not out.with_name(out.name + ".ckpt").exists()
    res = runner.invoke(app, ["evaluate", str(out), "--runs", "1", "--epochs", "1", "--model", "convnet-w32",
                              "--device", "cpu", "--protocol", "soft", "--json", str(tmp_path / "r.json"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "soft-label KD" in res.output
    assert json.loads((tmp_path / "r.json").read_text())["settings"]["temperature"] == 20
    res = runner.invoke(app, ["evaluate", str(out), "--protocol", "hard", "--teacher", str(teacher_file)])
    assert res.exit_code == 2 and "only applies" in res.stderr
    res = runner.invoke(app, ["distill", "--dataset", "fashion-mnist", "--method", "cfm", "--out",
                              str(tmp_path / "x.safetensors"), "--set", "schedule=step"])
    assert res.exit_code == 2 and "schedule" in res.stderr
