"""Backdoor attacks: triggers, NAIVEATTACK's poisoned data, Dark Distillation, and CTA/ASR."""

import json

import pytest
import torch
from typer.testing import CliRunner

import ddkit
from ddkit.backdoor import DARK_TRIGGER, Trigger, dark, measure, naive_poison
from ddkit.cli import app
from ddkit.errors import ConfigError

W32 = ("convnet-w32",)


def test_triggers_parse_stamp_and_refuse_what_cannot_fit():
    t = Trigger.parse("patch:size=2,inset=1,value=1")
    x = t.apply(torch.zeros(2, 1, 8, 8), (0.5,), (0.25,))
    assert x[:, :, 5:7, 5:7].eq(1).all() and x.sum() == 2 * 4  # one pixel inside the bottom-right corner
    assert Trigger.parse(t.spec()) == t
    d = DARK_TRIGGER.apply(torch.zeros(1, 1, 8, 8), (0.5,), (0.25,))
    assert d[0, 0, 7, 7] == pytest.approx(0.5 + 10 * 0.25) and d.sum() == d[0, 0, 7, 7]
    b = Trigger.parse("blend:alpha=0.2,seed=1").apply(torch.zeros(1, 3, 8, 8), (0.5,) * 3, (0.25,) * 3)
    assert 0 < float(b.max()) <= 0.2
    for bad, text in (("star", "unknown trigger"), ("patch:colour=1", "unknown trigger setting"),
                      ("patch:size=x", "not a number")):
        with pytest.raises(ConfigError, match=text):
            Trigger.parse(bad)
    with pytest.raises(ConfigError, match="does not fit"):
        Trigger(size=8, inset=1).apply(torch.zeros(1, 1, 8, 8), (0.5,), (0.25,))


def test_naive_poisoning_and_asr_on_digits(digits):
    real, test = digits
    real.class_indices()  # a cached per-class index must not leak into the relabelled copy
    poisoned, idx = naive_poison(real, 0, trigger=Trigger(size=3, inset=0), share=0.3, seed=0)
    for c, members in enumerate(poisoned.class_indices()):
        assert poisoned.labels[members].eq(c).all()
    assert len(idx) == round(0.3 * len(real)) and poisoned.labels[idx].eq(0).all()
    keep = torch.ones(len(real), dtype=torch.bool).index_fill(0, idx, False)
    assert poisoned.images[idx][:, :, 5:, 5:].eq(255).all()
    assert torch.equal(poisoned.images[keep], real.images[keep])
    assert torch.equal(poisoned.labels[keep], real.labels[keep])
    with pytest.raises(ConfigError, match="target label"):
        naive_poison(real, 10)
    with pytest.raises(ConfigError, match="share"):
        naive_poison(real, 0, share=0)
    trig = Trigger(size=3, inset=0)
    bad = ddkit.distill(poisoned, "random", 30, seed=0, progress=False)
    clean = ddkit.distill(real, "random", 30, seed=0, progress=False)
    kw = {"trigger": trig, "victims": W32, "runs": 1, "epochs": 60, "augment": False, "device": "cpu", "test": test}
    m_bad, m_clean = measure(bad, 0, **kw), measure(clean, 0, **kw)
    assert m_bad.victims[0]["asr"] > 0.5 > m_clean.victims[0]["asr"] + 0.2  # the backdoor is learnt from the set
    assert m_clean.victims[0]["cta"] > 0.5 and m_bad.trigger == trig.spec()
    assert m_bad.victims[0]["asr_all_classes"] >= m_bad.victims[0]["asr"] * 0.9


def test_dark_poisons_a_set_without_raw_data(digits, tmp_path):
    real, _ = digits
    ds = ddkit.distill(real, "random", 2, seed=0, progress=False)
    kw = {"surrogate_steps": 5, "archetype_steps": 5, "trajectory": 1, "updates": 3, "model": "convnet-w32"}
    a = dark(ds, 3, seed=1, **kw)
    b = dark(ds, 3, seed=1, **kw)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, ds.labels)
    assert (a.images - ds.images).abs().max() > 1e-4
    info = a.extra["backdoor"]
    assert info["attack"] == "dark" and info["target"] == 3 and info["seconds"] >= 0 and info["updates"] == 3
    a.save(tmp_path / "p.safetensors")
    assert ddkit.DistilledSet.load(tmp_path / "p.safetensors").extra["backdoor"]["trigger"] == DARK_TRIGGER.spec()
    with pytest.raises(ConfigError, match="target label"):
        dark(ds, -1, **kw)


