"""Matched-budget rows: a method at a budget these machines can run, evaluated with its own
paper's protocol at the protocol's full length, beside a random real subset of the same size
evaluated the same way.

One invocation adds (or replaces) one row of ``bench/results/matched.{json,md}``:

    .venv/bin/python bench/matched.py --method dm --iterations 500 --runs 2
    .venv/bin/python bench/matched.py --method random --runs 2     # the baseline row alone
    .venv/bin/python bench/matched.py --distilled SET.safetensors --distill-seconds S --runs 2

``--distilled`` evaluates a set made earlier (by ``ddkit distill`` or another benchmark) instead
of distilling one; its method, IPC, iterations and config come from the file, and
``--distill-seconds`` records how long it took to make (the row says the time was given).
``--save FILE`` keeps the distilled set; ``--clipped`` evaluates it clamped to [0, 1] pixels
(``DistilledSet.clipped()``, what ddkit < 0.3 stored), to measure what the clamp cost.
``--buffer-seconds`` records how long MTT's expert buffer took to build (shown beside the
distillation time), e.g. ``--method mtt --iterations 30 --set buffer=DIR max_start_epoch=5
--buffer-seconds S``.

Each row records the method's resolved config, the budget, the protocol (name and settings,
from ``ddkit.evaluate``), the per-network accuracies, wall-clock times, CPU model, threads
and the load average before and after. ``--reference-figure "TEXT"`` adds a figure measured
with the authors' code at the same budget (a sentence: what, how, where).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

import ddkit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import machine, short_cpu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "matched"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--method", default=None, help="required unless --distilled")
    ap.add_argument("--distilled", type=Path, default=None, help="evaluate this set instead of distilling")
    ap.add_argument("--distill-seconds", type=float, default=None,
                    help="with --distilled: how long the set took to make (buffer excluded), if known")
    ap.add_argument("--buffer-seconds", type=float, default=None,
                    help="MTT: how long its expert buffer took to build (shown beside the distillation time)")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="method settings")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=None, help="default: the protocol's")
    ap.add_argument("--protocol", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reference-figure", default="")
    ap.add_argument("--save", type=Path, default=None, help="also write the distilled set here (.safetensors)")
    ap.add_argument("--clipped", action="store_true",
                    help="evaluate the set clamped to [0, 1] pixels (DistilledSet.clipped(): the old clamp's cost)")
    ap.add_argument("--model", default=None, help="evaluation network (default: the protocol's)")
    ap.add_argument("--teacher", type=Path, default=None,
                    help="soft protocol: the teacher (a teacher file or a set that ships one, e.g. a CFM set), "
                         "so a random subset is evaluated under a CFM set's own teacher")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="evaluation training precision (bf16: autocast; DM's real branch: --set real_bf16=true)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        config[k] = json.loads(v) if v[:1] in "0123456789-[{tf" and v not in ("t", "f") else v
    if (args.method is None) == (args.distilled is None):
        ap.error("give exactly one of --method and --distilled")
    if args.distilled is not None and (args.set or args.iterations is not None or args.save is not None):
        ap.error("--set, --iterations and --save describe a distillation; a --distilled set carries its own")
    if args.distilled is not None:
        given = ddkit.DistilledSet.load(args.distilled)
        args.dataset, args.method, args.ipc = given.dataset, given.method, given.ipc
    real = ddkit.load_dataset(args.dataset, "train")
    test = ddkit.load_dataset(args.dataset, "test")
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    if args.distilled is not None:
        ds, t_distil = given, args.distill_seconds
    else:
        ds = ddkit.distill(real, args.method, args.ipc, iterations=args.iterations, config=config, seed=args.seed,
                           progress=False)
        t_distil = time.perf_counter() - t0
        if args.save is not None:
            ds.save(args.save)
    if args.clipped:
        ds = ds.clipped()
    t1 = time.perf_counter()
    res = ddkit.evaluate(ds, model=args.model, runs=args.runs, epochs=args.epochs, protocol=args.protocol, test=test,
                         train=real, seed=args.seed, precision=args.precision,
                         teacher=None if args.teacher is None else str(args.teacher))
    t_eval = time.perf_counter() - t1
    row = {"dataset": args.dataset, "method": args.method, "ipc": args.ipc, "iterations": ds.extra.get("iterations"),
           "config": ds.config, "protocol": res.protocol, "settings": res.settings, "model": res.model,
           "runs": res.runs, "epochs": res.epochs, "accuracies": res.accuracies, "mean": res.mean, "std": res.std,
           "distill_seconds": None if t_distil is None else round(t_distil, 1), "eval_seconds": round(t_eval, 1),
           "distilled_file": None if args.distilled is None else args.distilled.name,
           "buffer": ds.extra.get("buffer"), "buffer_seconds": args.buffer_seconds,
           "pixel_overflow": ds.extra.get("pixel_overflow"), "clipped": args.clipped,
           "compiled": ds.extra.get("compiled"),
           "teacher_file": None if args.teacher is None else args.teacher.name,
           "precision": {"distil": (ds.extra.get("precision") or {}).get("precision", "fp32"),
                         "evaluate": res.settings["precision"]["precision"]},
           "load_average_before": load0, "load_average_after": os.getloadavg(), "machine": machine(),
           "threads": torch.get_num_threads(), "reference_figure": args.reference_figure,
           "date": time.strftime("%Y-%m-%d")}
    js = OUT.with_suffix(".json")
    rows = json.loads(js.read_text())["rows"] if js.exists() else []
    def key(r: dict) -> tuple:
        return (r["dataset"], r["method"], r["ipc"], r["iterations"], r["settings"]["name"], _precision(r),
                bool(r.get("clipped")), r["model"], r.get("teacher_file"), json.dumps(r["config"], sort_keys=True))

    rows = [r for r in rows if key(r) != key(row)]
    rows.append(row)
    js.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps({"rows": rows}, indent=2))
    OUT.with_suffix(".md").write_text(render(rows))
    print(f"{args.method} IPC {args.ipc}: {100 * res.mean:.2f} ± {100 * res.std:.2f} % "
          f"({', '.join(f'{100 * a:.2f}' for a in res.accuracies)}); distil {_secs(row)}, evaluate {t_eval:.0f} s")


def _secs(r: dict) -> str:
    """The distillation time as the table shows it (given: measured by whoever made the set)."""
    out = "?" if r["distill_seconds"] is None else \
        f"{r['distill_seconds']:.0f}" + (" (given)" if r.get("distilled_file") else "")
    if r.get("buffer_seconds") is not None:
        out += f" + {r['buffer_seconds']:.0f} buffer"
    return out


def _acc(r: dict) -> str:
    """Mean ± std in %; one network has no spread to show."""
    return f"{100 * r['mean']:.2f}" + (f" ± {100 * r['std']:.2f}" if r["runs"] > 1 else " (1 network)")


def _precision(r: dict) -> str:
    """'' for FP32 throughout, else where bf16 autocast ran."""
    p = r.get("precision") or {}
    parts = [f"{k} bf16" for k in ("distil", "evaluate") if p.get(k) == "bf16"]
    return ", ".join(parts)


def _budget(r: dict) -> str:
    """Iterations, and for MTT the expert buffer they ran on."""
    if r["iterations"] is None:
        return "—"
    out = f"{r['iterations']} it"
    b = r.get("buffer")
    if b:
        subset = f", {b['train_subset']} img/class" if b.get("train_subset") else ""
        out += f" on {b['experts']} experts × {b['epochs']} epochs{subset}"
    c = r.get("config") or {}
    if r["method"] == "cfm" and c.get("teacher"):  # a saved teacher: its own budget is in that file's row
        out += f" (teacher of {Path(c['teacher']).name}"
        out += ", EMU)" if c.get("emu") else ", no EMU)"
    elif r["method"] == "cfm":  # the teacher's budget bounds what the soft labels carry
        sub = "all" if c.get("teacher_subset") is None else c["teacher_subset"]
        out += f" (teacher {c.get('teacher_model')}: {sub} img/class × {c.get('teacher_epochs')} epochs"
        out += ", EMU)" if c.get("emu") else ", no EMU)"
    if r["method"] == "kip":  # RFAD's random-feature kernel at the width and model count run
        out += (f" (kernel: {c.get('num_models')} model(s) of width {c.get('width')}, "
                f"{c.get('real_batches')} × {c.get('batch_real')} real images per step)")
    return out


def _length(r: dict) -> str:
    """Epochs, or optimiser steps for the protocols that count steps (frepo; kip: a cap, with the
    steps each network ran before its validation stopped it)."""
    name = r["settings"]["name"]
    if name == "frepo":
        return f"{r['epochs']} steps"
    if name == "kip":
        ran = [c["steps"] for c in r["settings"].get("selected") or [] if c]
        return f"≤ {r['epochs']} steps" + (f" (ran {', '.join(map(str, ran))})" if ran else "")
    return str(r["epochs"])


def _teacher(r: dict) -> str:
    """The soft protocol's teacher when it came from another file (a random subset under a CFM set's teacher)."""
    return f", teacher of {r['teacher_file']}" if r.get("teacher_file") else ""


def render(rows: list[dict]) -> str:
    lines = ["# Matched-budget rows: each method at a budget a 2-core CPU runs, its own paper's protocol", "",
             "Written by `bench/matched.py --method M [--iterations N] --runs R`, or `--distilled FILE` for a set "
             "made earlier (one row per invocation; "
             "matched.json holds each row's resolved method config and protocol settings). "
             "Accuracy: mean ± population std over the evaluation networks, each scored after its last epoch "
             "(kip protocol: the network of its best validation check, as RFAD keeps it) on the full test set. "
             "For frepo and kip the length is optimiser steps (kip: a cap, and the steps each network ran). "
             "FP32 unless the budget says where bf16 autocast ran (`--set real_bf16=true`: "
             "DM's no-grad real branch; `--precision bf16`: the evaluation training steps).", "",
             "| dataset | method | IPC | budget | protocol | networks × epochs | test accuracy % | per network | "
             "distil / evaluate (s) | cpu, threads, load | authors' code, same budget |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["dataset"], r["ipc"], r["method"] != "random", r["method"])):
        budget = _budget(r) + (f" ({_precision(r)})" if _precision(r) else "") + \
            (", clamped to [0, 1] before evaluation" if r.get("clipped") else "")
        load = f"{r['load_average_before'][0]:.1f}→{r['load_average_after'][0]:.1f}"
        lines.append(f"| {r['dataset']} | {r['method']} | {r['ipc']} | {budget} | {r['settings']['name']} "
                     f"({r['model']}{_teacher(r)}) | {r['runs']} × {_length(r)} | {_acc(r)} | "
                     f"{', '.join(f'{100 * a:.2f}' for a in r['accuracies'])} | {_secs(r)} / "
                     f"{r['eval_seconds']:.0f} | {short_cpu(r['machine']['cpu'])}, {r['threads']}, {load} | "
                     f"{r['reference_figure'] or '—'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from ddkit import allocator

    allocator.reexec()  # jemalloc where installed: 1.5x on CPU, same numbers (ddkit/allocator.py)
    main()
