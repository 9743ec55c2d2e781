"""The settings of the models and training objectives, declared once.

Each group is a dataclass that the trainers take (:class:`slade.SwavTrainer`,
:class:`slade.TeacherTrainer`, :class:`slade.StudentTrainer`, :class:`slade.EmbeddingModel`,
:class:`slade.FeatureBasis`) and that the pipeline's config sections extend
(:mod:`slade.config`). The Rust core holds the one default of every setting (the field
defaults here are read from it) and the one check of every rule: a group crosses to Rust as
one mapping, and a bad value raises :class:`~slade.errors.ConfigError` naming the setting
(``"lr must be a non-negative number, got -1"``; ``"teacher.optimizer.lr ..."`` from a
pipeline config). Building a dataclass checks nothing; handing it to a trainer, or
:meth:`Settings.check`, does.

The groups and where their values come from:

- :class:`ModelConfig`: the small presets' ConvNet (grayscale, 128-d) by default; the paper
  presets set ResNet-50, RGB, 512-d.
- :class:`OptimizerConfig`: Adam, lr 1e-3, constant schedule.
- :class:`RankingConfig`: pytorch-metric-learning's defaults (contrastive 0 / 1,
  multi-similarity 2 / 50 / 0.5, miner epsilon 0.1).
- :class:`SwavConfig`: SwAV's temperature 0.1, Sinkhorn epsilon 0.05 and 3 iterations;
  100 prototypes (ours, for the small presets; the paper presets use SwAV's 3000).
- :class:`BasisConfig`: DESIGN.md §2.4's beta 0.99, m_sd 0.5, w 1, L_SD on batch statistics.
- :class:`StudentObjectiveConfig`: the full method, lambda1 = lambda2 = 1, T1 / T2 "auto".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from . import _core

__all__ = [
    "Settings",
    "ModelConfig",
    "OptimizerConfig",
    "RankingConfig",
    "SwavConfig",
    "BasisConfig",
    "StudentObjectiveConfig",
    "GROUPS",
]

#: Optimizer parameter groups, each with an optional learning rate ``<group>_lr``.
GROUPS = ("backbone", "head", "basis")

S = TypeVar("S", bound="Settings")


def _defaults(group: str) -> dict[str, Any]:
    return _core.default_settings(group)


class Settings:
    """What every settings group shares: conversion to and from the core's mapping."""

    #: The core's name of the group.
    GROUP: ClassVar[str]

    @classmethod
    def _own_fields(cls) -> list[str]:
        """The group's fields (a pipeline section extending it adds fields of its own)."""
        owner = next(c for c in cls.__mro__ if "GROUP" in vars(c))
        return [f.name for f in dataclasses.fields(owner)]

    @classmethod
    def core_form(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """A mapping of this group's fields as the core reads it; keys that are no field
        pass through, for the core to reject by name."""
        return dict(values)

    def to_core(self) -> dict[str, Any]:
        """This group's settings as the core's mapping."""
        return self.core_form({name: getattr(self, name) for name in self._own_fields()})

    @classmethod
    def from_core(cls: type[S], values: Mapping[str, Any]) -> S:
        """The group from the core's mapping (e.g. a checkpoint's)."""
        return cls(**dict(values))

    def check(self, at: str = "") -> None:
        """Checks every rule the values alone decide; errors name the setting as
        ``{at}{name}``."""
        _core.check_settings(self.GROUP, self.to_core(), at)

    @classmethod
    def mapping(cls, value: Any, fields: Mapping[str, Any], what: str) -> dict[str, Any]:
        """The core's mapping of ``value`` (an instance, a mapping of fields, or None for
        the defaults) updated with ``fields``; unchecked (the core checks it)."""
        if value is None:
            values: dict[str, Any] = {}
        elif isinstance(value, cls):
            values = {name: getattr(value, name) for name in cls._own_fields()}
        elif isinstance(value, Mapping):
            values = dict(value)
        else:
            from .errors import ConfigError

            raise ConfigError(
                f"{what} must be a {cls.__name__} or a dict, got {type(value).__name__}"
            )
        values.update(fields)
        return cls.core_form(values)


_MODEL = _defaults("model")


@dataclass
class ModelConfig(Settings):
    """Which network and how wide its embedding.

    Attributes:
        backbone: ``"convnet"``, ``"resnet18"`` or ``"resnet50"``.
        in_channels: 1 (grayscale) or 3 (RGB).
        dim: width of the L2-normalised embedding.
    """

    GROUP: ClassVar[str] = "model"

    backbone: str = _MODEL["backbone"]
    in_channels: int = _MODEL["in_channels"]
    dim: int = _MODEL["dim"]


_OPTIMIZER = _defaults("optimizer")


@dataclass
class OptimizerConfig(Settings):
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
        lr: every group's rate unless ``backbone_lr`` / ``head_lr`` / ``basis_lr`` is set;
            >= 0 (0 leaves the weights as they are, as in torch).
        weight_decay: ``None`` means torch's default (0; 0.01 for AdamW).
        group_weight_decay: per-group weight decay, e.g. ``{"head": 0.0}``.
        momentum, nesterov: SGD only (our default momentum is 0.9; torch's is 0).
        betas, eps: Adam/AdamW only.
        nonfinite: a step whose loss, gradients or images are NaN or Inf is never applied;
            ``"raise"`` stops with :class:`~slade.errors.NonFiniteError` (the trainer as
            before the step), ``"skip"`` counts it without an update (step count, schedule
            and random generator advance; weights, optimizer state and BatchNorm statistics
            stay) and its metrics hold ``skipped = 1`` (0 on the other steps). A skipped
            step leaves NaN gradients between ``compute_gradients`` and ``apply_gradients``,
            so that an all-reduce skips it in every process.
    """

    GROUP: ClassVar[str] = "optimizer"

    name: str = _OPTIMIZER["name"]
    lr: float = _OPTIMIZER["lr"]
    backbone_lr: float | None = None
    head_lr: float | None = None
    basis_lr: float | None = None
    weight_decay: float | None = _OPTIMIZER["weight_decay"]
    group_weight_decay: dict = field(default_factory=lambda: dict(_OPTIMIZER["group_weight_decay"]))
    momentum: float = _OPTIMIZER["momentum"]
    nesterov: bool = _OPTIMIZER["nesterov"]
    betas: tuple = tuple(_OPTIMIZER["betas"])
    eps: float = _OPTIMIZER["eps"]
    schedule: str = _OPTIMIZER["schedule"]
    warmup_steps: int = _OPTIMIZER["warmup_steps"]
    warmup_start_factor: float = _OPTIMIZER["warmup_start_factor"]
    total_steps: int | None = _OPTIMIZER["total_steps"]
    min_lr_factor: float = _OPTIMIZER["min_lr_factor"]
    step_size: int = _OPTIMIZER["step_size"]
    gamma: float = _OPTIMIZER["gamma"]
    clip_grad_norm: float | None = _OPTIMIZER["clip_grad_norm"]
    nonfinite: str = _OPTIMIZER["nonfinite"]

    @classmethod
    def core_form(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """The per-group rates ``<group>_lr`` become the core's ``group_lr`` mapping."""
        values = dict(values)
        group_lr = dict(values.pop("group_lr", {}))
        for group in GROUPS:
            rate = values.pop(f"{group}_lr", None)
            if rate is not None:
                group_lr[group] = rate
        values["group_lr"] = group_lr
        if isinstance(values.get("betas"), tuple):
            values["betas"] = list(values["betas"])
        return values

    @classmethod
    def from_core(cls, values: Mapping[str, Any]) -> OptimizerConfig:
        values = dict(values)
        for group, rate in values.pop("group_lr", {}).items():
            values[f"{group}_lr"] = rate
        values["betas"] = tuple(values["betas"])
        return cls(**values)


_RANKING = _defaults("ranking")


@dataclass
class RankingConfig(Settings):
    """The ranking loss of the teacher and the student (DESIGN.md §2.2), with
    pytorch-metric-learning's values.

    Attributes:
        loss: ``"contrastive"`` (``pos_margin``, ``neg_margin``) or ``"multi_similarity"``
            (``alpha``, ``beta``, ``base``).
        miner: use the multi-similarity miner (``epsilon``) on the labeled pairs.
    """

    GROUP: ClassVar[str] = "ranking"

    loss: str = _RANKING["loss"]
    miner: bool = _RANKING["miner"]
    pos_margin: float = _RANKING["pos_margin"]
    neg_margin: float = _RANKING["neg_margin"]
    alpha: float = _RANKING["alpha"]
    beta: float = _RANKING["beta"]
    base: float = _RANKING["base"]
    epsilon: float = _RANKING["epsilon"]


_SWAV = _defaults("swav")


@dataclass
class SwavConfig(Settings):
    """SwAV settings (DESIGN.md §2.1; Caron et al. 2020).

    Attributes:
        num_prototypes: K, the rows of the prototype matrix C (normalised every step).
        temperature: T of the swapped-prediction softmax.
        epsilon: entropic regularisation of Sinkhorn-Knopp.
        sinkhorn_iterations: Sinkhorn-Knopp iterations.
        freeze_prototypes_steps: the prototypes stay fixed for this many first steps (their
            gradient is dropped, as the SwAV reference code does for its first epoch).
    """

    GROUP: ClassVar[str] = "swav"

    num_prototypes: int = _SWAV["num_prototypes"]
    temperature: float = _SWAV["temperature"]
    epsilon: float = _SWAV["epsilon"]
    sinkhorn_iterations: int = _SWAV["sinkhorn_iterations"]
    freeze_prototypes_steps: int = _SWAV["freeze_prototypes_steps"]


_BASIS = _defaults("basis")


@dataclass
class BasisConfig(Settings):
    """The feature basis W_a and its running statistics (DESIGN.md §2.4; see
    :class:`slade.FeatureBasis`).

    Attributes:
        momentum: beta of the running statistics, in [0, 1).
        sd_margin: m_sd, the margin wanted between mu+ and mu-.
        sd_weight: w, the weight of the margin term.
        regularizer: ``"sd"``, ``"global_ce"`` or ``"local_ce"``.
        sd_statistics: ``"batch"`` or ``"blended"``: what L_SD is computed on.
    """

    GROUP: ClassVar[str] = "basis"

    momentum: float = _BASIS["momentum"]
    sd_margin: float = _BASIS["sd_margin"]
    sd_weight: float = _BASIS["sd_weight"]
    regularizer: str = _BASIS["regularizer"]
    sd_statistics: str = _BASIS["sd_statistics"]


_STUDENT = _defaults("student")


@dataclass
class StudentObjectiveConfig(RankingConfig, BasisConfig):
    """The student objective (DESIGN.md §2.4): its ranking loss (the fields of
    :class:`RankingConfig`), its feature basis (those of :class:`BasisConfig`) and

    Attributes:
        num_basis: B, the number of basis vectors, at least the number of labeled classes;
            needed by every variant but ``"pseudo_only"``.
        variant: ``"basis_mining"`` (full method), ``"basis"`` (no mining) or
            ``"pseudo_only"`` (no basis, no mining).
        lambda1, lambda2: weights of the unlabeled ranking loss and of L_Basis.
        basis_warmup: updates training W_a alone (backbone frozen) first.
        num_pseudo_classes: k of the pseudo labels, for the ``"*_ce"`` regularisers.
        t1, t2: the mining thresholds: numbers, or rules on the running statistics ``"mu+"``,
            ``"mu-"``, ``"mid"`` ((mu+ + mu-) / 2), ``"all"`` (no test on that side) or
            ``"auto"`` (T1 = mu+, T2 = mu-); the rules of :func:`slade.miners.basis_pairs`.
        require_pseudo_agreement: mined positives share their pseudo label, negatives not.
        mining: ``"basis"`` (the method), or the research bounds ``"oracle"`` / ``"random"``.
    """

    GROUP: ClassVar[str] = "student"

    num_basis: int | None = _STUDENT["num_basis"]
    variant: str = _STUDENT["variant"]
    lambda1: float = _STUDENT["lambda1"]
    lambda2: float = _STUDENT["lambda2"]
    basis_warmup: int = _STUDENT["basis_warmup"]
    num_pseudo_classes: int | None = _STUDENT["num_pseudo_classes"]
    t1: float | str = _STUDENT["t1"]
    t2: float | str = _STUDENT["t2"]
    require_pseudo_agreement: bool = _STUDENT["require_pseudo_agreement"]
    mining: str = _STUDENT["mining"]

    @classmethod
    def core_form(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """The ranking fields go into the core's ``ranking`` mapping."""
        values = dict(values)
        ranking = dict(values.pop("ranking", {}))
        for name in RankingConfig._own_fields():
            if name in values:
                ranking[name] = values.pop(name)
        values["ranking"] = ranking
        return values

    @classmethod
    def from_core(cls, values: Mapping[str, Any]) -> StudentObjectiveConfig:
        values = dict(values)
        values.update(values.pop("ranking", {}))
        return cls(**values)

    def check(self, at: str = "") -> None:
        """As :meth:`Settings.check`; the ranking fields are checked first, so that their
        errors name them as the user sets them (``{at}loss``, not ``{at}ranking.loss``)."""
        self.ranking().check(at)
        super().check(at)

    def ranking(self) -> RankingConfig:
        """The ranking-loss part."""
        return RankingConfig(**{name: getattr(self, name) for name in RankingConfig._own_fields()})
