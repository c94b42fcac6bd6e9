"""The backdoor scan's detection and false-alarm rates (issue 15's benchmark): ``ddkit scan``
over clean and poisoned distilled sets, each with several scan seeds (the seed draws the
scanned network's initialisation and Neural Cleanse's start).

    .venv/bin/python bench/scan.py \\
        --set dm=bench/results/sets/fmnist_dm_ipc10_100it_audit0.safetensors \\
        --set dsa=bench/results/sets/fmnist_dsa_ipc10_5it.safetensors \\
        --set mtt=bench/results/sets/fmnist_mtt_ipc10_30it.safetensors \\
        --set dsa+dark=bench/results/sets/fmnist_dsa_ipc10_5it_dark_t0.safetensors \\
        --seeds 0 1

Sets with learned (soft or regression) labels are skipped with a message: the scan trains
on hard labels. A set is *poisoned* when its file records a backdoor attack (``extra["backdoor"]``, with
its target), else *clean*. For each detector (Neural Cleanse, activation clustering,
spectral signatures; :func:`ddkit.backdoor_scan.scan` with its defaults), the detection
rate is the share of poisoned (set, seed) scans it flags, the false-alarm rate the share of
clean scans it flags; for Neural Cleanse also the share whose flagged classes include the
attack's target. Rows are added to (or replace those in) ``bench/results/scan.{json,md}``
with each scan's time, CPU model, threads and the load average before and after.
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
from ddkit.backdoor_scan import scan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import machine, short_cpu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "scan"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", dest="sets", action="append", required=True, metavar="LABEL=FILE")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--clean-data", default=None,
                    help="Neural Cleanse on real test images of this dataset (default: the set's own images)")
    args = ap.parse_args()
    js = OUT.with_suffix(".json")
    rows = json.loads(js.read_text())["rows"] if js.exists() else []
    command = "bench/scan.py " + shlex.join(sys.argv[1:])
    for spec in args.sets:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            ap.error(f"--set expects LABEL=FILE, got {spec!r}")
        ds = DistilledSet.load(path)
        if ds.label_kind != "hard":
            print(f"{label}: skipped, the scan needs hard labels and this set has {ds.label_kind} labels", flush=True)
            continue
        rec = ds.extra.get("backdoor") if isinstance(ds.extra.get("backdoor"), dict) else None
        for seed in args.seeds:
            load0 = os.getloadavg()
            res = scan(ds, seed=seed, clean_data=args.clean_data)
            nc = res.detectors.get("neural-cleanse", {})
            row = {"set": label, "file": path, "method": ds.method, "dataset": ds.dataset, "ipc": ds.ipc,
                   "attack": rec.get("attack") if rec else "clean", "target": rec.get("target") if rec else None,
                   "seed": seed, "nc_inputs": nc.get("inputs"), "flags": res.verdict["flags"],
                   "nc_flagged": nc.get("flagged"), "nc_index": nc.get("score"),
                   "ac_flagged": res.detectors.get("activation-clustering", {}).get("flagged"),
                   "ss_flagged": res.detectors.get("spectral-signatures", {}).get("flagged"),
                   "settings": res.settings, "seconds": res.seconds, "load_average_before": load0,
                   "load_average_after": os.getloadavg(), "machine": machine(),
                   "threads": torch.get_num_threads(), "command": command, "date": time.strftime("%Y-%m-%d")}
            key = (label, seed, args.clean_data)
            rows = [r for r in rows if (r["set"], r["seed"], r["settings"].get("clean_data")) != key]
            rows.append(row)
            js.parent.mkdir(parents=True, exist_ok=True)
            js.write_text(json.dumps({"rows": rows}, indent=2))
            OUT.with_suffix(".md").write_text(render(rows))
            print(f"{label} seed {seed}: flags {row['flags']}, NC index {row['nc_index']} flagged {row['nc_flagged']}"
                  f" ({res.seconds['total']:.0f} s)", flush=True)


def _rate(hits: int, n: int) -> str:
    return "—" if n == 0 else f"{hits}/{n} ({100 * hits / n:.0f} %)"


def render(rows: list[dict]) -> str:
    lines = ["# The backdoor scan: detection and false-alarm rates", "",
             "Written by `bench/scan.py` (each row's command is in scan.json). `ddkit scan` with its defaults: "
             "a ConvNet-3 of width 32 trained 100 epochs on the set without augmentation, then Neural Cleanse "
             "(mask + pattern per class, MAD anomaly index, threshold 2), ART's activation clustering and "
             "spectral signatures on the set's own images. A set is poisoned when its file records an attack.", ""]
    dets = (("neural-cleanse", "Neural Cleanse"), ("activation-clustering", "activation clustering"),
            ("spectral-signatures", "spectral signatures"))
    for inputs in sorted({r["settings"].get("clean_data") or "" for r in rows}):
        sub = [r for r in rows if (r["settings"].get("clean_data") or "") == inputs]
        pois = [r for r in sub if r["attack"] != "clean"]
        clean = [r for r in sub if r["attack"] == "clean"]
        lines += [f"## Neural Cleanse on {'real test images of ' + inputs if inputs else 'the set’s own images'}", "",
                  "| detector | detection rate (poisoned scans flagged) | false-alarm rate (clean scans flagged) |",
                  "|---|---|---|"]
        for key, name in dets:
            lines.append(f"| {name} | {_rate(sum(r['flags'].get(key, False) for r in pois), len(pois))} | "
                         f"{_rate(sum(r['flags'].get(key, False) for r in clean), len(clean))} |")
        hit = sum(r["target"] in (r["nc_flagged"] or []) for r in pois)
        lines += ["", f"Neural Cleanse flagged the attack's target class in {_rate(hit, len(pois))} poisoned scans.",
                  "", "| set | method, IPC | attack (target) | seed | NC anomaly index | NC flagged | AC flagged | "
                  "SS flagged | seconds | cpu, threads, load |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(sub, key=lambda r: (r["attack"] != "clean", r["set"], r["seed"])):
            attack = r["attack"] if r["target"] is None else f"{r['attack']} ({r['target']})"
            load = f"{r['load_average_before'][0]:.1f}→{r['load_average_after'][0]:.1f}"
            lines.append(f"| {r['set']} | {r['method']}, {r['ipc']} | {attack} | {r['seed']} | {r['nc_index']} | "
                         f"{r['nc_flagged']} | {r['ac_flagged']} | {r['ss_flagged']} | {r['seconds']['total']:.0f} | "
                         f"{short_cpu(r['machine']['cpu'])}, {r['threads']}, {load} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    from ddkit import allocator

    allocator.reexec()  # jemalloc where installed: 1.5x on CPU, same numbers (ddkit/allocator.py)
    main()
