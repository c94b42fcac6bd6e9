"""Band-energy benchmark: does a KRR method match a different band of the FFC than DM?

UniDD (Bo, Liu, Wang, ICLR 2026) reads DM as an identity (low-frequency) filter and KRR
methods (KIP, FRePo) as ``(λ + β)^-1`` (high-frequency) filters. This script distils
Fashion-MNIST at IPC 10 with ``dm`` and ``kip`` from the same real-image initialisation
(``random``, the same seed, is the starting point of both and is shown too), then runs
the ``ddkit spectrum`` analysis on every set under several randomly initialised ConvNet-3
feature maps and reports, per set, mean ± std over the feature maps of

* ``low share``: the share of the distilled FLC energy ‖HᵀY‖² in the top-k eigen-directions
  of the real FFC (real data's own share is given for reference), and
* ``mismatch low/high``: the relative FLC mismatch ‖U_bandᵀ(F − F_s)‖ / ‖F‖ per band.

Writes ``bench/results/spectrum.{json,md}`` and the plot of the first feature map
(``bench/results/spectrum.png``, via :func:`ddkit.spectral.analysis.save_spectrum`, the
same code as ``ddkit spectrum``). The distilled sets are kept in ``--keep`` if given.

Run: ``.venv/bin/python bench/spectrum.py`` (``--help`` for the budget).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import ddkit
from ddkit.artifact import DistilledSet
from ddkit.spectral.analysis import save_spectrum, spectrum

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=20, help="DM and KIP iterations (papers: 20 000 / 1000)")
    ap.add_argument("--feature-seeds", type=int, default=3)
    ap.add_argument("--n-real", type=int, default=2000)
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep", default=None, help="folder to keep the distilled sets in")
    ap.add_argument("--reuse", default=None, help="folder of sets kept by an earlier --keep (skips distilling)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "spectrum"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    real = ddkit.load_dataset("fashion-mnist", "train", download=True)
    t0 = time.time()
    sets = {"random": ddkit.distill(real, "random", 10, seed=0, progress=False)}
    timing = {}
    for method in ("dm", "kip"):
        kept = Path(args.reuse or "-") / f"fmnist-{method}-ipc10.safetensors"
        if args.reuse and kept.exists():
            sets[method] = DistilledSet.load(kept)
            timing[method] = sets[method].extra.get("seconds")
            continue
        t = time.time()
        sets[method] = ddkit.distill(real, method, 10, iterations=args.iterations, seed=0, progress=False)
        timing[method] = round(time.time() - t, 1)
        print(f"{method}: {args.iterations} iterations in {timing[method]:.0f} s", flush=True)
    # KIP also learns its labels (centred one-hot start): the same images with their hard
    # labels separate what the images matched from what the labels did
    k = sets["kip"]
    sets["kip-images"] = DistilledSet(images=k.images, labels=k.hard_labels(), method="kip (hard labels)",
                                      dataset=k.dataset, mean=k.mean, std=k.std, class_names=k.class_names,
                                      ipc=k.ipc, seed=k.seed)
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        for m in ("random", "dm", "kip"):
            sets[m].save(Path(args.keep) / f"fmnist-{m}-ipc10.safetensors")
    per_seed = {m: [] for m in sets}
    first = []
    for fs in range(args.feature_seeds):
        for m, s in sets.items():
            r = spectrum(s, real, n_real=args.n_real, top_k=args.top_k, seed=fs, device="cpu")
            per_seed[m].append(r)
            if fs == 0:
                first.append(r)
        print(f"feature map {fs}: " + ", ".join(f"{m} low {per_seed[m][-1].low_share_distilled:.3f}"
                                                for m in sets), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        _, png = save_spectrum(first, tmp)
        shutil.copy(png, out.with_suffix(".png"))

    def ms(vals):
        return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

    rows = []
    for m, rs in per_seed.items():
        rows.append({
            "set": m, "iterations": 0 if m == "random" else (sets[m].extra.get("iterations") or args.iterations),
            "low_share_real": ms([r.low_share_real for r in rs]),
            "low_share_distilled": ms([r.low_share_distilled for r in rs]),
            "mismatch_low": ms([r.mismatch_low for r in rs]), "mismatch_high": ms([r.mismatch_high for r in rs]),
            "per_seed_low_share": [r.low_share_distilled for r in rs],
        })
    info = {"machine": machine(), "dataset": "fashion-mnist", "ipc": 10, "iterations": args.iterations,
            "distill_seconds": timing, "feature_seeds": args.feature_seeds, "n_real": args.n_real,
            "top_k": args.top_k, "wall_seconds": round(time.time() - t0, 1), "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(info, indent=2))
    f = "{:.3f} ± {:.3f}".format
    lines = [
        "# FLC band energy of DM vs KIP distilled sets (Fashion-MNIST, IPC 10)",
        "",
        f"`.venv/bin/python bench/spectrum.py --iterations {args.iterations}`: DM and KIP "
        f"({args.iterations} iterations each, seed 0, same real-image initialisation = the `random` row), "
        f"analysed with `ddkit.spectral.analysis.spectrum` (the code behind `ddkit spectrum`) under "
        f"{args.feature_seeds} randomly initialised ConvNet-3 feature maps, {args.n_real} real images, "
        f"low band = top {args.top_k} eigen-directions of the real FFC (of 2048). Mean ± std over feature maps. "
        f"Distillation loop time: DM {timing['dm']} s, KIP {timing['kip']} s; analysis wall time "
        f"{info['wall_seconds']:.0f} s; {info['machine']['cpu']}, {args.threads} thread, cores shared with other jobs.",
        "",
        "| set | FLC share in low band (real data) | FLC share in low band (distilled) | mismatch low "
        "| mismatch high |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['set']} | {f(*r['low_share_real'])} | {f(*r['low_share_distilled'])} | "
                     f"{f(*r['mismatch_low'])} | {f(*r['mismatch_high'])} |")
    lines += ["", "`kip-images`: KIP's images with their hard labels instead of KIP's learned labels (KIP starts "
              "its labels as centred one-hot, one-hot − 1/K, which by itself removes the class-mean feature, the "
              "top FFC direction, from the FLC); it isolates what the images matched.", "",
              "Plot (first feature map): `spectrum.png`."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    from ddkit import allocator

    allocator.reexec()  # jemalloc where installed: 1.5x on CPU, same numbers (ddkit/allocator.py)
    main()
