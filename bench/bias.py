"""Biased data: distilled sets of CMNIST-DD / CFMNIST-DD without and with each remedy
(issue 14's benchmark), scored on the unbiased (rho = 0) test split.

    .venv/bin/python bench/bias.py --datasets cmnist-dd:rho=0.95,severity=4 \\
        --data-root ../shared/data/mnist --methods dm --ipcs 10 --debias none kde oracle \\
        --iterations dm=100 --set dm.compile=true --runs 2 --epochs 300

Each (dataset, method, IPC, remedy) cell distils from the biased training split with
``ddkit.distill(..., debias=...)`` and evaluates with ``ddkit.evaluate`` (the set's
protocol, ConvNet-3), which reports the bias metrics of :mod:`ddkit.evaluate.bias`:
unbiased accuracy (the rho = 0 split, every image bias-conflicting) and the aligned /
conflicting accuracies on a rho = 0.5 split. A random real subset of the same IPC (drawn
from the biased training split) is scored beside them. Cells are added to (or replace those
in) ``bench/results/bias.{json,md}``; each records its budget, protocol, times, CPU model,
threads and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

import ddkit
from ddkit.cli import _parse_sets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import machine, short_cpu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "bias"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", required=True)
    ap.add_argument("--methods", nargs="+", default=["dm"])
    ap.add_argument("--ipcs", nargs="+", type=int, default=[10])
    ap.add_argument("--debias", nargs="+", default=["none", "kde", "oracle"])
    ap.add_argument("--iterations", nargs="*", default=[], metavar="METHOD=N")
    ap.add_argument("--set", nargs="*", default=[], metavar="METHOD.KEY=VALUE", dest="settings",
                    help="a method setting, e.g. dm.compile=true (read as `ddkit distill --set` reads it)")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=None, help="default: the protocol's")
    ap.add_argument("--no-random", action="store_true", help="skip the random-subset cell")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-root", default=None,
                    help="folder of the base dataset's files (MNIST: ../shared/data/mnist)")
    args = ap.parse_args()
    budgets = {k: int(v) for k, v in (kv.split("=", 1) for kv in args.iterations)}
    settings: dict[str, dict] = {}
    for kv in args.settings:
        method_name, _, setting = kv.partition(".")
        if not setting or "=" not in setting:
            ap.error(f"--set expects METHOD.KEY=VALUE, got {kv!r}")
        settings.setdefault(method_name, {}).update(_parse_sets([setting]))  # as `ddkit distill --set` reads it
    js = OUT.with_suffix(".json")
    cells = json.loads(js.read_text())["cells"] if js.exists() else []
    command = "bench/bias.py " + shlex.join(sys.argv[1:])
    for name in args.datasets:
        train = ddkit.load_dataset(name, "train", data_root=args.data_root)
        test = ddkit.load_dataset(name, "test", data_root=args.data_root)
        for ipc in args.ipcs:
            todo = ([] if args.no_random else [("random", "none")]) + \
                [(m, d) for m in args.methods for d in args.debias]
            for method, remedy in todo:
                load0 = os.getloadavg()
                t0 = time.perf_counter()
                ds = ddkit.distill(train, method, ipc, iterations=budgets.get(method), seed=args.seed,
                                   debias=None if remedy == "none" else remedy, progress=False,
                                   config=settings.get(method))
                t_distil = time.perf_counter() - t0
                res = ddkit.evaluate(ds, runs=args.runs, epochs=args.epochs, test=test, seed=args.seed,
                                     data_root=args.data_root, progress=False)
                cell = {"dataset": train.name, "method": method, "ipc": ipc, "debias": remedy,
                        "iterations": ds.extra.get("iterations"), "protocol": res.protocol, "model": res.model,
                        "runs": res.runs, "epochs": res.epochs, "mean": res.mean, "std": res.std,
                        "bias": {k: v for k, v in res.bias.items() if k != "per_run"},
                        "debias_summary": ds.extra.get("debias"), "settings": settings.get(method),
                        "compiled": ds.extra.get("compiled"), "distill_seconds": round(t_distil, 1),
                        "eval_seconds": round(res.seconds, 1), "load_average_before": load0,
                        "load_average_after": os.getloadavg(), "machine": machine(),
                        "threads": torch.get_num_threads(), "command": command, "date": time.strftime("%Y-%m-%d")}
                key = (cell["dataset"], method, ipc, remedy)
                cells = [c for c in cells if (c["dataset"], c["method"], c["ipc"], c["debias"]) != key]
                cells.append(cell)
                js.parent.mkdir(parents=True, exist_ok=True)
                js.write_text(json.dumps({"cells": cells}, indent=2))
                OUT.with_suffix(".md").write_text(render(cells))
                b = cell["bias"]
                print(f"{cell['dataset']} {method} IPC {ipc} debias={remedy}: test {100 * res.mean:.2f} %, "
                      f"unbiased {100 * b['unbiased']:.2f} %, aligned {100 * b['aligned']:.2f} %, "
                      f"conflicting {100 * b['conflicting']:.2f} % (distil {t_distil:.0f} s, "
                      f"evaluate {res.seconds:.0f} s)", flush=True)


def _pct(b: dict, key: str) -> str:
    v, s = b.get(key), b.get(f"{key}_std")
    return "—" if v is None else f"{100 * v:.2f} ± {100 * (s or 0):.2f}"


def render(cells: list[dict]) -> str:
    lines = ["# Distilling biased data, without and with a remedy", "",
             "Written by `bench/bias.py` (the command of each cell is in bias.json). Accuracies in %, mean ± "
             "population std over the evaluation networks (ConvNet-3 under the set's protocol, last epoch). "
             "*Unbiased*: the rho = 0 test split (every image bias-conflicting), the Biased-DD protocol's number; "
             "*aligned* / *conflicting*: the two halves of a rho = 0.5 test split. `kde` is ddkit's reading of "
             "Cui et al. 2024 (no attribute labels used); `oracle` uses the known attribute: an upper bound, "
             "not a remedy (docs/bias.md).", "",
             "| dataset | method | IPC | budget | debias | networks × epochs | unbiased | aligned | conflicting | "
             "distil / evaluate (s) | cpu, threads, load |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    order, remedies = {"random": 0}, {"none": 0, "kde": 1, "oracle": 2}
    for c in sorted(cells, key=lambda c: (c["dataset"], c["ipc"], order.get(c["method"], 1), c["method"],
                                          remedies.get(c["debias"], 3), c["debias"])):
        b = c["bias"]
        load = f"{c['load_average_before'][0]:.1f}→{c['load_average_after'][0]:.1f}"
        budget = "—" if c["iterations"] is None else f"{c['iterations']} it"
        lines.append(f"| {c['dataset']} | {c['method']} | {c['ipc']} | {budget} | {c['debias']} | "
                     f"{c['runs']} × {c['epochs']} | {_pct(b, 'unbiased')} | {_pct(b, 'aligned')} | "
                     f"{_pct(b, 'conflicting')} | {c['distill_seconds']:.0f} / {c['eval_seconds']:.0f} | "
                     f"{short_cpu(c['machine']['cpu'])}, {c['threads']}, {load} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from ddkit import allocator

    allocator.reexec()  # jemalloc where installed: 1.5x on CPU, same numbers (ddkit/allocator.py)
    main()
