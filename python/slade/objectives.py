"""The trainers' objectives as ``torch.nn.Module`` s on the embeddings of any model.

:class:`StudentLoss`, :class:`TeacherLoss` and :class:`SwavLoss` compute, in the Rust core,
what a step of :class:`slade.StudentTrainer`, :class:`slade.TeacherTrainer` and
:class:`slade.SwavTrainer` computes after its forward pass, on embeddings the caller's
model produced. The loss is part of the caller's autograd graph (``loss.backward()`` fills
the gradients of the model and of the objective's own parameters); the objective's state is
module state: parameters (W_a, the prototypes) and buffers (running statistics, the step
count), so ``state_dict()``, ``.to()``, optimizers and DDP treat it as any module's.
Settings are the dataclasses of :mod:`slade.settings`, checked by the core.

A training-mode call counts one step (``step_count``); the warm-ups
(``basis_warmup``, ``freeze_prototypes_steps``) read it, so call the objective once per
optimizer step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from . import _core
from ._convert import as_tensor, as_tensors, optional_int, optional_tensor, positive_int
from .basis import FeatureBasis
from .errors import ConfigError
from .settings import RankingConfig, StudentObjectiveConfig, SwavConfig

Metrics = dict[str, float]


class _Stepped(torch.nn.Module):
    """An objective that counts its training-mode calls in the buffer ``step_count``."""

    step_count: torch.Tensor

    def _start_count(self, device: Any) -> None:
        self.register_buffer("step_count", torch.zeros((), dtype=torch.int64, device=device))

    def _before(self, steps: int) -> bool:
        """Whether fewer than ``steps`` training-mode calls came before this one."""
        return steps > 0 and int(self.step_count) < steps

    def _count(self) -> None:
        if self.training:
            with torch.no_grad():
                self.step_count += 1


class StudentLoss(_Stepped):
    """The SLADE student objective (Sec 3.3; DESIGN.md §2.4) on given embeddings:

        L = L_rank(f_l, y) + lambda1 * L_rank(mined pairs of f_u) + lambda2 * (L_CE + L_reg)

    - L_rank: the ranking loss of :class:`slade.RankingConfig` (contrastive or
      multi-similarity, optionally with the multi-similarity miner on the labeled pairs).
    - L_CE = CE(W_a f_l, y) and L_reg (``"sd"``: L_SD = var+ + var- + w [m_sd - (mu+ - mu-)]_+
      on the batch statistics of s(i, j) = cos(W_a f_i, W_a f_j) over unlabeled pairs, with
      full gradient; or the ``"global_ce"`` / ``"local_ce"`` regularisers), see
      :class:`slade.FeatureBasis`. Training-mode calls update the running statistics
      mu+/var+/mu-/var- (momentum beta).
    - Mined pairs (``variant="basis_mining"``): P = {s >= T1} sharing their pseudo label,
      N = {s <= T2} not (``require_pseudo_agreement``), T1/T2 numbers or rules on the
      running statistics after this call's update (``"auto"``: mu+ and mu-); other variants
      take every pseudo pair (``"basis"``) or have no basis at all (``"pseudo_only"``).
      ``mining="oracle"`` / ``"random"`` are the research bounds of
      :class:`slade.StudentTrainer`.
    - Warm-up: during the first ``basis_warmup`` training-mode calls the embeddings are
      detached, so only the basis trains (the trainer also keeps the backbone's BatchNorm in
      evaluation mode: ``model.eval()`` while :attr:`warming_up` does that).

    The computation is :class:`slade.StudentTrainer`'s step after its forward pass (the same
    Rust code), on embeddings as the model gives them (the trainer's are L2-normalised).

    State: ``basis`` (a :class:`slade.FeatureBasis`: parameter ``basis.weight`` = W_a, for
    the CE regularisers ``basis.pseudo_head``, buffers ``basis.mu_pos`` ... as
    :class:`slade.StudentTrainer` names them) and the buffer ``step_count``; ``basis`` is
    None for ``"pseudo_only"``.

    Args:
        dim: the embedding dim of the model.
        num_basis: B, at least the number of labeled classes (labels in ``[0, B)``); None
            for ``"pseudo_only"``.
        objective: a :class:`slade.StudentObjectiveConfig` or a dict of its fields;
            ``**fields`` override single fields (``variant=``, ``lambda1=``, ``loss=``, ...).
            Read-only once built (:attr:`objective` is a copy).
        device, dtype: where and in which float type to keep W_a.
    """

    basis: FeatureBasis | None

    def __init__(
        self,
        dim: int,
        num_basis: int | None,
        *,
        objective: StudentObjectiveConfig | Mapping | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **fields: Any,
    ):
        super().__init__()
        dim = positive_int(dim, "dim")
        num_basis = optional_int(num_basis, "num_basis")
        settings = StudentObjectiveConfig.mapping(
            objective, {**fields, "num_basis": num_basis}, "objective"
        )
        self._settings = _core.check_settings("student", settings)
        self._objective = StudentObjectiveConfig.from_core(self._settings)
        self.dim = dim
        self.basis = self._build_basis(dim, device, dtype)
        self._start_count(device)

    def _build_basis(self, dim: int, device: Any, dtype: Any) -> FeatureBasis | None:
        o = self._objective
        if o.variant == "pseudo_only":
            return None
        if o.num_basis is None:
            raise ConfigError(
                f'num_basis must be set for variant "{o.variant}": the number of basis '
                "vectors, at least the number of labeled classes"
            )
        return FeatureBasis(
            o.num_basis,
            dim,
            momentum=o.momentum,
            sd_margin=o.sd_margin,
            sd_weight=o.sd_weight,
            regularizer=o.regularizer,
            sd_statistics=o.sd_statistics,
            num_pseudo_classes=o.num_pseudo_classes,
            device=device,
            dtype=dtype,
        )

    @property
    def objective(self) -> StudentObjectiveConfig:
        """The settings in use, every field filled in (a copy)."""
        return dataclasses.replace(self._objective)

    @property
    def W_a(self) -> torch.nn.Parameter | None:  # noqa: N802 (the paper's name)
        """The basis matrix W_a (``num_basis x dim``; None for ``"pseudo_only"``)."""
        return None if self.basis is None else self.basis.weight

    @property
    def warming_up(self) -> bool:
        """Whether the next training-mode call belongs to the basis warm-up."""
        return self._before(self._objective.basis_warmup)

    def forward(
        self,
        emb_labeled: Any,
        labels: Any,
        emb_unlabeled: Any,
        pseudo_labels: Any,
        true_labels: Any = None,
    ) -> tuple[torch.Tensor, Metrics]:
        """The objective on labeled embeddings ``(N_l, dim)`` with labels in
        ``[0, num_basis)`` and unlabeled embeddings ``(N_u, dim)`` with their pseudo labels
        (cluster ids >= 0); ``true_labels``: the hidden labels of the unlabeled samples,
        read only by ``mining="oracle"``. Embeddings on W_a's device; labels anywhere.

        Returns:
            ``(loss, metrics)``: the 0-d loss and the metrics of a
            :meth:`slade.StudentTrainer.step` (``loss/rank_labeled``, ``loss/basis``,
            ``pairs/positive``, ``threshold/t1``, ``basis/mu_pos``, ``warmup``, ...) but
            the optimizer's (``loss`` is the tensor itself).
        """
        loss, metrics = _core.student_objective(
            self._settings,
            None if self.basis is None else self.basis._state(),
            as_tensor(emb_labeled, "emb_labeled"),
            as_tensor(labels, "labels"),
            as_tensor(emb_unlabeled, "emb_unlabeled"),
            as_tensor(pseudo_labels, "pseudo_labels"),
            optional_tensor(true_labels, "true_labels"),
            self.training,
            self.training and self.warming_up,
        )
        self._count()
        return loss, metrics

    def extra_repr(self) -> str:
        o = self._objective
        return f"dim={self.dim}, num_basis={o.num_basis}, variant={o.variant!r}, loss={o.loss!r}"


class TeacherLoss(torch.nn.Module):
    """The teacher objective (Sec 3.1; DESIGN.md §2.2) on given embeddings: the ranking loss
    of a :class:`slade.RankingConfig` (contrastive or multi-similarity over all pairs the
    labels define, or over the multi-similarity miner's pairs), as
    :class:`slade.TeacherTrainer` computes it after its forward pass.

    Args:
        ranking: a :class:`slade.RankingConfig` or a dict of its fields; ``**fields``
            override single fields (``loss=``, ``miner=``, ``pos_margin=``, ...).
    """

    def __init__(self, ranking: RankingConfig | Mapping | None = None, **fields: Any):
        super().__init__()
        settings = RankingConfig.mapping(ranking, fields, "ranking")
        self._settings = _core.check_settings("ranking", settings)
        self._ranking = RankingConfig.from_core(self._settings)

    @property
    def ranking(self) -> RankingConfig:
        """The settings in use, every field filled in (a copy)."""
        return dataclasses.replace(self._ranking)

    def forward(self, embeddings: Any, labels: Any) -> tuple[torch.Tensor, Metrics]:
        """``(loss, metrics)`` of ``(N, D)`` embeddings and ``(N,)`` integer labels; the
        metrics of a :meth:`slade.TeacherTrainer.step`: ``loss/rank``, ``pairs/positive``,
        ``pairs/negative``."""
        return _core.teacher_objective(
            self._settings, as_tensor(embeddings, "embeddings"), as_tensor(labels, "labels")
        )

    def extra_repr(self) -> str:
        return f"loss={self._ranking.loss!r}, miner={self._ranking.miner}"


class SwavLoss(_Stepped):
    """The SwAV objective (Caron et al. 2020; DESIGN.md §2.1) on the embeddings of a user's
    crops, as :class:`slade.SwavTrainer` computes it after its forward pass:

        L = 1/2 sum_{i=1,2} 1/(V-1) sum_{v != i} CE(q_i, softmax(z_v C^T / T))

    over the V crops (the two global crops first), with the prototypes C (``prototypes``,
    ``num_prototypes x dim``) L2-normalised in place at every call and the codes q_i from
    Sinkhorn-Knopp on the scores of the global crops (no gradient through q). During the
    first ``freeze_prototypes_steps`` training-mode calls the prototypes receive no
    gradient. Embed consecutive crops of one resolution in one forward pass, as SwAV does.

    Args:
        dim: the embedding dim of the model.
        swav: a :class:`slade.SwavConfig` or a dict of its fields; ``**fields`` override
            single fields (``num_prototypes=``, ``temperature=``, ...).
        device, dtype: where and in which float type to keep the prototypes, drawn as
            ``torch.nn.Linear`` draws its weight (torch's global generator).
    """

    def __init__(
        self,
        dim: int,
        *,
        swav: SwavConfig | Mapping | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **fields: Any,
    ):
        super().__init__()
        dim = positive_int(dim, "dim")
        settings = SwavConfig.mapping(swav, fields, "swav")
        self._settings = _core.check_settings("swav", settings)
        self._swav = SwavConfig.from_core(self._settings)
        bound = 1.0 / math.sqrt(dim)
        shape = (self._swav.num_prototypes, dim)
        init = torch.empty(shape, device=device, dtype=dtype).uniform_(-bound, bound)
        self.prototypes = torch.nn.Parameter(init)
        self._start_count(device)

    @property
    def swav(self) -> SwavConfig:
        """The settings in use, every field filled in (a copy)."""
        return dataclasses.replace(self._swav)

    def forward(self, embeddings: Sequence[Any]) -> torch.Tensor:
        """The loss of ``[z_global_1, z_global_2, z_local_1, ...]``, each ``(B, dim)``
        embeddings of the same B images, on the prototypes' device."""
        crops = as_tensors(embeddings, "embeddings", "[z_global_1, z_global_2, z_local_1, ...]")
        frozen = self.training and self._before(self._swav.freeze_prototypes_steps)
        loss = _core.swav_objective(self._settings, self.prototypes, crops, frozen)
        self._count()
        return loss

    def extra_repr(self) -> str:
        return f"num_prototypes={self._swav.num_prototypes}, dim={self.prototypes.shape[1]}"


__all__ = ["StudentLoss", "SwavLoss", "TeacherLoss"]
