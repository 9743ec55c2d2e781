"""Ctrl-C and kills of ``slade run`` in real processes, then ``slade run`` again with the
same ``--out``: it ends with the results, weights and histories of an uninterrupted run,
bit for bit, and no temporary file survives (README, "Guarantees").

The interrupted runs are probed (tests/probed_cli.py): the signal goes out the moment a
run enters the chosen phase, and the run's log shows where it arrived. The runs take the
per-image-transform path with two DataLoader workers, and each signal goes to the run's
process group, workers included, as Ctrl-C at a terminal does.
"""

from __future__ import annotations

import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from processes import (
    TINY_RUN,
    ProbedRun,
    Zygote,
    assert_same_run,
    checkpoint_step,
    history_steps,
    parse_log,
    probed_command,
    slade_command,
    temporary_files,
)

pytestmark = pytest.mark.usefixtures("fashion_mnist_root")

TINY = [
    *TINY_RUN,
    "teacher.steps=5",
    "student.steps=4",
    "checkpoint_every=2",
    "data.augment=transform",
    "data.num_workers=2",
    "eval.examples=1",
    "eval.top_k=4",
]


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, list[Phase]]:
    """An uninterrupted run in a fresh interpreter, and its phases in order with their
    durations (the run is probed; the probes only observe)."""
    folder = tmp_path_factory.mktemp("reference")
    out, log = folder / "run", folder / "run.log"
    done = probed_command(log, ["run", "--out", str(out), *TINY])
    assert done.returncode == 0, done.stderr
    return out, phases_of(log)


def phases_of(log: Path) -> list[Phase]:
    events, _ = parse_log(log.read_bytes())
    entered = {e.name: e.time for e in events if e.kind == "enter"}
    left = {e.name: e.time for e in events if e.kind == "leave"}
    return [Phase(name, left[name] - began) for name, began in entered.items()]


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    started = Zygote(tmp_path_factory.mktemp("runs"))
    yield started
    started.close()


def resume_with_the_command(out: Path, reference: Path) -> None:
    """``slade run`` with the same ``--out`` ends with the uninterrupted run, and no
    temporary file is left."""
    done = slade_command(["run", "--out", str(out), *TINY])
    assert done.returncode == 0, done.stderr
    assert temporary_files(out) == []
    assert_same_run(out, reference)


# --------------------------------------------------------------------------- Ctrl-C


def written_file(phase: str) -> str | None:
    """The file a phase writes, relative to the run's folder: ``save:<stage>/<file>:<step>``
    (weights, by Rust), ``write:<stage>/history.json:<rows>``, ``write:results.json``."""
    kind, *parts = phase.split("#")[0].split(":")
    return parts[0] if kind in ("save", "write") else None


def wait_for_temporary_file(run: ProbedRun, phase: str, out: Path) -> None:
    """In a phase that writes a file, until its temporary file exists (or the phase ends)."""
    written = written_file(phase)
    if written is None:
        return
    temporary = out / f"{written}.tmp-{run.pid}"
    deadline = time.monotonic() + 10
    while not temporary.exists() and time.monotonic() < deadline:
        run.poll()
        if run.index("leave", phase) is not None:
            return
        time.sleep(0.0002)


def nothing_written(out: Path) -> None:
    assert not out.exists() or list(out.iterdir()) == []


def nothing_saved(stage: str):
    def check(out: Path) -> None:
        assert not (out / stage).exists() or list((out / stage).iterdir()) == []

    return check


def checkpoint_at(stage: str, step: int):
    """A checkpoint at ``step`` with exactly the history rows 1..step."""

    def check(out: Path) -> None:
        assert checkpoint_step(out / stage / "checkpoint.safetensors") == step
        assert history_steps(out / stage) == list(range(1, step + 1))

    return check


def finished_without(stage: str, name: str):
    def check(out: Path) -> None:
        assert (out / stage / "final.safetensors").exists()
        assert not (out / stage / name).exists()

    return check


def no_results(out: Path) -> None:
    assert (out / "student_round1" / "final.safetensors").exists()
    assert not (out / "results.json").exists()


#: Where each Ctrl-C lands, and what the output folder then holds (README, "Guarantees").
CTRL_C = [
    ("load_data", nothing_written),
    ("batch:teacher:1", nothing_saved("teacher")),
    ("step:teacher:3", checkpoint_at("teacher", 3)),
    ("save:teacher/checkpoint.safetensors:4", checkpoint_at("teacher", 4)),
    ("evaluate:teacher", finished_without("teacher", "metrics_test.json")),
    ("pseudo_label:pseudo_labels_round1", nothing_saved("pseudo_labels_round1")),
    ("save:student_round1/checkpoint.safetensors:2", checkpoint_at("student_round1", 2)),
    ("step:student_round1:3", checkpoint_at("student_round1", 3)),
    ("plots", no_results),
]


