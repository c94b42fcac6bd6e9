#!/usr/bin/env bash
# Set up ddkit on a fresh machine: virtual environment, the package with its dev extra,
# and the Fashion-MNIST data (Debian package when root; otherwise the quick start's --download fetches it
# on first use). Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[dev]'
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
      || echo "apt-get could not install dataset-fashion-mnist; the quick start will download it (--download)"
  else
    echo "not root: Fashion-MNIST will be downloaded by the quick start (--download) or the tests"
  fi
fi
# jemalloc: the CPU runs go 1.5x faster under it (src/ddkit/allocator.py; optional, never required)
if ! .venv/bin/python -c 'import sys; from ddkit.allocator import find_jemalloc; sys.exit(find_jemalloc() is None)'; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing jemalloc (Debian package libjemalloc2)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjemalloc2) >/dev/null \
      || echo "apt-get could not install libjemalloc2; ddkit runs with the system allocator (slower on CPU)"
  fi
fi
