#!/usr/bin/env bash
# The main job on real data: distil Fashion-MNIST with DM at IPC 10, draw it, evaluate it.
# REDUCED BUDGET (measured figure and time in the README): 330 DM iterations with 32 real
# images per class and the images' learning rate 3 (the paper: 20 000 iterations with 256 at
# lr_img 1; ψ compiled), then 1 evaluation network x 1000 epochs with DSA (the protocol:
# 5 x 1000; training compiled, as 1000 epochs do by default). Override with ITERATIONS=...,
# BATCH_REAL=..., LR_IMG=..., RUNS=..., EPOCHS=... in the environment (ITERATIONS=500
# BATCH_REAL=256 LR_IMG=1 RUNS=2: the issue's matched budget, where the authors' code reaches
# 82.4 %; ITERATIONS=20000 BATCH_REAL=256 LR_IMG=1 RUNS=5: the paper's).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-runs/quickstart}
ITERATIONS=${ITERATIONS:-330}
BATCH_REAL=${BATCH_REAL:-32}
LR_IMG=${LR_IMG:-3}
RUNS=${RUNS:-1}
EPOCHS=${EPOCHS:-1000}
mkdir -p "$OUT"
echo "== reduced budget: DM $ITERATIONS iterations x $BATCH_REAL real images per class, lr_img $LR_IMG (paper: 20000 x 256, lr_img 1);" \
  "evaluation $RUNS network(s) x $EPOCHS epochs (protocol: 5 x 1000)"
.venv/bin/ddkit distill --dataset fashion-mnist --method dm --ipc 10 --iterations "$ITERATIONS" --set compile=true \
  --set batch_real="$BATCH_REAL" --set lr_img="$LR_IMG" \
  --out "$OUT/fmnist_dm_ipc10.safetensors" --download
.venv/bin/ddkit show "$OUT/fmnist_dm_ipc10.safetensors" --out "$OUT/fmnist_dm_ipc10.png"
.venv/bin/ddkit evaluate "$OUT/fmnist_dm_ipc10.safetensors" --runs "$RUNS" --epochs "$EPOCHS" --compile on \
  --json "$OUT/fmnist_dm_ipc10_eval.json" --download
echo "== wrote $OUT/fmnist_dm_ipc10.safetensors, $OUT/fmnist_dm_ipc10.png, $OUT/fmnist_dm_ipc10_eval.json"
