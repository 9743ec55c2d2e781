"""Shared pytest configuration.

- The `cuda` marker skips tests when no CUDA device is present.
- After a run that collected the bad-input matrix (tests/core/test_bad_inputs.py), the
  terminal summary says how many cases it ran.
- The fixtures `fashion_mnist_root` and `omniglot_root` give the real data sets DESIGN.md §3
  names, and fail (never skip) when they are absent, saying how to provide them:
  Fashion-MNIST from the Debian package dataset-fashion-mnist (installed by
  scripts/setup.sh), Omniglot's archives under ``$SLADE_DATA/omniglot`` (default
  ``<repo>/../shared/data``, see ``_shared_data``).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    """``$SLADE_DATA``, else ``shared/data`` beside the checkout, else beside the checkout this
    one was cloned from (a scratch clone of a local repository)."""
    if "SLADE_DATA" in os.environ:
        return Path(os.environ["SLADE_DATA"])
    candidates = [REPO.parent / "shared" / "data"]
    origin = subprocess.run(
        ["git", "-C", str(REPO), "config", "--get", "remote.origin.url"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    if origin and Path(origin).is_dir():
        candidates.append(Path(origin).resolve().parent / "shared" / "data")
    return next((c for c in candidates if c.is_dir()), candidates[0])


DATA = _shared_data()
OMNIGLOT_ZIPS = ("images_background_small1.zip", "images_background_small2.zip")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


MATRIX_CASES = pytest.StashKey[list]()


def pytest_collection_finish(session):
    session.config.stash[MATRIX_CASES] = [
        item
        for item in session.items
        if "test_bad_inputs.py::test_bad_input[" in item.nodeid
    ]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    cases = config.stash.get(MATRIX_CASES, [])
    if cases:
        cuda = sum(1 for item in cases if item.get_closest_marker("cuda"))
        terminalreporter.write_line(
            f"bad-input matrix: {len(cases)} cases, {cuda} of them on a CUDA device "
            f"({'run' if torch.cuda.is_available() else 'skipped: no CUDA device'})"
        )


@pytest.fixture(scope="session")
def fashion_mnist_root() -> Path:
    if not any((FASHION_MNIST / f"train-images-idx3-ubyte{s}").exists() for s in ("", ".gz")):
        pytest.fail(
            f"Fashion-MNIST not found in {FASHION_MNIST}: run scripts/setup.sh or "
            "`apt-get install dataset-fashion-mnist`"
        )
    return FASHION_MNIST


@pytest.fixture(scope="session")
def omniglot_root() -> Path:
    root = DATA / "omniglot"
    missing = [name for name in OMNIGLOT_ZIPS if not (root / name).is_file()]
    if missing:
        pytest.fail(
            f"Omniglot archives {missing} not found in {root}: set SLADE_DATA to a folder "
            f"holding omniglot/{OMNIGLOT_ZIPS[0]} and omniglot/{OMNIGLOT_ZIPS[1]} (the official "
            "release, github.com/brendenlake/omniglot, python/)"
        )
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, fashion_mnist_root) -> Path:
    """A finished tiny fashion-mnist-ssl run (teacher, pseudo labels, student; 3 steps
    each), for the tests that start from a trained checkpoint."""
    from processes import TINY_RUN
    from slade.cli import main

    out = tmp_path_factory.mktemp("tiny-run")
    options = ["teacher.steps=3", "student.steps=3", "eval.plots=false"]
    assert main(["run", *TINY_RUN, *options, "--out", str(out)]) == 0
    return out
