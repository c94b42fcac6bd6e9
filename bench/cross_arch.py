"""Cross-architecture table: DM and MTT sets over seven architectures, plain and with ELF,
beside a random real subset of the same size (issue 13's benchmark).

    .venv/bin/python bench/cross_arch.py --method dm --iterations 150 --runs 2 --epochs 300
    .venv/bin/python bench/cross_arch.py --method mtt --iterations 20 --runs 2 --epochs 300

One invocation distils (or reuses from ``bench/cache/``) one set, runs
:func:`ddkit.evaluate.cross.evaluate_models` on it — the same code as
``ddkit evaluate SET --models ... --baseline random --elf`` — and adds (or replaces) the
block of that set at that evaluation budget (runs × epochs) in
``bench/results/cross_arch.{json,md}``; ``--add`` keeps the block's rows of the
architectures not named in ``--models``. Every block records the set's
budget, the evaluation protocol and its settings per architecture, the ELF teacher's
settings, wall-clock times, CPU model, threads and the load average before and after.
MTT's expert buffer is built as ``bench/accuracy.py`` builds it (``--mtt-experts``,
``--mtt-epochs``, ``--mtt-train-subset``), once, into ``bench/cache/``.
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
from ddkit.evaluate.cross import evaluate_models
from ddkit.evaluate.elf import ELFConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import CACHE, machine, prerequisites, short_cpu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "cross_arch"
MODELS = ["convnet", "mlp", "lenet", "alexnet", "vgg11", "resnet18", "resnet18-bn"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--method", required=True, choices=["dm", "mtt"])
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=None, help="distil this many iterations (or give --distilled)")
    ap.add_argument("--distilled", type=Path, default=None,
                    help="evaluate this set (made by --method on --dataset) instead of distilling one")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=None, help="default: the protocol's (1000 for dsa)")
    ap.add_argument("--no-elf", action="store_true")
    ap.add_argument("--elf-teacher-epochs", type=int, default=ELFConfig().teacher_epochs)
    ap.add_argument("--mtt-experts", type=int, default=2)
    ap.add_argument("--mtt-epochs", type=int, default=4)
    ap.add_argument("--mtt-train-subset", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--add", action="store_true",
                    help="keep the block's rows for architectures not in --models (same set, same evaluation "
                         "budget); without it the block is replaced")
    args = ap.parse_args()
    if (args.iterations is None) == (args.distilled is None):
        ap.error("give --iterations (distil a set) or --distilled FILE (evaluate a given set), not both")
    args.mtt_batch_syn = None
    real = ddkit.load_dataset(args.dataset, "train")
    test = ddkit.load_dataset(args.dataset, "test")
    load0 = os.getloadavg()
    prereq_wall = 0.0
    if args.distilled is not None:
        ds = ddkit.DistilledSet.load(args.distilled)
        if (ds.method, ds.dataset, ds.ipc) != (args.method, args.dataset, args.ipc):
            ap.error(f"{args.distilled} is {ds.method} IPC {ds.ipc} on {ds.dataset}, not {args.method} IPC "
                     f"{args.ipc} on {args.dataset}")
        args.iterations, config = int(ds.extra.get("iterations", ds.config.get("iterations", 0))), ds.config
        path = args.distilled
    else:
        config, prereq_wall, _ = prerequisites(args.method, args.dataset, real, args, {})
        CACHE.mkdir(parents=True, exist_ok=True)
        path = CACHE / f"{args.dataset}-{args.method}-ipc{args.ipc}-it{args.iterations}-s{args.seed}.safetensors"
    t0 = time.perf_counter()
    if path.exists():
        ds = ddkit.DistilledSet.load(path)
    else:
        ds = ddkit.distill(real, args.method, args.ipc, iterations=args.iterations, config=config, seed=args.seed,
                           progress=False)
        ds.save(path)
    t_distil = time.perf_counter() - t0 if not ds.extra.get("seconds") else ds.extra["seconds"]
    elf = None if args.no_elf else ELFConfig(teacher_epochs=args.elf_teacher_epochs)
    res = None
    for name in args.models.split(","):  # one architecture at a time, the table saved after each
        one = evaluate_models(ds, [name], baseline="random", runs=args.runs, epochs=args.epochs, seed=args.seed,
                              test=test, train=real, progress=True, elf=elf)
        if res is None:
            res = one
        else:
            res.rows += one.rows
            res.seconds = round(res.seconds + one.seconds, 2)
        save(args, ds, config, prereq_wall, t_distil, elf, res, load0)
    print(OUT.with_suffix(".md").read_text())


def save(args, ds, config, prereq_wall, t_distil, elf, res, load0) -> None:
    """Add (or replace) this method's block in cross_arch.{json,md}."""
    block = {"dataset": args.dataset, "method": args.method, "ipc": args.ipc, "iterations": args.iterations,
             "seed": args.seed, "config": ds.config, "prerequisite_seconds": round(prereq_wall, 1),
             "distill_seconds": round(t_distil, 1), "elf_config": elf.model_dump() if elf else None,
             "result": json.loads(res.to_json()), "table": [list(r) for r in res.table()],
             "columns": res.columns(), "models_asked": args.models.split(","),
             "command": "bench/cross_arch.py " + shlex.join(sys.argv[1:]),
             "load_average_before": load0, "load_average_after": os.getloadavg(), "machine": machine(),
             "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    js = OUT.with_suffix(".json")
    blocks = json.loads(js.read_text())["blocks"] if js.exists() else []
    old = next((b for b in blocks if _key(b) == _key(block)), None)
    if args.add and old is not None:
        block = merged(old, block)
    blocks = [b for b in blocks if _key(b) != _key(block)]
    blocks.append(block)
    js.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps({"blocks": blocks}, indent=2))
    OUT.with_suffix(".md").write_text(render(blocks))


