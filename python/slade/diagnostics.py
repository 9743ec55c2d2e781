"""Does mining filter noise on this data? Diagnostics of pseudo labels, the feature basis
and its mining (DESIGN.md §2.4), measured where true labels of the pool are known (the
protocols' hidden labels, or a labeled probe set given as the pool).

Pairs are counted within batches drawn as training draws them (m per pseudo class), since
that is where the student meets them:

- ``pseudo_positive_precision``: share of pseudo-positive pairs (same pseudo label) that
  share their true label; ``pseudo_negative_precision``: share of pseudo-negative pairs
  whose true labels differ.
- Mining under the rules (T1, T2): ``mined_positive_kept`` / ``mined_negative_kept``, the
  share of pseudo pairs each side keeps, and ``mined_positive_precision`` /
  ``mined_negative_precision`` of the kept ones. Mining filters noise where a kept side's
  precision is above its pseudo precision.
- ``auc_basis`` / ``auc_embedding``: ROC-AUC of the basis similarity s = cos(W_a f_i,
  W_a f_j) and of the embedding cosine cos(f_i, f_j) as scores for "same true class", over
  all pairs; ``auc_basis_pseudo_positive`` / ``auc_embedding_pseudo_positive``: the same
  among pseudo-positive pairs only, the pairs mining has to sort.
- ``inactive_mined_negative``: share of mined negatives already beyond the contrastive
  loss's ``neg_margin`` (zero loss: they teach nothing).

:func:`gradient_norms` gives the norm of each loss term's gradient at the embeddings, the
honest measure of the terms' scale for choosing lambda1 and lambda2.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from . import _core, losses
from .basis import FeatureBasis
from .errors import InvalidArgumentError

__all__ = [
    "auc",
    "basis_of",
    "gradient_norms",
    "pair_diagnostics",
    "threshold_value",
    "training_batches",
]


def auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """ROC-AUC of ``scores`` for the boolean ``positive`` (Mann-Whitney U with tied ranks
    averaged); NaN when one class is empty."""
    scores = scores.double().flatten()
    positive = positive.bool().flatten()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    # ties share the mean of their ranks
    _, inverse, counts = torch.unique(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks[order] = mean_rank[inverse]
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def threshold_value(rule: float | str, statistics: Mapping[str, float], which: int) -> float | None:
    """T1 (``which=0``) or T2 (``which=1``) of a rule on the running statistics
    (``mu_pos``, ``mu_neg``), resolved by the core exactly as the student and
    :func:`slade.miners.basis_pairs` resolve it; None where its statistic is unknown."""
    side = ("t1", "t2")[which]
    return _core.threshold_value(rule, side, statistics.get("mu_pos"), statistics.get("mu_neg"))


def basis_of(trainer: Any) -> FeatureBasis | None:
    """A :class:`FeatureBasis` holding a copy of a student trainer's W_a and running
    statistics (None for ``"pseudo_only"``)."""
    weight = trainer.basis
    if weight is None:
        return None
    basis = FeatureBasis(weight.shape[0], weight.shape[1])
    buffers = dict(trainer.named_buffers())
    with torch.no_grad():
        basis.weight.copy_(weight.detach().cpu())
        for name in ("mu_pos", "var_pos", "mu_neg", "var_neg", "updates_pos", "updates_neg"):
            getattr(basis, name).copy_(buffers[f"basis.{name}"].cpu())
    return basis.eval()


def training_batches(pseudo: torch.Tensor, batch_size: int, m: int, num_batches: int, seed: int):
    """The row indices of `num_batches` m-per-pseudo-class batches, as training draws them."""
    from .data import MPerClassSampler

    sampler = MPerClassSampler(pseudo, m, batch_size, seed=seed)
    for number, batch in enumerate(sampler):
        if number >= num_batches:
            return
        yield torch.as_tensor(batch, dtype=torch.int64)


def _cosine(x: torch.Tensor) -> torch.Tensor:
    x = torch.nn.functional.normalize(x, dim=1)
    return x @ x.T


def pair_diagnostics(
    embeddings: Any,
    pseudo_labels: Any,
    true_labels: Any,
    *,
    basis: FeatureBasis | None = None,
    t1: float | None = None,
    t2: float | None = None,
    require_pseudo_agreement: bool = True,
    neg_margin: float = 1.0,
    batch_size: int = 32,
    m: int = 8,
    num_batches: int = 50,
    seed: int = 0,
) -> dict[str, float]:
    """The diagnostics of the module docs on ``num_batches`` m-per-pseudo-class batches of
    the pool ``embeddings`` (``(N, dim)``, e.g. the student's); the mining and basis keys
    only with a ``basis`` (and T1/T2: numbers, e.g. from :func:`threshold_value`; ``None``
    mines no pair of that side)."""
    emb = torch.as_tensor(embeddings).detach().float().cpu()
    pseudo = torch.as_tensor(pseudo_labels).to(torch.int64).cpu()
    truth = torch.as_tensor(true_labels).to(torch.int64).cpu()
    if emb.dim() != 2 or len(pseudo) != len(emb) or len(truth) != len(emb):
        raise InvalidArgumentError(
            f"embeddings (N, dim), pseudo_labels (N,) and true_labels (N,) must agree, got "
            f"{tuple(emb.shape)}, {tuple(pseudo.shape)} and {tuple(truth.shape)}"
        )
    sums: dict[str, list[torch.Tensor]] = {}

    def add(key: str, value: torch.Tensor) -> None:
        sums.setdefault(key, []).append(value.flatten())

    for rows in training_batches(pseudo, batch_size, m, num_batches, seed):
        f, p, y = emb[rows], pseudo[rows], truth[rows]
        upper = torch.ones(len(rows), len(rows), dtype=torch.bool).triu(1)
        same_p = (p[:, None] == p[None, :]) & upper
        diff_p = (p[:, None] != p[None, :]) & upper
        same_y = y[:, None] == y[None, :]
        cos_f = _cosine(f)
        add("pair_true", same_y[upper])
        add("pair_cos", cos_f[upper])
        add("pair_pseudo_pos", same_p[upper])
        if basis is not None:
            with torch.no_grad():
                s = basis.similarity(f)
            add("pair_s", s[upper])
            positives, negatives = (same_p, diff_p) if require_pseudo_agreement else (upper, upper)
            none = torch.zeros_like(same_p)
            keep_pos = positives & (s >= t1) if t1 is not None else none
            keep_neg = negatives & (s <= t2) if t2 is not None else none
            add("kept_pos_true", same_y[keep_pos])
            add("kept_neg_true", same_y[keep_neg])
            distance = torch.sqrt(torch.clamp(2 - 2 * cos_f, min=0))
            add("kept_neg_inactive", distance[keep_neg] >= neg_margin)
    if not sums:
        raise InvalidArgumentError("pair_diagnostics drew no batch (num_batches >= 1?)")
    cat = {key: torch.cat(values) for key, values in sums.items()}
    is_true, pseudo_pos = cat["pair_true"], cat["pair_pseudo_pos"]

    def share(mask: torch.Tensor) -> float:
        return float(mask.double().mean()) if mask.numel() else float("nan")

    out = {
        "pairs": float(len(is_true)),
        "pseudo_positive_precision": share(is_true[pseudo_pos]),
        "pseudo_negative_precision": share(~is_true[~pseudo_pos]),
        "auc_embedding": auc(cat["pair_cos"], is_true),
        "auc_embedding_pseudo_positive": auc(cat["pair_cos"][pseudo_pos], is_true[pseudo_pos]),
    }
    if basis is not None:
        n_pos, n_neg = int(pseudo_pos.sum()), int((~pseudo_pos).sum())
        out.update(
            {
                "auc_basis": auc(cat["pair_s"], is_true),
                "auc_basis_pseudo_positive": auc(cat["pair_s"][pseudo_pos], is_true[pseudo_pos]),
                "mined_positive_kept": len(cat["kept_pos_true"]) / max(1, n_pos),
                "mined_negative_kept": len(cat["kept_neg_true"]) / max(1, n_neg),
                "mined_positive_precision": share(cat["kept_pos_true"]),
                "mined_negative_precision": share(~cat["kept_neg_true"]),
                "inactive_mined_negative": share(cat["kept_neg_inactive"]),
            }
        )
    return out


def gradient_norms(
    emb_labeled: Any,
    labels: Any,
    emb_unlabeled: Any,
    pseudo_labels: Any,
    *,
    basis: FeatureBasis | None = None,
    pairs: Any = None,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
) -> dict[str, float]:
    """||dL/df|| of each unweighted term at the embeddings (contrastive ranking loss):
    ``rank_l`` (labeled pairs), ``rank_u`` (the unlabeled ``pairs``, default all pseudo
    pairs), and with a ``basis`` ``ce`` and its regulariser (e.g. ``sd``). Set lambda1 and
    lambda2 so that the weighted norms are of one scale (SLADE Sec 3.3)."""
    fl = torch.as_tensor(emb_labeled).detach().float().cpu().requires_grad_(True)
    fu = torch.as_tensor(emb_unlabeled).detach().float().cpu().requires_grad_(True)
    labels = torch.as_tensor(labels).to(torch.int64).cpu()
    pseudo = torch.as_tensor(pseudo_labels).to(torch.int64).cpu()
    terms = {
        "rank_l": losses.contrastive(fl, labels, pos_margin=pos_margin, neg_margin=neg_margin),
        "rank_u": losses.contrastive(
            fu, pseudo, pairs=pairs, pos_margin=pos_margin, neg_margin=neg_margin
        ),
    }
    if basis is not None:
        _, parts = basis.loss(fl, labels, fu, pseudo)
        terms.update(parts)
    norms = {}
    for name, value in terms.items():
        grads = torch.autograd.grad(value, [fl, fu], retain_graph=True, allow_unused=True)
        squares = sum(float((g**2).sum()) for g in grads if g is not None)
        norms[name] = squares**0.5
    return norms
