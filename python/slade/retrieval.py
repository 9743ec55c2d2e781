"""Exact k-NN and retrieval metrics (MAP@R, R-Precision, P@1, Recall@K).

Definitions follow Musgrave et al., "A Metric Learning Reality Check", and equal
pytorch-metric-learning's ``AccuracyCalculator(k="max_bin_count")`` on the same embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from . import _core
from ._convert import (
    as_bool,
    as_int,
    as_ints,
    as_str,
    as_tensor,
    optional_int,
    optional_tensor,
)


def knn(
    query: Any,
    reference: Any = None,
    *,
    k: int,
    engine: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` exact nearest neighbours of each query row under the Euclidean distance.

    Args:
        query: ``(N, D)`` float tensor (any device) or numpy array.
        reference: ``(M, D)`` references; ``None`` searches ``query`` itself and never
            returns a query as its own neighbour.
        k: neighbours per query.
        engine: ``"auto"`` (k-d tree for very low dimensions on CPU, blocked GEMM
            otherwise, device GEMM on CUDA), ``"gemm"``, ``"kdtree"`` or ``"torch"``.

    Returns:
        ``(distances, indices)``, each ``(N, k)`` on the query's device: Euclidean
        distances (float32) and reference indices (int64), nearest first. Ties in
        distance are broken by the smaller reference index.
    """
    return _core.knn(
        as_tensor(query, "query"),
        optional_tensor(reference, "reference"),
        as_int(k, "k"),
        as_str(engine, "engine"),
    )


def retrieval_metrics(
    query: Any,
    query_labels: Any,
    reference: Any = None,
    reference_labels: Any = None,
    *,
    k: int | None = None,
    recall_at: Sequence[int] = (1, 2, 4, 8),
    avg_of_avgs: bool = False,
    exclude_lone_queries: bool = True,
    engine: str = "auto",
    nmi: bool = False,
) -> dict[str, float]:
    """Retrieval metrics of ``query`` against ``reference`` (or against itself).

    For a query labelled y, R is the number of references labelled y (itself excluded
    when ``reference`` is ``None``) and hit(i) says whether its i-th neighbour is labelled y:

    - ``precision_at_1`` = hit(1)
    - ``r_precision`` = (1/R) sum_{i<=R} hit(i)
    - ``map_at_r`` = (1/R) sum_{i<=R} P(i) hit(i), with P(i) the precision at i
    - ``recall_at_K`` = 1 if any of the first K neighbours is a hit

    Args:
        query, query_labels: ``(N, D)`` embeddings and ``(N,)`` integer labels.
        reference, reference_labels: the gallery; ``None`` for self-retrieval.
        k: neighbours to retrieve; ``None`` retrieves exactly what the metrics need
            (PML's ``k="max_bin_count"``). A smaller k would make MAP@R wrong and is refused.
        recall_at: the K of each ``recall_at_K`` key.
        avg_of_avgs: average per class first, then over classes.
        exclude_lone_queries: skip queries without any relevant reference (PML's
            behaviour); when False they count with a score of 0.
        engine: the k-NN engine, as in :func:`knn`.
        nmi: also return ``nmi``, computed as PML's AccuracyCalculator does: k-means of the
            query embeddings with as many clusters as distinct query labels (20 iterations,
            here k-means++ seeded with seed 0), NMI of the cluster ids against the query
            labels (see :func:`slade.nmi`). Off by default: it costs a k-means run, and its
            value depends on the clustering's seed.

    Returns:
        ``{"map_at_r", "r_precision", "precision_at_1", "recall_at_1", ...}`` as floats,
        and ``"nmi"`` when asked for.
    """
    return _core.retrieval_metrics(
        as_tensor(query, "query"),
        as_tensor(query_labels, "query_labels"),
        optional_tensor(reference, "reference"),
        optional_tensor(reference_labels, "reference_labels"),
        k=optional_int(k, "k"),
        recall_at=as_ints(recall_at, "recall_at"),
        avg_of_avgs=as_bool(avg_of_avgs, "avg_of_avgs"),
        exclude_lone_queries=as_bool(exclude_lone_queries, "exclude_lone_queries"),
        engine=as_str(engine, "engine"),
        nmi=as_bool(nmi, "nmi"),
    )
