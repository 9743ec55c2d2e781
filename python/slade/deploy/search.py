"""Searching a saved gallery index with query image files: the index's model embeds the
queries (the ``slade search`` command)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..data._files import image_files_under
from ..errors import ConfigError, MissingFileError
from .embedding import embed
from .exporting import preprocessing_for


@dataclass
class QueryResult:
    """One query's neighbours, nearest first (Euclidean distance, ties to the smaller
    gallery index)."""

    query: str
    indices: list[int]
    distances: list[float]
    ids: list[str] | None
    labels: list[int] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_reference(model: str | os.PathLike) -> dict[str, Any]:
    """What an index keeps of the model that embedded it (its ``model`` entry), so that a
    search can embed queries the same way: the model file and its preprocessing."""
    from .embedding import _forward_of

    _, preprocessing, _ = _forward_of(model, None, None)
    if preprocessing is None:
        preprocessing = preprocessing_for(model, None)
    return {"path": str(Path(model).resolve()), "preprocessing": preprocessing.to_dict()}


def search_images(
    index: Any, queries: list[str | os.PathLike], k: int = 10, *, device: Any = "cpu"
) -> list[QueryResult]:
    """The ``k`` nearest gallery items of each query image (files, or folders of them).

    Args:
        index: a :class:`slade.Index` or its file, with a ``model`` entry (as ``slade
            embed`` writes it; see :func:`model_reference`).
        queries: image files or folders.
        k: neighbours per query.
        device: where the model and the search run.
    """
    from .index import Index

    if not isinstance(index, Index):
        index = Index.load(index, device=device)
    reference = index.model
    if not reference or "path" not in reference:
        raise ConfigError(
            "index: it names no model to embed the queries with; build it with `slade "
            "embed` or Index(model=slade.deploy.model_reference(model_file))"
        )
    files = _query_files(queries)
    found = embed(
        reference["path"], files, device=device, preprocessing=reference.get("preprocessing")
    )
    distances, indices = index.search(found.embeddings, k)
    return [
        QueryResult(
            query=str(query),
            indices=row.tolist(),
            distances=gaps.tolist(),
            ids=index.ids_of(row) if index.ids is not None else None,
            labels=index.labels_of(row).tolist() if index.labels is not None else None,
        )
        for query, row, gaps in zip(files, indices.cpu(), distances.cpu())
    ]


def _query_files(queries: list[str | os.PathLike]) -> list[Path]:
    files: list[Path] = []
    for query in queries:
        path = Path(query)
        if path.is_dir():
            files += image_files_under(path)
        elif path.exists():
            files.append(path)
        else:
            raise MissingFileError(f"queries: no such file or folder {path}")
    if not files:
        raise ConfigError("queries: no image files given")
    return files
