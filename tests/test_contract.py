"""The contract every registered method must pass (like scikit-learn's ``check_estimator``).

A new method adds a line to ``SETTINGS`` (the smallest settings that exercise it on the
8×8 digits) and must then pass every test here: bad IPCs are ConfigErrors, a seed
determines the set, a resumed run equals an unbroken one, the set survives a save/load
round trip, its label kind is one the method declares, and its config is the resolved one.
"""

from __future__ import annotations

import pytest
import torch

import ddkit
from ddkit.artifact import DistilledSet
from ddkit.distill import METHODS, Distiller, MethodConfig, get_method, list_methods, make_config, register
from ddkit.distill.base import Checkpoint
from ddkit.errors import ConfigError

ITERATIONS = 6  # CFM at IPC 2: two batches of three steps
STOP_AFTER = 4  # the interrupted run stops after iteration index 4 (CFM: inside its second batch)
IPC = 2
W32 = {"model": "convnet-w32"}
SETTINGS = {
    "random": {},
    "herding": {"feature_epochs": 1, **W32},
    "dm": {"batch_real": 16, **W32},
    "spectral": {"batch_real": 16, "filter": "inverse", **W32},
    "dc": {"batch_real": 8, "outer_loop": 2, "inner_loop": 1, **W32},
    "dsa": {"batch_real": 8, "outer_loop": 2, "inner_loop": 1, **W32},
    "kip": {"batch_real": 40, "real_batches": 1, "num_models": 1, "width": 32},
    "frepo": {"width": 8, "depth": 2, "batch_real": 64, "num_models": 2, "max_online_updates": 1},
    "mtt": {"syn_steps": 2, "expert_epochs": 1, "max_start_epoch": 1},  # + the buffer fixture
    "cfm": {"stats_images": 100},  # + the teacher fixture
}


@pytest.fixture(scope="module")
def real(digits):
    return digits[0]


@pytest.fixture(scope="module")
def prerequisites(real, tmp_path_factory):
    from ddkit.distill.buffer import train_experts
    from ddkit.teacher import train_teacher

    root = tmp_path_factory.mktemp("contract")
    buf = train_experts(real, root / "buf", experts=1, epochs=2, model="convnet-w32", train_subset=20, seed=0,
                        device="cpu", progress=False)
    teacher = root / "teacher.safetensors"
    train_teacher(real, "convnet-w32", 1, images_per_class=20, seed=0, device="cpu", progress=False).save(teacher)
    return {"mtt": {"buffer": str(buf.root)}, "cfm": {"teacher": str(teacher)}}


def _config(name: str, prerequisites, **more) -> dict:
    return {**SETTINGS[name], **prerequisites.get(name, {}), **more}


def _distil(real, name, prerequisites, **kw):
    cls = get_method(name)
    iterations = ITERATIONS if cls.iterative else None
    return ddkit.distill(real, name, kw.pop("ipc", IPC), iterations=iterations, seed=kw.pop("seed", 7),
                         config=_config(name, prerequisites, **kw.pop("config", {})), device="cpu", progress=False,
                         **kw)


def test_every_method_is_in_the_contract():
    assert set(list_methods()) == set(SETTINGS), "add the new method's smallest settings to SETTINGS"


@pytest.mark.parametrize("name", list(SETTINGS))
def test_bad_ipc_is_a_config_error(name, real, prerequisites):
    for bad in (0, -1, True, 2.5, "2", 10_000):
        with pytest.raises(ConfigError, match="IPC"):
            ddkit.distill(real, name, bad, config=_config(name, prerequisites), device="cpu", progress=False)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_contract(name, real, prerequisites, tmp_path):
    cls = get_method(name)
    a = _distil(real, name, prerequisites)
    # shape, classes, declared label kind
    assert a.method == name and a.images.shape == (10 * IPC, 1, 8, 8) and a.ipc == IPC
    assert torch.equal(a.hard_labels(), torch.arange(10).repeat_interleave(IPC))
    assert a.label_kind in cls.label_kinds
    assert a.label_kind == cls(make_config(cls, a.config)).label_kind(make_config(cls, a.config))
    # the recorded config is the resolved one and rebuilds the same config
    assert make_config(cls, a.config).model_dump() == a.config
    for row in cls.ipc_defaults.values():
        assert all(a.config[k] is not None for k in row)
    if cls.iterative:
        assert a.extra["iterations"] == ITERATIONS and a.extra["iterations_run"] == ITERATIONS
        assert a.config["iterations"] == ITERATIONS
    # determinism for a seed
    b = _distil(real, name, prerequisites)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    # save / load round trip
    a.save(tmp_path / "a.safetensors")
    back = DistilledSet.load(tmp_path / "a.safetensors")
    assert torch.equal(back.images, a.images) and torch.equal(back.labels, a.labels)
    assert back.label_kind == a.label_kind and back.config == a.config and back.method == name
    assert (back.lr is None) == (a.lr is None) and back.has_teacher == a.has_teacher


