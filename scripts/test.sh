#!/usr/bin/env bash
# Set up (as scripts/setup.sh) and run the test suite. .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
eval "$(.venv/bin/python -m ddkit.allocator)"  # jemalloc where installed (speed only)
.venv/bin/python -m pytest -q "$@"
