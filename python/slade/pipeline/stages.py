"""What every stage shares: its id, its files, its training loop, resume and progress bars.

A stage's id names it everywhere: in callbacks, ``RunResult.trainers`` and ``.metrics``,
``results.json``, the result table and the stage's folder under a run's ``out``:
``ssl``, ``teacher``, then per self-training round r ``pseudo_labels_round<r>`` and
``student_round<r>``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import _core
from .._durable import remove, remove_temporary_files, write_bytes, write_json
from ..config import Config
from ..errors import NonFiniteError, SladeWarning
from ..nn import CoreModule, load_torchvision_weights
from ..torch_train import TorchTrainer
from ..torch_train.checkpoint import is_torch_checkpoint, read_info
from .interrupts import HeldInterrupts

#: ``callback(stage_id, step, metrics)`` after every training step; raising stops the run
#: (KeyboardInterrupt first saves a checkpoint at that step).
Callback = Callable[[str, int, Mapping[str, float]], None]

SSL, TEACHER, PSEUDO_LABELS, STUDENT = "ssl", "teacher", "pseudo_labels", "student"
ROUND_KINDS = (PSEUDO_LABELS, STUDENT)

_STAGE_ID = re.compile(rf"^({SSL}|{TEACHER}|({'|'.join(ROUND_KINDS)})_round[1-9][0-9]*)$")


@dataclass(frozen=True)
class Stage:
    """One stage of a run: its kind and, for pseudo labels and students, its round."""

    kind: str
    round: int | None = None

    @property
    def id(self) -> str:
        return self.kind if self.round is None else f"{self.kind}_round{self.round}"

    def folder(self, out: Path | None) -> Path | None:
        """The stage's folder under a run's output folder (None when nothing is saved)."""
        return out / self.id if out is not None else None


def student_id(round: int) -> str:
    return Stage(STUDENT, round).id


def is_stage_id(name: str) -> bool:
    return _STAGE_ID.match(name) is not None


class StageFiles:
    """A stage's folder: ``checkpoint.safetensors`` (latest, while running),
    ``final.safetensors`` (when finished), ``history.json`` (per-step metrics) and, with
    ``log.csv``, ``history.csv`` (the same rows)."""

    def __init__(self, folder: str | os.PathLike | None) -> None:
        self.folder = Path(folder) if folder is not None else None

    def path(self, name: str) -> Path | None:
        return self.folder / name if self.folder is not None else None

    @property
    def final(self) -> Path | None:
        return self.path("final.safetensors")

    @property
    def checkpoint(self) -> Path | None:
        return self.path("checkpoint.safetensors")

    def finished(self) -> bool:
        return self.final is not None and self.final.exists()

    def resumable(self) -> bool:
        return self.checkpoint is not None and self.checkpoint.exists()

    def tidy(self) -> None:
        """Removes what killed writes left: temporary files, and the latest checkpoint of a
        finished stage."""
        if self.folder is None:
            return
        remove_temporary_files(self.folder)
        if self.finished():
            self._remove_checkpoint()

    def _remove_checkpoint(self) -> None:
        """The latest checkpoint and its JSON file, when the final weights are written."""
        assert self.folder is not None
        checkpoint = self.folder / "checkpoint.safetensors"
        remove(checkpoint)
        remove(checkpoint.with_suffix(".json"))

    def history(self, upto: int) -> list[dict]:
        path = self.path("history.json")
        if path is None or not path.exists():
            return []
        rows = json.loads(path.read_text())
        # A null is a metric that was NaN or Inf (write_json writes strict JSON).
        return [
            {k: math.nan if v is None else v for k, v in r.items()}
            for r in rows
            if r["step"] <= upto
        ]

    def save(self, trainer: Any, history: list[dict], *, final: bool, csv: bool = False) -> None:
        """The history (also as CSV with ``csv``), then the checkpoint (``final``: the
        final weights, and the latest checkpoint goes)."""
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        # History first: it then always reaches at least the checkpoint's step.
        write_json(self.folder / "history.json", history)
        if csv:
            self.save_csv(history)
        checkpoint = self.folder / "checkpoint.safetensors"
        trainer.save(self.folder / "final.safetensors" if final else checkpoint)
        if final:
            self._remove_checkpoint()

    def save_csv(self, history: list[dict]) -> None:
        """``history.csv``: the rows of ``history.json``."""
        if self.folder is not None:
            write_bytes(self.folder / "history.csv", history_csv(history))

    def save_interrupted(
        self, trainer: Any, history: list[dict], start: int, *, csv: bool = False
    ) -> None:
        """A checkpoint at the interrupt when steps were taken since ``start`` and the history
        holds each of them; else the latest checkpoint stays (after an interrupt that came
        between a step and its row, a resume repeats the steps since that checkpoint)."""
        recorded = history[-1]["step"] if history else 0
        if start < trainer.step_count == recorded:
            self.save(trainer, history, final=False, csv=csv)

    def rerun_note(self, stage: str) -> str:
        """What running the same command again after a failed step of ``stage`` does (it
        resumes from the latest checkpoint, which the failed step left as it was), and what
        to change instead."""
        section = stage.split("_round")[0]
        remedy = (
            f"change {section}.optimizer (a lower lr, clip_grad_norm, or nonfinite=skip to "
            "skip such steps) in another output folder or overwriting this one (--overwrite)"
        )
        checkpoint = self.checkpoint
        if checkpoint is None:
            return f"Nothing was saved (no output folder). To go on, {remedy}."
        if checkpoint.exists():
            step = checkpoint_step(checkpoint)
            where = (
                f"The last good checkpoint, {checkpoint} (step {step}), is intact: running "
                f"the same command again resumes from step {step}"
            )
        else:
            where = (
                "No checkpoint of this stage was written yet: running the same command again "
                f"starts {stage} from step 1"
            )
        again = "and, the run being deterministic, meets this step again"
        return f"{where} {again}. To go on, {remedy}."


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint holds (of a Rust trainer, or of a trainer of a model of the
    user's)."""
    if is_torch_checkpoint(path):
        return read_info(path).step
    return _core.read_checkpoint_info(os.fspath(path))[3]


