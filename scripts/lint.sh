#!/usr/bin/env bash
# The lint step of scripts/test.sh: ruff and mypy (configured in pyproject.toml), stubtest of
# python/slade/_core.pyi against the installed extension (scripts/setup.sh installs it), and
# cargo clippy with warnings as errors (Cargo.toml [lints]). Runs in the active virtualenv,
# else .venv; the tools are pinned in requirements-dev.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi

echo "-- ruff"
python -m ruff check --quiet .
echo "-- mypy"
python -m mypy
echo "-- stubtest slade._core"
# stubtest checks the stub found beside the imported extension (a PEP 561 package) and
# passes silently when it finds none (_core is a private name): make sure it is this tree's.
python - <<'PY'
import filecmp
from pathlib import Path

import slade._core as core

stub = Path(core.__file__).with_name("_core.pyi")
assert stub.is_file(), f"no _core.pyi beside {core.__file__}"
assert filecmp.cmp(stub, "python/slade/_core.pyi", shallow=False), (
    f"{stub} differs from python/slade/_core.pyi: rerun scripts/setup.sh"
)
PY
python -m mypy.stubtest slade._core
echo "-- cargo clippy"
# The python feature takes in src/py/; --all-targets the unit tests and examples/.
cargo clippy --quiet --release --all-targets --features python -- -D warnings
echo "lint: ruff, mypy, stubtest and clippy clean"
