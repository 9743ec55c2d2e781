#!/usr/bin/env bash
# Builds what `pip install slade-rs` installs into dist/: the abi3 release wheel (maturin
# build --release) and the sdist (maturin sdist). The wheel links against the torch of the
# active virtualenv, else of .venv (scripts/setup.sh), which must be torch==2.11.0; it reuses
# setup.sh's release build in target/, so after setup.sh it only packs.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
python - <<'PY'
import torch

assert torch.__version__.split("+")[0] == "2.11.0", f"the wheel binds torch 2.11.0, found {torch.__version__}"
PY

mkdir -p dist
rm -f dist/slade_rs-*.whl dist/slade_rs-*.tar.gz
# pyproject.toml sets auditwheel = "warn": maturin lists LibTorch's libraries as external
# (the " => " lines) and leaves them to the torch wheel; those lines are dropped here.
maturin build --release --out dist 2>&1 | { grep -v -e ' => ' -e 'requires copying the above' -e 'External shared libraries' -e 'libslade.so requires:' || true; }
maturin sdist --out dist
ls -l dist/slade_rs-*
