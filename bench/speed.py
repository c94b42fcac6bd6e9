"""Speed benchmark: seconds per distillation iteration at IPC 10 on Fashion-MNIST.

For each method this times ddkit's implementation through the public API
(``ddkit.distill(..., iterations=n)``; the set's metadata ``seconds`` covers the loop only,
not data loading or set-up) at the method's published settings. For the methods whose
objective is a sum over classes (DM, DC, DSA) it also runs, in the same process and
interleaved round by round, a *straightforward per-class form* of the same objective,
written here the way the reference code is written: a Python loop over classes, one
augmentation call and one forward pass per class, the real branch built on the autograd
tape and detached afterwards, and network parameters that keep ``requires_grad`` (so every
backward also fills their ``.grad``). The ratio naive / ddkit is reported per method.

DM is also timed with opt-in variants (``compile=True``, i.e. ψ through ``torch.compile``,
through the API, its first, compiling iteration reported apart; channels-last memory format;
with ``--bf16``, bf16 autocast on the CPU) so the table shows whether they pay off on this
machine.

The shared machines are noisy: the table reports the median over ``--repeats`` rounds
and the individual timings, and the ratio is of medians measured side by side.

Run: ``.venv/bin/python bench/speed.py`` (``--help`` for methods/repeats/threads).
Writes ``bench/results/speed.json`` and ``bench/results/speed.md``.

``--reference DIR`` (a checkout of VICO-UoE/DatasetCondensation the user provides) instead
times the authors' own scripts against ddkit, alternating, for DM, DC and DSA iterations
and the evaluation trainer (``bench/reference.py``); writes
``bench/results/speed_reference.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import ddkit
from ddkit.augment import DSA, DSAConfig
from ddkit.distill.base import initial_synthetic, iteration_generator, sample_per_class
from ddkit.distill.dm import dm_loss
from ddkit.distill.gm import default_loops, gradient_distance
from ddkit.models import get_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import machine, short_cpu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IPC = 10
PER_CLASS = ("dm", "dc", "dsa")


# ----------------------------------------------------------------------------- naive forms
def class_batches(real_x, by_class, syn, c, ipc, dsa, g, batch_real):
    """Class c's real batch and synthetic images, with one DSA draw for both (reference form:
    one augmentation call per class and branch)."""
    idx = by_class[c][torch.randperm(by_class[c].numel(), generator=g)[:batch_real]]
    r = real_x[idx.to(real_x.device)]
    s = syn[c * ipc:(c + 1) * ipc]
    if dsa is not None:
        d = dsa.draw(1, g)
        r = dsa.apply(r, d, torch.zeros(r.shape[0], dtype=torch.long))
        s = dsa.apply(s, d, torch.zeros(s.shape[0], dtype=torch.long))
    return r, s


def naive_dm_iteration(real_x, by_class, syn, opt, k, dsa, g, model="convnet", batch_real=256):
    """One DM iteration written class by class, as the reference code does."""
    net = get_model(model, real_x.shape[1], k, real_x.shape[-1]).to(real_x.device)
    loss = syn.new_zeros(())
    ipc = syn.shape[0] // k
    for c in range(k):
        r, s = class_batches(real_x, by_class, syn, c, ipc, dsa, g, batch_real)
        out_real = net.embed(r).detach()
        out_syn = net.embed(s)
        loss = loss + ((out_real.mean(0) - out_syn.mean(0)) ** 2).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()


def naive_dc_iteration(real_x, by_class, syn, opt, k, dsa, g, model="convnet", batch_real=256):
    """One DC/DSA outer iteration written class by class, as the reference code does."""
    ipc = syn.shape[0] // k
    outer, inner = default_loops(ipc)
    net = get_model(model, real_x.shape[1], k, real_x.shape[-1]).to(real_x.device)
    net.train()
    params = list(net.parameters())
    net_opt = torch.optim.SGD(net.parameters(), lr=0.01)
    labels = torch.arange(k, device=real_x.device).repeat_interleave(ipc)
    for ol in range(outer):
        loss = syn.new_zeros(())
        for c in range(k):
            r, s = class_batches(real_x, by_class, syn, c, ipc, dsa, g, batch_real)
            yr = torch.full((r.shape[0],), c, device=r.device)
            gw_real = [t.detach().clone() for t in torch.autograd.grad(F.cross_entropy(net(r), yr), params)]
            ys = torch.full((s.shape[0],), c, device=s.device)
            gw_syn = torch.autograd.grad(F.cross_entropy(net(s), ys), params, create_graph=True)
            loss = loss + gradient_distance(gw_syn, gw_real)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if ol == outer - 1:
            break
        x_train, y_train = syn.detach().clone(), labels.clone()
        for _ in range(inner):
            order = torch.randperm(x_train.shape[0], generator=g)
            for st in range(0, x_train.shape[0], 256):
                b = order[st:st + 256]
                xb = x_train[b]
                if dsa is not None:
                    xb = dsa(xb, generator=g)
                lo = F.cross_entropy(net(xb), y_train[b])
                net_opt.zero_grad()
                lo.backward()
                net_opt.step()


def dm_variant_iteration(real_x, by_class, syn, opt, k, dsa, g, channels_last=False, bf16=False):
    """ddkit's batched DM iteration with an opt-in variant (channels-last or bf16 autocast)."""
    net = get_model("convnet", real_x.shape[1], k, real_x.shape[-1]).to(real_x.device)
    for p in net.parameters():
        p.requires_grad_(False)
    idx = sample_per_class(by_class, 256, g)
    r, s = real_x[idx.to(real_x.device)], syn
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        r, s = r.contiguous(memory_format=torch.channels_last), s.contiguous(memory_format=torch.channels_last)
    with torch.autocast(real_x.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = dm_loss(net.embed, r, s, k, dsa, g)
    opt.zero_grad(set_to_none=True)
    loss.float().backward()
    opt.step()


# ----------------------------------------------------------------------------- timing
def time_api(real, method, n, seed, config):
    """Seconds per iteration of ddkit's method (loop only), through the public API."""
    ds = ddkit.distill(real, method, IPC, iterations=n, seed=seed, progress=False, config=config)
    return ds.extra["seconds"] / max(1, ds.extra["iterations_run"])


def time_api_compiled(real, n, seed, config):
    """DM with ``compile=True``: (seconds per iteration after the first, the first iteration's
    seconds, which include compiling). Needs ``n`` ≥ 2."""
    ds = ddkit.distill(real, "dm", IPC, iterations=n, seed=seed, progress=False, config={**config, "compile": True})
    warm = ds.extra["warmup_seconds"]
    return (ds.extra["seconds"] - warm) / (ds.extra["iterations_run"] - 1), warm


def time_fn(fn, real_x, by_class, k, dsa, seed, n, lr, momentum):
    g = iteration_generator(seed, -1)
    syn = initial_synthetic(real_x, by_class, IPC, "real", g).requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=lr, momentum=momentum)
    t0 = time.perf_counter()
    for it in range(n):
        fn(real_x, by_class, syn, opt, k, dsa, iteration_generator(seed, it))
    return (time.perf_counter() - t0) / n


