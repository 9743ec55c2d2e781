#!/usr/bin/env bash
# Installs the package the way a user does (`pip install .`, build isolation on) into a fresh
# virtualenv and imports it there: proves the build needs no environment variables set by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
"$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet .
"$venv/bin/python" - <<'PY'
import numpy as np
import torch
import slade

x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
labels = np.arange(50) % 5
metrics = slade.retrieval_metrics(x, labels, recall_at=(1,))
assert set(metrics) >= {"map_at_r", "r_precision", "precision_at_1"}, metrics
print("fresh virtualenv: import slade", slade.__version__, "ok; torch", torch.__version__)
PY
