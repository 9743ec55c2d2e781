"""`torchrun -m slade run`: the whole pipeline on Gloo ranks, launched as users launch it.
Two ranks must give the results and weights of one rank with the same global batches (to
float rounding); a rank killed or interrupted ends the whole job with an error, never a
hang, and the same command then resumes and ends bit for bit as an uninterrupted run of the
same ranks; a batch that does not split into whole classes per rank is a clear error."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from processes import TINY_RUN, assert_same_run, environment, temporary_files

#: The tiny run, shorter, with a checkpoint every 3 steps (so that a kill finds one). Short
#: enough that float rounding (a sum over ranks is not a sum in one process) has not yet
#: grown into different steps (mining thresholds and hinge margins make a loss jump where a
#: pair crosses them): over longer runs it does, as between any two orders of
#: summation (the per-step equality is tests/trainers/test_data_parallel.py's).
RUN = [*TINY_RUN, "teacher.steps=10", "student.steps=4", "checkpoint_every=3", "eval.plots=false"]


def torchrun(ranks: int, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={ranks}", "-m", "slade", "run", *RUN, *extra, "--out", str(out),
    ]  # fmt: skip


def run(ranks: int, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**environment(), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        torchrun(ranks, out, *extra), capture_output=True, text=True, env=env, timeout=600
    )


#: k-means of the pool: on the embeddings every rank gathers, or on each rank's shard.
KMEANS = {"gathered": [], "sharded": ["pseudo_labels.sharded=true"]}


def two_rank_run(tmp_path_factory, kmeans: str) -> Path:
    out = tmp_path_factory.mktemp("torchrun") / "two"
    done = run(2, out, *KMEANS[kmeans])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "student" in done.stdout  # rank 0 printed the table
    return out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, fashion_mnist_root) -> Path:
    return two_rank_run(tmp_path_factory, "gathered")


@pytest.fixture(scope="module")
def two_ranks_sharded(tmp_path_factory, fashion_mnist_root) -> Path:
    return two_rank_run(tmp_path_factory, "sharded")


def metrics(out: Path) -> dict:
    saved = json.loads((out / "results.json").read_text())
    return {"teacher": saved["teacher"], "student": saved["student"]}


@pytest.mark.parametrize("kmeans", list(KMEANS))
def test_two_ranks_give_the_results_and_weights_of_one(request, kmeans, tmp_path):
    two_ranks = request.getfixturevalue("two_ranks" if kmeans == "gathered" else "two_ranks_sharded")
    one = tmp_path / "one"
    done = run(1, one, *KMEANS[kmeans])
    assert done.returncode == 0, done.stderr[-3000:]
    for stage in ("teacher", "student"):
        for name, value in metrics(one)[stage].items():
            assert metrics(two_ranks)[stage][name] == pytest.approx(value, abs=1e-3), (stage, name)
    ours = load_file(two_ranks / "student_round1" / "final.safetensors")
    theirs = load_file(one / "student_round1" / "final.safetensors")
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        if name.startswith("model.") and value.is_floating_point():
            assert torch.allclose(ours[name], value, rtol=1e-4, atol=1e-4), name
    pseudo = [np.load(f / "pseudo_labels_round1" / "pseudo_labels.npy") for f in (two_ranks, one)]
    assert np.array_equal(*pseudo)


def _workers(agent: subprocess.Popen) -> list[int]:
    """The pids of torchrun's worker processes (the children of its agent)."""
    found = subprocess.run(["pgrep", "-P", str(agent.pid)], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def _wait_for(path: Path, agent: subprocess.Popen, timeout: float = 300) -> None:
    began = time.monotonic()
    while not path.exists():
        assert agent.poll() is None, "the run ended before it wrote " + str(path)
        assert time.monotonic() - began < timeout, f"no {path} after {timeout} s"
        time.sleep(0.05)


@pytest.mark.parametrize("signal_number", [signal.SIGKILL, signal.SIGINT])
def test_a_rank_killed_or_interrupted_ends_the_job_and_the_same_command_resumes(
    two_ranks, tmp_path, signal_number
):
    out = tmp_path / "run"
    env = {**environment(), "OMP_NUM_THREADS": "1"}
    agent = subprocess.Popen(
        torchrun(2, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        _wait_for(out / "teacher" / "checkpoint.safetensors", agent)
        workers = _workers(agent)
        assert len(workers) == 2
        hit = time.monotonic()
        subprocess.run(["kill", f"-{int(signal_number)}", str(workers[-1])], check=True)
        _, stderr = agent.communicate(timeout=120)
        took = time.monotonic() - hit
    finally:
        agent.kill()
    assert agent.returncode != 0
    assert took < 60, f"the other rank took {took:.0f} s to stop"
    assert not (out / "results.json").exists()
    done = run(2, out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not temporary_files(out)
    assert_same_run(out, two_ranks)


def test_a_batch_that_splits_a_class_over_ranks_is_a_clear_error(tmp_path, fashion_mnist_root):
    done = run(2, tmp_path / "bad", "teacher.batch_size=24")
    assert done.returncode != 0
    assert "slade: error: teacher.batch_size = 24 does not split over 2 ranks" in done.stderr
