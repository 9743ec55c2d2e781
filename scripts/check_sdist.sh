#!/usr/bin/env bash
# The path of `pip install slade-rs` where no wheel fits: pip builds dist/'s sdist with build
# isolation (torch==2.11.0 from PyPI as the build requirement) in a fresh virtualenv, with no
# LIBTORCH* or CARGO_TARGET_DIR variables set, and the smoke run (scripts/smoke_installed.py)
# follows. Proves the sdist is complete and builds with only a Rust toolchain on PATH. It
# compiles the crate from scratch (minutes on 2 cores), so scripts/test.sh runs it only with
# SLADE_CHECK_SDIST=1. Builds dist/ first unless --no-build is given.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
PYTHON=${PYTHON:-python3}
if [ "${1:-}" != "--no-build" ]; then
    bash scripts/build_dist.sh
fi
shopt -s nullglob
sdists=(dist/slade_rs-*.tar.gz)
if [ ${#sdists[@]} -ne 1 ]; then
    echo "dist/ must hold one sdist, found: ${sdists[*]:-none}" >&2
    exit 1
fi
sdist=$root/${sdists[0]}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m venv "$work/venv"
echo "-- pip install $(basename "$sdist") (build isolation) in a fresh virtualenv"
(
    cd "$work"
    unset PYTHONPATH PYTHONHOME VIRTUAL_ENV CARGO_TARGET_DIR LIBTORCH LIBTORCH_USE_PYTORCH \
        LIBTORCH_LIB LIBTORCH_INCLUDE LIBTORCH_CXX11_ABI
    export PATH="$work/venv/bin:$PATH"
    nice python -m pip install --quiet "$sdist"
    python "$root/scripts/smoke_installed.py"
)
