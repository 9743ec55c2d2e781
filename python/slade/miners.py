"""Miners: which pairs of a batch the ranking losses (:mod:`slade.losses`) use.

Each returns pytorch-metric-learning's pair form ``(a1, p, a2, n)``: positive pairs
``(a1[i], p[i])`` and negative pairs ``(a2[i], n[i])``, int64 index tensors on the
embeddings' device, usable as ``pairs=`` of every loss in :mod:`slade.losses` (and as
PML's ``indices_tuple``). Miners record no gradients. :class:`MultiSimilarityMiner` is a
drop-in replacement of PML's class of that name.
"""

from __future__ import annotations

from typing import Any

import torch

from . import _core, _pml
from ._convert import as_bool, as_float, as_tensor, optional_tensor
from .basis import FeatureBasis
from .errors import DtypeError
from .settings import RankingConfig

PairTuple = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def multi_similarity(
    embeddings: Any, labels: Any, *, epsilon: float = RankingConfig.epsilon
) -> PairTuple:
    """Multi-similarity miner (Wang et al., CVPR 2019, Sec. 3.3).

    With ``S`` the cosine similarity, a positive pair (i, j) is kept when
    ``S_ij - epsilon < max_{k in N_i} S_ik`` and a negative pair (i, k) when
    ``S_ik + epsilon > min_{j in P_i} S_ij``. Selects the same pairs as
    ``pytorch_metric_learning.miners.MultiSimilarityMiner(epsilon)``, row-major (PML
    orders them by similarity within a row).
    """
    return _core.multi_similarity_miner(
        as_tensor(embeddings, "embeddings"),
        as_tensor(labels, "labels"),
        epsilon=as_float(epsilon, "epsilon"),
    )


def basis_pairs(
    basis: FeatureBasis,
    emb_u: Any,
    pseudo_u: Any,
    *,
    t1: float | str = "auto",
    t2: float | str = "auto",
    require_pseudo_agreement: bool = True,
) -> PairTuple:
    """SLADE's pair mining on an unlabeled batch (Sec 3.3).

    With s(i, j) = ``basis.similarity(emb_u)``, the positive pairs are
    P = {(i, j): i != j, s(i, j) >= t1} and the negative pairs N = {(i, j): i != j,
    s(i, j) <= t2}. With ``require_pseudo_agreement`` (default) a positive must also share
    its pseudo label and a negative must not. Both orders of a pair are returned, row-major
    (i, then j), as PML's pair miners do. A batch without such pairs gives empty tensors.
    No gradient flows through mining.

    Args:
        basis: the student's :class:`slade.FeatureBasis`.
        emb_u: ``(N, dim)`` unlabeled embeddings.
        pseudo_u: ``(N,)`` pseudo labels (may be ``None`` when
            ``require_pseudo_agreement`` is False).
        t1, t2: thresholds, the rules of the student
            (:class:`slade.settings.StudentObjectiveConfig`): numbers, or rules on the
            basis's running statistics as they are at this call: ``"mu+"`` (``mu_pos``),
            ``"mu-"`` (``mu_neg``), ``"mid"`` ((mu+ + mu-) / 2), ``"all"`` (no test on that
            side: t1 = -2, t2 = 2) or ``"auto"`` (t1 = mu+, t2 = mu-). A rule reading a
            statistic needs at least one training-mode :meth:`FeatureBasis.loss` call
            before (the student mines no pair of that side instead).

    Returns:
        ``(a1, p, a2, n)`` int64 tensors.
    """
    if not isinstance(basis, FeatureBasis):
        raise DtypeError(f"basis must be a slade.FeatureBasis, got {type(basis).__name__}")
    return _core.basis_pairs(
        basis._state(),
        basis._config(),
        as_tensor(emb_u, "emb_u"),
        optional_tensor(pseudo_u, "pseudo_u"),
        _threshold(t1, "t1"),
        _threshold(t2, "t2"),
        as_bool(require_pseudo_agreement, "require_pseudo_agreement"),
    )


def _threshold(value: Any, name: str) -> float | str:
    """A threshold: a rule name (checked by the core) or a number."""
    if isinstance(value, str):
        return value
    try:
        return as_float(value, name)
    except DtypeError:
        raise DtypeError(
            f'{name} must be a number or a rule name ("mu+", "mu-", "mid", "all", "auto"), '
            f"got {type(value).__name__}"
        ) from None


class MultiSimilarityMiner(torch.nn.Module):
    """:func:`multi_similarity` as a module:
    ``pytorch_metric_learning.miners.MultiSimilarityMiner`` with its defaults, called as
    ``miner(embeddings, labels)`` and returning PML's tuple ``(a1, p, a2, n)``.

    A positive pair (i, j) is kept when ``S_ij - epsilon < max_{k in N_i} S_ik``, a negative
    pair (i, k) when ``S_ik + epsilon > min_{j in P_i} S_ij`` (``S`` the cosine similarity).

    Args:
        epsilon: as PML's.
        **options: PML's ``distance`` (``CosineSimilarity()`` only) and ``collect_stats``
            (False only); another value raises :class:`slade.NotSupportedError` naming it.
    """

    def __init__(self, epsilon: float = RankingConfig.epsilon, **options: Any):
        super().__init__()
        _pml.check_options("MultiSimilarityMiner", options, distance=_pml.COSINE, reducer=None)
        self.epsilon = as_float(epsilon, "epsilon")

    def forward(
        self, embeddings: Any, labels: Any, ref_emb: Any = None, ref_labels: Any = None
    ) -> PairTuple:
        """The mined pairs; ``ref_emb`` / ``ref_labels`` raise
        :class:`slade.NotSupportedError`."""
        _pml.refuse_ref_emb("MultiSimilarityMiner", ref_emb, ref_labels)
        return multi_similarity(embeddings, labels, epsilon=self.epsilon)

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}"


__all__ = ["MultiSimilarityMiner", "basis_pairs", "multi_similarity"]
