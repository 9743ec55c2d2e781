"""torch.optim optimizers built from an :class:`slade.OptimizerConfig` with the groups and
rules of the Rust trainers' optimizer: the base rate and weight decay of each group come
from the core (``_core.optimizer_groups``), the schedule's factor after t updates too
(``_core.lr_factor``), so both paths read one definition. torch's ``SGD`` (dampening 0),
``Adam`` and ``AdamW`` are what the core's optimizers equal step for step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .. import _core
from ..settings import OptimizerConfig

#: (group name, [(parameter name, parameter), ...]) in the order the optimizer holds them.
NamedGroups = Sequence[tuple[str, Sequence[tuple[str, torch.nn.Parameter]]]]


def build_optimizer(config: OptimizerConfig, groups: NamedGroups) -> torch.optim.Optimizer:
    """The optimizer over the non-empty groups, each torch param group holding its ``name``
    and ``base_lr`` (the rate before the schedule). Every group given, empty or not, may be
    given a rate or weight decay (the Rust trainers' rule); others are a ConfigError."""
    names = [name for name, _ in groups]
    plan = {name: (lr, wd) for name, lr, wd in _core.optimizer_groups(config.to_core(), names)}
    param_groups = [
        {
            "params": [p for _, p in params],
            "name": name,
            "base_lr": plan[name][0],
            "lr": plan[name][0],
            "weight_decay": plan[name][1],
        }
        for name, params in groups
        if params
    ]
    if config.name == "sgd":
        return torch.optim.SGD(
            param_groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov
        )
    adam = torch.optim.AdamW if config.name == "adamw" else torch.optim.Adam
    return adam(param_groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps)


def schedule(optimizer: torch.optim.Optimizer, settings: dict[str, Any], step: int) -> None:
    """Sets each group's rate for the update after ``step`` updates: its base rate times
    the schedule's factor (``settings``: the optimizer's core mapping)."""
    factor = _core.lr_factor(settings, step)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The rate each group will use at the next update."""
    return {group["name"]: float(group["lr"]) for group in optimizer.param_groups}


def clip(optimizer: torch.optim.Optimizer, max_norm: float | None) -> float | None:
    """``torch.nn.utils.clip_grad_norm_`` over the parameters with gradients; the total norm
    before clipping (None without clipping or without gradients)."""
    if max_norm is None:
        return None
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not params:
        return None
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
