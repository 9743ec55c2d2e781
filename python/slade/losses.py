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

The modules :class:`ContrastiveLoss`, :class:`MultiSimilarityLoss` and
:class:`TripletMarginLoss` are drop-in replacements of PML's classes of those names: the
same constructor arguments and call form ``loss(embeddings, labels, indices_tuple)``, on
these functions. The objectives of the trainers on a user's embeddings
(:class:`slade.StudentLoss`, :class:`slade.TeacherLoss`, :class:`slade.SwavLoss`) live in
:mod:`slade.objectives`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from . import _core, _pml
from ._convert import as_float, as_tensor, optional_tensor
from ._pairs import pairs_arg
from .settings import RankingConfig

Pairs = Sequence[Any]

#: PML's TripletMarginLoss margin (the other defaults are RankingConfig's, read from the core).
_TRIPLET_MARGIN = 0.05


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
    pos_margin: float = RankingConfig.pos_margin,
    neg_margin: float = RankingConfig.neg_margin,
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
    alpha: float = RankingConfig.alpha,
    beta: float = RankingConfig.beta,
    base: float = RankingConfig.base,
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
    epsilon: float = RankingConfig.epsilon,
    alpha: float = RankingConfig.alpha,
    beta: float = RankingConfig.beta,
    base: float = RankingConfig.base,
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
    margin: float = _TRIPLET_MARGIN,
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


class _PmlLoss(torch.nn.Module):
    """The call form of PML's losses: ``loss(embeddings, labels=None, indices_tuple=None,
    ref_emb=None, ref_labels=None)``; ``indices_tuple`` is a miner's output (``pairs`` of
    the functions). ``ref_emb`` / ``ref_labels`` raise :class:`slade.NotSupportedError`."""

    def forward(
        self,
        embeddings: Any,
        labels: Any = None,
        indices_tuple: Pairs | None = None,
        ref_emb: Any = None,
        ref_labels: Any = None,
    ) -> torch.Tensor:
        _pml.refuse_ref_emb(type(self).__name__, ref_emb, ref_labels)
        return self._loss(embeddings, labels, indices_tuple)

    def _loss(self, embeddings: Any, labels: Any, pairs: Pairs | None) -> torch.Tensor:
        raise NotImplementedError


class ContrastiveLoss(_PmlLoss):
    """:func:`contrastive` as a module:
    ``pytorch_metric_learning.losses.ContrastiveLoss`` with its defaults.

    ``L = mean_{>0} [d(a1, p) - pos_margin]_+ + mean_{>0} [neg_margin - d(a2, n)]_+``,
    ``d`` the Euclidean distance of the L2-normalised embeddings.

    Args:
        pos_margin, neg_margin: as PML's.
        **options: PML's ``distance`` (``LpDistance()`` only), ``reducer``
            (``AvgNonZeroReducer()`` only), ``embedding_regularizer`` (None only),
            ``embedding_reg_weight`` and ``collect_stats`` (False only); another value
            raises :class:`slade.NotSupportedError` naming it.
    """

    def __init__(
        self,
        pos_margin: float = RankingConfig.pos_margin,
        neg_margin: float = RankingConfig.neg_margin,
        **options: Any,
    ):
        super().__init__()
        _pml.check_options(
            "ContrastiveLoss", options, distance=_pml.EUCLIDEAN, reducer="AvgNonZeroReducer"
        )
        self.pos_margin = as_float(pos_margin, "pos_margin")
        self.neg_margin = as_float(neg_margin, "neg_margin")

    def _loss(self, embeddings: Any, labels: Any, pairs: Pairs | None) -> torch.Tensor:
        return contrastive(
            embeddings, labels, pos_margin=self.pos_margin, neg_margin=self.neg_margin, pairs=pairs
        )

    def extra_repr(self) -> str:
        return f"pos_margin={self.pos_margin}, neg_margin={self.neg_margin}"


class MultiSimilarityLoss(_PmlLoss):
    """:func:`multi_similarity` as a module:
    ``pytorch_metric_learning.losses.MultiSimilarityLoss`` with its defaults.

    ``L = mean_i [1/alpha log(1 + sum_P e^{-alpha (S_ip - base)})
    + 1/beta log(1 + sum_N e^{beta (S_in - base)})]``, ``S`` the cosine similarity.

    Args:
        alpha, beta, base: as PML's.
        **options: PML's ``distance`` (``CosineSimilarity()`` only), ``reducer``
            (``MeanReducer()`` only), ``embedding_regularizer`` (None only),
            ``embedding_reg_weight`` and ``collect_stats`` (False only); another value
            raises :class:`slade.NotSupportedError` naming it.
    """

    def __init__(
        self,
        alpha: float = RankingConfig.alpha,
        beta: float = RankingConfig.beta,
        base: float = RankingConfig.base,
        **options: Any,
    ):
        super().__init__()
        _pml.check_options(
            "MultiSimilarityLoss", options, distance=_pml.COSINE, reducer="MeanReducer"
        )
        self.alpha, self.beta = as_float(alpha, "alpha"), as_float(beta, "beta")
        self.base = as_float(base, "base")

    def _loss(self, embeddings: Any, labels: Any, pairs: Pairs | None) -> torch.Tensor:
        return multi_similarity(
            embeddings, labels, alpha=self.alpha, beta=self.beta, base=self.base, pairs=pairs
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, base={self.base}"


class TripletMarginLoss(_PmlLoss):
    """:func:`triplet_margin` as a module:
    ``pytorch_metric_learning.losses.TripletMarginLoss`` with its defaults.

    ``L = mean_{>0} [d(a, p) - d(a, n) + margin]_+`` over all triplets (or those of
    ``indices_tuple``), ``d`` the Euclidean distance of the L2-normalised embeddings.

    Args:
        margin: as PML's.
        swap, smooth_loss, triplets_per_anchor: PML's defaults only (False, False,
            ``"all"``); another value raises :class:`slade.NotSupportedError`.
        **options: as :class:`ContrastiveLoss`.
    """

    def __init__(
        self,
        margin: float = _TRIPLET_MARGIN,
        swap: bool = False,
        smooth_loss: bool = False,
        triplets_per_anchor: int | str = "all",
        **options: Any,
    ):
        super().__init__()
        owner = "TripletMarginLoss"
        _pml.require_default(owner, "swap", swap, False)
        _pml.require_default(owner, "smooth_loss", smooth_loss, False)
        _pml.require_default(owner, "triplets_per_anchor", triplets_per_anchor, "all")
        _pml.check_options(owner, options, distance=_pml.EUCLIDEAN, reducer="AvgNonZeroReducer")
        self.margin = as_float(margin, "margin")

    def _loss(self, embeddings: Any, labels: Any, pairs: Pairs | None) -> torch.Tensor:
        return triplet_margin(embeddings, labels, margin=self.margin, pairs=pairs)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"


__all__ = [
    "ContrastiveLoss",
    "MultiSimilarityLoss",
    "TripletMarginLoss",
    "contrastive",
    "multi_similarity",
    "multi_similarity_with_miner",
    "triplet_margin",
]
