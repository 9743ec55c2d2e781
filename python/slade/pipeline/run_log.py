"""A run's log (``config.log``; README, "Logging"): every metric of :func:`slade.run` as it
is produced, in TensorBoard event files and, optionally, Weights & Biases.

The run hands one :class:`RunLog` to its stages. Tags start with the stage id (the name of
the stage's folder and of its rows in ``results.json``):

- per training step, every metric of the stage's ``history.json`` row under its own name,
  learning rates included: ``<stage id>/loss``, ``<stage id>/lr/backbone``, ... at step =
  the stage's step number;
- a trained model's retrieval metrics (``results.json``'s ``metrics``):
  ``<stage id>/eval/map_at_r``, ... at the stage's last step;
- the pseudo labels' summary (k, images, inertia and, where the pool's hidden labels are
  known, NMI, purity, clusters, classes): ``pseudo_labels_round<r>/nmi``, ... at step 0;
- a student's mining diagnostics (:func:`slade.diagnose`):
  ``student_round<r>/diagnostics/pairs/<name>``, ``.../diagnostics/gradient_norms/<term>``
  and ``.../diagnostics/thresholds/t1`` (``t2``) at its last step;
- the retrieval examples figure (``plots/retrieval_examples.png``, drawn with
  ``eval.plots``) as the image ``retrieval_examples`` at step 0.

Each point is written once. A resumed run reads which (tag, step) points the folder's event
files already hold and writes only the others: the steps a resume repeats (those after the
latest checkpoint, with the same values) are not written twice, and the steps a kill kept
from the event files (written every few seconds) are written from the stage's
``history.json`` before its next step. A W&B run holds what one call of :func:`slade.run` logged: a resumed run
is a new W&B run, holding the histories of the stages again.
"""

from __future__ import annotations

import importlib
import json
import numbers
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .._durable import remove, remove_temporary_files, write_json
from ..config import Config
from ..errors import ConfigError
from .run_folder import differing_settings
from .stages import Callback, StageFiles

__all__ = ["RunLog", "check_log", "tensorboard_folder"]

#: The file of the run's configuration in a TensorBoard folder: one folder, one run.
RUN_CONFIG = "slade_run.json"
#: The step of points that belong to no training step (pseudo labels, figures).
NO_STEP = 0


def tensorboard_folder(config: Config, out: Path | None) -> Path | None:
    """Where ``log.tensorboard`` puts the event files: a relative path lies in ``out`` (the
    current folder when the run has no ``out``)."""
    if config.log.tensorboard is None:
        return None
    folder = Path(config.log.tensorboard).expanduser()
    return out / folder if out is not None and not folder.is_absolute() else folder


def check_log(config: Config, out: Path | None, overwrite: bool) -> None:
    """Raises ConfigError naming the setting when ``config.log`` asks for a package that is
    not installed, or for a TensorBoard folder holding the events of another run (which
    ``overwrite`` removes)."""
    folder = tensorboard_folder(config, out)
    if folder is not None:
        _summary_writer()
        if not overwrite:
            _check_folder(folder, config)
    if config.log.wandb:
        _wandb()


class _Sink:
    """Where points go; each (tag, step) point is written once."""

    def __init__(self, written: Iterable[tuple[str, int]] = ()) -> None:
        self.written = set(written)

    def scalars(self, stage: str, step: int, values: Mapping[str, float]) -> None:
        fresh = {tag: v for tag, v in values.items() if (tag, step) not in self.written}
        if fresh:
            self._scalars(stage, step, fresh)
            self.written.update((tag, step) for tag in fresh)

    def image(self, tag: str, step: int, image: np.ndarray) -> None:
        if (tag, step) not in self.written:
            self._image(tag, step, image)
            self.written.add((tag, step))

    def _scalars(self, stage: str, step: int, values: Mapping[str, float]) -> None:
        raise NotImplementedError

    def _image(self, tag: str, step: int, image: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _TensorBoard(_Sink):
    """Event files in one folder, through ``torch.utils.tensorboard.SummaryWriter``."""

    def __init__(self, folder: Path, config: Config, overwrite: bool) -> None:
        writer_class = _summary_writer()
        _claim_folder(folder, config, overwrite)
        super().__init__(_logged_points(folder))
        self._writer = writer_class(str(folder), flush_secs=10)

    def _scalars(self, stage: str, step: int, values: Mapping[str, float]) -> None:
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, step)

    def _image(self, tag: str, step: int, image: np.ndarray) -> None:
        self._writer.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        self._writer.close()


class _Wandb(_Sink):
    """A Weights & Biases run; each stage's metrics against its own step (``<stage>/step``)."""

    def __init__(self, config: Config, out: Path | None) -> None:
        self._wandb = _wandb()
        super().__init__()
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        self._run = self._wandb.init(
            project=config.log.wandb_project,
            config=config.to_dict(),
            dir=os.fspath(out) if out is not None else None,
            name=out.name if out is not None else None,
        )
        self._stages: set[str] = set()

    def _scalars(self, stage: str, step: int, values: Mapping[str, float]) -> None:
        if stage not in self._stages:
            self._run.define_metric(f"{stage}/step")
            self._run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
            self._stages.add(stage)
        self._run.log({**values, f"{stage}/step": step})

    def _image(self, tag: str, step: int, image: np.ndarray) -> None:
        self._run.log({tag: self._wandb.Image(image)})

    def close(self) -> None:
        self._run.finish()


