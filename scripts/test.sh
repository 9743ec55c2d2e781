#!/usr/bin/env bash
# The whole test suite: sets up (scripts/setup.sh), then the lint step (scripts/lint.sh), the
# Rust unit tests, the install check (scripts/check_install.sh: dist/'s wheel and sdist, the
# wheel installed in a fresh virtualenv without cargo), and pytest (notebooks included).
# SLADE_CHECK_SDIST=1 adds scripts/check_sdist.sh (pip builds the sdist from scratch: a third
# compile of the crate). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate

echo "== lint"
bash scripts/lint.sh

TORCH_LIB=$(python -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")
echo "== cargo test"
LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" cargo test --release --quiet

echo "== wheel and sdist (dist/); the wheel in a fresh virtualenv without cargo"
bash scripts/check_install.sh
if [ "${SLADE_CHECK_SDIST:-0}" = 1 ]; then
    echo "== the sdist built by pip in a fresh virtualenv"
    bash scripts/check_sdist.sh --no-build
fi

echo "== pytest"
python -m pytest -q "$@"
