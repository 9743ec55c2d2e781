"""Ranking losses (SLADE's L_rank): contrastive and multi-similarity, plus triplet margin.

Each takes ``(N, D)`` embeddings (a torch tensor on any device, or a numpy array) and ``(N,)``
integer labels, and returns a scalar tensor in the embeddings' autograd graph, so
``loss.backward()`` fills the gradients of whatever produced the embeddings, as the losses of
pytorch-metric-learning (PML) do. Values and gradients equal PML 2.9.0's default
configurations: embeddings are L2-normalised inside the loss, the distance is the
non-squared Euclidean distance (contrastive, triplet) or the cosine similarity
(multi-similarity).

``pairs`` takes a miner's output, PML's tuple ``(a1, p, a2, n)`` of anchor-positive and
anchor-negative index tensors or ``(a, p, n)`` triplets, e.g. from
:func:`slade.miners.multi_similarity`; without it every pair (or triplet) the labels define
is used. With ``pairs``, ``labels`` may be ``None``. As in PML, the contrastive and
multi-similarity losses are zero for a pair tuple whose index tensors each hold at most one
entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from . import _core
from ._convert import as_float, as_tensor, optional_tensor
from ._pairs import pairs_arg

Pairs = Sequence[Any]


def _ranking_loss(
    op: Any, embeddings: Any, labels: Any, pairs: Pairs | None, **settings: float
) -> torch.Tensor:
    """The core's loss ``op`` on the checked embeddings, labels and pairs."""
    return op(
        as_tensor(embeddings, "embeddings"),
        optional_tensor(labels, "labels"),
        pairs=pairs_arg(pairs),
        **{name: as_float(value, name) for name, value in settings.items()},
    )


def contrastive(
    embeddings: Any,
    labels: Any = None,
    *,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    pairs: Pairs | None = None,
) -> torch.Tensor:
    """Contrastive loss (Hadsell et al. 2006; SLADE Sec. 3.1).

    ``L = mean_{>0} [d(a1, p) - pos_margin]_+ + mean_{>0} [neg_margin - d(a2, n)]_+``

    with ``d`` the Euclidean distance of the L2-normalised embeddings; each mean runs over
    its non-zero terms only (PML's ``AvgNonZeroReducer``) and is 0 when there are none.
    Equals ``pytorch_metric_learning.losses.ContrastiveLoss(pos_margin, neg_margin)``.

    Args:
        embeddings: ``(N, D)`` floating tensor.
        labels: ``(N,)`` integer labels; positives share a label, negatives do not.
        pos_margin: positive pairs closer than this cost nothing.
        neg_margin: negative pairs farther than this cost nothing.
        pairs: a miner's ``(a1, p, a2, n)`` or ``(a, p, n)`` indices; default all pairs.
    """
    return _ranking_loss(
        _core.contrastive_loss,
        embeddings,
        labels,
        pairs,
        pos_margin=pos_margin,
        neg_margin=neg_margin,
    )


def multi_similarity(
    embeddings: Any,
    labels: Any = None,
    *,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    pairs: Pairs | None = None,
) -> torch.Tensor:
    """Multi-similarity loss (Wang et al., CVPR 2019; SLADE Sec. 3.1).

    With ``S`` the cosine similarity, ``P_i``/``N_i`` anchor i's positives/negatives::

        L_i = 1/alpha log(1 + sum_{p in P_i} exp(-alpha (S_ip - base)))
            + 1/beta  log(1 + sum_{n in N_i} exp( beta (S_in - base)))

    a term being 0 when its set is empty, and ``L = mean_i L_i`` over all N anchors.
    Equals ``pytorch_metric_learning.losses.MultiSimilarityLoss(alpha, beta, base)``.
    Explicit ``pairs`` must not hold a pair both as positive and as negative.

    Args:
        embeddings: ``(N, D)`` floating tensor.
        labels: ``(N,)`` integer labels.
        alpha, beta: weights of the positive and negative terms.
        base: the similarity both terms are centred on.
        pairs: a miner's ``(a1, p, a2, n)`` or ``(a, p, n)`` indices; default all pairs.
    """
    return _ranking_loss(
        _core.multi_similarity_loss, embeddings, labels, pairs, alpha=alpha, beta=beta, base=base
    )


def multi_similarity_with_miner(
    embeddings: Any,
    labels: Any,
    *,
    epsilon: float = 0.1,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
) -> torch.Tensor:
    """The multi-similarity loss on the pairs of the multi-similarity miner, in one call.

    Equals ``multi_similarity(x, y, pairs=slade.miners.multi_similarity(x, y, epsilon=...))``
    (and PML's ``MultiSimilarityLoss()(x, y, MultiSimilarityMiner(epsilon)(x, y))``), but
    computes the normalisation and the ``N x N`` similarity once for miner and loss.
    """
    return _core.multi_similarity_loss_with_miner(
        as_tensor(embeddings, "embeddings"),
        as_tensor(labels, "labels"),
        epsilon=as_float(epsilon, "epsilon"),
        alpha=as_float(alpha, "alpha"),
        beta=as_float(beta, "beta"),
        base=as_float(base, "base"),
    )


def triplet_margin(
    embeddings: Any,
    labels: Any = None,
    *,
    margin: float = 0.05,
    pairs: Pairs | None = None,
) -> torch.Tensor:
    """Triplet margin loss, the usual baseline.

    ``L = mean_{>0} [d(a, p) - d(a, n) + margin]_+`` over triplets, ``d`` the Euclidean
    distance of the L2-normalised embeddings. Without ``pairs``, all triplets the labels
    define (a and p share a label, n does not); ``pairs`` takes ``(a, p, n)`` triplets, or
    ``(a1, p, a2, n)`` pairs combined wherever a positive and a negative pair share their
    anchor. Equals ``pytorch_metric_learning.losses.TripletMarginLoss(margin)`` (all
    triplets, ``AvgNonZeroReducer``).
    """
    return _ranking_loss(_core.triplet_margin_loss, embeddings, labels, pairs, margin=margin)


__all__ = ["contrastive", "multi_similarity", "multi_similarity_with_miner", "triplet_margin"]
