#!/usr/bin/env bash
# The checks that need a CUDA device, in one command that ends within 9 minutes on one
# GPU: the cuda-marked tests (`pytest -m cuda`), then the `--device cuda` benchmarks at sizes
# that finish in a minute or two each. Each step's output goes to LOGDIR/<step>.log (default
# cuda-check/) as well as to the terminal; a step that runs past its time limit is stopped
# and the next one starts. Runs with the Python on PATH, in which slade, its test extras
# (pytest, pytorch-metric-learning, faiss-cpu, scikit-learn) and onnxruntime are installed.
# The exit status is pytest's.
#
#   bash scripts/cuda_check.sh [LOGDIR]
set -uo pipefail
cd "$(dirname "$0")/.."
logs=${1:-cuda-check}
mkdir -p "$logs"
export PYTHONUNBUFFERED=1

if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "cuda_check: no CUDA device visible to torch" >&2
    exit 2
fi
python -c "import torch, slade; print(torch.__version__, torch.cuda.get_device_name(), slade.__version__)" \
    | tee "$logs/device.log"

# step NAME SECONDS COMMAND...: one check, its log, a time limit.
step() {
    local name=$1 seconds=$2
    shift 2
    echo "== $name (at most ${seconds} s)"
    timeout --signal=INT --kill-after=10 "$seconds" "$@" 2>&1 | tee "$logs/$name.log"
    return "${PIPESTATUS[0]}"
}

step pytest_cuda 240 python -m pytest -m cuda -q -p no:cacheprovider
tests=$?

step train_step_fp32 50 python bench/train_step.py --device cuda --backbone resnet50 --size 224 --steps 20
step train_step_fp16 50 python bench/train_step.py --device cuda --backbone resnet50 --size 224 --steps 20 \
    --precision fp16
step retrieval_200k 50 python bench/retrieval.py --device cuda --n 200000 --dim 128 --classes 1000 \
    --repeats 1
step retrieval_1m 30 python bench/retrieval.py --device cuda --n 1000000 --dim 128 --classes 5000 \
    --repeats 1 --no-pml
step index 40 python bench/index.py --device cuda --sizes 100000x128 1000000x128
step embed 25 python bench/embed.py --device cuda --backbone resnet50 --size 224 --channels 3 --images 2048
step losses 15 python bench/losses.py --device cuda
step swav_step 15 python bench/swav_step.py --device cuda

exit "$tests"
