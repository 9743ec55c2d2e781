#!/usr/bin/env bash
# The whole test suite: sets up (scripts/setup.sh), then the Rust unit tests, the install
# check in a fresh virtualenv, and pytest (notebooks included). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate

TORCH_LIB=$(python -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")
echo "== cargo test"
LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" cargo test --release --quiet

echo "== pip install . in a fresh virtualenv"
bash scripts/check_install.sh

echo "== pytest"
python -m pytest -q "$@"
