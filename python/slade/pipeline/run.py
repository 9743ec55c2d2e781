"""``run``: the whole method as a loop over its stages, [ssl] -> teacher ->
(pseudo_labels_round<r> -> student_round<r>) x rounds, then ``results.json`` and plots."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import distributed
from .._durable import write_json
from ..config import Config, LogConfig, preset
from ..torch_train.model import fresh
from .data_loading import data_or_load
from .diagnose import diagnose
from .evaluate import stage_metrics
from .inputs import as_config
from .pseudo_labels import PseudoLabels, pseudo_label
from .report import write_plots
from .results import RunResult, data_summary
from .run_folder import check_run_folder, prepare_run_folder
from .run_log import RunLog, check_log
from .ssl import train_ssl
from .stages import PSEUDO_LABELS, SSL, STUDENT, TEACHER, Callback, Stage
from .student import train_student
from .teacher import train_teacher


def run(
    config: Config | str | None = None,
    *,
    data: Any = None,
    overrides: Any = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    callback: Callback | None = None,
    model: Any = None,
) -> RunResult:
    """The whole method: [SSL] -> teacher -> (pseudo labels -> student) x rounds -> report.

    Args:
        config: a :class:`~slade.config.Config` or a preset name.
        data: the data to use instead of loading ``config.data``.
        overrides: ``["key=value", ...]`` or ``{"key": value}`` applied to the config.
        out: output folder (default ``config.out``; ``None`` saves nothing). It receives
            ``config.json``, one folder per stage, named by its stage id (``ssl/``,
            ``teacher/``, ``pseudo_labels_round<r>/``, ``student_round<r>/``) with
            checkpoints, histories, pseudo labels and cached metrics, ``results.json`` and
            ``plots/*.png``. A folder holding an interrupted run with the same configuration
            is resumed: finished stages are skipped and the interrupted one continues from
            its latest checkpoint.
        overwrite: delete an earlier run's files in ``out`` first (and its TensorBoard events).
        callback: ``callback(stage_id, step, metrics)`` after every training step.
        model: a ``torch.nn.Module`` of your own, or a callable returning one, instead of
            ``config.model``'s network (whose ``in_channels`` and ``dim`` then describe the
            module's input images and embeddings): every training stage trains a fresh one,
            the factory's result (called with torch's generators seeded with
            ``config.seed``) or a copy of the module as given, the step running in Python
            (:mod:`slade.torch_train`). ``student.init = "teacher"`` starts the student from
            the teacher's weights, otherwise it starts where the teacher started.

    With ``config.log`` the run also writes TensorBoard event files, ``history.csv`` files or
    a Weights & Biases run (:mod:`slade.pipeline.run_log`; README, "Logging").

    Under ``torchrun`` (or in a process group the caller initialised) every rank runs this
    with the same arguments: each trains on its share of every batch, embeds its shard of
    each split, and gets the run's result; rank 0 alone writes files, logs and shows
    progress (README, "Many processes"; :mod:`slade.distributed`).

    Returns:
        A :class:`RunResult`; ``print(result.table())`` shows teacher vs student.
    """
    config = _rank_config(_run_config(config, overrides, out))
    folder = Path(config.out) if config.out is not None else None
    if folder is not None:
        check_run_folder(folder, config, overwrite)
    check_log(config, folder, overwrite)
    data = data_or_load(data, config)
    with distributed.writes_by_rank0():
        if folder is not None:
            prepare_run_folder(folder, config, overwrite)
        with RunLog.open(config, folder, overwrite) as log:
            state = _RunState(config, data, folder, log.callback(callback), log, model)
            return _run_stages(state)


def _rank_config(config: Config) -> Config:
    """The config of this rank: in a process group (joined here when ``torchrun`` launched
    this process) its own GPU, and on ranks but 0 neither progress bars nor logs."""
    d = config.distributed
    if distributed.launched():
        distributed.init_from_environment(config.device, d.backend, d.timeout)
    if not distributed.active():
        return config
    config.device = distributed.rank_device(config.device)
    if not distributed.is_writer():
        config.progress = False
        config.log = LogConfig()
    return config


def _run_stages(state: _RunState) -> RunResult:
    """Each stage of the plan, then the report. In a process group the ranks start each
    stage together, so that they all see the files rank 0 wrote before it."""
    for stage in plan(state.config):
        distributed.barrier()
        _RUNNERS[stage.kind](state, stage)
    result = state.result()
    if state.out is not None and distributed.is_writer():
        _report(result, state, state.out)
    distributed.barrier()
    return result


def plan(config: Config) -> list[Stage]:
    """The stages of a run, in order."""
    stages = [Stage(SSL)] if config.ssl.enabled else []
    stages.append(Stage(TEACHER))
    for number in range(1, config.rounds + 1):
        stages += [Stage(PSEUDO_LABELS, number), Stage(STUDENT, number)]
    return stages


def _run_config(config: Config | str | None, overrides: Any, out: Any) -> Config:
    """A copy of the config (or of the preset named) with the overrides and ``out``."""
    if isinstance(config, str):
        config = preset(config)
    config = config.copy() if isinstance(config, Config) else as_config(config)
    config.override(overrides)
    if out is not None:
        config.out = os.fspath(out)
    return config.validate()


@dataclass
class _RunState:
    """What the stages of a run hand on to each other, by stage id."""

    config: Config
    data: Any
    out: Path | None
    callback: Callback | None
    log: RunLog
    model: Any = None  # a module of the user's or its factory; None: config.model's network
    init: Any = None  # the SwAV trainer, when the ssl stage ran
    teacher_id: str = TEACHER  # the current teacher: the teacher, then each round's student
    trainers: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    views: dict[str, Any] = field(default_factory=dict)  # embeddings behind the metrics
    pseudo_labels: dict[str, PseudoLabels] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def fresh_model(self) -> Any:
        """What a training stage trains: None (config.model's network) or a fresh module."""
        return None if self.model is None else fresh(self.model)

    @contextmanager
    def timed(self, key: str) -> Iterator[None]:
        began = time.perf_counter()
        yield
        self.seconds[key] = round(time.perf_counter() - began, 2)

    def trained(self, stage: Stage, trainer: Any) -> dict[str, float]:
        """Records a trained model and its metrics; it becomes the current teacher."""
        self.trainers[stage.id] = trainer
        self.log.history(stage.id, trainer.history)
        split = self.config.data.evaluate_on
        with self.timed(f"{stage.id}/evaluate"):
            metrics, self.views[stage.id] = stage_metrics(
                trainer, self.data, self.config, stage.folder(self.out), split
            )
        self.metrics[stage.id] = metrics
        self.log.evaluation(stage.id, trainer.step_count, metrics)
        self.teacher_id = stage.id
        return metrics

    def result(self) -> RunResult:
        return RunResult(
            teacher=self.metrics[TEACHER],
            student=self.rounds[-1]["student"],
            pseudo_labels=[entry["pseudo_labels"] for entry in self.rounds],
            rounds=self.rounds,
            config=self.config,
            out=self.out,
            seconds=self.seconds,
            trainers=self.trainers,
            split=self.config.data.evaluate_on,
            metrics=self.metrics,
            data=data_summary(self.data),
        )


def _ssl(state: _RunState, stage: Stage) -> None:
    with state.timed(stage.id):
        state.init = train_ssl(
            state.data,
            state.config,
            out=stage.folder(state.out),
            callback=state.callback,
            model=state.fresh_model(),
        )
    state.trainers[stage.id] = state.init
    state.log.history(stage.id, state.init.history)


def _teacher(state: _RunState, stage: Stage) -> None:
    with state.timed(stage.id):
        teacher = train_teacher(
            state.data,
            state.config,
            init=state.init,
            out=stage.folder(state.out),
            callback=state.callback,
            model=state.fresh_model(),
        )
    state.trained(stage, teacher)


def _pseudo_labels(state: _RunState, stage: Stage) -> None:
    teacher = state.trainers[state.teacher_id]
    with state.timed(stage.id):
        state.pseudo_labels[stage.id] = pseudo_label(
            teacher, state.data, config=state.config, out=stage.folder(state.out)
        )
    state.log.pseudo_labels(stage.id, state.pseudo_labels[stage.id].summary())


def _student(state: _RunState, stage: Stage) -> None:
    pseudo = state.pseudo_labels[Stage(PSEUDO_LABELS, stage.round).id]
    teacher_metrics = state.metrics[state.teacher_id]
    with state.timed(stage.id):
        assert stage.round is not None, "a student stage has a round"
        student = train_student(
            state.data,
            pseudo,
            state.config,
            init=state.init,
            teacher=state.trainers[state.teacher_id],
            out=stage.folder(state.out),
            callback=state.callback,
            round=stage.round,
            model=state.fresh_model(),
        )
    metrics = state.trained(stage, student)
    with state.timed(f"{stage.id}/diagnose"):
        diagnostics = diagnose(student, state.data, pseudo, state.config)
    state.log.diagnostics(stage.id, student.step_count, diagnostics)
    state.rounds.append(
        {
            "teacher": teacher_metrics,
            "pseudo_labels": pseudo.summary(),
            "student": metrics,
            "diagnostics": diagnostics,
        }
    )


#: What each kind of stage does in a run.
_RUNNERS: dict[str, Callable[[_RunState, Stage], None]] = {
    SSL: _ssl,
    TEACHER: _teacher,
    PSEUDO_LABELS: _pseudo_labels,
    STUDENT: _student,
}


def _report(result: RunResult, state: _RunState, folder: Path) -> None:
    """``plots/*.png`` (when ``eval.plots``; the retrieval examples also to the log), then
    ``results.json``."""
    if result.config.eval.plots:
        with state.timed("plots"):
            write_plots(result, state.data, state.views, state.pseudo_labels, folder / "plots")
        state.log.figure("retrieval_examples", folder / "plots" / "retrieval_examples.png")
    write_json(folder / "results.json", result.to_dict())
