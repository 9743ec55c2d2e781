"""Training steps run in Rust: optimizer configuration and the SwAV, teacher and student
trainers.

One call runs a whole step on the batch's device (forward through backbone and head, every
loss term, backward, clipping, optimizer update, schedule) with the GIL released; Python
keeps data loading and augmentation, and batches cross as torch tensors without copies.
A KeyboardInterrupt (Ctrl-C) arrives between steps, so the trainer is never left half
updated.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from . import _core
from ._convert import as_tensor, optional_tensor
from .errors import ConfigError, DtypeError
from .nn import (
    CoreModule,
    ModelConfig,
    config_from,
    device_name,
    load_torchvision_weights,
    named_tensor_list,
)

GROUPS = ("backbone", "head", "basis")


@dataclass
class OptimizerConfig:
    """Optimizer, parameter-group learning rates, schedule and clipping.

    The optimizers equal torch.optim's ``SGD`` (dampening 0), ``Adam`` and ``AdamW``
    (no amsgrad) step for step. Parameter groups: ``backbone``, ``head`` (embedding head,
    SwAV prototypes) and ``basis`` (the student's feature basis); each uses ``lr`` unless
    its own rate is set.

    Schedule, as a factor of each group's rate after t updates: a linear warm-up from
    ``warmup_start_factor`` to 1 over ``warmup_steps`` (torch's ``LinearLR``), then
    ``"constant"``, ``"cosine"`` (to ``min_lr_factor`` at ``total_steps``, as
    ``CosineAnnealingLR``) or ``"step"`` (times ``gamma`` every ``step_size`` steps, as
    ``StepLR``). ``clip_grad_norm`` clips the total gradient 2-norm as
    ``torch.nn.utils.clip_grad_norm_``.

    Attributes:
        name: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        weight_decay: ``None`` means torch's default (0; 0.01 for AdamW).
        group_weight_decay: per-group weight decay, e.g. ``{"head": 0.0}``.
        momentum, nesterov: SGD only (our default momentum is 0.9; torch's is 0).
        betas, eps: Adam/AdamW only.
    """

    name: str = "adam"
    lr: float = 1e-3
    backbone_lr: float | None = None
    head_lr: float | None = None
    basis_lr: float | None = None
    weight_decay: float | None = None
    group_weight_decay: dict = field(default_factory=dict)
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "constant"
    warmup_steps: int = 0
    warmup_start_factor: float = 0.01
    total_steps: int | None = None
    min_lr_factor: float = 0.0
    step_size: int = 1000
    gamma: float = 0.1
    clip_grad_norm: float | None = None

    def to_core(self) -> dict:
        fields = dataclasses.asdict(self)
        group_lr = {}
        for group in GROUPS:
            rate = fields.pop(f"{group}_lr")
            if rate is not None:
                group_lr[group] = rate
        fields["group_lr"] = group_lr
        fields["betas"] = list(fields["betas"])
        return fields

    @classmethod
    def from_core(cls, fields: Mapping) -> OptimizerConfig:
        fields = dict(fields)
        for group, rate in fields.pop("group_lr", {}).items():
            fields[f"{group}_lr"] = rate
        fields["betas"] = tuple(fields["betas"])
        return cls(**fields)


@dataclass
class SwavConfig:
    """SwAV settings (DESIGN.md §2.1; Caron et al. 2020).

    Attributes:
        num_prototypes: K, the rows of the prototype matrix C (normalised every step).
        temperature: T of the swapped-prediction softmax.
        epsilon: entropic regularisation of Sinkhorn-Knopp.
        sinkhorn_iterations: Sinkhorn-Knopp iterations.
        freeze_prototypes_steps: the prototypes stay fixed for this many first steps (their
            gradient is dropped, as the SwAV reference code does for its first epoch); 0 by
            default.
    """

    num_prototypes: int = 3000
    temperature: float = 0.1
    epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    freeze_prototypes_steps: int = 0


def _crops(crops: Any) -> list[torch.Tensor]:
    if isinstance(crops, torch.Tensor) or not isinstance(crops, Sequence):
        raise DtypeError(
            "crops must be a list of tensors [global_1, global_2, local_1, ...], "
            f"got {type(crops).__name__}"
        )
    return [as_tensor(c, f"crops[{i}]") for i, c in enumerate(crops)]


def _trainer_config(
    model_config: ModelConfig, optim_config: OptimizerConfig, precision: str, seed: int
) -> str:
    return json.dumps(
        {
            "model": dataclasses.asdict(model_config),
            "optimizer": optim_config.to_core(),
            "precision": precision,
            "seed": seed,
        }
    )


class _Trainer(CoreModule):
    """What every trainer offers around its core object."""

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

    def model_state_dict(self) -> OrderedDict[str, torch.Tensor]:
        """The model's parameters and buffers (backbone and embedding head, without the
        trainer's own parameters), detached but sharing memory."""
        return OrderedDict(self._core.model_state_dict())

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
        model_config: a :class:`slade.ModelConfig` (default ResNet-50/512).
        optim_config: a :class:`OptimizerConfig` (default Adam 1e-3).
        device: where the model lives; batches must be on it.
        num_prototypes, temperature, epsilon, sinkhorn_iterations, freeze_prototypes_steps:
            see :class:`SwavConfig`.
        precision: ``"fp32"``, or ``"fp16"`` for CUDA autocast with dynamic loss scaling
            (ignored on CPU).
        seed: seeds the initial weights and prototypes.
    """

    def __init__(
        self,
        model_config: ModelConfig | Mapping | None = None,
        optim_config: OptimizerConfig | Mapping | None = None,
        *,
        device: Any = "cpu",
        num_prototypes: int = 3000,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        freeze_prototypes_steps: int = 0,
        precision: str = "fp32",
        seed: int = 0,
    ):
        self.model_config = config_from(model_config, ModelConfig, "model config")
        self.optim_config = config_from(optim_config, OptimizerConfig, "optimizer config")
        self.swav_config = SwavConfig(
            num_prototypes=num_prototypes,
            temperature=temperature,
            epsilon=epsilon,
            sinkhorn_iterations=sinkhorn_iterations,
            freeze_prototypes_steps=freeze_prototypes_steps,
        )
        self._core = _core.SwavTrainer(
            _trainer_config(self.model_config, self.optim_config, precision, seed),
            json.dumps(dataclasses.asdict(self.swav_config)),
            device_name(device),
        )

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, device: Any = "cpu") -> SwavTrainer:
        """A trainer built from a checkpoint's configuration, with its state loaded."""
        kind, config_json, swav_json, _ = _core.read_checkpoint_info(os.fspath(path))
        if kind != "swav":
            raise ConfigError(f"{os.fspath(path)} is a {kind} checkpoint, not a SwAV one")
        config = json.loads(config_json)
        trainer = cls(
            ModelConfig(**config["model"]),
            OptimizerConfig.from_core(config["optimizer"]),
            device=device,
            precision=config["precision"],
            seed=config["seed"],
            **json.loads(swav_json),
        )
        trainer.load(path)
        return trainer

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


LOSSES = ("contrastive", "multi_similarity")


def _ranking(
    loss: str,
    miner: bool,
    pos_margin: float,
    neg_margin: float,
    alpha: float,
    beta: float,
    base: float,
    epsilon: float,
) -> dict:
    if not isinstance(loss, str):
        raise ConfigError(f"loss must be one of {LOSSES}, got {loss!r}")
    return {
        "loss": loss,
        "miner": bool(miner),
        "pos_margin": float(pos_margin),
        "neg_margin": float(neg_margin),
        "alpha": float(alpha),
        "beta": float(beta),
        "base": float(base),
        "epsilon": float(epsilon),
    }


def _checkpoint(path: str | os.PathLike, kind: str) -> tuple[dict, dict]:
    found, config_json, objective_json, _ = _core.read_checkpoint_info(os.fspath(path))
    if found != kind:
        raise ConfigError(f"{os.fspath(path)} is a {found} checkpoint, not a {kind} one")
    return json.loads(config_json), json.loads(objective_json)


def _common_kwargs(config: dict) -> dict:
    return dict(
        model_config=ModelConfig(**config["model"]),
        optim_config=OptimizerConfig.from_core(config["optimizer"]),
        precision=config["precision"],
        seed=config["seed"],
    )


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
        model_config: a :class:`slade.ModelConfig` (default ResNet-50/512).
        optim_config: a :class:`OptimizerConfig` (default Adam 1e-3).
        device: where the model lives; images must be on it (labels may be anywhere).
        loss, miner, pos_margin, neg_margin, alpha, beta, base, epsilon: the ranking loss.
        precision: ``"fp32"``, or ``"fp16"`` for CUDA autocast of the network with dynamic
            loss scaling (the loss runs in float32; ignored on CPU).
        seed: seeds the initial weights. A :class:`StudentTrainer` with the same model
            config and seed starts from the same weights.

    To start from self-supervised or ImageNet weights, call :meth:`load_backbone`.
    """

    def __init__(
        self,
        model_config: ModelConfig | Mapping | None = None,
        optim_config: OptimizerConfig | Mapping | None = None,
        *,
        device: Any = "cpu",
        loss: str = "contrastive",
        miner: bool = False,
        pos_margin: float = 0.0,
        neg_margin: float = 1.0,
        alpha: float = 2.0,
        beta: float = 50.0,
        base: float = 0.5,
        epsilon: float = 0.1,
        precision: str = "fp32",
        seed: int = 0,
    ):
        self.model_config = config_from(model_config, ModelConfig, "model config")
        self.optim_config = config_from(optim_config, OptimizerConfig, "optimizer config")
        self.ranking_config = _ranking(loss, miner, pos_margin, neg_margin, alpha, beta, base, epsilon)
        self._core = _core.TeacherTrainer(
            _trainer_config(self.model_config, self.optim_config, precision, seed),
            json.dumps(self.ranking_config),
            device_name(device),
        )

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, device: Any = "cpu") -> TeacherTrainer:
        """A trainer built from a checkpoint's configuration, with its state loaded."""
        config, ranking = _checkpoint(path, "teacher")
        trainer = cls(device=device, **_common_kwargs(config), **ranking)
        trainer.load(path)
        return trainer

    def step(self, images: Any, labels: Any) -> dict[str, float]:
        """One training step on ``images`` (N, C, H, W) with integer ``labels`` (N,).

        Returns ``loss``, ``loss/rank``, ``pairs/positive`` and ``pairs/negative`` (the
        ordered pairs the loss ran over), ``lr/<group>`` (the rates this update used),
        ``step``, and ``grad_norm`` when ``clip_grad_norm`` is set."""
        return self._core.step(as_tensor(images, "images"), as_tensor(labels, "labels"))

    def compute_gradients(self, images: Any, labels: Any) -> dict[str, float]:
        """The first half of a step: forward, loss and backward (gradients in ``.grad``)."""
        return self._core.compute_gradients(as_tensor(images, "images"), as_tensor(labels, "labels"))


def _threshold(value: Any, name: str) -> float | str:
    if isinstance(value, str):
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(
        f"{name} must be a number or one of \"auto\", \"mu+\", \"mu-\", \"mid\", got {value!r}"
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
            (L_CE uses the first ones as class logits; the rest span unseen directions).
        loss, miner, pos_margin, neg_margin, alpha, beta, base, epsilon: the ranking loss.
        variant, lambda1, lambda2, basis_warmup, regularizer, num_pseudo_classes, momentum,
        sd_margin, sd_weight, t1, t2, require_pseudo_agreement, sd_statistics, mining: see
            above.
    """

    def __init__(
        self,
        model_config: ModelConfig | Mapping | None = None,
        optim_config: OptimizerConfig | Mapping | None = None,
        *,
        device: Any = "cpu",
        num_basis: int,
        loss: str = "contrastive",
        variant: str = "basis_mining",
        lambda1: float = 1.0,
        lambda2: float = 1.0,
        basis_warmup: int = 0,
        regularizer: str = "sd",
        num_pseudo_classes: int | None = None,
        momentum: float = 0.99,
        sd_margin: float = 0.5,
        sd_weight: float = 1.0,
        t1: float | str = "auto",
        t2: float | str = "auto",
        require_pseudo_agreement: bool = True,
        sd_statistics: str = "batch",
        mining: str = "basis",
        miner: bool = False,
        pos_margin: float = 0.0,
        neg_margin: float = 1.0,
        alpha: float = 2.0,
        beta: float = 50.0,
        base: float = 0.5,
        epsilon: float = 0.1,
        precision: str = "fp32",
        seed: int = 0,
    ):
        self.model_config = config_from(model_config, ModelConfig, "model config")
        self.optim_config = config_from(optim_config, OptimizerConfig, "optimizer config")
        for name, value in (
            ("num_basis", num_basis),
            ("basis_warmup", basis_warmup),
            ("num_pseudo_classes", 0 if num_pseudo_classes is None else num_pseudo_classes),
        ):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
        for name, value in (
            ("variant", variant),
            ("regularizer", regularizer),
            ("sd_statistics", sd_statistics),
            ("mining", mining),
        ):
            if not isinstance(value, str):
                raise ConfigError(f"{name} must be a str, got {value!r}")
        self.student_config = {
            "ranking": _ranking(loss, miner, pos_margin, neg_margin, alpha, beta, base, epsilon),
            "num_basis": int(num_basis),
            "variant": variant,
            "lambda1": float(lambda1),
            "lambda2": float(lambda2),
            "basis_warmup": int(basis_warmup),
            "regularizer": regularizer,
            "num_pseudo_classes": None if num_pseudo_classes is None else int(num_pseudo_classes),
            "momentum": float(momentum),
            "sd_margin": float(sd_margin),
            "sd_weight": float(sd_weight),
            "t1": _threshold(t1, "t1"),
            "t2": _threshold(t2, "t2"),
            "require_pseudo_agreement": bool(require_pseudo_agreement),
            "sd_statistics": sd_statistics,
            "mining": mining,
        }
        self._core = _core.StudentTrainer(
            _trainer_config(self.model_config, self.optim_config, precision, seed),
            json.dumps(self.student_config),
            device_name(device),
        )

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, device: Any = "cpu") -> StudentTrainer:
        """A trainer built from a checkpoint's configuration, with its state loaded."""
        config, student = _checkpoint(path, "student")
        kwargs = dict(student)
        kwargs.update(kwargs.pop("ranking"))
        trainer = cls(device=device, **_common_kwargs(config), **kwargs)
        trainer.load(path)
        return trainer

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

    def threshold_rules(self) -> tuple[str, str]:
        """The (T1, T2) rules in use, ``"auto"`` resolved (e.g. ``("mu+", "mu-")``)."""
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
    "StudentTrainer",
    "SwavConfig",
    "SwavTrainer",
    "TeacherTrainer",
]