def _key(block: dict) -> tuple:
    """A block is one set at one evaluation budget: the same set may have a block per budget."""
    first = block["result"]["rows"][0]["distilled"]
    return block["dataset"], block["method"], block["ipc"], first["runs"], first["epochs"]


def merged(old: dict, new: dict) -> dict:
    """``new`` with ``old``'s rows for the architectures ``new`` did not run (``--add``);
    refuses when the two blocks evaluated different sets or at different budgets."""
    o, n = old["result"]["rows"][0]["distilled"], new["result"]["rows"][0]["distilled"]
    same = (old["config"] == new["config"] and old["iterations"] == new["iterations"]
            and (o["runs"], o["epochs"]) == (n["runs"], n["epochs"]) and old["elf_config"] == new["elf_config"])
    if not same:
        raise SystemExit("--add: the block on file was made from another set or at another evaluation budget; "
                         "rerun without --add to replace it")
    ran = {row[0] for row in new["table"]}
    keep = [i for i, row in enumerate(old["table"]) if row[0] not in ran]
    table = [old["table"][i] for i in keep] + new["table"]
    rows = [old["result"]["rows"][i] for i in keep] + new["result"]["rows"]
    order = sorted(range(len(table)), key=lambda i: _rank(table[i][0]))
    out = dict(new)
    out["table"] = [table[i] for i in order]
    out["result"] = dict(new["result"])
    out["result"]["rows"] = [rows[i] for i in order]
    if keep:
        out["result"]["seconds"] = round(old["result"]["seconds"] + new["result"]["seconds"], 2)
    out["models_asked"] = list(dict.fromkeys(old.get("models_asked", []) + new["models_asked"]))
    out["command"] = old["command"] + " && .venv/bin/python " + new["command"] if keep else new["command"]
    out["load_average_before"] = old["load_average_before"]
    return out


def _rank(model: str) -> int:
    return MODELS.index(model) if model in MODELS else len(MODELS)