@pytest.mark.parametrize("name", [n for n in SETTINGS if get_method(n).iterative])
def test_resume_equals_an_unbroken_run(name, real, prerequisites, tmp_path):
    whole = _distil(real, name, prerequisites)
    ck = tmp_path / "run.ckpt"
    seen = []

    def stop(event):
        seen.append(event.iteration)
        assert event.context.ipc == IPC and event.loss == event.loss
        if event.iteration == STOP_AFTER:
            raise KeyboardInterrupt  # as a user's Ctrl-C: after the step, before its checkpoint

    with pytest.raises(KeyboardInterrupt):
        _distil(real, name, prerequisites, config={"checkpoint_every": 1}, checkpoint=ck, hook=stop)
    assert seen == list(range(STOP_AFTER + 1))
    assert Checkpoint.read(ck).iteration == STOP_AFTER
    resumed = _distil(real, name, prerequisites, config={"checkpoint_every": 1}, checkpoint=ck, resume=True)
    assert resumed.extra["iterations_run"] == ITERATIONS - STOP_AFTER
    torch.testing.assert_close(resumed.images, whole.images, rtol=0, atol=1e-6)
    torch.testing.assert_close(resumed.labels, whole.labels, rtol=0, atol=1e-6)
    if whole.lr is not None:
        torch.testing.assert_close(resumed.lr, whole.lr, rtol=0, atol=1e-9)
    # FRePo's and CFM's budgets fix a schedule, so another budget is 'other settings' for them
    with pytest.raises(ConfigError, match="past this run's budget|other settings"):
        ddkit.distill(real, name, IPC, iterations=2, seed=7, checkpoint=ck, resume=True, device="cpu",
                      progress=False, config=_config(name, prerequisites, checkpoint_every=1))


def test_register_refuses_duplicates_and_lists_methods():
    assert list_methods()[:3] == ["random", "herding", "dm"] and len(list_methods()) == len(METHODS)

    class Again(Distiller):
        name = "dm"

        def init_state(self, ctx):
            raise NotImplementedError

        def finish(self, state, ctx):
            raise NotImplementedError

    with pytest.raises(ConfigError, match="already registered"):
        register(Again)
    assert get_method("dm") is not Again
    Again.name = "Bad Name"
    with pytest.raises(ConfigError, match="lower-case name"):
        register(Again)
    with pytest.raises(ConfigError, match="unknown method"):
        get_method("nope")
    assert issubclass(get_method("dm").Config, MethodConfig)


def test_sample_weights(real, prerequisites):
    ones = torch.ones(len(real))
    plain = _distil(real, "dm", prerequisites)
    weighted = _distil(real, "dm", prerequisites, sample_weights=ones)
    torch.testing.assert_close(weighted.images, plain.images, rtol=0, atol=1e-5)  # equal weights: DM itself
    w = torch.ones(len(real))
    w[real.labels == 3] = torch.rand(int((real.labels == 3).sum()), generator=torch.Generator().manual_seed(0))
    skewed = _distil(real, "dm", prerequisites, sample_weights=w)
    assert (skewed.images - plain.images).abs().max() > 1e-4
    for bad in (torch.ones(3), -ones, torch.where(real.labels == 0, 0.0, 1.0)):
        with pytest.raises(ConfigError, match="sample_weights"):
            _distil(real, "dm", prerequisites, sample_weights=bad)
    with pytest.raises(ConfigError, match="per-sample weights"):
        _distil(real, "kip", prerequisites, sample_weights=ones)
