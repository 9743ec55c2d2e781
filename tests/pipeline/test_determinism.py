"""Same seed and config, separate processes: ``slade run`` gives bit-for-bit the same
metrics, pseudo labels, histories and weights on the CPU, with ``data.num_workers`` 0 and 2
(which do not change the results), on the in-memory batch path (``data.augment=auto``)
and the per-image-transform path (``data.augment=transform``) (README, "Guarantees")."""

from __future__ import annotations

import pytest

from processes import TINY_RUN, assert_same_run, slade_commands

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
