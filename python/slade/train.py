"""Training steps run in Rust: the SwAV, teacher and student trainers. Their settings are
the dataclasses of :mod:`slade.settings` (re-exported here), checked by the core.

One call runs a whole step on the batch's device (forward through backbone and head, every
loss term, backward, clipping, optimizer update, schedule) with the GIL released; Python
keeps data loading and augmentation, and batches cross as torch tensors without copies.
A KeyboardInterrupt (Ctrl-C) arrives between steps, so the trainer is never left half
updated.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import torch

from . import _core
from ._convert import as_tensor, as_tensors, optional_tensor
from .errors import ConfigError
from .nn import (
    CoreModule,
    device_name,
    incompatible_keys,
    load_torchvision_weights,
    named_tensor_list,
)
from .settings import (
    ModelConfig,
    OptimizerConfig,
    RankingConfig,
    StudentObjectiveConfig,
    SwavConfig,
)


def _crops(crops: Any) -> list[torch.Tensor]:
    return as_tensors(crops, "crops", "[global_1, global_2, local_1, ...]")


def _trainer_settings(model_config: Any, optim_config: Any, precision: str, seed: int) -> dict:
    """The core's trainer mapping: model, optimizer, precision and seed."""
    return {
        "model": ModelConfig.mapping(model_config, {}, "model config"),
        "optimizer": OptimizerConfig.mapping(optim_config, {}, "optimizer config"),
        "precision": precision,
        "seed": seed,
    }


def _checkpoint(path: str | os.PathLike, kind: str) -> tuple[dict, dict]:
    """The keyword arguments of the trainer a checkpoint of ``kind`` was saved from (model,
    optimizer, precision, seed), and its objective's settings."""
    found, config, objective, _ = _core.read_checkpoint_info(os.fspath(path))
    if found != kind:
        raise ConfigError(f"{os.fspath(path)} is a {found} checkpoint, not a {kind} one")
    common = dict(
        model_config=ModelConfig.from_core(config["model"]),
        optim_config=OptimizerConfig.from_core(config["optimizer"]),
        precision=config["precision"],
        seed=config["seed"],
    )
    return common, objective


_T = TypeVar("_T", bound="_Trainer")


