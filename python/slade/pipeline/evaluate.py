"""Evaluation: MAP@R, R-Precision, P@1, Recall@K and NMI of a model on the test (or
validation) split (Musgrave et al. 2020)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .._durable import write_json
from .._images import embed_dataset
from ..config import Config
from ..errors import ConfigError
from .data_loading import data_or_load
from .inputs import as_config, as_model
from .stages import Progress


def evaluate(
    model: Any,
    data: Any = None,
    *,
    config: Config | str | None = None,
    split: str | None = None,
) -> dict[str, float]:
    """Retrieval metrics of a model on the test (or validation) split.

    Args:
        model: a trainer or :class:`slade.EmbeddingModel`, a ``torch.nn.Module`` of your
            own (images to embeddings), or a checkpoint path.
        data: a :class:`slade.data.SemiSupervisedData` (its ``test`` images, against its
            ``gallery`` when it has one) or a labeled dataset; ``None`` loads ``config.data``.
        config: batch size, Recall@K, NMI (``eval``) and the data section.
        split: ``"test"`` or ``"val"``; default ``config.data.evaluate_on``.

    Returns:
        ``{"map_at_r", "r_precision", "precision_at_1", "recall_at_1", ..., "nmi"}``
        (see :func:`slade.retrieval_metrics`).
    """
    config = as_config(config)
    model = as_model(model, config.device)
    data = data_or_load(data, config)
    view = embed_split(model, data, config, split or config.data.evaluate_on)
    return view_metrics(view, config, model.device)


def evaluation_sets(data: Any, split: str) -> tuple[Any, Any]:
    """(queries, gallery or None) of the split."""
    if split == "val":
        if getattr(data, "val", None) is None:
            raise ConfigError("this data has no validation split: set data.val_classes > 0")
        return data.val, None
    if split != "test":
        raise ConfigError(f"split must be 'test' or 'val', got {split!r}")
    if hasattr(data, "test"):
        return data.test, getattr(data, "gallery", None)
    return data, None


def embed_split(model: Any, data: Any, config: Config, split: str) -> dict[str, torch.Tensor]:
    """The split's embeddings and labels: ``query``, ``query_labels`` and, against a
    gallery, ``reference`` and ``reference_labels``."""
    queries, gallery = evaluation_sets(data, split)
    progress = Progress(config.progress).iterate

    def embed(dataset: Any, description: str) -> torch.Tensor:
        return embed_dataset(
            model,
            dataset,
            batch_size=config.eval.batch_size,
            num_workers=config.data.num_workers,
            progress=progress,
            description=description,
        )

    view = {"query": embed(queries, f"embed {split}"), "query_labels": queries.labels}
    if gallery is not None:
        view["reference"] = embed(gallery, "embed gallery")
        view["reference_labels"] = gallery.labels
    return view


def view_metrics(view: Mapping[str, torch.Tensor], config: Config, device: Any) -> dict[str, float]:
    """Retrieval metrics of :func:`embed_split`'s embeddings, computed on ``device``."""
    from ..retrieval import retrieval_metrics

    def on_device(key: str) -> torch.Tensor | None:
        value = view.get(key)
        return value.to(device) if value is not None else None

    return retrieval_metrics(
        on_device("query"),
        on_device("query_labels"),
        on_device("reference"),
        on_device("reference_labels"),
        recall_at=list(config.eval.recall_at),
        nmi=config.eval.nmi,
    )


def stage_metrics(
    model: Any, data: Any, config: Config, folder: Path | None, split: str
) -> tuple[dict, dict | None]:
    """Metrics of a stage's model, cached in its folder's ``metrics_<split>.json``; also the
    embeddings when they were computed here."""
    cached = folder / f"metrics_{split}.json" if folder is not None else None
    if cached is not None and cached.exists():
        return json.loads(cached.read_text()), None
    view = embed_split(model, data, config, split)
    metrics = view_metrics(view, config, model.device)
    if cached is not None:
        write_json(cached, metrics)
    return metrics, view
