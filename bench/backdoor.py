"""Backdoors in distilled sets (issue 15's benchmark): CTA and ASR of clean and poisoned sets
over victim architectures, the attacks' wall-clock time, and the scan's verdict on each set.

    .venv/bin/python bench/backdoor.py \\
        --set clean=bench/results/sets/fmnist_dsa_ipc10_5it.safetensors \\
        --set dark=bench/cache/bd/dsa10_dark.safetensors \\
        --target 0 --trigger patch:size=1,inset=0,value_sd=10 --runs 1 --epochs 300

Each ``--set LABEL=FILE`` is measured with :func:`ddkit.backdoor.measure` (victims trained
with the evaluation protocol ``hard``: SGD, DSA augmentation) under one trigger, so that a
clean set's ASR (what the trigger alone does to a network that never saw it) stands beside
the poisoned sets' ASR. ``--trigger`` defaults to the optimised pattern a DOORPING set
stores (for every set), else the trigger the first poisoned set records. ``--scan`` also
runs :func:`ddkit.backdoor_scan.scan` on each set (its defaults)
and records each detector's flags. Rows are added to (or replace those in)
``bench/results/backdoor.{json,md}`` with the attack's own time (from the file), the
measurement's time, the budget, CPU model, threads and the load average before and after.
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

from ddkit.artifact import DistilledSet
from ddkit.backdoor import Trigger, measure, stored_trigger

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import machine, short_cpu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "backdoor"


def _attack(ds: DistilledSet) -> tuple[str, float | None]:
    """The attack a set records (``clean`` for none) and its wall-clock seconds, if recorded."""
    rec = ds.extra.get("backdoor")
    if not isinstance(rec, dict):
        return "clean", None
    return str(rec.get("attack", "poisoned")), rec.get("seconds")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", dest="sets", action="append", required=True, metavar="LABEL=FILE")
    ap.add_argument("--target", type=int, default=0)
    ap.add_argument("--trigger", default=None, help="trigger spec for every set (default: the poisoned set's)")
    ap.add_argument("--victims", default="convnet,mlp,lenet,alexnet,vgg11,resnet18")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=None, help="default: the protocol's (1000)")
    ap.add_argument("--no-augment", action="store_true",
                    help="train the victims without DSA augmentation (which moves and flips a corner patch)")
    ap.add_argument("--scan", action="store_true", help="also run ddkit scan on each set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-root", default=None,
                    help="folder of the test set's files (MNIST: ../shared/data/mnist)")
    args = ap.parse_args()
    sets = []
    for item in args.sets:
        label, _, file = item.partition("=")
        if not file:
            ap.error(f"--set wants LABEL=FILE, got {item!r}")
        sets.append((label, Path(file), DistilledSet.load(file)))
    trigger = Trigger.parse(args.trigger) if args.trigger else None
    pattern_from = None
    if trigger is None:  # a DOORPING set's optimised pattern is every set's trigger
        pattern_from = next((f for _, f, ds in sets if stored_trigger(ds) is not None), None)
    if trigger is None and pattern_from is None:
        recorded = [ds.extra["backdoor"].get("trigger") for _, _, ds in sets
                    if isinstance(ds.extra.get("backdoor"), dict) and ds.extra["backdoor"].get("trigger")]
        trigger = Trigger.parse(recorded[0]) if recorded else Trigger()
    victims = tuple(v.strip() for v in args.victims.split(",") if v.strip())
    js = OUT.with_suffix(".json")
    rows = json.loads(js.read_text())["rows"] if js.exists() else []
    command = "bench/backdoor.py " + shlex.join(sys.argv[1:])
    for label, file, ds in sets:
        attack, attack_seconds = _attack(ds)
        load0 = os.getloadavg()
        m = measure(ds, args.target, trigger=trigger, victims=victims, runs=args.runs, epochs=args.epochs,
                    augment=not args.no_augment, seed=args.seed, data_root=args.data_root, trigger_from=pattern_from)
        scan_summary = None
        if args.scan:
            from ddkit.backdoor_scan import scan

            s = scan(ds, seed=args.seed, data_root=args.data_root)
            scan_summary = {"verdict": s.verdict, "seconds": s.seconds}
        base = {"label": label, "file": str(file.relative_to(ROOT) if file.is_absolute() else file),
                "dataset": ds.dataset, "method": ds.method, "ipc": ds.ipc, "iterations": ds.extra.get("iterations"),
                "attack": attack, "attack_seconds": attack_seconds, "target": args.target, "trigger": m.trigger,
                "runs": m.runs, "epochs": m.epochs, "augment": not args.no_augment, "measure_seconds": m.seconds,
                "scan": scan_summary,
                "load_average_before": load0, "load_average_after": os.getloadavg(), "machine": machine(),
                "threads": torch.get_num_threads(), "command": command, "date": time.strftime("%Y-%m-%d")}
        for v in m.victims:
            row = {**base, "victim": v["model"], "cta": v["cta"], "cta_std": v["cta_std"], "asr": v["asr"],
                   "asr_std": v["asr_std"], "asr_all_classes": v["asr_all_classes"], "runs_cta": v["runs_cta"],
                   "runs_asr": v["runs_asr"], "protocol": v["protocol"]}
            key = _key(row)
            rows = [r for r in rows if _key(r) != key]
            rows.append(row)
        js.parent.mkdir(parents=True, exist_ok=True)
        js.write_text(json.dumps({"rows": rows}, indent=2))
        OUT.with_suffix(".md").write_text(render(rows))
        print(f"{label}: {attack}, measured in {m.seconds:.0f} s", flush=True)


_VICTIM_ORDER = {v: i for i, v in enumerate(("convnet", "mlp", "lenet", "alexnet", "vgg11", "resnet18"))}


def _key(r: dict) -> tuple:
    return r["file"], r["victim"], r["trigger"], r["epochs"], r.get("augment", True)


def _order(r: dict) -> tuple:
    return (r["dataset"], r["method"], r["ipc"], r["trigger"], not r.get("augment", True), r["attack"] != "clean",
            r["label"], _VICTIM_ORDER.get(r["victim"], 99), r["victim"])


def _units(m: dict) -> str:
    u = m.get("bf16_units", "?")
    return ", ".join(u) if isinstance(u, list) else str(u)


def _pct(mean: float, std: float, runs: int) -> str:
    return f"{100 * mean:.2f}" if runs == 1 else f"{100 * mean:.2f} ± {100 * std:.2f}"


def render(rows: list[dict]) -> str:
    lines = ["# Backdoors in distilled sets: CTA and ASR per victim", "",
             "Written by `bench/backdoor.py` (the command is in each row's JSON, `backdoor.json`). CTA: clean "
             "test accuracy; ASR: triggered test images of the non-target classes classified as the target; "
             "'ASR all' counts every test image, target class included (the authors' codes' definition). "
             "A clean set is measured under the same trigger, so its ASR is what the trigger alone does. "
             "Victims are trained with the `hard` protocol (SGD, DSA augmentation, unless the row says 'no aug.') "
             "for the epochs shown; "
             "the protocol's own length is 1000 epochs.", "",
             "| set | attack (time) | victim | runs × epochs | CTA % | ASR % | ASR all % | scan (NC flag, index) "
             "| CPU, threads, load |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=_order):
        t = f" ({r['attack_seconds']:.0f} s)" if r.get("attack_seconds") else ""
        sc = "—"
        if r.get("scan"):
            v = r["scan"]["verdict"]
            sc = ("flagged" if v.get("suspicious") else "clean") + \
                (f", {v['score']:.2f}" if isinstance(v.get("score"), float) else "")
        lines.append(f"| {r['dataset']} {r['method']} IPC {r['ipc']} ({r['label']}) | {r['attack']}{t} | "
                     f"{r['victim']} | {r['runs']} × {r['epochs']}{'' if r.get('augment', True) else ', no aug.'} | "
                     f"{_pct(r['cta'], r['cta_std'], r['runs'])} | "
                     f"{_pct(r['asr'], r['asr_std'], r['runs'])} | {100 * r['asr_all_classes']:.2f} | {sc} | "
                     f"{short_cpu(r['machine']['cpu'])} (bf16: {_units(r['machine'])}), {r['threads']}, "
                     f"{r['load_average_before'][0]:.2f}→{r['load_average_after'][0]:.2f} |")
    triggers = sorted({r["trigger"] for r in rows})
    lines += ["", "Triggers: " + "; ".join(f"`{t}`" for t in triggers) + ".", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    from ddkit import allocator

    allocator.reexec()  # jemalloc where installed: 1.5x on CPU, same numbers (ddkit/allocator.py)
    main()
