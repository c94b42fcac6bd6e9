"""A table of bad inputs through the CLI and the API: each is one clear line (exit code 2 on
the command line), no traceback, and no file or folder left behind; and property-based
tests of the file reader (byte flips, truncations, header edits with a recomputed hash)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import ddkit
from ddkit import io
from ddkit.artifact import FORMAT, DistilledSet
from ddkit.cli import app
from ddkit.errors import ArtifactError, ConfigError, DDKitError, OutputError
from ddkit.utils import output_lock

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _one_line(res, text):
    assert res.exit_code == 2, (res.exit_code, res.output)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert text.lower() in res.stderr.lower(), res.stderr


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def good_set(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "d.safetensors"
    res = _run("distill", "--dataset", "digits", "--method", "random", "--ipc", "2", "--out", path, "--quiet")
    assert res.exit_code == 0, res.output
    return path


def _rewrite(src: Path, dst: Path, *, header: dict | None = None, tensors: dict | None = None) -> Path:
    """Copy a set with an edited header or tensors and a recomputed hash (a careful forger)."""
    with safe_open(str(src), framework="pt") as f:
        meta = json.loads(f.metadata()["ddkit"])
    t = load_file(str(src))
    meta.update(header or {})
    t.update(tensors or {})
    meta_json = json.dumps(meta, sort_keys=True)
    save_file(t, str(dst), metadata={"ddkit": meta_json, "sha256": io.tensor_digest(t, meta_json)})
    return dst


# --------------------------------------------------------------------------- the table (CLI)
def _config(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return ["--config", p]


CLI_CASES = [
    # (id, arguments after `ddkit` given tmp_path, expected text)
    ("config ipc abc", lambda t: ["distill", *_config(t, "ipc: abc\n"), "--out", t / "o.st"], "IPC must be"),
    ("config ipc 2.9", lambda t: ["distill", *_config(t, "ipc: 2.9\n"), "--out", t / "o.st"], "IPC must be"),
    ("config ipc true", lambda t: ["distill", *_config(t, "ipc: true\n"), "--out", t / "o.st"], "IPC must be"),
    ("config dataset 5", lambda t: ["distill", *_config(t, "dataset: 5\n"), "--out", t / "o.st"], "dataset"),
    ("config method list", lambda t: ["distill", *_config(t, "method: [dm]\n"), "--out", t / "o.st"], "method"),
    ("config seed -1", lambda t: ["distill", *_config(t, "seed: -1\n"), "--out", t / "o.st"], "seed"),
    ("ipc abc", lambda t: ["distill", "--ipc", "abc", "--out", t / "o.st"], "--ipc"),
    ("ipc 0", lambda t: ["distill", "--dataset", "digits", "--ipc", "0", "--out", t / "o.st"], "IPC must be"),
    ("no out", lambda t: ["distill", "--dataset", "digits"], "--out"),
    ("unknown option", lambda t: ["distill", "--colour", "red", "--out", t / "o.st"], "--colour"),
    ("spectrum no files", lambda t: ["spectrum", "--out", t / "s"], "files"),
    ("lr_img inf", lambda t: ["distill", "--dataset", "digits", "--set", "lr_img=inf", "--out", t / "o.st"],
     "finite"),
    ("lr_img nan", lambda t: ["distill", "--dataset", "digits", "--set", "lr_img=.nan", "--out", t / "o.st"],
     "finite"),
    ("diverges", lambda t: ["distill", "--dataset", "digits", "--ipc", "1", "--iterations", "3", "--set",
                            "lr_img=1e30", "--set", "model=convnet-w32", "--quiet", "--out", t / "new" / "o.st"],
     "diverged at iteration"),
    ("long out name", lambda t: ["distill", "--dataset", "digits", "--out", t / ("x" * 246 + ".st")], "too long"),
    ("out under a file", lambda t: ["distill", "--dataset", "digits", "--out", t / "f" / "o.st"], "not a folder"),
    ("cfm iterations", lambda t: ["distill", "--dataset", "digits", "--method", "cfm", "--ipc", "2", "--iterations",
                                  "3", "--out", t / "o.st"], "multiple of IPC"),
    ("missing set", lambda t: ["evaluate", t / "nothing.safetensors"], "does not exist"),
    ("info of junk", lambda t: ["info", t / "f"], "not a distilled set"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_is_one_line_and_leaves_nothing(case, tmp_path):
    _, args, text = case
    (tmp_path / "f").write_text("not a folder")
    argv = args(tmp_path)
    before = _listing(tmp_path)
    _one_line(_run(*argv), text)
    after = _listing(tmp_path) - {"run.yaml"}
    assert after <= before | {"run.yaml"}, after - before


@pytest.mark.skipif(not Path("/proc/self").exists() or os.geteuid() != 0, reason="needs /proc and root")
def test_out_on_a_pseudo_file_system_is_refused_up_front():
    _one_line(_run("distill", "--dataset", "digits", "--out", "/proc/x.safetensors"), "cannot write")


@pytest.mark.parametrize("edit,text", [
    ({"mean": ["a"]}, "mean"),
    ({"std": [0.0]}, "std"),
    ({"std": [-1]}, "std"),
    ({"mean": [0.1, 0.2]}, "mean/std"),
    ({"ipc": "lots"}, "ipc"),
    ({"ipc": 2.9}, "ipc"),
    ({"ipc": True}, "ipc"),
    ({"class_names": ["only"]}, "class_names"),
    ({"label_kind": "maybe"}, "label_kind"),
    ({"format": "ddkit.distilled-set/7"}, "upgrade ddkit"),
    ({"format": "ddkit.teacher/2"}, "not a distilled set"),
])
def test_forged_metadata_is_one_artifact_error(good_set, tmp_path, edit, text):
    bad = _rewrite(good_set, tmp_path / "bad.safetensors", header=edit)
    with pytest.raises(ArtifactError, match=text):
        DistilledSet.load(bad)
    _one_line(_run("info", bad), text)


def test_empty_and_nan_sets(good_set, tmp_path):
    empty = _rewrite(good_set, tmp_path / "e.safetensors",
                     tensors={"images": torch.zeros(0, 1, 8, 8), "labels": torch.zeros(0, dtype=torch.int64)})
    _one_line(_run("evaluate", empty), "no images")
    _one_line(_run("show", empty, "--out", tmp_path / "g.png"), "no images")
    assert not (tmp_path / "g.png").exists()
    big = _rewrite(good_set, tmp_path / "l.safetensors", tensors={"labels": torch.full((20,), 12)})
    _one_line(_run("evaluate", big), "labels must be in")


def test_evaluation_refuses_a_test_set_of_other_classes(good_set):
    ds = DistilledSet.load(good_set)
    test = ddkit.load_dataset("digits", "test")
    five = test.subset(torch.nonzero(test.labels < 5).flatten())
    five = type(five)(**{**five.__dict__, "class_names": five.class_names[:5]})
    for other in (five,):
        with pytest.raises(ConfigError, match="classes"):
            ddkit.evaluate(ds, runs=1, epochs=1, device="cpu", test=other)
    with pytest.raises(ConfigError, match="runs"):
        ddkit.evaluate(ds, runs=0, device="cpu", test=test)
    with pytest.raises(ConfigError, match="epochs"):
        ddkit.evaluate(ds, runs=1, epochs=0, device="cpu", test=test)


def test_resume_from_a_checkpoint_that_does_not_fit(tmp_path):
    real = ddkit.load_dataset("digits")
    cfg = {"model": "convnet-w32", "batch_real": 8, "checkpoint_every": 1}
    ck = tmp_path / "o.ckpt"
    ddkit.distill(real, "dm", 1, iterations=2, config=cfg, checkpoint=ck, device="cpu", progress=False)
    tensors, header = io.read(ck, ("ddkit.checkpoint/2",))
    io.write(ck, {**tensors, "t.syn": torch.zeros(3, 1, 8, 8)}, {k: v for k, v in header.items() if k != "format"},
             fmt="ddkit.checkpoint/2")
    with pytest.raises(ArtifactError, match="does not fit"):
        ddkit.distill(real, "dm", 1, iterations=4, config=cfg, checkpoint=ck, resume=True, device="cpu",
                      progress=False)
    without_momentum = {k: v for k, v in tensors.items() if k != "o.img.0.momentum_buffer"}
    io.write(ck, without_momentum, {k: v for k, v in header.items() if k != "format"}, fmt="ddkit.checkpoint/2")
    with pytest.raises(ArtifactError, match="missing"):
        ddkit.distill(real, "dm", 1, iterations=4, config=cfg, checkpoint=ck, resume=True, device="cpu",
                      progress=False)
    io.write(ck, {k: v for k, v in tensors.items() if k != "t.syn"}, {k: v for k, v in header.items() if k != "format"},
             fmt="ddkit.checkpoint/2")
    with pytest.raises(ArtifactError, match="lacks"):
        ddkit.distill(real, "dm", 1, iterations=4, config=cfg, checkpoint=ck, resume=True, device="cpu",
                      progress=False)
    io.write(ck, tensors, {**{k: v for k, v in header.items() if k != "format"}, "iteration": -5},
             fmt="ddkit.checkpoint/2")
    with pytest.raises(ArtifactError, match="malformed"):
        ddkit.distill(real, "dm", 1, iterations=4, config=cfg, checkpoint=ck, resume=True, device="cpu",
                      progress=False)
    ck.write_bytes(b"junk" * 10)
    with pytest.raises(ArtifactError, match="delete the checkpoint"):
        ddkit.distill(real, "dm", 1, iterations=4, config=cfg, checkpoint=ck, resume=True, device="cpu",
                      progress=False)
    for bad in (True, 2.5, "2", 0):
        with pytest.raises(ConfigError, match="IPC"):
            ddkit.distill(real, "dm", bad, iterations=1, config=cfg, device="cpu", progress=False)


def test_a_second_run_to_the_same_output_is_refused(tmp_path):
    out = tmp_path / "o.safetensors"
    with output_lock(out, suffixes=(".ckpt",)):  # as a first run in another process would hold it
        _one_line(_run("distill", "--dataset", "digits", "--method", "random", "--ipc", "1", "--out", out),
                  "another ddkit run")
        with pytest.raises(OutputError, match="another ddkit run"):
            with output_lock(out):
                pass
    assert not out.exists()
    # free again: the run goes through, and a killed run's temporary files are swept
    stale = tmp_path / f".{out.name}.abcd1234.tmp"
    stale.write_text("left by a killed run")
    res = _run("distill", "--dataset", "digits", "--method", "random", "--ipc", "1", "--out", out, "--quiet")
    assert res.exit_code == 0, res.output
    assert out.exists() and not stale.exists() and not (tmp_path / f".{out.name}.lock").exists()


# --------------------------------------------------------------------------- the reader, by property
def _load_or_artifact_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "s.safetensors"
        p.write_bytes(data)
        try:
            DistilledSet.load(p)
        except ArtifactError:
            pass


@pytest.fixture(scope="module")
def good_bytes(good_set) -> bytes:
    return good_set.read_bytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), min_size=1, max_size=4))
def test_byte_flips_give_a_clean_load_or_one_artifact_error(good_bytes, flips):
    data = bytearray(good_bytes)
    for pos, x in flips:
        data[pos % len(data)] ^= x
    _load_or_artifact_error(bytes(data))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 10**9))
def test_truncations_give_one_artifact_error(good_bytes, cut):
    with pytest.raises(ArtifactError):
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "s.safetensors"
            p.write_bytes(good_bytes[: cut % len(good_bytes)])
            DistilledSet.load(p)


_json = st.recursive(st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=False)
                     | st.text(max_size=6), lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c,
                                                                                                 max_size=3),
                     max_leaves=6)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["method", "dataset", "mean", "std", "class_names", "ipc", "seed", "config", "extra",
                            "version", "created", "label_kind", "teacher_info", "format", "new_key"]),
       value=_json)
def test_header_edits_with_a_recomputed_hash_give_a_clean_load_or_one_artifact_error(good_set, key, value):
    with tempfile.TemporaryDirectory() as d:
        p = _rewrite(good_set, Path(d) / "s.safetensors", header={key: value})
        try:
            ds = DistilledSet.load(p)
        except ArtifactError:
            return
        assert isinstance(ds.ipc, int) and ds.images.shape[0] > 0  # a clean load is a valid set


def test_library_errors_are_value_errors():
    assert issubclass(ArtifactError, DDKitError) and issubclass(DDKitError, ValueError)
    assert FORMAT.endswith("/2")
