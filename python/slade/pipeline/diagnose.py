"""Diagnosis of a student: does its basis and mining filter noise on this pool
(:mod:`slade.diagnostics`)?"""

from __future__ import annotations

from typing import Any

import torch

from .. import diagnostics
from .._images import embed_dataset
from ..config import Config
from .data_loading import data_or_load
from .inputs import as_config, as_model
from .pseudo_labels import PseudoLabels
from .stages import Progress


def diagnose(
    student: Any,
    data: Any,
    pseudo_labels: Any,
    config: Config | str | None = None,
    *,
    true_labels: Any = None,
    num_batches: int = 50,
) -> dict[str, Any]:
    """Whether the student's basis and mining filter noise on this pool
    (:mod:`slade.diagnostics`): the pool embedded by ``student``, batches drawn as training
    draws them, pairs judged by ``true_labels`` (default: the pool's hidden labels). Also
    the gradient norm of each loss term at the embeddings of one training-like batch.

    Returns ``{"pairs": {...}, "gradient_norms": {...}, "thresholds": [T1, T2]}``, or an
    empty dict when no true labels are known.
    """
    config = as_config(config)
    data = data_or_load(data, config)
    truth = data.hidden_labels if true_labels is None else true_labels
    if truth is None:
        return {}
    s = config.student
    pseudo = pseudo_labels.labels if isinstance(pseudo_labels, PseudoLabels) else pseudo_labels
    pseudo = torch.as_tensor(pseudo)
    model = as_model(student, config.device)
    emb_u = _pool_embeddings(model, data, pseudo, config, num_batches)
    basis, thresholds = _basis_and_thresholds(student)
    pairs = diagnostics.pair_diagnostics(
        emb_u,
        pseudo,
        truth,
        basis=basis,
        t1=thresholds[0],
        t2=thresholds[1],
        require_pseudo_agreement=s.require_pseudo_agreement,
        neg_margin=s.neg_margin,
        batch_size=s.unlabeled_batch_size,
        m=s.unlabeled_m,
        num_batches=num_batches,
        seed=config.seed,
    )
    emb_l, labels_l = _labeled_batch(model, data, config)
    batch_u = next(
        diagnostics.training_batches(pseudo, s.unlabeled_batch_size, s.unlabeled_m, 1, config.seed)
    )
    norms = diagnostics.gradient_norms(
        emb_l,
        labels_l,
        emb_u[batch_u],
        pseudo[batch_u],
        basis=basis,
        pos_margin=s.pos_margin,
        neg_margin=s.neg_margin,
    )
    return {"pairs": pairs, "gradient_norms": norms, "thresholds": thresholds}


def _evaluation_view(dataset: Any, data: Any) -> Any:
    """The dataset as test images are seen: with the eval transform, where there is one."""
    return dataset.with_transform(data.eval_transform) if data.eval_transform else dataset


def _pool_embeddings(
    model: Any, data: Any, pseudo: torch.Tensor, config: Config, num_batches: int
) -> torch.Tensor:
    """Embeddings of the pool, zero except for the images of the batches drawn as the
    diagnostics draw them (only those are embedded)."""
    s = config.student
    pool = _evaluation_view(data.unlabeled, data)
    drawn = diagnostics.training_batches(
        pseudo, s.unlabeled_batch_size, s.unlabeled_m, num_batches, config.seed
    )
    rows = torch.unique(torch.cat(list(drawn)))
    emb_drawn = embed_dataset(
        model,
        pool.subset(rows.numpy()),
        batch_size=config.pseudo_labels.batch_size,
        num_workers=config.data.num_workers,
        progress=Progress(False).iterate,
    )
    emb_u = torch.zeros(len(pool), emb_drawn.shape[1])
    emb_u[rows] = emb_drawn
    return emb_u


def _basis_and_thresholds(student: Any) -> tuple[Any, list[float | None]]:
    """The student's basis and its mining thresholds [T1, T2] now (None without a basis)."""
    if not hasattr(student, "basis"):
        return None, [None, None]
    basis = diagnostics.basis_of(student)
    if basis is None:
        return None, [None, None]
    rules = student.threshold_rules()
    stats = student.basis_statistics
    return basis, [diagnostics.threshold_value(rules[i], stats, i) for i in (0, 1)]


def _labeled_batch(model: Any, data: Any, config: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings and labels of a seeded batch of labeled images."""
    labeled = _evaluation_view(data.labeled, data)
    generator = torch.Generator().manual_seed(config.seed)
    rows = torch.randperm(len(labeled), generator=generator)[: config.student.labeled_batch_size]
    embeddings = embed_dataset(
        model,
        labeled.subset(rows.numpy(), relabel=False),
        batch_size=len(rows),
        num_workers=config.data.num_workers,
        progress=Progress(False).iterate,
    )
    return embeddings, data.labeled.labels[rows]
