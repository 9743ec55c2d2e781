"""Training steps run in Rust: optimizer configuration and the SwAV trainer.

One call runs a whole step on the batch's device (forward through backbone and head, every
loss term, backward, clipping, optimizer update, schedule) with the GIL released; Python
keeps data loading and augmentation, and batches cross as torch tensors without copies.
A KeyboardInterrupt (Ctrl-C) arrives between steps, so the trainer is never left half
updated.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from . import _core
from ._convert import as_tensor
from .errors import ConfigError, DtypeError
from .nn import CoreModule, ModelConfig, config_from, device_name

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
        config = {
            "model": dataclasses.asdict(self.model_config),
            "optimizer": self.optim_config.to_core(),
            "precision": precision,
            "seed": seed,
        }
        self._core = _core.SwavTrainer(
            json.dumps(config), json.dumps(dataclasses.asdict(self.swav_config)), device_name(device)
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


__all__ = ["OptimizerConfig", "SwavConfig", "SwavTrainer"]
