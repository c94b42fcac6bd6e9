"""Cross-architecture evaluation: a table per architecture beside a random real subset."""

import json

import pytest
from typer.testing import CliRunner

import ddkit
from ddkit.cli import app
from ddkit.errors import ConfigError
from ddkit.evaluate import evaluate_models
from ddkit.evaluate.cross import random_subset


@pytest.fixture(scope="module")
def digits_set(digits, tmp_path_factory):
    real, _ = digits
    path = tmp_path_factory.mktemp("x") / "dm.safetensors"
    ddkit.distill(real, "dm", 2, iterations=2, config={"model": "convnet-w32", "batch_real": 16}, seed=0,
                  device="cpu", progress=False).save(path)
    return path


def test_random_subset_is_the_random_method(digits, digits_set):
    real, _ = digits
    ds = ddkit.DistilledSet.load(digits_set)
    a = random_subset(ds, real, seed=3)
    b = ddkit.distill(real, "random", ds.ipc, seed=3, progress=False)
    assert (a.images - b.images).abs().max() == 0 and (a.labels == b.labels).all()


def test_table_json_and_plot_through_the_cli(digits_set, tmp_path):
    res = CliRunner().invoke(app, ["evaluate", str(digits_set), "--models", "convnet-w32,mlp,convnet-d1", "--runs", "1",
                                   "--epochs", "2", "--device", "cpu", "--json", str(tmp_path / "x.json"), "--plot",
                                   str(tmp_path / "x.png"), "--quiet"], terminal_width=200)
    assert res.exit_code == 0, res.output
    for name in ("convnet-w32", "mlp", "convnet-d1", "random", "gain"):
        assert name in res.output
    data = json.loads((tmp_path / "x.json").read_text())
    assert [r["model"] for r in data["rows"]] == ["convnet-w32", "mlp", "convnet-d1"] and data["baseline"] == "random"
    for r in data["rows"]:
        assert 0 <= r["distilled"]["mean"] <= 1 and 0 <= r["baseline"]["mean"] <= 1
        assert r["distilled"]["settings"]["optimizer"] == "SGD" and len(r["distilled"]["per_class"]) == 10
    assert (tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_model_lists(digits_set, digits):
    _, test = digits
    with pytest.raises(ConfigError, match="unknown models"):
        evaluate_models(digits_set, ["convnet", "resnet99"], test=test, device="cpu")
    with pytest.raises(ConfigError, match="at least one"):
        evaluate_models(digits_set, [" "], test=test, device="cpu")
    with pytest.raises(ConfigError, match="baseline"):
        evaluate_models(digits_set, ["mlp"], baseline="herding", test=test, device="cpu")
    res = evaluate_models(digits_set, ["mlp"], baseline="none", runs=1, epochs=1, test=test, device="cpu")
    assert res.rows[0]["baseline"] is None and res.table()[0][2] == "—"


@pytest.mark.e2e
def test_two_processes_give_the_single_process_result(digits_set, digits, tmp_path):
    """torchrun with 2 gloo processes on the CPU splits the runs and gathers the same result."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    _, test = digits
    single = ddkit.evaluate(digits_set, model="convnet-w32", runs=3, epochs=2, device="cpu", test=test)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "ddkit", "evaluate",
                          str(digits_set), "--model", "convnet-w32", "--runs", "3", "--epochs", "2", "--device", "cpu",
                          "--json", str(tmp_path / "r.json"), "--quiet"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["accuracies"] == single.accuracies and data["per_class"] == single.per_class
    assert out.stdout.count("test accuracy") == 1  # rank 0 reports for all


def test_elf_splits_trains_and_sits_beside_the_plain_result(fmnist, tmp_path, monkeypatch):
    """ELF on 28×28 images: ConvNet (adapters 128 → teacher width), VGG-11 and ResNet-18 split at
    the teacher's 4×4 maps; the teacher is trained once and cached; MLP has no split point."""
    import torch

    from ddkit.evaluate.elf import ELFConfig, ELFNet
    from ddkit.models import get_model

    monkeypatch.setenv("DDKIT_CACHE", str(tmp_path / "cache"))
    train, test = fmnist
    real = train.per_class_subset(30, seed=0)
    small_test = test.per_class_subset(10, seed=1)
    ds = ddkit.distill(real, "random", 1, seed=0, progress=False)
    for name in ("convnet", "vgg11", "resnet18"):
        net = ELFNet(get_model(name, 1, 10, 28), (64, 4, 4))
        x = torch.randn(2, 1, 28, 28)
        assert net.front_t(x).shape == (2, 64, 4, 4) and net(x).shape == (2, 10)
    with pytest.raises(ConfigError, match="split point"):
        ELFNet(get_model("mlp", 1, 10, 28), (64, 4, 4))
    cfg = ELFConfig(teacher_model="convnet-w64", teacher_epochs=1, teacher_subset=5)
    res = evaluate_models(ds, ["convnet-w32", "mlp"], baseline="none", runs=1, epochs=2, test=small_test, train=real,
                          device="cpu", elf=cfg)
    row, mlp = res.rows
    assert row["elf"]["settings"]["elf"]["teacher"]["model"] == "convnet-w64" and "ELF" in row["elf"]["protocol"]
    assert mlp["elf"] is None and res.table()[1][-1] == "— (no split point)"
    assert len(list((tmp_path / "cache" / "elf").glob("*.safetensors"))) == 1  # trained once, cached
    with pytest.raises(ConfigError, match="hard-label"):
        ddkit.evaluate(ddkit.DistilledSet(**{**ds.__dict__, "labels": torch.nn.functional.one_hot(ds.labels, 10)
                                             .float(), "label_kind": "probabilities"}), runs=1, epochs=1,
                       test=small_test, device="cpu", elf=cfg)
