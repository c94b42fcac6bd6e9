"""The CLI: every bad input is one line on stderr and exit code 2."""

import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from ddkit import io
from ddkit.artifact import FORMAT, DistilledSet
from ddkit.cli import app

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _assert_user_error(res, text):
    assert res.exit_code == 2, res.output
    assert text in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) <= 2


@pytest.fixture()
def digits_set(tmp_path):
    path = tmp_path / "d.safetensors"
    res = _run("distill", "--dataset", "digits", "--method", "random", "--ipc", "2", "--out", path, "--quiet")
    assert res.exit_code == 0, res.output
    return path


def test_bad_inputs(tmp_path, digits_set):
    out = tmp_path / "o.safetensors"
    _assert_user_error(_run("distill", "--dataset", "imagenet-99", "--out", out), "unknown dataset")
    _assert_user_error(_run("distill", "--dataset", "digits", "--method", "magic", "--out", out), "unknown method")
    _assert_user_error(_run("distill", "--dataset", "digits", "--ipc", "0", "--out", out), "IPC must be")
    _assert_user_error(_run("distill", "--dataset", "digits", "--method", "random", "--ipc", "1000", "--out", out),
                       "larger than the smallest class")
    _assert_user_error(_run("distill", "--dataset", "digits", "--set", "nope=1", "--out", out), "unknown setting")
    _assert_user_error(_run("distill", "--dataset", "digits", "--set", "lr_img=abc", "--out", out), "lr_img")
    (tmp_path / "blocker").write_text("")
    _assert_user_error(_run("distill", "--dataset", "digits", "--out", tmp_path / "blocker" / "x.st"), "cannot create")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    _assert_user_error(_run("evaluate", tmp_path / "junk.safetensors"), "not a distilled set")
    _assert_user_error(_run("evaluate", digits_set, "--model", "vgg11", "--runs", "1", "--epochs", "1"), "vgg11")
    bad_cfg = tmp_path / "c.yaml"
    bad_cfg.write_text("method: dm\nwidth_of_everything: 3\n")
    _assert_user_error(_run("distill", "--dataset", "digits", "--config", bad_cfg, "--out", out), "unknown setting")
    assert not out.exists()


def test_tampered_and_nan_files(tmp_path, digits_set):
    raw = bytearray(digits_set.read_bytes())
    raw[-3] ^= 0x55
    tampered = tmp_path / "t.safetensors"
    tampered.write_bytes(bytes(raw))
    _assert_user_error(_run("show", tampered, "--out", tmp_path / "g.png"), "SHA-256")
    ds = DistilledSet.load(digits_set)
    tensors = {"images": torch.full_like(ds.images, float("nan")), "labels": ds.labels}
    meta = json.dumps({**ds._meta(), "format": FORMAT}, sort_keys=True)
    save_file(tensors, str(tmp_path / "n.safetensors"), metadata={"ddkit": meta,
                                                                 "sha256": io.tensor_digest(tensors, meta)})
    _assert_user_error(_run("evaluate", tmp_path / "n.safetensors"), "NaN")


def test_show_info_evaluate(tmp_path, digits_set):
    res = _run("show", digits_set, "--out", tmp_path / "g.png")
    assert res.exit_code == 0 and (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    res = _run("info", digits_set)
    assert res.exit_code == 0 and json.loads(res.stdout)["method"] == "random"
    res = _run("evaluate", digits_set, "--runs", "2", "--epochs", "30", "--no-augment", "--json", tmp_path / "r.json",
               "--device", "cpu", "--quiet")
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["runs"] == 2 and len(result["accuracies"]) == 2 and result["epochs"] == 30
    assert result["mean"] > 0.3  # 20 real digits, 10 classes: well above chance (0.1)


def test_config_file_and_set_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: digits\nmethod: dm\nipc: 1\niterations: 1\nbatch_real: 4\nmodel: convnet-w32\n")
    out = tmp_path / "dm.safetensors"
    res = _run("distill", "--config", cfg, "--set", "lr_img=0.5", "--out", out, "--quiet", "--device", "cpu")
    assert res.exit_code == 0, res.output
    ds = DistilledSet.load(out)
    assert ds.method == "dm" and ds.ipc == 1 and ds.config["lr_img"] == 0.5 and ds.config["batch_real"] == 4
    assert ds.extra["iterations"] == 1 and not (tmp_path / "dm.safetensors.ckpt").exists()


def test_datasets_lists_everything():
    res = _run("datasets")
    assert res.exit_code == 0
    for name in ("mnist", "fashion-mnist", "cifar10", "cifar100", "svhn", "digits", "imagefolder"):
        assert name in res.stdout
