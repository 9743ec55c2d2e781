"""Same seed and config, separate processes: ``slade run`` gives bit-for-bit the same
metrics, pseudo labels, histories and weights on the CPU, with ``data.num_workers`` 0 and 2
(which do not change the results), on the in-memory batch path (``data.augment=auto``)
and the per-image-transform path (``data.augment=transform``) (README, "Guarantees")."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from processes import TINY_RUN, assert_same_run, environment, slade_commands

pytestmark = pytest.mark.usefixtures("fashion_mnist_root")

TINY = [*TINY_RUN, "teacher.steps=3", "student.steps=3", "eval.plots=false"]


@pytest.mark.parametrize("augment", ["auto", "transform"])
def test_two_processes_each_with_0_and_2_workers_give_the_same_run(tmp_path, augment):
    workers = [0, 0, 2, 2]
    outs = [tmp_path / f"run{i}_workers{n}" for i, n in enumerate(workers)]
    done = slade_commands(
        [
            ["run", "--out", str(out), *TINY, f"data.augment={augment}", f"data.num_workers={n}"]
            for out, n in zip(outs, workers)
        ]
    )
    assert [d.returncode for d in done] == [0] * 4, [d.stderr for d in done]
    for out in outs[1:]:
        assert_same_run(out, outs[0], ignore_config=("data.num_workers",))


#: A ``slade`` command whose process first asks torch for deterministic algorithms (warning,
#: not failing, where an operation has none), as README "Guarantees" → "On CUDA" describes.
DETERMINISTIC_SLADE = (
    "import sys, torch; torch.use_deterministic_algorithms(True, warn_only=True); "
    "from slade.cli import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.mark.cuda
def test_cuda_runs_with_deterministic_algorithms_repeat_bit_for_bit(tmp_path):
    """README "On CUDA": with ``torch.use_deterministic_algorithms(True)`` and
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` set before the run, two processes give the same run
    (metrics, pseudo labels, histories, weights) on a CUDA device."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    env = {**environment(), "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    outs = [tmp_path / f"run{i}" for i in range(2)]
    for out in outs:
        argv = ["run", "--out", str(out), *TINY, "device=cuda"]
        done = subprocess.run(
            [sys.executable, "-c", DETERMINISTIC_SLADE, *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
    assert_same_run(outs[1], outs[0])
