#!/usr/bin/env bash
# The README's first command: sets up (scripts/setup.sh), then trains teacher and student on
# Fashion-MNIST with the preset fashion-mnist-ssl and prints both (MAP@R, RP, P@1, R@1, NMI).
# Results, checkpoints and plots go to runs/fashion-mnist-ssl; running it again resumes or
# just reports. Extra arguments are config overrides, e.g. `bash scripts/demo.sh seed=1`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
slade run --preset fashion-mnist-ssl --out runs/fashion-mnist-ssl "$@"
