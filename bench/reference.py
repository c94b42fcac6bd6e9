"""Side-by-side timing of ddkit against the authors' own code (``bench/speed.py --reference DIR``).

``DIR`` is a checkout of VICO-UoE/DatasetCondensation that the user provides (never
vendored, never imported into ddkit). Its scripts run unmodified, in a subprocess, on the
same machine and threads, alternating round by round with ddkit's public API:

* ``main_DM.py`` (DM) and ``main.py --method DC|DSA`` for ``--iterations`` iterations on
  Fashion-MNIST: the reference prints a line every 10 iterations; a harness around the
  script (``runpy``, nothing in the checkout changes) stamps every printed line with
  ``time.perf_counter()``, so seconds per iteration = (stamp of the line of iteration N −
  stamp of iteration 10) / (N − 10). ddkit: ``ddkit.distill(..., iterations=N)``, the
  loop's own timer; DM with ``compile=True`` (what ``auto`` picks for runs of ≥ 200
  iterations), its first, compiling iteration reported apart (``compile_seconds``).
* the evaluation trainer: the reference evaluates its set at iteration 0
  (``evaluate_synset``: ``--num_eval 1``, ``--epoch_eval_train E``; DM's 100 images with
  DSA); timed from the line before its ``Evaluate_00`` line to that line (network build,
  E epochs, the test pass). ddkit: ``ddkit.evaluate(..., runs=1, epochs=E,
  protocol="dsa", compile=True)`` on a set of the same size, wall clock, including its
  test pass and the first, compiling step (``compile="auto"`` compiles at the protocol's
  1000 epochs; the forced compile makes a shorter timed run show that form).

The harness also provides ``scipy.ndimage.interpolation`` (removed from recent SciPy; the
reference's ``utils.py`` imports ``rotate`` from it) as an alias of ``scipy.ndimage``; lets
``Tensor.view`` fall back to ``reshape`` (one copy) where today's torch refuses a view the
reference's ``ConvNet.forward`` asks of a non-contiguous tensor after DSA; and
writes Fashion-MNIST in torchvision's raw layout (from ddkit's loader) so the reference
finds it without a download.
"""

from __future__ import annotations

import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import ddkit

HARNESS = r"""
import builtins, runpy, sys, time
import scipy.ndimage
sys.modules.setdefault("scipy.ndimage.interpolation", scipy.ndimage)
import torch
torch.set_num_threads(int(sys.argv[1]))
_view = torch.Tensor.view
def _view_or_reshape(self, *a, **k):
    try:
        return _view(self, *a, **k)
    except RuntimeError:
        return self.reshape(*a, **k)
torch.Tensor.view = _view_or_reshape
_print = builtins.print
def _stamped(*a, **k):
    _print("@%.4f" % time.perf_counter(), *a, **k)
builtins.print = _stamped
ref, script = sys.argv[2], sys.argv[3]
sys.path.insert(0, ref)
sys.argv = [script] + sys.argv[4:]
runpy.run_path(script, run_name="__main__")
"""

_ITER = re.compile(r"^@([\d.]+) \[[^\]]*\] iter = (\d+), loss")
_EVAL = re.compile(r"Evaluate_00: epoch = (\d+) train time")
_STAMP = re.compile(r"^@([\d.]+)")


def write_idx(folder: Path, real_train, real_test) -> Path:
    """Fashion-MNIST in torchvision's raw layout under ``folder/FashionMNIST/raw`` (IDX files)."""
    raw = folder / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, ds in (("train", real_train), ("t10k", real_test)):
        x = ds.images[:, 0].contiguous().numpy()
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, *x.shape) + x.tobytes())
        y = ds.labels.to(torch.uint8).numpy()
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, y.shape[0]) + y.tobytes())
    return folder


