"""Runs of the ``slade`` command in real processes, for the interrupt, kill and determinism
tests: fresh interpreters (``python -m slade``), probed runs forked from a zygote that
signals can hit in a chosen phase, and the comparison of two runs' output folders.

A fresh interpreter spends seconds importing torch; the kill matrix starts dozens of runs,
so :class:`Zygote` imports slade once and forks each probed run from it (before any torch
operation, so that each run builds its own thread pools). Every forked run is its own
process group, as a command started from a shell is: a signal sent to the group reaches
the run and its DataLoader workers, as Ctrl-C at a terminal does.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

TESTS = Path(__file__).resolve().parent
PROBED_CLI = TESTS / "probed_cli.py"

#: `slade run` arguments of a run of a few seconds: fashion-mnist-ssl with small batches,
#: 4 clusters, 200 pool and test images, and random shifts (augmentation to reproduce).
TINY_RUN = [
    "--preset",
    "fashion-mnist-ssl",
    "--no-progress",
    "teacher.batch_size=32",
    "teacher.m=8",
    "student.labeled_batch_size=16",
    "student.labeled_m=4",
    "student.unlabeled_batch_size=16",
    "student.unlabeled_m=4",
    "pseudo_labels.k=4",
    "data.max_unlabeled=200",
    "data.max_test=200",
    "data.shift=2",
]


def environment() -> dict[str, str]:
    """This process's environment with slade importable (PYTHONPATH as pytest has it)."""
    env = dict(os.environ)
    paths = [p for p in sys.path if p and Path(p, "slade", "__init__.py").exists()]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def slade_command(argv: list[str], **options) -> subprocess.CompletedProcess:
    """``python -m slade ARGV`` in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "slade", *argv],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=600,
        **options,
    )


def probed_command(log: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """``slade ARGV`` under probes (tests/probed_cli.py) in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, str(PROBED_CLI), str(log), *argv],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=600,
    )


def slade_commands(argvs: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """Several ``python -m slade`` commands at once, each in a fresh interpreter."""
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "slade", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(),
        )
        for argv in argvs
    ]
    done = []
    for process in started:
        out, err = process.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return done


# --------------------------------------------------------------------------- probed runs


@dataclass(frozen=True)
class Event:
    kind: str  # "enter", "leave" or "signal"
    name: str  # a phase (see probed_cli.py) or a signal number
    time: float | None  # time.monotonic() of a phase line


def parse_log(data: bytes) -> tuple[list[Event], bytes]:
    """The events in a piece of a probe log, and the incomplete line left at its end. A byte
    below 0x20 (but a newline) is a signal, written by the C-level handler between lines."""
    events, line = [], bytearray()
    for byte in data:
        if byte == 0x0A:
            kind, name, moment = line.decode().split()
            events.append(Event(kind, name, float(moment)))
            line.clear()
        elif byte < 0x20:
            events.append(Event("signal", str(byte), None))
        else:
            line.append(byte)
    return events, bytes(line)