class RunLog:
    """The points of a run, to each sink ``config.log`` asks for (none: it does nothing)."""

    def __init__(self, sinks: list[_Sink], out: Path | None = None) -> None:
        self._sinks = sinks
        self._out = out
        self._begun: set[str] = set()

    @classmethod
    @contextmanager
    def open(cls, config: Config, out: Path | None, overwrite: bool) -> Iterator[RunLog]:
        """The log of a run with output folder ``out``, closed (its files flushed) at the end
        of the block. ``overwrite`` first removes the event files of an earlier run."""
        sinks: list[_Sink] = []
        try:
            folder = tensorboard_folder(config, out)
            if folder is not None:
                sinks.append(_TensorBoard(folder, config, overwrite))
            if config.log.wandb:
                sinks.append(_Wandb(config, out))
            yield cls(sinks, out)
        finally:
            for sink in sinks:
                sink.close()

    def callback(self, callback: Callback | None) -> Callback | None:
        """``callback`` after the step's row is logged."""
        if not self._sinks:
            return callback

        def logged(stage: str, step: int, metrics: Mapping[str, float]) -> None:
            self.step(stage, step, metrics)
            if callback is not None:
                callback(stage, step, metrics)

        return logged

    def step(self, stage: str, step: int, metrics: Mapping[str, float]) -> None:
        """A training step's metrics: its history row, but the step."""
        if not self._sinks:
            return
        if stage not in self._begun:
            self._begin(stage, step)
        self._scalars(stage, step, "", {k: v for k, v in metrics.items() if k != "step"})

    def _begin(self, stage: str, step: int) -> None:
        """Before a stage's first step in this run: its earlier rows (from its
        ``history.json``) that the event files lack, so that steps stay in order."""
        self._begun.add(stage)
        if self._out is not None:
            self.history(stage, StageFiles(self._out / stage).history(step - 1))

    def history(self, stage: str, rows: Iterable[Mapping[str, float]]) -> None:
        """A stage's history rows; the points already written are left out."""
        for row in rows:
            self.step(stage, int(row["step"]), row)

    def evaluation(self, stage: str, step: int, metrics: Mapping[str, float]) -> None:
        """A trained model's retrieval metrics, at the stage's last step."""
        self._scalars(stage, step, "eval/", metrics)

    def pseudo_labels(self, stage: str, summary: Mapping[str, Any]) -> None:
        """The pseudo labels' summary (:meth:`PseudoLabels.summary`)."""
        self._scalars(stage, NO_STEP, "", summary)

    def diagnostics(self, stage: str, step: int, diagnostics: Mapping[str, Any]) -> None:
        """A student's mining diagnostics (:func:`slade.diagnose`), at its last step."""
        thresholds = diagnostics.get("thresholds", [])
        for part in ("pairs", "gradient_norms"):
            self._scalars(stage, step, f"diagnostics/{part}/", diagnostics.get(part, {}))
        named = {f"t{number}": value for number, value in enumerate(thresholds, start=1)}
        self._scalars(stage, step, "diagnostics/thresholds/", named)

    def figure(self, tag: str, path: Path) -> None:
        """A PNG figure as an image (none when the file was not drawn)."""
        if not self._sinks or not path.is_file():
            return
        from PIL import Image

        with Image.open(path) as figure:
            image = np.asarray(figure.convert("RGB"))
        for sink in self._sinks:
            sink.image(tag, NO_STEP, image)

    def _scalars(self, stage: str, step: int, prefix: str, values: Mapping[str, Any]) -> None:
        """The numbers among ``values`` as ``<stage>/<prefix><name>``."""
        numbers_only = {
            f"{stage}/{prefix}{name}": float(value)
            for name, value in values.items()
            if _is_number(value)
        }
        for sink in self._sinks:
            sink.scalars(stage, step, numbers_only)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _summary_writer() -> Any:
    try:
        return importlib.import_module("torch.utils.tensorboard").SummaryWriter
    except ImportError as err:
        raise ConfigError(
            "log.tensorboard needs the tensorboard package, which is not installed: "
            "pip install 'slade-rs[tensorboard]' (or unset log.tensorboard / --tensorboard)"
        ) from err


def _wandb() -> Any:
    try:
        return importlib.import_module("wandb")
    except ImportError as err:
        raise ConfigError(
            "log.wandb=true needs the wandb package, which is not installed: pip install "
            "wandb (or set log.wandb=false)"
        ) from err


def _event_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("events.out.tfevents.*")) if folder.is_dir() else []


def _claim_folder(folder: Path, config: Config, overwrite: bool) -> None:
    """Records the run's configuration in the folder (``overwrite``: after removing the
    event files of an earlier run; else refusing those of another run)."""
    saved = folder / RUN_CONFIG
    remove_temporary_files(folder)
    if overwrite:
        for path in [*_event_files(folder), saved]:
            remove(path)
    _check_folder(folder, config)
    if not saved.exists():
        write_json(saved, config.to_dict())


def _check_folder(folder: Path, config: Config) -> None:
    """Refuses a folder holding the events of a run with another configuration, or event
    files no slade run wrote."""
    saved = folder / RUN_CONFIG
    if saved.exists():
        shown = differing_settings(json.loads(saved.read_text()), config)
        if shown:
            raise ConfigError(
                f"log.tensorboard: {folder} holds the events of a run with another "
                f"configuration ({shown}); choose another folder (one per run) or overwrite"
            )
    elif _event_files(folder):
        raise ConfigError(
            f"log.tensorboard: {folder} holds event files that no slade run wrote; choose "
            "another folder (one per run) or overwrite"
        )


def _logged_points(folder: Path) -> set[tuple[str, int]]:
    """The (tag, step) points the folder's event files hold, read with TensorBoard's reader
    (a record cut short by a kill ends its file)."""
    loader = importlib.import_module("tensorboard.backend.event_processing.event_file_loader")
    points: set[tuple[str, int]] = set()
    for path in _event_files(folder):
        for event in loader.LegacyEventFileLoader(str(path)).Load():
            points.update((value.tag, int(event.step)) for value in event.summary.value)
    return points