class _Trainer(CoreModule):
    """What every trainer offers around its core object.

    ``model_config`` and ``optim_config`` hold the settings in use, as the core checked and
    completed them."""

    model_config: ModelConfig
    optim_config: OptimizerConfig
    # The kind its checkpoints name, and the keyword argument that takes its objective's
    # settings (a mapping, as a checkpoint holds them).
    _KIND: ClassVar[str]
    _OBJECTIVE: ClassVar[str]

    def _start(
        self,
        core_class: Any,
        model_config: Any,
        optim_config: Any,
        precision: str,
        seed: int,
        objective: Mapping[str, Any],
        device: Any,
    ) -> dict:
        """Builds the core trainer; reads the model and optimizer settings back from it and
        returns the objective's, as the core checked and completed them."""
        self._core = core_class(
            _trainer_settings(model_config, optim_config, precision, seed),
            objective,
            device_name(device),
        )
        config = self._core.config
        self.model_config = ModelConfig.from_core(config["model"])
        self.optim_config = OptimizerConfig.from_core(config["optimizer"])
        return self._core.objective_config

    @classmethod
    def _checkpoint_arguments(cls, objective: dict) -> dict[str, Any]:
        """The keyword arguments that rebuild the objective a checkpoint holds."""
        return {cls._OBJECTIVE: objective}

    @classmethod
    def from_checkpoint(cls: type[_T], path: str | os.PathLike, *, device: Any = "cpu") -> _T:
        """A trainer built from a checkpoint's configuration, with its state loaded."""
        common, objective = _checkpoint(path, cls._KIND)
        trainer = cls(device=device, **cls._checkpoint_arguments(objective), **common)  # type: ignore[call-arg]
        trainer.load(path)
        return trainer

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The core's very parameter tensors, in torch's order."""
        return iter(self._core.named_parameters())

    def parameters(self) -> Iterator[torch.Tensor]:
        return (p for _, p in self._core.named_parameters())

    def named_buffers(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self._core.named_buffers())

    def state_dict(self) -> OrderedDict[str, torch.Tensor]:
        """Parameters and buffers, detached but sharing memory, as torch's state_dict()."""
        return OrderedDict(self._core.state_dict())

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> Any:
        """Copies a state_dict with these names in; with ``strict`` every name must match.
        Returns torch's ``(missing_keys, unexpected_keys)``."""
        items = named_tensor_list(state_dict, "state_dict")
        return incompatible_keys(self._core.load_state_dict(items, strict))

    @property
    def step_count(self) -> int:
        """Optimizer updates done so far."""
        return self._core.step_count

    @property
    def learning_rates(self) -> dict[str, float]:
        """The learning rate each group will use at the next update."""
        return dict(self._core.learning_rates())

    def apply_gradients(self) -> dict[str, float]:
        """The second half of a step: clipping, optimizer update, schedule.

        Between ``compute_gradients`` and ``apply_gradients`` the gradients are in each
        parameter's ``.grad`` (see ``named_parameters()``), e.g. for
        ``torch.distributed.all_reduce``.
        """
        return self._core.apply_gradients()

    def optimizer_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Per parameter: ``step`` and ``momentum_buffer`` or ``exp_avg``/``exp_avg_sq``."""
        state: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in self._core.optimizer_state():
            name, slot = key.rsplit(".", 1)
            state.setdefault(name, {})[slot] = tensor
        return state

    def load_backbone(
        self,
        weights: str | os.PathLike | Mapping[str, torch.Tensor],
        *,
        strict: bool = True,
        ignore_prefixes: Sequence[str] = ("fc.",),
        strip_prefix: str | None = None,
    ) -> dict:
        """Loads backbone weights (a torchvision-style state_dict, a ``.pt``/``.pth`` or
        ``.safetensors`` file, e.g. SwAV's or torchvision's) into the model; the embedding
        head and the trainer's own parameters are left as they are. See
        :func:`slade.load_torchvision_weights`."""
        return load_torchvision_weights(
            self,
            weights,
            strict=strict,
            ignore_prefixes=ignore_prefixes,
            strip_prefix=strip_prefix,
        )

    def load_model(self, source: Any, *, strict: bool = True) -> dict:
        """Copies backbone and embedding head from ``source``: another trainer or an
        :class:`slade.EmbeddingModel` with the same model config (e.g. a student starting
        from the teacher's weights), or a state_dict with the model's names. The trainer's
        own parameters (feature basis, prototypes), optimizer state and step count are left
        as they are."""
        if hasattr(source, "_core") and hasattr(source._core, "model_state_dict"):
            state = source._core.model_state_dict()
        elif hasattr(source, "_core") and hasattr(source._core, "state_dict"):
            state = source._core.state_dict()
        else:
            state = named_tensor_list(source, "source")
        return self._core.load_model_state(state, strict)

    def save(self, path: str | os.PathLike) -> None:
        """Writes model, optimizer state, step count, random state and config to ``path``
        (``.safetensors``) plus a JSON file beside it, each atomically."""
        self._core.save(os.fspath(path))

    def load(self, path: str | os.PathLike) -> None:
        """Restores a checkpoint written by ``save`` with the same configuration."""
        self._core.load(os.fspath(path))


class SwavTrainer(_Trainer):
    """SwAV self-supervised training of an embedding model (DESIGN.md §2.1).

    Per step: prototypes C (K x dim) L2-normalised; codes q from Sinkhorn-Knopp on the
    scores of the two global crops (no gradient through q); loss
    L = 1/2 sum_{i=1,2} 1/(V-1) sum_{v != i} CE(q_i, softmax(z_v C^T / T)) over all V crops.
    Crops of one resolution that follow each other share a backbone pass (and BatchNorm
    statistics), as in the SwAV reference code. Our choices: no feature queue, no LARS;
    prototypes are in the "head" parameter group.

    Args:
        model_config: a :class:`slade.ModelConfig` or a dict of its fields (default
            ``ModelConfig()``).
        optim_config: a :class:`slade.OptimizerConfig` or a dict (default
            ``OptimizerConfig()``).
        device: where the model lives; batches must be on it.
        swav: a :class:`slade.SwavConfig` or a dict of its fields; ``**swav_fields``
            (``num_prototypes=``, ``temperature=``, ...) override single fields.
        precision: ``"fp32"``; ``"fp16"`` for CUDA autocast with dynamic loss scaling
            (ignored on CPU); ``"bf16"`` for the network's convolutions in bfloat16 on any
            device, as torch's CPU autocast (float32 weights, optimizer, BatchNorm statistics,
            embedding head and losses), fast on CPUs with AVX512-BF16.
        seed: seeds the initial weights and prototypes.
    """

    _KIND = "swav"
    _OBJECTIVE = "swav"

    def __init__(
        self,
        model_config: ModelConfig | Mapping | None = None,
        optim_config: OptimizerConfig | Mapping | None = None,
        *,
        device: Any = "cpu",
        swav: SwavConfig | Mapping | None = None,
        precision: str = "fp32",
        seed: int = 0,
        **swav_fields: Any,
    ):
        settings = SwavConfig.mapping(swav, swav_fields, "swav")
        self.swav_config = SwavConfig.from_core(
            self._start(
                _core._SwavTrainer, model_config, optim_config, precision, seed, settings, device
            )
        )

    def step(self, crops: Sequence[Any]) -> dict[str, float]:
        """One training step on ``[global_1, global_2, local_1, ...]``, each (N, C, H, W) on
        the trainer's device; returns ``loss``, ``lr/<group>`` (the rates this update used),
        ``step``, and ``grad_norm`` (before clipping) when ``clip_grad_norm`` is set."""
        return self._core.step(_crops(crops))

    def compute_gradients(self, crops: Sequence[Any]) -> dict[str, float]:
        """The first half of a step: forward, loss and backward (gradients in ``.grad``)."""
        return self._core.compute_gradients(_crops(crops))

    @property
    def prototypes(self) -> torch.Tensor:
        """The prototype matrix C (K x dim), the core's very tensor."""
        return dict(self._core.named_parameters())["prototypes"]