def _mtt_budget(config: dict) -> str:
    """MTT's budget in words: the buffer (named by bench/accuracy.py's experts-epochs-subset
    scheme) and the resolved per-iteration settings."""
    buf = Path(config["buffer"]).name
    return (f"; expert buffer `{buf}` (experts, epochs and real images per class in its name); "
            f"{config['syn_steps']} synthetic steps matching {config['expert_epochs']} expert epochs from a "
            f"start epoch below {config['max_start_epoch']}, lr_img {config['lr_img']:g}, "
            f"initial α {config['lr_teacher']:g}")


def render(blocks: list[dict]) -> str:
    lines = ["# Cross-architecture evaluation, plain and with ELF, beside a random real subset", "",
             "Written by `bench/cross_arch.py` (one block per distilled set and evaluation budget; the command of "
             "each is under its table). Each cell: mean ± population std of test accuracy (%) over the networks, "
             "each scored after its last epoch on the full test set; the random subset has the set's IPC, is "
             "drawn with the same seed and is trained the same way. ELF (evaluation with distillation "
             "features; Zhao et al., arXiv 2312.05598) applies where "
             "the architecture has a split point (ConvNet, VGG-11, ResNet-18); its teacher is ddkit's reduced "
             "default (settings below), not the authors' width-512 ConvNet trained 100 epochs on the full set.",
             ""]
    for b in sorted(blocks, key=lambda b: (b["dataset"], b["ipc"], b["method"], -_key(b)[4])):
        r = b["result"]
        first = r["rows"][0]["distilled"]
        load = f"{b['load_average_before'][0]:.1f}→{b['load_average_after'][0]:.1f}"
        lines += [f"## {b['dataset']}, {b['method']} IPC {b['ipc']} ({b['iterations']} iterations), "
                  f"{first['runs']} × {first['epochs']} epochs", "",
                  "| " + " | ".join(b["columns"]) + " |", "|" + "---|" * len(b["columns"])]
        lines += ["| " + " | ".join(row) + " |" for row in b["table"]]
        done = {row[0] for row in b["table"]}
        lines += [f"| {m} | not run yet | | |" + (" | |" if b["elf_config"] else "")
                  for m in b.get("models_asked", []) if m not in done]
        elf = b["elf_config"]
        lines += ["", f"- Command: `.venv/bin/python {b['command']}` ({b['date']}).",
                  f"- Evaluation: protocol `{first['settings'].get('name', first['protocol'])}` (settings in "
                  f"cross_arch.json), {first['runs']} network{'s' if first['runs'] != 1 else ''} × {first['epochs']} "
                  f"epochs per architecture and per column (the protocol's full length is 1000 epochs: "
                  f"{'reduced for CPU time' if first['epochs'] < 1000 else 'full'})"
                  + (f"; the set's networks (plain and ELF) train at its learned step size "
                     f"α = {first['settings']['lr']:.4g}, the random subset's at the protocol's "
                     f"{r['rows'][0]['baseline']['settings']['lr']:g}"
                     if first["settings"].get("lr_learned") else "") + ".",
                  f"- Set: {b['method']} for {b['iterations']} iterations (seed {b['seed']}"
                  + (f", {b['config']['batch_real']} real images per class" if "batch_real" in b["config"] else "")
                  + (", compiled ψ" if b["config"].get("compile") is True else "")
                  + (_mtt_budget(b["config"]) if b["method"] == "mtt" else "") + "); "
                  f"distilled in {b['distill_seconds']:.0f} s"
                  + (f", after a prerequisite (MTT expert buffer) of {b['prerequisite_seconds']:.0f} s"
                     if b["prerequisite_seconds"] else "") + ".",
                  (f"- ELF teacher: {elf['teacher_model']}, {elf['teacher_epochs']} epochs on "
                   f"{elf['teacher_subset'] or 'all'} images per class; feature loss {elf['feature_loss']}, "
                   f"mode {elf['mode']}." if elf else "- ELF not run."),
                  f"- Time: {r['seconds'] / 60:.0f} min for the rows above; {short_cpu(b['machine']['cpu'])}, "
                  f"{b['threads']} threads, load average {load}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    from ddkit import allocator

    allocator.reexec()  # jemalloc where installed: 1.5x on CPU, same numbers (ddkit/allocator.py)
    main()
