"""The figures of a run, in ``out/plots``: training curves, mining diagnostics, retrieval
examples and the purity of each round's pseudo labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .evaluate import embed_split, evaluation_sets
from .pseudo_labels import PseudoLabels
from .results import RunResult
from .stages import TEACHER, student_id


def write_plots(
    result: RunResult,
    data: Any,
    views: dict[str, Any],
    pseudo_labels: dict[str, PseudoLabels],
    folder: Path,
) -> None:
    """``training_curves.png``, ``mining_diagnostics.png`` (where diagnosed),
    ``retrieval_examples.png`` and ``<pseudo labels stage id>_purity.png`` (where the pool's
    hidden labels are known). ``views``: embeddings already computed, by stage id."""
    from .. import plots

    histories = {name: getattr(trainer, "history", []) for name, trainer in result.trainers.items()}
    plots.training_curves(histories, folder / "training_curves.png")
    diagnosed = {
        student_id(number): entry["diagnostics"]
        for number, entry in enumerate(result.rounds, start=1)
        if entry.get("diagnostics")
    }
    if diagnosed:
        plots.mining_diagnostics(diagnosed, folder / "mining_diagnostics.png")
    _retrieval_examples(result, data, views, folder / "retrieval_examples.png")
    hidden = getattr(data.unlabeled, "hidden_labels", None)
    if hidden is not None:
        for stage_id, labels in pseudo_labels.items():
            plots.pseudo_label_purity(
                labels.labels,
                hidden,
                folder / f"{stage_id}_purity.png",
                title=f"{stage_id}, k = {labels.k}",
            )


def _retrieval_examples(result: RunResult, data: Any, views: dict[str, Any], path: Path) -> None:
    """The nearest neighbours of a few seeded queries by the teacher and the last student."""
    from .. import plots

    config = result.config
    queries, gallery = evaluation_sets(data, result.split)
    shown = {}
    for name in (TEACHER, student_id(len(result.rounds))):
        view = views.get(name)
        if view is None:
            view = embed_split(result.trainers[name], data, config, result.split)
        shown[name] = view
    count = min(config.eval.examples, len(queries))
    if not count:
        return
    rng = np.random.default_rng(config.seed)
    chosen = sorted(rng.choice(len(queries), size=count, replace=False).tolist())
    plots.retrieval_examples(
        shown,
        chosen,
        path,
        query_image=lambda i: plots.image_array(queries, i),
        reference_image=(lambda i: plots.image_array(gallery, i)) if gallery is not None else None,
        top_k=min(config.eval.top_k, len(queries) - 1 if gallery is None else len(gallery)),
    )