class TeacherTrainer(_Trainer):
    """The SLADE teacher (Sec 3.1; DESIGN.md §2.2): the embedding model fine-tuned with a
    ranking loss on labeled batches.

    Per step: f = g(x) (L2-normalised, training mode), then one of

    - ``loss="contrastive"``: L = mean_{>0} [d_p - pos_margin]_+ + mean_{>0} [neg_margin - d_n]_+
      over the pairs, d the Euclidean distance (PML's ``ContrastiveLoss``);
    - ``loss="multi_similarity"``: L = mean_i 1/alpha log(1 + sum_P e^{-alpha (S_ip - base)})
      + 1/beta log(1 + sum_N e^{beta (S_in - base)}), S the cosine similarity (PML's
      ``MultiSimilarityLoss``),

    over all pairs of the batch or, with ``miner=True``, over the pairs of the
    multi-similarity miner (PML's ``MultiSimilarityMiner(epsilon)``). Values and gradients
    equal pytorch-metric-learning 2.9.0's.

    Args:
        model_config, optim_config: as :class:`SwavTrainer`.
        device: where the model lives; images must be on it (labels may be anywhere).
        ranking: a :class:`slade.RankingConfig` or a dict of its fields; ``**ranking_fields``
            (``loss=``, ``miner=``, ``pos_margin=``, ...) override single fields.
        precision: as :class:`SwavTrainer` (the loss runs in float32 in every mode).
        seed: seeds the initial weights. A :class:`StudentTrainer` with the same model
            config and seed starts from the same weights.

    To start from self-supervised or ImageNet weights, call :meth:`load_backbone`.
    """

    _KIND = "teacher"
    _OBJECTIVE = "ranking"

    def __init__(
        self,
        model_config: ModelConfig | Mapping | None = None,
        optim_config: OptimizerConfig | Mapping | None = None,
        *,
        device: Any = "cpu",
        ranking: RankingConfig | Mapping | None = None,
        precision: str = "fp32",
        seed: int = 0,
        **ranking_fields: Any,
    ):
        settings = RankingConfig.mapping(ranking, ranking_fields, "ranking")
        self.ranking_config = RankingConfig.from_core(
            self._start(
                _core._TeacherTrainer, model_config, optim_config, precision, seed, settings, device
            )
        )

    def step(self, images: Any, labels: Any) -> dict[str, float]:
        """One training step on ``images`` (N, C, H, W) with integer ``labels`` (N,).

        Returns ``loss``, ``loss/rank``, ``pairs/positive`` and ``pairs/negative`` (the
        ordered pairs the loss ran over), ``lr/<group>`` (the rates this update used),
        ``step``, and ``grad_norm`` when ``clip_grad_norm`` is set."""
        return self._core.step(as_tensor(images, "images"), as_tensor(labels, "labels"))

    def compute_gradients(self, images: Any, labels: Any) -> dict[str, float]:
        """The first half of a step: forward, loss and backward (gradients in ``.grad``)."""
        return self._core.compute_gradients(
            as_tensor(images, "images"), as_tensor(labels, "labels")
        )