def test_ctrl_c_in_each_phase_then_slade_run_again_ends_as_the_uninterrupted_run(
    tmp_path, zygote, reference
):
    out = tmp_path / "run"
    argv = ["run", "--out", str(out), *TINY]
    for phase, check in CTRL_C:
        run = zygote.start(argv)
        assert run.wait_for_phase(lambda name, phase=phase: name == phase) is not None, phase
        wait_for_temporary_file(run, phase, out)
        run.send(signal.SIGINT)
        assert run.wait() == 130, run.text()
        assert "interrupted (run the same command again to resume)" in run.text()
        assert run.arrived_in(signal.SIGINT, phase), f"Ctrl-C did not arrive in {phase}"
        check(out)
        assert temporary_files(out) == [], phase
    resume_with_the_command(out, reference[0])


# --------------------------------------------------------------------------- kill -9


@dataclass(frozen=True)
class KillPoint:
    phase: str
    position: int  # of the phase in the reference run
    fraction: float | None  # of the phase's duration; None: once its temporary file exists


def kill_points(phases: list[Phase], count: int, seed: int) -> list[KillPoint]:
    """``count`` kill points, seeded: inside every file write (the moment its temporary file
    exists), in a phase of each other kind, the rest in phases drawn at random, each at a
    random fraction of the phase's duration in the reference run."""
    rng = random.Random(seed)
    position = {phase.name: i for i, phase in enumerate(phases)}
    writes = {p.name for p in phases if written_file(p.name)}
    kinds: dict[str, list[str]] = {}
    for phase in phases:
        if phase.name not in writes:
            kinds.setdefault(phase.name.split(":")[0], []).append(phase.name)
    chosen = writes | {rng.choice(names) for names in kinds.values()}
    others = [p.name for p in phases if p.name not in chosen]
    chosen |= set(rng.sample(others, count - len(chosen)))
    return [
        KillPoint(name, position[name], None if name in writes else rng.random())
        for name in sorted(chosen, key=position.get)
    ]


def kill_in(run: ProbedRun, point: KillPoint, phases: list[Phase], out: Path) -> str | None:
    """Waits for the run to reach the point (or the first phase after it), then SIGKILLs
    the run's process group; returns the phase it was killed in (None: the run had ended,
    after its last write)."""
    position = {phase.name: i for i, phase in enumerate(phases)}
    entered = run.wait_for_phase(lambda name: position.get(name, -1) >= point.position)
    assert entered is not None, f"the run ended before {point.phase}"
    if point.fraction is None:
        wait_for_temporary_file(run, entered.name, out)
    else:
        time.sleep(point.fraction * phases[position[entered.name]].seconds)
    killed = run.send(signal.SIGKILL)
    assert run.wait() == (-signal.SIGKILL if killed else 0), run.text()
    return entered.name if killed else None


def assert_resumable(out: Path) -> None:
    """Every checkpoint on disk is whole and the history reaches its step."""
    for stage in (p for p in out.iterdir() if p.is_dir() and p.name != "plots"):
        for name in ("checkpoint.safetensors", "final.safetensors"):
            if (stage / name).exists():
                step = checkpoint_step(stage / name)
                assert history_steps(stage)[:step] == list(range(1, step + 1)), stage


def test_kill_9_at_24_seeded_points_then_slade_run_again_ends_as_the_uninterrupted_run(
    tmp_path, zygote, reference
):
    reference_out, phases = reference
    points = kill_points(phases, 24, seed=14)
    assert {p.phase.split(":")[0] for p in points} == {p.name.split(":")[0] for p in phases}
    out = tmp_path / "run"
    argv = ["run", "--out", str(out), *TINY]
    killed_in, left_temporary = [], []
    for point in points:
        run = zygote.start(argv)
        phase = kill_in(run, point, phases, out)
        if phase is not None:
            killed_in.append(phase)
            left_temporary += [(phase, p.name) for p in temporary_files(out, run.pid)]
        if out.exists():
            assert_resumable(out)
    assert len(killed_in) >= 20, killed_in
    # Kills landed inside file writes, weights ones included, after their temporary file.
    assert any(phase.startswith("save:") for phase, _ in left_temporary), left_temporary
    assert any(phase.startswith("write:") for phase, _ in left_temporary), left_temporary
    resume_with_the_command(out, reference_out)