def extra_config(method: str, real, workdir: Path, args) -> dict:
    """Settings that methods with a prerequisite (expert buffer, teacher) need; built once,
    at a small size (their construction is not part of the timed loop)."""
    if method == "mtt":
        from ddkit.distill.mtt import train_experts

        buf = workdir / "buffer"
        train_experts(real, buf, experts=1, epochs=3, train_subset=100, seed=0, progress=False)
        return {"buffer": str(buf), "max_start_epoch": 2}  # start + 2 expert epochs inside the 3-epoch buffer
    if method == "cfm":
        from ddkit.teacher import train_teacher

        path = workdir / "teacher.safetensors"
        train_teacher(real, "convnet", 1, images_per_class=100, seed=0, progress=False).save(path)
        return {"teacher": str(path), "stats_images": 2000}
    return {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="dm,dsa,dc,kip,frepo,mtt,cfm")
    ap.add_argument("--repeats", type=int, default=3, help="rounds (one iteration of each form per round)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is the stable choice when shared)")
    ap.add_argument("--bf16", action="store_true", help="also time DM under bf16 autocast (slow without "
                    "bf16 hardware: 263 s vs 13 s per iteration measured on this project's AMD EPYC); with "
                    "--reference: ddkit's DM real branch and evaluation steps under bf16 as a third form")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "speed"))
    ap.add_argument("--render", action="store_true", help="only rewrite speed.md from speed.json")
    ap.add_argument("--note", default="", help="a sentence about the run's conditions, printed in speed.md")
    ap.add_argument("--reference", type=Path, default=None,
                    help="checkout of VICO-UoE/DatasetCondensation: time its scripts against ddkit")
    ap.add_argument("--reference-methods", default="dm,dsa,dc")
    ap.add_argument("--reference-out", default=None, help="--reference: output path without suffix (default "
                    "bench/results/speed_reference; one file per CPU kind keeps each machine's rows)")
    ap.add_argument("--iterations", type=int, default=40, help="--reference: iterations per run (≥ 20)")
    ap.add_argument("--eval-epochs", type=int, default=200, help="--reference: epochs of the evaluation trainer")
    ap.add_argument("--dc-ipc", type=int, default=1, help="--reference: IPC of the DC/DSA runs (IPC 10 costs "
                    "minutes per iteration on 2 cores)")
    args = ap.parse_args()
    if args.reference is not None:
        import reference

        threads = args.threads if args.threads != 1 else torch.get_num_threads()
        started = time.time()
        host = machine()
        out = ROOT / "bench" / "results" / "speed_reference"
        if args.reference_out:
            out = Path(args.reference_out)

        # rows of methods this run does not time are kept (each row carries its own load average)
        kept = []
        if out.with_suffix(".json").exists():
            kept = [r for r in json.loads(out.with_suffix(".json").read_text()).get("rows", [])
                    if r["method"] not in args.reference_methods.split(",")]

        def save(rows):
            rows = rows + kept
            info = {"machine": host, "threads": threads, "note": args.note,
                    "wall_seconds": round(time.time() - started), "rows": rows}
            out.with_suffix(".json").write_text(json.dumps(info, indent=2))
            out.with_suffix(".md").write_text(reference.render(rows, host, threads, args.note))

        reference.compare(args.reference.resolve(), args.reference_methods.split(","), args.iterations,
                          args.eval_epochs, args.repeats, threads, args.dc_ipc, on_row=save, bf16=args.bf16)
        print(out.with_suffix(".md").read_text())
        return
    out = Path(args.out)
    if not args.note and out.with_suffix(".json").exists():  # keep the conditions written so far
        args.note = json.loads(out.with_suffix(".json").read_text()).get("note", "")
    if args.render:
        info = json.loads(out.with_suffix(".json").read_text())
        args.threads, args.repeats = info["threads"], info["repeats"]
        write(out, info["rows"], args, time.time() - info["wall_seconds"])
        return
    torch.set_num_threads(args.threads)
    real = ddkit.load_dataset("fashion-mnist", "train", download=True)
    k = real.num_classes
    real_x = real.normalize(real.float_images())
    by_class = real.class_indices()
    dsa = DSA(DSAConfig(), image_size=real.image_size[0])
    rows = []
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            forms: dict[str, list[float]] = {"ddkit": []}
            if method in PER_CLASS:
                forms["per-class (reference form)"] = []
            if method == "dm":
                forms["ddkit + channels-last"] = []
                forms["ddkit + torch.compile"] = []
                warmups: list[float] = []
                if args.bf16:
                    forms["ddkit + bf16 autocast"] = []
            cfg = extra_config(method, real, Path(tmp), args)
            for r in range(args.repeats):
                # CFM: one step of each of its IPC batches (its iterations count every step)
                forms["ddkit"].append(time_api(real, method, IPC if method == "cfm" else 1, r, cfg))
                if method == "dm":
                    forms["per-class (reference form)"].append(
                        time_fn(naive_dm_iteration, real_x, by_class, k, dsa, r, 1, 1.0, 0.5))
                    forms["ddkit + channels-last"].append(time_fn(
                        lambda *a: dm_variant_iteration(*a, channels_last=True), real_x, by_class, k, dsa, r, 1,
                        1.0, 0.5))
                    steady, warm = time_api_compiled(real, 2, r, cfg)
                    forms["ddkit + torch.compile"].append(steady)
                    warmups.append(warm)
                    if args.bf16:
                        forms["ddkit + bf16 autocast"].append(time_fn(
                            lambda *a: dm_variant_iteration(*a, bf16=True), real_x, by_class, k, dsa, r, 1, 1.0, 0.5))
                elif method in ("dc", "dsa"):
                    forms["per-class (reference form)"].append(time_fn(
                        naive_dc_iteration, real_x, by_class, k, dsa if method == "dsa" else None, r, 1, 0.1, 0.5))
                print(f"{method} round {r + 1}: " + ", ".join(f"{f} {v[-1]:.2f}s" for f, v in forms.items()),
                      flush=True)
            med = {f: statistics.median(v) for f, v in forms.items()}
            rows.append({"method": method, "seconds": forms, "median": med,
                         "ratio_naive_over_ddkit": (med["per-class (reference form)"] / med["ddkit"]
                                                    if "per-class (reference form)" in med else None)})
            if method == "dm":
                rows[-1]["compile_first_iteration_seconds"] = warmups
            write(out, rows, args, started)