class ProbedRun:
    """One probed ``slade`` command forked by the zygote, followed through its log."""

    def __init__(self, pid: int, log: Path, output: Path, exits: Exits) -> None:
        self.pid, self.log, self.output, self._exits = pid, log, output, exits
        self.events: list[Event] = []
        self._offset = 0
        self._partial = b""

    def poll(self) -> list[Event]:
        """The events logged since the last poll."""
        with open(self.log, "rb") as file:
            file.seek(self._offset)
            data = file.read()
        self._offset += len(data)
        new, self._partial = parse_log(self._partial + data)
        self.events += new
        return new

    def exited(self) -> bool:
        return self._exits.code(self.pid) is not None

    def wait_for_phase(self, accept: Callable[[str], bool], timeout: float = 300) -> Event | None:
        """The first phase entered that ``accept``s, as soon as it is logged; None when the
        run ends first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            finished = self.exited()
            for event in self.poll():
                if event.kind == "enter" and accept(event.name):
                    return event
            if finished:
                return None
            time.sleep(0.0005)
        raise TimeoutError(f"run {self.pid}: no phase accepted within {timeout} s")

    def send(self, signal_number: int) -> bool:
        """The signal to the run's process group (the run and its DataLoader workers);
        False when the run had already ended."""
        try:
            os.killpg(self.pid, signal_number)
        except ProcessLookupError:
            return False
        return True

    def wait(self, timeout: float = 300) -> int:
        """The exit code (negative: killed by that signal), after which the log is complete."""
        code = self._exits.wait(self.pid, timeout)
        self.poll()
        return code

    def index(self, kind: str, name: str) -> int | None:
        """Where the first such event is in the log (None when absent)."""
        found = (i for i, e in enumerate(self.events) if e.kind == kind and e.name == name)
        return next(found, None)

    def arrived_in(self, signal_number: int, phase: str) -> bool:
        """Whether the signal arrived (first) after the phase began and before it ended."""
        arrival = self.index("signal", str(signal_number))
        enter, leave = self.index("enter", phase), self.index("leave", phase)
        if arrival is None or enter is None:
            return False
        return enter < arrival < (leave if leave is not None else len(self.events))

    def text(self) -> str:
        return self.output.read_text(errors="replace")


class Exits:
    """Exit codes the zygote reports, by pid."""

    def __init__(self) -> None:
        self._codes: dict[int, int] = {}
        self._changed = threading.Condition()

    def record(self, pid: int, code: int) -> None:
        with self._changed:
            self._codes[pid] = code
            self._changed.notify_all()

    def code(self, pid: int) -> int | None:
        with self._changed:
            return self._codes.get(pid)

    def wait(self, pid: int, timeout: float) -> int:
        with self._changed:
            if not self._changed.wait_for(lambda: pid in self._codes, timeout):
                raise TimeoutError(f"run {pid} did not end within {timeout} s")
            return self._codes[pid]


class Zygote:
    """A process that has imported slade and forks probed ``slade`` commands, one at a time."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.process = subprocess.Popen(
            [sys.executable, str(PROBED_CLI), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=environment(),
        )
        self.exits = Exits()
        self._started: queue.Queue[int] = queue.Queue()
        self._count = 0
        threading.Thread(target=self._read_reports, daemon=True).start()

    def _read_reports(self) -> None:
        for line in self.process.stdout:
            kind, pid, *code = line.split()
            if kind == "started":
                self._started.put(int(pid))
            elif kind == "exited":
                self.exits.record(int(pid), int(code[0]))

    def start(self, argv: list[str]) -> ProbedRun:
        self._count += 1
        log = self.folder / f"run{self._count}.log"
        output = self.folder / f"run{self._count}.out"
        log.touch()
        request = {"argv": argv, "log": str(log), "output": str(output)}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return ProbedRun(self._started.get(timeout=60), log, output, self.exits)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


# --------------------------------------------------------------------------- comparison


def temporary_files(out: Path, pid: int | None = None) -> list[Path]:
    """Temporary files of interrupted writes (``<name>.tmp-<pid>``) anywhere under ``out``:
    of any process, or of ``pid``'s."""
    if not out.exists():
        return []

    def temporary(name: str) -> bool:
        return ".tmp" in name if pid is None else name.endswith(f".tmp-{pid}")

    return [path for path in out.rglob("*") if temporary(path.name)]


def checkpoint_step(path: Path) -> int:
    with safe_open(str(path), "pt") as file:
        return int(file.metadata()["slade.step"])


def history_steps(folder: Path) -> list[int]:
    path = folder / "history.json"
    return [row["step"] for row in json.loads(path.read_text())] if path.exists() else []


def results(out: Path) -> dict:
    """results.json without what may differ: wall-clock seconds and the output folder."""
    saved = json.loads((out / "results.json").read_text())
    del saved["seconds"], saved["config"]["out"]
    return saved


def assert_same_run(out: Path, reference: Path, *, ignore_config: tuple[str, ...] = ()) -> None:
    """The two output folders hold the same run: the same files (plots only by name), the
    same results.json (but for timings), histories, cached metrics, pseudo labels, JSON
    sidecars and, bit for bit, the same weights and checkpoint metadata."""
    ours, theirs = results(out), results(reference)
    for key in ignore_config:
        section, name = key.split(".")
        del ours["config"][section][name], theirs["config"][section][name]
    assert ours == theirs
    assert _listing(out) == _listing(reference)
    for path in sorted(reference.rglob("*")):
        mine = out / path.relative_to(reference)
        if path.suffix == ".json" and path.name != "config.json" and path.parent != reference:
            assert json.loads(mine.read_text()) == json.loads(path.read_text()), mine
        elif path.suffix == ".npy":
            assert np.array_equal(np.load(mine), np.load(path)), mine
        elif path.suffix == ".safetensors":
            assert_same_weights(mine, path)


def assert_same_weights(path: Path, reference: Path) -> None:
    """Every tensor bit for bit, and the metadata (config, step, random state)."""
    with safe_open(str(path), "pt") as mine, safe_open(str(reference), "pt") as theirs:
        assert mine.metadata() == theirs.metadata(), path
        assert sorted(mine.keys()) == sorted(theirs.keys()), path
        for name in theirs.keys():
            a, b = mine.get_tensor(name), theirs.get_tensor(name)
            assert a.dtype == b.dtype and torch.equal(a, b), f"{path}: {name}"


def _listing(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*"))
