"""What a run produced (:class:`RunResult`) and the plain-text table of its metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config
from .stages import PSEUDO_LABELS, Stage

TABLE_METRICS = (
    ("MAP@R", "map_at_r"),
    ("RP", "r_precision"),
    ("P@1", "precision_at_1"),
    ("R@1", "recall_at_1"),
    ("NMI", "nmi"),
)


@dataclass
class RunResult:
    """What :func:`run` produced. Keys of ``metrics``, ``trainers`` and ``seconds`` are
    stage ids (``teacher``, ``student_round1``, ...; see :mod:`slade.pipeline.stages`).

    Attributes:
        teacher, student: metrics of the first teacher and of the last student.
        pseudo_labels: per round, the pseudo labels' summary (k, NMI, purity, ...).
        rounds: per round, ``{"teacher": metrics, "pseudo_labels": ..., "student": metrics,
            "diagnostics": ...}`` (:func:`diagnose`; empty without the pool's hidden labels).
        config: the configuration.
        out: the output folder (None when nothing was saved).
        seconds: wall time of each stage run in this call, by stage id; its evaluation and
            diagnosis under ``<stage id>/evaluate`` and ``<stage id>/diagnose``.
        trainers: the trained trainers by stage id (``"ssl"`` when used, ``"teacher"``,
            ``"student_round1"``, ...).
        split: the split the metrics are on.
        metrics: the metrics of every trained model by stage id (``teacher``,
            ``student_round1``, ...).
        data: images and classes of each part of the data (:func:`data_summary`).
    """

    teacher: dict[str, float]
    student: dict[str, float]
    pseudo_labels: list[dict[str, Any]]
    rounds: list[dict[str, Any]]
    config: Config
    out: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    trainers: dict[str, Any] = field(default_factory=dict, repr=False)
    split: str = "test"
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """Teacher and each round's student, then the pseudo labels, rows named by stage id."""
        return results_table(list(self.metrics.items()), self.pseudo_labels, split=self.split)

    def to_dict(self) -> dict[str, Any]:
        return {
            "teacher": self.teacher,
            "student": self.student,
            "metrics": self.metrics,
            "pseudo_labels": self.pseudo_labels,
            "rounds": self.rounds,
            "split": self.split,
            "seconds": self.seconds,
            "data": self.data,
            "config": self.config.to_dict(),
        }

    def __str__(self) -> str:
        return self.table()


def data_summary(data: Any) -> dict[str, Any]:
    """Images and classes of each part (``data.counts()``) and, where a loader with
    ``skip_bad_files`` checked the files, ``skipped``: how many files and class folders it
    left out and every one of them with its problem."""
    summary: dict[str, Any] = data.counts() if hasattr(data, "counts") else {}
    skipped = getattr(data, "skipped", None)
    if skipped is not None:
        summary["skipped"] = skipped.to_dict()
    return summary


def results_table(
    rows: Sequence[tuple[str, Mapping[str, float]]],
    pseudo_labels: Sequence[Mapping[str, Any]] = (),
    *,
    split: str = "test",
) -> str:
    """A plain-text table of retrieval metrics (in %), one row per model, then one line
    per round's pseudo labels (named by their stage id)."""
    present = [(title, key) for title, key in TABLE_METRICS if any(key in m for _, m in rows)]
    width = max([len(name) for name, _ in rows] + [7])
    lines = [f"{'(' + split + ')':<{width}}  " + "  ".join(f"{title:>6}" for title, _ in present)]
    for name, metrics in rows:
        cells = [
            f"{100 * metrics[key]:6.2f}" if key in metrics else f"{'-':>6}" for _, key in present
        ]
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    for number, summary in enumerate(pseudo_labels, start=1):
        lines.append(_pseudo_labels_line(Stage(PSEUDO_LABELS, number).id, summary))
    return "\n".join(lines)


def _pseudo_labels_line(stage_id: str, summary: Mapping[str, Any]) -> str:
    text = f"{stage_id}: k = {summary['k']}, {summary['images']} images"
    if "nmi" in summary:
        text += (
            f"; vs hidden labels: NMI {100 * summary['nmi']:.2f}, purity "
            f"{100 * summary['purity']:.2f}, {summary['clusters']} clusters for "
            f"{summary['classes']} classes"
        )
    return text