class StudentTrainer(_Trainer):
    """The SLADE student (Sec 3.3; DESIGN.md §2.4):

        L = L_rank(labeled) + lambda1 * L_rank(unlabeled pairs) + lambda2 * L_Basis

    Each step embeds the labeled and the unlabeled images **in one forward pass** (they are
    concatenated, so BatchNorm normalises with the statistics of the joint batch; our
    choice), then:

    - L_rank(labeled): the ranking loss on the labeled embeddings and labels, as
      :class:`TeacherTrainer` (``loss``, ``miner`` and their parameters).
    - L_Basis = L_CE + L_reg of the feature basis W_a (``num_basis x dim``, parameter
      ``basis.weight`` in group ``"basis"``; see :class:`slade.FeatureBasis`): L_CE is the
      cross-entropy of r = W_a f against the labels (which must lie in
      ``[0, num_basis)``); L_reg is ``regularizer="sd"`` (L_SD on the basis similarities
      s(i, j) = cos(r_i, r_j) of unlabeled pairs, on the batch statistics with full
      gradient, or ``sd_statistics="blended"`` for the damped comparison form; margin
      ``sd_margin`` and weight ``sd_weight``), ``"global_ce"`` or ``"local_ce"`` (a
      cross-entropy against the pseudo labels through a second head ``basis.pseudo_head``,
      ``num_pseudo_classes x num_basis``). The running statistics are buffers
      (``basis.mu_pos``, ``basis.var_pos``, ``basis.mu_neg``, ``basis.var_neg``,
      ``basis.updates_pos``, ``basis.updates_neg``), updated by every step.
    - The unlabeled pairs: with ``variant="basis_mining"``, positives P = {s >= T1} that
      share their pseudo label and negatives N = {s <= T2} that do not (drop the pseudo-label
      condition with ``require_pseudo_agreement=False``); otherwise all pairs by pseudo label.
      ``t1``/``t2`` are numbers or rules read from the running statistics after this step's
      update: ``"mu+"``, ``"mu-"``, ``"mid"`` ((mu+ + mu-) / 2), ``"all"`` (no test on that
      side: every pseudo-label-agreeing pair is a positive, or every disagreeing one a
      negative), or ``"auto"`` (the default
      rules, currently T1 = mu+ and T2 = mu-; see :meth:`threshold_rules`). A rule whose
      statistic no batch has defined yet mines no pair of that side.
    - L_rank(unlabeled): the same loss kind as the labeled one over those pairs (no
      multi-similarity miner on top).

    Ablations (``variant``): ``"pseudo_only"`` (no basis, no mining; ``num_basis`` and the
    basis settings are then unused), ``"basis"`` (+ L_Basis; the unlabeled loss still over
    all pseudo pairs), ``"basis_mining"`` (the full method). Research bounds of
    ``basis_mining`` (``mining``): ``"oracle"`` keeps the pseudo pairs that the hidden
    labels confirm (pass ``true_labels`` to :meth:`step`), ``"random"`` keeps as many
    pseudo pairs of each side as basis mining would, drawn uniformly; ``"basis"`` is the
    method. Steps of ``basis_mining`` also report ``pairs/pseudo_positive`` and
    ``pairs/pseudo_negative`` (all pseudo pairs), so the kept fraction is
    ``pairs/positive / pairs/pseudo_positive``.

    Warm-up: for the first ``basis_warmup`` updates the backbone is frozen (no gradient,
    BatchNorm in evaluation mode) and the embedding head is not updated: only the basis
    trains. The trainer manages the freezing while ``basis_warmup > 0``.

    Initialisation: a student with the same model config and ``seed`` as a
    :class:`TeacherTrainer` starts from the teacher's initial weights (load the same
    backbone weights into both with :meth:`load_backbone`); :meth:`load_model` copies a
    trained teacher's weights instead.

    Args:
        model_config, optim_config, device, precision, seed: as :class:`TeacherTrainer`
            (``OptimizerConfig.basis_lr`` sets the basis' learning rate).
        num_basis: B, the number of basis vectors, at least the number of labeled classes
            (L_CE uses the first ones as class logits; the rest span unseen directions);
            ``None`` for ``"pseudo_only"``.
        objective: a :class:`slade.settings.StudentObjectiveConfig` or a dict of its
            fields; ``**fields`` override single fields: the ranking loss (``loss``,
            ``miner``, ``pos_margin``, ``neg_margin``, ``alpha``, ``beta``, ``base``,
            ``epsilon``), the basis (``momentum``, ``sd_margin``, ``sd_weight``,
            ``regularizer``, ``sd_statistics``, ``num_pseudo_classes``) and ``variant``,
            ``lambda1``, ``lambda2``, ``basis_warmup``, ``t1``, ``t2``,
            ``require_pseudo_agreement``, ``mining`` (see above).
    """

    _KIND = "student"
    _OBJECTIVE = "objective"

    def __init__(
        self,
        model_config: ModelConfig | Mapping | None = None,
        optim_config: OptimizerConfig | Mapping | None = None,
        *,
        num_basis: int | None,
        device: Any = "cpu",
        objective: StudentObjectiveConfig | Mapping | None = None,
        precision: str = "fp32",
        seed: int = 0,
        **fields: Any,
    ):
        settings = StudentObjectiveConfig.mapping(
            objective, {**fields, "num_basis": num_basis}, "objective"
        )
        self.student_config = StudentObjectiveConfig.from_core(
            self._start(
                _core._StudentTrainer, model_config, optim_config, precision, seed, settings, device
            )
        )

    @classmethod
    def _checkpoint_arguments(cls, objective: dict) -> dict[str, Any]:
        return {"objective": objective, "num_basis": objective["num_basis"]}

    def step(
        self,
        labeled_images: Any,
        labels: Any,
        unlabeled_images: Any,
        pseudo_labels: Any,
        true_labels: Any = None,
    ) -> dict[str, float]:
        """One training step on a labeled batch (images and labels in ``[0, num_basis)``)
        and an unlabeled batch (images of the same size and their pseudo labels, cluster ids
        >= 0, below ``num_pseudo_classes`` for the CE regularisers). ``true_labels``: the
        hidden labels of the unlabeled images, read only by ``mining="oracle"``.

        Returns ``loss`` (the weighted total) and its unweighted parts ``loss/rank_labeled``,
        ``loss/rank_unlabeled`` and, with a basis, ``loss/basis`` = ``loss/ce`` +
        ``loss/sd`` (or ``loss/global_ce`` / ``loss/local_ce``); ``pairs/positive`` and
        ``pairs/negative`` (the ordered unlabeled pairs the unlabeled loss ran over),
        ``pairs/labeled_positive``/``pairs/labeled_negative``; ``threshold/t1`` and
        ``threshold/t2`` (the values used, when defined; ``basis_mining`` only);
        ``basis/mu_pos``, ``basis/var_pos``, ``basis/mu_neg``, ``basis/var_neg`` (running
        statistics after the update); ``warmup`` (1 during the basis warm-up);
        ``lr/<group>``; ``step``; ``grad_norm`` when clipping."""
        batch = self._batch(labeled_images, labels, unlabeled_images, pseudo_labels, true_labels)
        return self._core.step(*batch)

    def compute_gradients(
        self,
        labeled_images: Any,
        labels: Any,
        unlabeled_images: Any,
        pseudo_labels: Any,
        true_labels: Any = None,
    ) -> dict[str, float]:
        """The first half of a step: forward, loss and backward (gradients in ``.grad``)."""
        batch = self._batch(labeled_images, labels, unlabeled_images, pseudo_labels, true_labels)
        return self._core.compute_gradients(*batch)

    @staticmethod
    def _batch(labeled_images, labels, unlabeled_images, pseudo_labels, true_labels):
        return (
            as_tensor(labeled_images, "labeled_images"),
            as_tensor(labels, "labels"),
            as_tensor(unlabeled_images, "unlabeled_images"),
            as_tensor(pseudo_labels, "pseudo_labels"),
            optional_tensor(true_labels, "true_labels"),
        )

    def threshold_rules(self) -> tuple[float | str, float | str]:
        """The (T1, T2) rules in use, ``"auto"`` resolved (e.g. ``("mu+", "mu-")``, or a
        number)."""
        return self._core.threshold_rules()

    @property
    def basis(self) -> torch.Tensor | None:
        """W_a (``num_basis x dim``), the core's very tensor (None for ``"pseudo_only"``)."""
        return dict(self._core.named_parameters()).get("basis.weight")

    @property
    def basis_statistics(self) -> dict[str, float]:
        """The running statistics of the basis similarities (empty for ``"pseudo_only"``)."""
        buffers = dict(self._core.named_buffers())
        names = ("mu_pos", "var_pos", "mu_neg", "var_neg", "updates_pos", "updates_neg")
        return {n: buffers[f"basis.{n}"].item() for n in names if f"basis.{n}" in buffers}


__all__ = [
    "OptimizerConfig",
    "RankingConfig",
    "StudentObjectiveConfig",
    "StudentTrainer",
    "SwavConfig",
    "SwavTrainer",
    "TeacherTrainer",
]
