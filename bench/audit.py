"""The trust audit of distilled sets (issue 14's benchmark): membership inference, robustness
and fairness of a set beside a random real subset of its size and the full training set.

    .venv/bin/python bench/audit.py --method dm --ipc 10 --iterations 100 --audit-split 0 \\
        --runs 2 --epochs 300 --shadows 4 --full-baseline --baseline-epochs 2 --test-images 500

Distils the set from the seeded half of the training set (``ddkit.distill(...,
audit_split=SEED)``; or audits ``--distilled FILE``), runs :func:`ddkit.audit.report.audit`
(what ``ddkit audit`` runs) and keeps its ``audit.json`` and ``report.html`` under
``bench/results/audit/<dataset>_<method>_ipc<N>_<iterations>it/``; one summary row per set is
added to (or replaces the one in) ``bench/results/audit.{json,md}``, with the budgets, the
time of each part, CPU model, threads and the load average before and after.
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
from ddkit.artifact import DistilledSet
from ddkit.audit.report import DEFAULT_CORRUPTIONS, PARTS, audit, write_report

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import machine, short_cpu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "audit"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--method", default=None, help="required unless --distilled")
    ap.add_argument("--distilled", type=Path, default=None, help="audit this set instead of distilling one")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--audit-split", type=int, default=0, help="seed of the member half")
    ap.add_argument("--save", type=Path, default=None, help="keep the distilled set here")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=None, help="default: the protocol's (1000)")
    ap.add_argument("--parts", default="privacy,robustness,fairness",
                    help="comma-separated audit parts (a partial audit gets its own row, named by its parts)")
    ap.add_argument("--shadows", type=int, default=0)
    ap.add_argument("--shadow-epochs", type=int, default=100)
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--test-images", type=int, default=1000)
    ap.add_argument("--corruptions", default="default", help="'default' (all but glass_blur), 'none' or a list")
    ap.add_argument("--full-baseline", action="store_true")
    ap.add_argument("--baseline-epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if (args.method is None) == (args.distilled is None):
        ap.error("give --method (distil a set) or --distilled FILE, not both")
    corr = {"default": DEFAULT_CORRUPTIONS, "none": ()}.get(args.corruptions,
                                                            tuple(c for c in args.corruptions.split(",") if c))
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    if args.distilled is not None:
        ds = DistilledSet.load(args.distilled)
        distill_seconds = ds.extra.get("seconds")
    else:
        real = ddkit.load_dataset(args.dataset, "train")
        ds = ddkit.distill(real, args.method, args.ipc, iterations=args.iterations, seed=args.seed,
                           audit_split=args.audit_split, progress=False)
        distill_seconds = round(time.perf_counter() - t0, 1)
        if args.save:
            ds.save(args.save)
    parts = tuple(p for p in args.parts.split(",") if p)
    res = audit(ds, parts=parts, runs=args.runs, epochs=args.epochs, shadows=args.shadows,
                shadow_epochs=args.shadow_epochs, examples=args.examples, corruptions=corr,
                test_images=args.test_images, full_baseline=args.full_baseline,
                baseline_epochs=args.baseline_epochs, seed=args.seed)
    its = ds.extra.get("iterations")
    name = f"{ds.dataset}_{ds.method}_ipc{ds.ipc}_{its}it"
    if set(parts) != set(PARTS):
        name += "_" + "-".join(parts)
    write_report(res, OUT / name)
    row = {"name": name, "dataset": ds.dataset, "method": ds.method, "ipc": ds.ipc, "iterations": its,
           "audit_split": ds.extra.get("audit_split"), "distill_seconds": distill_seconds,
           "settings": res["settings"], "seconds": res["seconds"], "summary": summarise(res),
           "load_average_before": load0, "load_average_after": os.getloadavg(), "machine": machine(),
           "threads": torch.get_num_threads(), "command": "bench/audit.py " + shlex.join(sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d")}
    js = OUT.with_suffix(".json")
    rows = json.loads(js.read_text())["rows"] if js.exists() else []
    rows = [r for r in rows if r["name"] != name] + [row]
    js.write_text(json.dumps({"rows": rows}, indent=2))
    OUT.with_suffix(".md").write_text(render(rows))
    print(json.dumps(row["summary"], indent=1))


def summarise(res: dict) -> dict:
    """Per training set (distilled, random, full): the figures the table shows."""
    out: dict = {}
    rob, fair, priv = res.get("robustness", {}), res.get("fairness", {}), res.get("privacy", {})
    for name in ["distilled", *res["baselines"]]:
        s: dict = {}
        if name in rob:
            r = rob[name]
            s["clean"] = r["clean"]
            s["adversarial"] = r["adversarial"]
            s["corruption_mean"] = r["corruption_mean"]
        if name in fair:
            f = fair[name]
            s["fairness"] = {k: f[k] for k in ("std", "worst", "worst_class", "range", "std_ratio") if k in f}
        if name in priv:
            p = priv[name]
            s["threshold"] = p["threshold"]
            s["lira_offline"] = p.get("lira_offline")
            s["lira_examples"] = p.get("lira_examples")
        out[name] = s
    return out


def _f(v, scale: float = 100.0, digits: int = 1) -> str:
    return "—" if v is None else f"{scale * v:.{digits}f}"


def render(rows: list[dict]) -> str:
    lines = ["# Trust audit of distilled sets", "",
             "Written by `bench/audit.py` (each row's command is in `audit.json`; the full audit of each set, "
             "with its ROC curves and per-class plots, is `audit/<name>/report.html`). Every network is a "
             "ConvNet-3 trained with the `hard` protocol (SGD, DSA augmentation) for the epochs shown; the "
             "protocol's own length is 1000. Accuracies and TPRs in %; AUC in [0, 1]. Membership inference: "
             "members are the half of the training set the set was distilled from, non-members the other half "
             "(`--audit-split`); the random subset is drawn from the members. Adversarial accuracy: PGD-10, "
             "L∞ ε = 8/255; corruptions: mean accuracy over the corruptions and severities 1–5. Fairness: std "
             "of per-class accuracy across classes (its ratio to the full-data model's when that baseline ran), "
             "and the worst class.", "",
             "| set | trained on | runs × epochs | clean acc. | PGD ε=8/255 | corruptions | class std (ratio) | "
             "worst class | threshold AUC | LiRA off. AUC | LiRA TPR@0.1 % / 1 % FPR | time (min) | CPU, load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        st = r["settings"]
        for name, s in r["summary"].items():
            epochs = st["baseline_epochs"] if name == "full" else st["epochs"]
            pgd = next((v for k, v in s.get("adversarial", {}).items() if k.startswith("pgd@0.031")), None)
            fair = s.get("fairness", {})
            ratio = f" ({fair['std_ratio']:.2f}×)" if fair.get("std_ratio") is not None else ""
            thr, lira = s.get("threshold") or {}, s.get("lira_offline") or {}
            tpr = (f"{_f(lira.get('tpr_at_0_1pct_fpr'), 100, 2)} / {_f(lira.get('tpr_at_1pct_fpr'), 100, 2)}"
                   if lira else "—")
            shadows = f" ({st['shadows']} shadows)" if lira else ""
            tm = f"{r['seconds']['total'] / 60:.0f}" if name == "distilled" else ""
            load = f"{r['load_average_before'][0]:.2f}→{r['load_average_after'][0]:.2f}"
            only = "" if set(st["parts"]) == set(PARTS) else f" ({', '.join(st['parts'])} only)"
            lines.append(f"| {r['dataset']} {r['method']} IPC {r['ipc']}, {r['iterations']} it{only} | {name} | "
                         f"{st['runs']} × {epochs} | {_f(s.get('clean'))} | {_f(pgd)} | "
                         f"{_f(s.get('corruption_mean'))} | {_f(fair.get('std'))}{ratio} | "
                         f"{_f(fair.get('worst'))} | {_f(thr.get('auc'), 1, 3)} | {_f(lira.get('auc'), 1, 3)}"
                         f"{shadows} | {tpr} | {tm} | {short_cpu(r['machine']['cpu'])}, {r['threads']}, {load} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    from ddkit import allocator

    allocator.reexec()  # jemalloc where installed: 1.5x on CPU, same numbers (ddkit/allocator.py)
    main()