def run_reference(ref: Path, method: str, iterations: int, eval_epochs: int, ipc: int, data: Path, work: Path,
                  threads: int) -> dict:
    """Run the reference script once; returns seconds per iteration and evaluation seconds."""
    script = "main_DM.py" if method == "dm" else "main.py"
    args = ["--dataset", "FashionMNIST", "--model", "ConvNet", "--ipc", str(ipc), "--Iteration", str(iterations),
            "--num_exp", "1", "--num_eval", "1", "--data_path", str(data), "--save_path", str(work / "res"),
            "--init", "real"]
    if method == "dm":
        args += ["--epoch_eval_train", str(eval_epochs)]
    else:
        args += ["--method", method.upper()]
        if method == "dsa":
            args += ["--dsa_strategy", "color_crop_cutout_flip_scale_rotate"]
    harness = work / "harness.py"
    harness.write_text(HARNESS)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(harness), str(threads), str(ref), str(ref / script), *args],
                          cwd=work, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"reference {script} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    stamps: dict[int, float] = {}
    eval_seconds, eval_epochs_run, prev = None, None, None
    for line in proc.stdout.splitlines():
        m = _ITER.match(line)
        if m:
            stamps[int(m.group(2))] = float(m.group(1))
        e = _EVAL.search(line)
        s = _STAMP.match(line)
        if e and eval_seconds is None and prev is not None and s:
            eval_seconds, eval_epochs_run = float(s.group(1)) - prev, int(e.group(1))
        if s:
            prev = float(s.group(1))
    last = max(stamps)
    if 10 not in stamps or last <= 10:
        raise RuntimeError(f"reference {script}: fewer than 20 iterations logged ({sorted(stamps)})")
    return {"seconds_per_iteration": (stamps[last] - stamps[10]) / (last - 10), "iterations_timed": last - 10,
            "eval_seconds": eval_seconds, "eval_epochs": eval_epochs_run}


def run_ddkit(real, test, method: str, iterations: int, eval_epochs: int | None, ipc: int, seed: int,
              bf16: bool = False) -> dict:
    """ddkit's seconds per iteration (the loop's own timer) and evaluation wall clock; with
    ``bf16`` DM's real branch (``real_bf16``) and the evaluation training steps
    (``precision="bf16"``) run under bf16 autocast."""
    # DM as a real run executes it (compiled ψ, the default from 200 iterations on); its first,
    # compiling iteration is reported apart, as the reference's first 10 are not timed either
    config = {"compile": True, "real_bf16": bf16} if method == "dm" else None
    ds = ddkit.distill(real, method, ipc, iterations=iterations, seed=seed, progress=False, config=config)
    warm = ds.extra.get("warmup_seconds") or 0.0
    timed = iterations - (1 if warm else 0)
    out = {"seconds_per_iteration": (ds.extra["seconds"] - warm) / timed, "iterations_timed": timed,
           "compile_seconds": warm or None}
    if eval_epochs:
        t0 = time.perf_counter()
        # compiled, as ``compile="auto"`` trains at the protocol's 1000 epochs; the first,
        # compiling step is inside this wall clock
        res = ddkit.evaluate(ds, runs=1, epochs=eval_epochs, protocol="dsa", test=test, seed=seed, compile=True,
                             precision="bf16" if bf16 else "fp32")
        out["eval_compiled"] = res.settings["compiled"]["used"]
        out["eval_seconds"] = time.perf_counter() - t0
        out["eval_epochs"] = eval_epochs
    return out


def compare(ref: Path, methods: list[str], iterations: int, eval_epochs: int, repeats: int, threads: int,
            dc_ipc: int, on_row=None, bf16: bool = False) -> list[dict]:
    """Alternate reference and ddkit runs ``repeats`` times per method; rows with medians and
    the ratio ddkit ÷ reference (below 1: ddkit is faster). A reference script that fails
    gives a row with its error instead (the other methods still run); ``on_row(rows)`` is
    called after each method. ``bf16``: each DM round also runs ddkit with bf16 autocast
    (``run_ddkit(bf16=True)``), reported as ``ddkit_bf16`` beside the FP32 form."""
    if not (ref / "main_DM.py").exists() or not (ref / "utils.py").exists():
        raise SystemExit(f"{ref} is not a checkout of VICO-UoE/DatasetCondensation (no main_DM.py/utils.py)")
    torch.set_num_threads(threads)
    real = ddkit.load_dataset("fashion-mnist", "train")
    test = ddkit.load_dataset("fashion-mnist", "test")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_idx(Path(tmp) / "data", real, test)
        for method in methods:
            ipc = 10 if method == "dm" else dc_ipc
            ev = eval_epochs if method == "dm" else None
            runs: dict[str, list[dict]] = {"reference": [], "ddkit": []}
            if bf16 and method == "dm":
                runs["ddkit_bf16"] = []
            failed = None
            for r in range(repeats):
                work = Path(tmp) / f"{method}{r}"
                work.mkdir()
                try:
                    runs["reference"].append(run_reference(ref, method, iterations, eval_epochs, ipc, data, work,
                                                           threads))
                except RuntimeError as exc:
                    failed = str(exc).strip().splitlines()[-1][:300]
                    break
                runs["ddkit"].append(run_ddkit(real, test, method, iterations, ev, ipc, r))
                if "ddkit_bf16" in runs:
                    runs["ddkit_bf16"].append(run_ddkit(real, test, method, iterations, ev, ipc, r, bf16=True))
                print(f"{method} round {r + 1}: " + ", ".join(f"{k} {v[-1]}" for k, v in runs.items()), flush=True)
            if failed is not None:
                rows.append({"method": method, "ipc": ipc, "iterations": iterations, "reference_error": failed,
                             "load_average": os.getloadavg()})
                print(f"{method}: the reference script failed: {failed}", flush=True)
                if on_row is not None:
                    on_row(rows)
                continue
            med = {k: statistics.median(x["seconds_per_iteration"] for x in v) for k, v in runs.items()}
            row = {"method": method, "ipc": ipc, "iterations": iterations, "runs": runs,
                   "median_seconds_per_iteration": med, "ratio": med["ddkit"] / med["reference"],
                   "load_average": os.getloadavg()}
            if "ddkit_bf16" in med:
                row["ratio_bf16"] = med["ddkit_bf16"] / med["reference"]
            if ev:
                ev_med = {k: statistics.median(x["eval_seconds"] for x in v) for k, v in runs.items()}
                row["median_eval_seconds"] = ev_med
                row["eval_epochs"] = ev
                row["eval_ratio"] = ev_med["ddkit"] / ev_med["reference"]
                if "ddkit_bf16" in ev_med:
                    row["eval_ratio_bf16"] = ev_med["ddkit_bf16"] / ev_med["reference"]
            rows.append(row)
            if on_row is not None:
                on_row(rows)
    return rows


