"""A tiny trained run shared by the deploy tests."""

from __future__ import annotations

import pytest

from processes import TINY_RUN
from slade.cli import main


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, fashion_mnist_root):
    out = tmp_path_factory.mktemp("tiny-run")
    options = ["teacher.steps=3", "student.steps=3", "eval.plots=false"]
    assert main(["run", *TINY_RUN, *options, "--out", str(out)]) == 0
    return out
