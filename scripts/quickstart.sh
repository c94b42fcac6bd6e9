#!/usr/bin/env bash
# The main job on real data: distil Fashion-MNIST with DM at IPC 10, draw it, evaluate it.
# REDUCED BUDGET so it finishes in about 10 minutes on 2 CPU cores: 40 DM iterations (the
# paper runs 20 000) and 3 evaluation networks × 100 epochs with DSA (the protocol is
# 5 × 1000). Override with ITERATIONS=..., RUNS=..., EPOCHS=... in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-runs/quickstart}
ITERATIONS=${ITERATIONS:-40}
RUNS=${RUNS:-3}
EPOCHS=${EPOCHS:-100}
mkdir -p "$OUT"
echo "== reduced budget: DM $ITERATIONS iterations (paper: 20000); evaluation $RUNS networks x $EPOCHS epochs (protocol: 5 x 1000)"
.venv/bin/ddkit distill --dataset fashion-mnist --method dm --ipc 10 --iterations "$ITERATIONS" \
  --out "$OUT/fmnist_dm_ipc10.safetensors" --download
.venv/bin/ddkit show "$OUT/fmnist_dm_ipc10.safetensors" --out "$OUT/fmnist_dm_ipc10.png"
.venv/bin/ddkit evaluate "$OUT/fmnist_dm_ipc10.safetensors" --runs "$RUNS" --epochs "$EPOCHS" \
  --json "$OUT/fmnist_dm_ipc10_eval.json" --download
echo "== wrote $OUT/fmnist_dm_ipc10.safetensors, $OUT/fmnist_dm_ipc10.png, $OUT/fmnist_dm_ipc10_eval.json"