def _rounds(row: dict, form: str, key: str, digits: int) -> str:
    """'ref / form' per round, e.g. '2.71 / 2.20 ; 2.99 / 2.08'."""
    return " ; ".join(f"{a[key]:.{digits}f} / {b[key]:.{digits}f}"
                      for a, b in zip(row["runs"]["reference"], row["runs"][form], strict=True))


def render(rows: list[dict], host: dict, threads: int, note: str) -> str:
    lines = ["# ddkit vs the authors' code (VICO-UoE/DatasetCondensation), side by side", "",
             f"CPU {host['cpu']}, torch {host['torch']}, {threads} thread(s) in both; rounds alternate reference and "
             "ddkit; medians over rounds. Ratio = ddkit ÷ reference time (below 1: ddkit is faster).", "",
             "| what | IPC | reference s | ddkit s | ddkit ÷ reference | rounds (ref / ddkit) "
             "| load avg (1, 5, 15 min) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "reference_error" in r:
            lines.append(f"| {r['method'].upper()} iteration | {r['ipc']} | the authors' script fails on this torch: "
                         f"`{r['reference_error']}` | | | | |")
            continue
        m = r["median_seconds_per_iteration"]
        load = ", ".join(f"{v:.2f}" for v in r["load_average"])
        forms = [("ddkit", "ratio", "")]
        if "ratio_bf16" in r:
            forms.append(("ddkit_bf16", "ratio_bf16", ", ddkit's real branch under bf16 autocast (`real_bf16`)"))
        for form, ratio, label in forms:
            lines.append(f"| {r['method'].upper()} iteration{label} | {r['ipc']} | {m['reference']:.2f} | "
                         f"{m[form]:.2f} | {r[ratio]:.2f}× | {_rounds(r, form, 'seconds_per_iteration', 2)} | "
                         f"{load} |")
        if "eval_ratio" in r:
            e = r["median_eval_seconds"]
            how = ", compiled (incl. compiling)" if all(b.get("eval_compiled") for b in r["runs"]["ddkit"]) else ""
            forms = [("ddkit", "eval_ratio",
                      f"evaluation: 1 ConvNet-3, {r['eval_epochs']} epochs, 100 images, DSA, + test{how}")]
            if "eval_ratio_bf16" in r:
                forms.append(("ddkit_bf16", "eval_ratio_bf16",
                              "evaluation as above, ddkit's training steps under bf16 autocast (`--precision bf16`)"))
            for form, ratio, label in forms:
                lines.append(f"| {label} | 10 | {e['reference']:.1f} | {e[form]:.1f} | {r[ratio]:.2f}× | "
                             f"{_rounds(r, form, 'eval_seconds', 1)} | {load} |")
    lines += ["", note] if note else []
    return "\n".join(lines) + "\n"
