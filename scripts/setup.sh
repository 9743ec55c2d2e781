#!/usr/bin/env bash
# Sets up a development environment in .venv: Python dependencies (torch 2.11.0 from PyPI),
# the Fashion-MNIST files (Debian package dataset-fashion-mnist, when apt is available),
# and the slade extension built in release mode. Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# --no-cache-dir: no second copy of torch's 3 GB of wheels in pip's cache.
python -m pip install --quiet --no-cache-dir -r requirements-dev.txt

if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
            || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; }
    else
        echo "note: Fashion-MNIST not found; install it with: sudo apt-get install dataset-fashion-mnist" >&2
    fi
fi

# The extension links against this environment's torch (LIBTORCH_USE_PYTORCH, .cargo/config.toml).
python -m pip install --quiet --no-build-isolation .
python -c "import slade; print('slade', slade.__version__, 'ready')"
