"""k-means, cluster labels and NMI (SLADE Sec 3.2; DESIGN.md §2.3).

The student is trained on pseudo labels: the k-means cluster ids of the teacher's
L2-normalised embeddings of the unlabeled images (:func:`cluster_labels`; the pipeline step
that embeds the pool and clusters it is :func:`slade.pseudo_label`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from . import _core
from ._convert import as_float, as_int, as_tensor
from .errors import DtypeError


class _KMeansFields(NamedTuple):
    centroids: torch.Tensor
    labels: torch.Tensor
    inertia: float


class KMeansResult(_KMeansFields):
    """The result of :func:`kmeans`, on the input's device: a named triple
    ``(centroids, labels, inertia)``, plus the attribute ``iterations``.

    - ``centroids``: ``(k, dim)`` (float64 for float64 input, float32 otherwise).
    - ``labels``: ``(N,)`` int64 cluster id of each point, its exact nearest centroid.
    - ``inertia``: sum of the squared distances of the points to their centroids (float64).
    - ``iterations``: Lloyd iterations run (fewer than ``iters`` when the labels settled).
    """

    iterations: int


def _init_arg(init: Any) -> Any:
    if isinstance(init, str):
        return init
    if not isinstance(init, (torch.Tensor, np.ndarray)):
        raise DtypeError(
            'init must be "k-means++", "random" or a (k, dim) tensor of centroids, '
            f"got {type(init).__name__}"
        )
    return as_tensor(init, "init")


def _options(k: Any, iters: Any, seed: Any, init: Any, tol: Any) -> dict[str, Any]:
    """The k-means arguments of the core, each of its type."""
    return {
        "k": as_int(k, "k"),
        "iters": as_int(iters, "iters"),
        "seed": as_int(seed, "seed"),
        "init": _init_arg(init),
        "tol": as_float(tol, "tol"),
    }


def kmeans(
    x: Any,
    k: int,
    *,
    iters: int = 20,
    seed: int = 0,
    init: Any = "k-means++",
    tol: float = 0.0,
) -> KMeansResult:
    """k-means (Lloyd's algorithm) of the rows of ``x``, computed on ``x``'s device.

    Assignments are exact: each point goes to the centroid with the smallest squared
    Euclidean distance evaluated in float64, ties to the smaller centroid index (distances
    come from blocked GEMM; points whose nearest centroid is within the GEMM's rounding
    error of another are re-decided exactly). Centroids are float64 means of their points.
    A cluster left empty is re-seeded with the point farthest from its own centroid, as
    scikit-learn does. The same seed gives the same result.

    Args:
        x: ``(N, dim)`` float tensor (any device) or numpy array (not copied).
        k: number of clusters, ``1 <= k <= N``.
        iters: maximum number of Lloyd iterations.
        seed: seed of the initialisation.
        init: ``"k-means++"``: scikit-learn's greedy k-means++ (Arthur & Vassilvitskii
            2007): the first centroid is a random point; at each next step 2 + ln(k)
            candidates are drawn with probability proportional to their squared distance to
            the nearest centroid so far (D^2 sampling), and the one that lowers the sum of
            those squared distances most is kept. The candidates come from pools of D^2
            samples whose distances are computed by one GEMM each, thinned by rejection
            sampling to the exact D^2 distribution of each step. ``"random"``: k distinct
            random points. Or a ``(k, dim)`` tensor of initial centroids.
        tol: stop when the total squared centroid shift is at most ``tol`` times the mean
            per-feature variance of ``x`` (scikit-learn's ``tol``). With 0, stop after
            ``iters`` iterations or when no label changes.

    Returns:
        ``KMeansResult(centroids, labels, inertia)`` (and ``.iterations``).
    """
    options = _options(k, iters, seed, init, tol)
    centroids, labels, inertia, iterations = _core.kmeans(
        as_tensor(x, "x"), options.pop("k"), **options
    )
    result = KMeansResult(centroids, labels, inertia)
    result.iterations = iterations
    return result


def cluster_labels(
    embeddings: Any,
    k: int,
    *,
    iters: int = 20,
    seed: int = 0,
    init: Any = "k-means++",
    tol: float = 0.0,
) -> torch.Tensor:
    """The :func:`kmeans` cluster ids of the L2-normalised ``embeddings``
    (``f / max(|f|, 1e-12)``): the pseudo labels of unlabeled samples (SLADE Sec 3.2).

    The paper's best setting uses about twice the number of labeled classes for ``k``
    (k = 400 for NABirds).

    Returns:
        ``(N,)`` int64 labels in ``[0, k)`` on the embeddings' device.
    """
    options = _options(k, iters, seed, init, tol)
    return _core.cluster_labels(as_tensor(embeddings, "embeddings"), options.pop("k"), **options)


def nmi(labels_a: Any, labels_b: Any) -> float:
    """Normalized mutual information of two labelings,
    ``I(A; B) / ((H(A) + H(B)) / 2)`` with natural logarithms: scikit-learn's
    ``normalized_mutual_info_score`` with its default arithmetic normalisation.

    Two labelings with a single cluster each score 1.0.
    """
    return _core.nmi(as_tensor(labels_a, "labels_a"), as_tensor(labels_b, "labels_b"))
