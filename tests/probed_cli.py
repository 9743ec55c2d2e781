"""The ``slade`` command under probes, for the interrupt and kill tests.

    python tests/probed_cli.py LOG run --preset fashion-mnist-ssl --out OUT ...
    python tests/probed_cli.py --serve      (the zygote of tests/processes.py)

runs slade's command line in this process and appends one line per event to LOG:
``enter NAME TIME`` and ``leave NAME TIME`` around each phase of the run (TIME is
``time.monotonic()``, the same clock in every process), and, the moment a signal arrives,
its number as one byte between the lines. Phase names (``#k`` is appended to the k-th
repeat of a name):

    load_data                              the data set read at the start
    batch:<stage>:<step>                   waiting for the images of a step
    step:<stage>:<step>                    a training step (Rust, GIL released)
    checkpoint:<stage>:<step>              a stage's checkpoint: its history, then its weights
    write:<stage>/history.json:<rows>      the history write (Python)
    save:<stage>/<file>:<step>             the weights' write (Rust, GIL released)
    evaluate:<stage>                       embedding the test split and its metrics
    pseudo_label:<stage>                   embedding the pool and k-means
    diagnose:<stage>, plots, write:results.json

The signal bytes come from ``signal.set_wakeup_fd``: the C-level handler writes them on
arrival, also while Rust runs with the GIL released, long before Python's handler runs. The
probes only observe: they never pause or alter the run.

With ``--serve`` it reads requests ``{"argv": [...], "log": ..., "output": ...}``, one JSON
line each, from stdin, forks a probed run for each (in its own session, stdout and stderr
to ``output``), and answers ``started PID`` and, when the run ends, ``exited PID CODE``
(CODE negative: killed by that signal).
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slade import _images, cli, train

# (``slade.pipeline.run`` is also the name of the function ``run``.)
run, stages, student, teacher = (
    importlib.import_module(f"slade.pipeline.{name}")
    for name in ("run", "stages", "student", "teacher")
)


class Log:
    """Lines appended to the log file, each with one write (O_APPEND)."""

    def __init__(self, path: str) -> None:
        self.descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.seen: Counter[str] = Counter()

    def line(self, kind: str, name: str) -> None:
        os.write(self.descriptor, f"{kind} {name} {time.monotonic():.6f}\n".encode())

    def unique(self, name: str) -> str:
        self.seen[name] += 1
        return name if self.seen[name] == 1 else f"{name}#{self.seen[name]}"


def log_signals(log: Log) -> None:
    """Each signal appends its number, one byte, to the log the moment it arrives (the
    C-level handler writes it, also while Rust runs with the GIL released), so its place
    among the phase lines says in which phase it arrived."""
    os.set_blocking(log.descriptor, False)
    signal.set_wakeup_fd(log.descriptor, warn_on_full_buffer=False)


def probe(log: Log, owner: Any, attribute: str, name: Callable[..., str]) -> None:
    """Wraps ``owner.attribute`` so that each call is logged as a phase ``name(*args)``."""
    original = getattr(owner, attribute)

    @functools.wraps(original)
    def probed(*args: Any, **kwargs: Any) -> Any:
        phase = log.unique(name(*args, **kwargs))
        log.line("enter", phase)
        try:
            return original(*args, **kwargs)
        finally:
            log.line("leave", phase)

    setattr(owner, attribute, probed)


def stage_of(trainer: Any) -> str:
    return {"TeacherTrainer": "teacher", "StudentTrainer": "student_round1"}.get(
        type(trainer).__name__, "ssl"
    )


def install(log: Log) -> None:
    probe(log, run, "data_or_load", lambda data, config: "load_data")
    for trainer in (train.SwavTrainer, train.TeacherTrainer, train.StudentTrainer):
        probe(log, trainer, "step", lambda t, *a, **k: f"step:{stage_of(t)}:{t.step_count + 1}")
    probe(log, stages.StageFiles, "save", _checkpoint)
    probe(log, stages, "write_json", lambda path, rows: f"write:{_relative(path)}:{len(rows)}")
    probe(log, train._Trainer, "save", lambda t, path: f"save:{_relative(path)}:{t.step_count}")
    probe(log, run, "stage_metrics", lambda model, data, config, out, split: f"evaluate:{out.name}")
    probe(log, run, "pseudo_label", lambda *a, out, **k: f"pseudo_label:{Path(out).name}")
    probe(log, run, "diagnose", lambda student, *a, **k: f"diagnose:{stage_of(student)}")
    probe(log, run, "write_plots", lambda *a, **k: "plots")
    probe(log, run, "write_json", lambda path, value: f"write:{Path(path).name}")
    _probe_batches(log)


def _checkpoint(files: Any, trainer: Any, *args: Any, **kwargs: Any) -> str:
    return f"checkpoint:{files.folder.name}:{trainer.step_count}"


def _probe_batches(log: Log) -> None:
    """``batch:<stage>:<step>``, the stage known from the training loop that runs."""
    current = {"stage": "?"}
    for module in (teacher, student):
        original = module.train_loop

        def loop(stage: str, *args: Any, _original: Any = original) -> Any:
            current["stage"] = stage
            return _original(stage, *args)

        module.train_loop = loop
    probe(log, _images.StepBatches, "__next__", lambda b: f"batch:{current['stage']}:{b.step + 1}")


def _relative(path: Any) -> str:
    path = Path(path)
    return f"{path.parent.name}/{path.name}"


def main(log_path: str, argv: list[str]) -> int:
    log = Log(log_path)
    log_signals(log)
    install(log)
    return cli.main(argv)


def serve() -> None:
    from slade import plots

    plots._pyplot()  # matplotlib imported once, here, not in every run
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _run_forked(request)
        print(f"started {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exited {pid} {os.waitstatus_to_exitcode(status)}", flush=True)


def _run_forked(request: dict) -> None:
    """The forked child: its own session, its own output, then the probed command."""
    code = 1
    try:
        os.setsid()
        output = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(output, 1)
        os.dup2(output, 2)
        code = main(request["log"], request["argv"])
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve()
    else:
        sys.exit(main(sys.argv[1], sys.argv[2:]))