def write(out: Path, rows: list[dict], args, started: float) -> None:
    """Write speed.json/.md; rows of methods not timed in this run are kept from the file
    (each row records its own threads/repeats)."""
    host = machine()
    for row in rows:
        row.setdefault("threads", args.threads)
        row.setdefault("repeats", args.repeats)
        if not args.render:
            row.setdefault("cpu", host["cpu"])
    js = out.with_suffix(".json")
    if js.exists() and not args.render:
        old = json.loads(js.read_text())
        kept = [{"cpu": old["machine"]["cpu"], **r} for r in old["rows"]
                if r["method"] not in {x["method"] for x in rows}]
        rows = kept + rows
    info = {"note": args.note, "machine": host, "threads": args.threads, "repeats": args.repeats, "ipc": IPC,
            "dataset": "fashion-mnist", "wall_seconds": round(time.time() - started, 1), "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(info, indent=2))
    lines = [
        "# Seconds per distillation iteration, Fashion-MNIST IPC 10",
        "",
        f"Machines: 2-core CPUs, the model in the `cpu` column (rows were timed in different sessions, on "
        f"different machines: compare forms within a row, not seconds across rows of different CPUs); torch "
        f"{info['machine']['torch']}, {args.threads} thread(s); median over each row's interleaved rounds (all "
        "rounds listed; timings also in speed.json). Published settings (ConvNet-3 width 128, 256 real images per "
        "class, DSA where the method uses it).",
        "",
        "| method | form | s / iteration (median) | all rounds | naive ÷ ddkit | cpu |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        for form, vals in row["seconds"].items():
            ratio = ""
            if form == "ddkit" and row["ratio_naive_over_ddkit"] is not None:
                ratio = f"{row['ratio_naive_over_ddkit']:.2f}×"
            elif form != "ddkit" and form != "per-class (reference form)":
                ratio = f"(variant: {row['median']['ddkit'] / row['median'][form]:.2f}× ddkit speed"
                ref = row["median"].get("per-class (reference form)")
                ratio += f"; naive ÷ this {ref / row['median'][form]:.2f}×)" if ref else ")"
            lines.append(f"| {row['method']} | {form} | {row['median'][form]:.2f} | "
                         f"{', '.join(f'{v:.2f}' for v in vals)} | {ratio} | {short_cpu(row.get('cpu'))} |")
    for row in rows:
        if row.get("compile_first_iteration_seconds"):
            lines += ["", f"{row['method']} + torch.compile: the s / iteration above excludes the first iteration "
                      "of each round, which compiles (or re-uses the process's compiled code): "
                      f"{', '.join(f'{v:.1f}' for v in row['compile_first_iteration_seconds'])} s."]
    lines += ["", args.note, "", f"Wall time of the last run: {info['wall_seconds']:.0f} s. "
              "Methods without a per-class objective (KIP, FRePo, MTT, CFM) have no per-class form to compare; "
              "their row is ddkit's time only. MTT's buffer and CFM's teacher are built (small) before timing "
              "and not counted. A CFM iteration is one Adam step on one batch (one image per class; the paper runs "
              "1000 per batch, IPC batches); an MTT iteration unrolls 30 student steps (IPC 10 row); a DC/DSA "
              "iteration is one outer iteration (10 matching steps and 9 × 50 inner steps at IPC 10)."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
