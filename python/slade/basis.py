"""The feature basis of the SLADE student (Sec 3.3; DESIGN.md §2.4).

W_a (``num_basis x dim``) maps an embedding f to its basis representation r = W_a f; the
basis similarity of two samples is s(i, j) = cos(r_i, r_j). It measures how alike two
unlabeled samples are, so that only confidently pseudo-labeled pairs are mined
(:func:`slade.miners.basis_pairs`). The math runs in the Rust core; this module holds the
state as ordinary parameters and buffers.
"""

from __future__ import annotations

from typing import Any

import torch

from . import _core
from ._convert import as_int, as_tensor, optional_int, optional_tensor
from .settings import BasisConfig

_STATS = ("mu_pos", "var_pos", "mu_neg", "var_neg", "updates_pos", "updates_neg")


class FeatureBasis(torch.nn.Module):
    """A feature basis W_a with the running statistics of its similarities.

    The loss (:meth:`loss`) is L_Basis = L_CE + L_reg:

    - L_CE: softmax cross-entropy of r (``num_basis`` logits) against the true labels of
      the labeled samples, which must lie in ``[0, num_basis)``.
    - L_reg with ``regularizer="sd"`` (the paper's L_SD): over the pairs i < j of unlabeled
      samples, positives share their pseudo label and negatives do not. mu and var are the
      mean and (population) variance of s over a side's pairs in the batch, and
      ``L_SD = (var+ + var-) + sd_weight * max(0, sd_margin - (mu+ - mu-))`` with full
      gradient (``sd_statistics="batch"``, DESIGN.md §2.4). ``sd_statistics="blended"``
      (a comparison switch) computes it on ``(1 - momentum) batch + momentum running``
      instead, the running part detached, which scales its gradient by ``1 - momentum``.
      A batch without positive (negative) pairs adds no var+ (var-) term and no margin
      term (a zero with zero gradients), and leaves that side's statistics unchanged.
      (Our definitions where the paper is silent.)
    - ``regularizer="global_ce"`` (the paper's ablation): softmax cross-entropy of H r
      against the pseudo labels, where H (``num_pseudo_classes x num_basis``, the
      ``pseudo_head`` parameter) is a second linear head without bias on the basis
      representation, trained with it. ``"local_ce"``: the same, with the softmax
      restricted to the pseudo classes present in the batch.

    Running statistics: each call of :meth:`loss` in training mode (``self.training``)
    updates ``mu <- (1 - momentum) mu_batch + momentum mu`` (same for var; a side's first
    update sets the batch values), for every regulariser, so that
    ``basis_pairs(t1="auto")`` works.
    Calls in eval mode leave them unchanged.

    State: the parameters ``weight`` (W_a, also available as ``W_a``) and ``pseudo_head``
    (None for ``"sd"``), and the buffers ``mu_pos``, ``var_pos``, ``mu_neg``, ``var_neg``
    (float32) and ``updates_pos``, ``updates_neg`` (int64 counts of updates). They are plain
    module state: ``state_dict()`` / ``load_state_dict()``, ``torch.save`` and safetensors
    work as for any module, and ``.to(device)`` moves them.

    Args:
        num_basis: B, the number of basis vectors (the paper: the number of labeled classes).
        dim: embedding dimension.
        momentum, sd_margin, sd_weight, regularizer, sd_statistics: the fields of
            :class:`slade.settings.BasisConfig` (beta, m_sd, w, the regulariser and what
            L_SD is computed on), with its defaults.
        num_pseudo_classes: k of the pseudo labels; needed by the ``"*_ce"`` regularisers
            (the size of ``pseudo_head``).
        device, dtype: where and in which float type to keep the parameters.

    W_a and H are initialised as ``torch.nn.Linear`` initialises its weight,
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from torch's global generator.
    """

    def __init__(
        self,
        num_basis: int,
        dim: int,
        *,
        momentum: float = BasisConfig.momentum,
        sd_margin: float = BasisConfig.sd_margin,
        sd_weight: float = BasisConfig.sd_weight,
        regularizer: str = BasisConfig.regularizer,
        sd_statistics: str = BasisConfig.sd_statistics,
        num_pseudo_classes: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.momentum = momentum
        self.sd_margin = sd_margin
        self.sd_weight = sd_weight
        self.regularizer = regularizer
        self.sd_statistics = sd_statistics
        state = _core.basis_init(
            as_int(num_basis, "num_basis"),
            as_int(dim, "dim"),
            optional_int(num_pseudo_classes, "num_pseudo_classes"),
            self._config(),
        )
        weight = state["weight"]
        assert weight is not None, "basis_init returns the weight"
        self.weight = torch.nn.Parameter(weight.detach())
        head = state["pseudo_head"]
        if head is None:
            self.register_parameter("pseudo_head", None)
        else:
            self.pseudo_head = torch.nn.Parameter(head.detach())
        for name in _STATS:
            self.register_buffer(name, state[name])
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    @property
    def W_a(self) -> torch.nn.Parameter:  # noqa: N802 (the paper's name)
        """The basis matrix W_a (the ``weight`` parameter itself)."""
        return self.weight

    @property
    def num_basis(self) -> int:
        return self.weight.shape[0]

    @property
    def dim(self) -> int:
        return self.weight.shape[1]

    @property
    def num_pseudo_classes(self) -> int | None:
        return None if self.pseudo_head is None else self.pseudo_head.shape[0]

    def _config(self) -> dict[str, Any]:
        """The settings by name (:class:`slade.settings.BasisConfig`'s fields)."""
        return {name: getattr(self, name) for name in BasisConfig._own_fields()}

    def _state(self) -> dict[str, torch.Tensor | None]:
        """The state tensors by name, the very tensors."""
        state: dict[str, torch.Tensor | None] = {
            "weight": self.weight,
            "pseudo_head": self.pseudo_head,
        }
        state.update({name: getattr(self, name) for name in _STATS})
        return state

    def representation(self, emb: Any) -> torch.Tensor:
        """r = W_a f for each row f of ``emb`` (``N x num_basis``), differentiable."""
        return _core.basis_representation(self._state(), self._config(), as_tensor(emb, "emb"))

    def forward(self, emb: Any) -> torch.Tensor:
        """Same as :meth:`representation`."""
        return self.representation(emb)

    def similarity(self, emb: Any) -> torch.Tensor:
        """s(i, j) = cos(r_i, r_j) (``N x N``), differentiable; each r is scaled by
        ``1 / max(|r|, 1e-12)``."""
        return _core.basis_similarity(self._state(), self._config(), as_tensor(emb, "emb"))

    def loss(
        self,
        emb_l: Any,
        labels_l: Any,
        emb_u: Any,
        pseudo_u: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_Basis = L_CE + L_reg (see the class docs), differentiable w.r.t. the embeddings
        and the basis' parameters.

        Args:
            emb_l, labels_l: labeled embeddings ``(N_l, dim)`` and labels in
                ``[0, num_basis)``; both ``None`` to leave L_CE out (0).
            emb_u, pseudo_u: unlabeled embeddings ``(N_u, dim)`` and their pseudo labels;
                both ``None`` to leave L_reg out (0).

        Returns:
            ``(total, parts)``: the 0-d loss and ``{"ce": ..., <regularizer>: ...}``, whose
            values sum to ``total``. In training mode the running statistics are updated
            after the loss is computed.
        """
        return _core.basis_loss(
            self._state(),
            self._config(),
            optional_tensor(emb_l, "emb_l"),
            optional_tensor(labels_l, "labels_l"),
            optional_tensor(emb_u, "emb_u"),
            optional_tensor(pseudo_u, "pseudo_u"),
            self.training,
        )

    def extra_repr(self) -> str:
        head = "" if self.pseudo_head is None else f", num_pseudo_classes={self.num_pseudo_classes}"
        return (
            f"num_basis={self.num_basis}, dim={self.dim}, momentum={self.momentum}, "
            f"sd_margin={self.sd_margin}, sd_weight={self.sd_weight}, "
            f"regularizer={self.regularizer!r}, sd_statistics={self.sd_statistics!r}{head}"
        )