def test_attack_cli(digits, tmp_path):
    real, _ = digits
    src = tmp_path / "s.safetensors"
    ddkit.distill(real, "random", 2, seed=0, progress=False).save(src)
    runner = CliRunner()
    res = runner.invoke(app, ["attack", "dark", str(src), "--out", str(tmp_path / "p.safetensors"), "--target", "1",
                              "--trajectory", "0", "--updates", "2", "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["attack", "measure", str(tmp_path / "p.safetensors"), "--target", "1", "--victims",
                              "convnet-w32,mlp", "--runs", "1", "--epochs", "1", "--device", "cpu", "--json",
                              str(tmp_path / "m.json"), "--no-augment"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m.json").exists() and "ASR" in res.output and "no augmentation" in res.output
    assert json.loads((tmp_path / "m.json").read_text())["augment"] is False
    for args, text in ((["attack", "dark", str(src), "--out", str(tmp_path / "x.st"), "--target", "12"], "target"),
                       (["attack", "measure", str(src), "--trigger", "patch:size=9"], "does not fit"),
                       (["attack", "dark", str(src), "--out", str(tmp_path / "x.st"), "--trigger", "zap"], "trigger")):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and text in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "x.st").exists()


class _Probe(torch.nn.Module):
    """A network the trigger can drive: linear features, so DOORPING's target is reachable."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU())
        self.classifier = torch.nn.Linear(16, 10)

    def embed(self, x):
        return self.features(x)

    def forward(self, x):
        return self.classifier(self.embed(x))


def _doorping_event(net, real_x, it=0):
    from types import SimpleNamespace

    state = SimpleNamespace(aux={"net": net}, tensors={})
    return SimpleNamespace(state=state, context=SimpleNamespace(real_x=lambda: real_x), iteration=it)


def test_doorping_update_drives_one_neuron_of_the_trigger_image_and_restamps_the_poisoned_images():
    from ddkit.backdoor import Doorping

    net = _Probe().train()
    trig = Trigger(size=3, inset=0)
    real_x = torch.randn(6, 1, 8, 8)
    before = real_x.clone()
    idx = torch.tensor([1, 4])
    hook = Doorping((1, 8, 8), idx, trig, (0.5,), (0.25,), steps=1000)
    event = _doorping_event(net, real_x)
    x0 = (hook.initial - 0.5) / 0.25  # baadd's input: the patch on a black image, standardised
    with torch.no_grad():
        feats0 = net.embed(x0)[0]
    hook(event)
    j = hook.updates[0]["neuron"]
    score = net.classifier.weight.abs().sum(0).masked_fill(feats0 <= 0, -1)
    assert j == int(score.argmax()) and feats0[j] > 0  # the strongest unit the trigger image excites
    assert net.training and all(p.requires_grad for p in net.parameters())  # the loop's network left as it was
    with torch.no_grad():
        a1 = float(net.embed(event.state.tensors["trigger"])[0, j])
    assert hook.updates[0]["loss"] < 0.5 and (a1 - 10 * float(feats0[j])) ** 2 < 0.5  # reached 10× its start
    assert hook.updates[0]["steps"] < 1000
    assert (hook.pattern[..., :5, :] == 0).all() and (hook.pattern[..., :, :5] == 0).all()
    assert float(hook.pattern.max()) > 1  # the code does not clip the pattern
    stamped = (hook.pattern - 0.5) / 0.25
    assert torch.allclose(real_x[idx][..., 5:, 5:], stamped.expand(2, -1, -1, -1)[..., 5:, 5:], atol=1e-5)
    assert torch.equal(real_x[idx][..., :5, :], before[idx][..., :5, :])  # only the patch changes
    keep = torch.tensor([0, 2, 3, 5])
    assert torch.equal(real_x[keep], before[keep])
    clamped = Doorping((1, 8, 8), idx, trig, (0.5,), (0.25,), steps=200, clamp=True)
    clamped(_doorping_event(net, real_x.clone()))
    assert clamped.pattern.min() >= -1e-6 and clamped.pattern.max() <= 1 + 1e-6
    dead = _Probe()
    with torch.no_grad():
        dead.features[1].bias.fill_(-1e6)  # no unit can fire: the update is skipped, and says so
    skipped = Doorping((1, 8, 8), idx, trig, (0.5,), (0.25,))
    skipped(_doorping_event(dead, real_x.clone()))
    assert skipped.updates[0]["neuron"] == -1 and skipped.updates[0]["steps"] == 0
    for kw, text in (({"steps": 0}, "at least one"), ({"neuron": "top"}, "neuron rule")):
        with pytest.raises(ConfigError, match=text):
            Doorping((1, 8, 8), idx, trig, (0.5,), (0.25,), **kw)


def test_doorping_optimises_the_trigger_through_the_hook_and_the_set_carries_it(digits, tmp_path):
    from ddkit.backdoor import Doorping

    real, test = digits
    trig = Trigger(size=3, inset=0)
    poisoned, idx = naive_poison(real, 0, trigger=trig, share=0.1, seed=0)
    hook = Doorping(tuple(real.images.shape[1:]), idx, trig, real.mean, real.std, steps=20)
    cfg = {"model": "convnet-w32", "batch_real": 16, "checkpoint_every": 1}
    ck = tmp_path / "d.ckpt"
    ddkit.distill(poisoned, "dm", 2, iterations=3, config=cfg, seed=0, progress=False, hook=hook, checkpoint=ck)
    assert len(hook.updates) == 3 and hook.pattern is not None
    inside = hook.pattern[0][:, 5:, 5:]
    assert (hook.pattern[0][:, :5, :] == 0).all() and (inside != hook.initial[0][:, 5:, 5:]).any()  # mask kept
    assert hook.updates[0]["neuron"] >= 0
    from ddkit.distill.base import Checkpoint

    assert "t.trigger" in Checkpoint.read(ck).tensors  # a resumed run continues with the optimised trigger
    res = CliRunner().invoke(app, ["attack", "doorping", "--dataset", "digits", "--method", "dm", "--ipc", "2",
                                   "--iterations", "2", "--share", "0.1", "--trigger", "patch:size=3,inset=0",
                                   "--steps", "5", "--set", "model=convnet-w32", "--set", "batch_real=16",
                                   "--out", str(tmp_path / "dp.safetensors"), "--quiet", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    dp = ddkit.DistilledSet.load(tmp_path / "dp.safetensors")
    assert dp.tensors["trigger"].shape == (1, 8, 8) and dp.extra["backdoor"]["attack"] == "doorping"
    m = measure(dp, 0, victims=W32, runs=1, epochs=1, device="cpu", test=test)
    assert m.trigger.startswith("pattern stored") and 0 <= m.victims[0]["asr"] <= 1
    assert dp.extra["backdoor"]["trigger_updates"] == 2 and not dp.extra["backdoor"]["trigger_clamped"]
    assert dp.extra["backdoor"]["seconds"] > 0
    clean = ddkit.distill(real, "random", 2, seed=0)
    c_path = tmp_path / "clean.safetensors"
    clean.save(c_path)
    runner = CliRunner()
    res = runner.invoke(app, ["attack", "measure", str(c_path), "--trigger-from", str(tmp_path / "dp.safetensors"),
                              "--victims", "convnet-w32", "--runs", "1", "--epochs", "1", "--device", "cpu",
                              "--json", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "m.json").read_text())["trigger"] == "pattern stored in dp.safetensors (DOORPING)"
    for args, text in ((["--trigger-from", str(c_path)], "stores no trigger pattern"),
                       (["--trigger-from", str(tmp_path / "dp.safetensors"), "--trigger", "patch"], "not both")):
        bad = runner.invoke(app, ["attack", "measure", str(c_path), *args, "--victims", "convnet-w32"])
        assert bad.exit_code == 2 and text in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    bad = CliRunner().invoke(app, ["attack", "doorping", "--dataset", "digits", "--method", "kip", "--out",
                                   str(tmp_path / "x.safetensors")])
    assert bad.exit_code == 2 and "dm, dc or dsa" in bad.stderr