def history_csv(history: list[dict]) -> bytes:
    """History rows as CSV: a ``step`` column, then one column per metric in the order the
    metrics first appear (a metric missing from a row is an empty cell). Floats are written
    in their shortest exact form, so the cells read back as the rows' values."""
    columns = list(dict.fromkeys(["step", *(key for row in history for key in row)]))
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return text.getvalue().encode()


class Progress:
    """tqdm bars when enabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def bar(self, total: int, initial: int, description: str) -> Any:
        if not self.enabled:
            return None
        from tqdm import tqdm

        return tqdm(
            total=total, initial=initial, desc=description, dynamic_ncols=True, mininterval=0.5
        )

    def iterate(self, iterator: Iterator, total: int, description: str) -> Iterator:
        if not self.enabled:
            return iterator
        from tqdm import tqdm

        return iter(
            tqdm(
                iterator,
                total=total,
                desc=description,
                dynamic_ncols=True,
                leave=False,
                mininterval=0.5,
            )
        )


def _postfix(metrics: Mapping[str, float]) -> dict[str, str]:
    shown = {"loss": metrics.get("loss")}
    if "pairs/positive" in metrics:
        shown["pos"] = metrics["pairs/positive"]
        shown["neg"] = metrics.get("pairs/negative")
    return {k: f"{v:.4g}" for k, v in shown.items() if v is not None}


def train_loop(
    stage: str,
    trainer: Any,
    files: StageFiles,
    steps: int,
    batches: Callable[[int], Iterator[Any]],
    step: Callable[[Any], Mapping[str, float]],
    config: Config,
    callback: Callback | None,
) -> Any:
    """Steps ``trainer.step_count + 1 .. steps`` of the stage with id ``stage``, with
    checkpoints every ``config.checkpoint_every`` steps (each with the history, also as
    ``history.csv`` with ``config.log.csv``); returns the trainer with its ``history``
    (per-step metrics, also of the steps before a resume).

    Ctrl-C during a step lets it finish and be recorded (history row, due checkpoint,
    callback), then raises KeyboardInterrupt after a checkpoint at that step."""
    start = trainer.step_count
    trainer.history = history = files.history(start)
    csv = config.log.csv
    if start >= steps and files.finished():
        if csv:
            files.save_csv(history)
        return trainer
    bar = Progress(config.progress).bar(steps, min(start, steps), stage)
    with HeldInterrupts() as interrupts:
        try:
            if start < steps:
                source = batches(start)
                for number in range(start + 1, steps + 1):
                    batch = next(source)
                    with interrupts.held():
                        metrics = _record(
                            _finite_step(step, batch, stage, number, files), number, history, bar
                        )
                        if number % config.checkpoint_every == 0 and number < steps:
                            files.save(trainer, history, final=False, csv=csv)
                    if callback is not None:
                        callback(stage, number, metrics)
                    interrupts.raise_pending()
        except KeyboardInterrupt:
            with interrupts.held():
                files.save_interrupted(trainer, history, start, csv=csv)
            raise
        finally:
            if bar is not None:
                bar.close()
        with interrupts.held():
            files.save(trainer, history, final=True, csv=csv)
        interrupts.raise_pending()
    _warn_skipped(stage, history)
    return trainer


def _finite_step(
    step: Callable[[Any], Mapping[str, float]],
    batch: Any,
    stage: str,
    number: int,
    files: StageFiles,
) -> Mapping[str, float]:
    """``step(batch)``; a NaN or Inf there is a NonFiniteError naming the stage, the step
    (as the history counts it) and where a rerun starts."""
    try:
        return step(batch)
    except NonFiniteError as err:
        raise NonFiniteError(f"{stage}, step {number}: {err}. {files.rerun_note(stage)}") from err


def _warn_skipped(stage: str, history: list[dict]) -> None:
    """Warns how many steps of the stage were skipped (``optimizer.nonfinite="skip"``, or
    the fp16 loss scaler's skipped updates)."""
    skipped = sum(1 for row in history if row.get("skipped"))
    if skipped:
        warnings.warn(
            f"{stage}: {skipped} of {len(history)} steps skipped (NaN or Inf loss, gradients "
            "or images; the rows with skipped = 1 in its history)",
            SladeWarning,
            stacklevel=3,
        )


def _record(metrics: Mapping[str, float], number: int, history: list[dict], bar: Any) -> dict:
    """Appends step ``number``'s row to the history and shows it on the progress bar."""
    metrics = dict(metrics)
    history.append({**{k: float(v) for k, v in metrics.items()}, "step": number})
    if bar is not None:
        bar.update(1)
        bar.set_postfix(_postfix(metrics), refresh=False)
    return metrics


def stage_files(trainer: Any, out: Any, init: Any, *, whole_model: bool = False) -> StageFiles:
    """The stage's files, with the trainer restored from them or else initialised."""
    files = StageFiles(out)
    files.tidy()
    if not resume(trainer, files):
        initialise(trainer, init, whole_model=whole_model)
    return files


def resume(trainer: Any, files: StageFiles) -> bool:
    """Loads the stage's final or latest checkpoint; True when the trainer was restored."""
    if files.finished():
        trainer.load(files.final)
        return True
    if files.resumable():
        trainer.load(files.checkpoint)
        return True
    return False


def initialise(trainer: Any, source: Any, *, whole_model: bool = False) -> None:
    """Loads initial weights: ``None`` keeps the seeded random initialisation; a file or a
    state_dict is read as torchvision-style backbone weights; a slade model or trainer gives
    its backbone (and, with ``whole_model``, its embedding head too). A trainer of a model of
    your own loads them by its module's names (``load_backbone`` / ``load_model``)."""
    if source is None:
        return
    if isinstance(trainer, TorchTrainer):
        load = trainer.load_model if whole_model else trainer.load_backbone
        load(source)
        return
    if isinstance(source, CoreModule):
        if whole_model:
            trainer.load_model(source)
            return
        source = source.model_state_dict()
    load_torchvision_weights(trainer, source, ignore_prefixes=("fc.", "prototypes"))
