"""The evaluation trainer against the authors' own, on the same images: is a difference in
accuracy the trainer's or the subset's?

    .venv/bin/python bench/trainer_check.py --reference /path/to/DatasetCondensation \\
        --subsets 0 1 --epochs 300

For each subset seed s, the random real subset ``ddkit.distill(train, "random", IPC,
seed=s)`` of Fashion-MNIST is trained (one ConvNet-3, network seed 0) twice, each in its own
process: by the reference's ``utils.evaluate_synset`` (VICO-UoE/DatasetCondensation: SGD
0.01, momentum 0.9, wd 5e-4, ×0.1 at Epoch//2+1, Epoch+1 passes, DSA
``color_crop_cutout_flip_scale_rotate``; the images standardised with its mean/std, the
full test set likewise), and by ``ddkit.evaluate(..., protocol="dsa")``. The checkout is
given by the user, never vendored; it is imported in a child process with the two shims
``bench/reference.py`` documents (``scipy.ndimage.interpolation``, ``Tensor.view``).
Writes ``bench/results/trainer_check.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "trainer_check"


def child(args) -> None:
    import scipy.ndimage

    sys.modules.setdefault("scipy.ndimage.interpolation", scipy.ndimage)
    import torch

    view = torch.Tensor.view

    def view_or_reshape(self, *a, **k):
        try:
            return view(self, *a, **k)
        except RuntimeError:
            return self.reshape(*a, **k)

    torch.Tensor.view = view_or_reshape
    import ddkit

    train = ddkit.load_dataset("fashion-mnist", "train")
    test = ddkit.load_dataset("fashion-mnist", "test")
    ds = ddkit.distill(train, "random", args.ipc, seed=args.subset, progress=False)
    t0 = time.perf_counter()
    if args.side == "reference":
        import types

        import numpy as np

        sys.path.insert(0, str(args.reference))
        from utils import ParamDiffAug, evaluate_synset, get_network  # the user's checkout

        mean, std = ds.mean[0], ds.std[0]
        x = (ds.images - mean) / std
        xt = (test.images.float() / 255 - mean) / std
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xt, test.labels.long()), batch_size=256)
        ns = types.SimpleNamespace(lr_net=0.01, epoch_eval_train=args.epochs, batch_train=256, dsa=True,
                                   dsa_param=ParamDiffAug(), dsa_strategy="color_crop_cutout_flip_scale_rotate",
                                   device="cpu", dc_aug_param=None)
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)
        net = get_network("ConvNet", 1, ds.num_classes, (28, 28))
        acc = float(evaluate_synset(0, net, x, ds.labels.long(), loader, ns)[2])
    else:
        acc = ddkit.evaluate(ds, runs=1, epochs=args.epochs, protocol="dsa", test=test, seed=args.seed,
                             progress=False).mean
    print(json.dumps({"side": args.side, "subset": args.subset, "accuracy": acc,
                      "seconds": round(time.perf_counter() - t0, 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, required=True)
    ap.add_argument("--subsets", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--side", choices=["reference", "ddkit"], help=argparse.SUPPRESS)
    ap.add_argument("--subset", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        return child(args)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from accuracy import machine

    rows = []
    for s in args.subsets:
        for side in ("reference", "ddkit"):
            load0 = os.getloadavg()
            cmd = [sys.executable, __file__, "--side", side, "--subset", str(s), "--reference", str(args.reference),
                   "--ipc", str(args.ipc), "--epochs", str(args.epochs), "--seed", str(args.seed)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{side} run failed: {proc.stderr[-2000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row.update(load_average_before=load0, load_average_after=os.getloadavg())
            rows.append(row)
            print(row, flush=True)
    res = {"ipc": args.ipc, "epochs": args.epochs, "seed": args.seed, "rows": rows, "machine": machine(),
           "date": time.strftime("%Y-%m-%d"), "command": "bench/trainer_check.py " + " ".join(sys.argv[1:])}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps(res, indent=2))
    lines = ["# Evaluation trainer: the authors' `evaluate_synset` and ddkit's, on the same subsets", "",
             f"`{res['command']}` ({res['date']}, {res['machine']['cpu']}). Fashion-MNIST, random real subset "
             f"IPC {args.ipc} (ddkit's draw with the subset seed), one ConvNet-3 per cell (network seed "
             f"{args.seed}), {args.epochs} epochs with DSA, full test set.", "",
             "| subset seed | authors' trainer % | ddkit % | difference (points) |", "|---|---|---|---|"]
    for s in args.subsets:
        a = next(r for r in rows if r["subset"] == s and r["side"] == "reference")["accuracy"]
        b = next(r for r in rows if r["subset"] == s and r["side"] == "ddkit")["accuracy"]
        lines.append(f"| {s} | {100 * a:.2f} | {100 * b:.2f} | {100 * (b - a):+.2f} |")
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    from ddkit import allocator

    allocator.reexec()  # jemalloc where installed: 1.5x on CPU, same numbers (ddkit/allocator.py)
    main()
