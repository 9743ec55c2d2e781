"""slade's optimizers, schedules and gradient clipping against torch.optim,
torch.optim.lr_scheduler and torch.nn.utils.clip_grad_norm_, step for step.

The trainer computes gradients (compute_gradients); the same gradients and the trainer's
current parameter values go to a torch optimizer holding its own state; after both updates
the parameters (and at the end the optimizer states) must agree to 1e-6 in float32."""

from __future__ import annotations

import pytest
import torch
from torch.optim import lr_scheduler

import slade

MODEL = slade.ModelConfig("convnet", 1, 8)
TOL = dict(rtol=1e-6, atol=1e-6)


def group_of(name: str) -> str:
    return "head" if name.startswith("embedding.") or name == "prototypes" else "backbone"


def crops_for(step: int) -> list:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(4, 1, 16, 16, generator=g) for _ in range(3)]


def run_against_torch(config, make_optimizer, make_scheduler=None, steps=5, freeze_backbone_at=None):
    trainer = slade.SwavTrainer(MODEL, config, num_prototypes=6, seed=0)
    mirror = {n: p.detach().clone().requires_grad_(True) for n, p in trainer.named_parameters()}
    groups = {}
    for name, p in mirror.items():
        groups.setdefault(group_of(name), []).append(p)
    optimizer = make_optimizer(groups)
    scheduler = make_scheduler(optimizer) if make_scheduler else None
    for step in range(steps):
        if step == freeze_backbone_at:
            trainer.freeze_backbone()
        trainer.compute_gradients(crops_for(step))
        ours = dict(trainer.named_parameters())
        with torch.no_grad():
            for name, p in mirror.items():
                p.copy_(ours[name])
                p.grad = None if ours[name].grad is None or not ours[name].requires_grad else ours[name].grad.clone()
        expected_norm = None
        if config.clip_grad_norm is not None:
            grads = [p for p in mirror.values() if p.grad is not None]
            expected_norm = torch.nn.utils.clip_grad_norm_(grads, config.clip_grad_norm).item()
        torch_lrs = {name: optimizer.param_groups[i]["lr"] for i, name in enumerate(groups)}
        for name, lr in trainer.learning_rates.items():
            assert lr == pytest.approx(torch_lrs[name], rel=1e-9, abs=1e-15), (step, name)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        metrics = trainer.apply_gradients()
        if expected_norm is not None:
            assert metrics["grad_norm"] == pytest.approx(expected_norm, rel=1e-5)
        for name, p in trainer.named_parameters():
            assert torch.allclose(p, mirror[name], **TOL), (step, name)
    return trainer, optimizer, mirror


def assert_state_equal(trainer, optimizer, mirror, keys):
    state = trainer.optimizer_state()
    for name, p in mirror.items():
        if p not in optimizer.state:
            assert name not in state
            continue
        for key in keys:
            theirs = optimizer.state[p][key]
            ours = state[name][key]
            if key == "step":
                assert int(ours) == int(theirs), name
            else:
                assert torch.allclose(ours, theirs, **TOL), (name, key)


def test_sgd_momentum_and_group_learning_rates():
    config = slade.OptimizerConfig(name="sgd", lr=0.05, head_lr=0.2, momentum=0.9, weight_decay=1e-3)

    def make(groups):
        return torch.optim.SGD(
            [{"params": groups["backbone"]}, {"params": groups["head"], "lr": 0.2}],
            lr=0.05,
            momentum=0.9,
            weight_decay=1e-3,
        )

    trainer, optimizer, mirror = run_against_torch(config, make)
    assert_state_equal(trainer, optimizer, mirror, ["momentum_buffer"])


def test_sgd_nesterov_and_per_group_weight_decay():
    config = slade.OptimizerConfig(
        name="sgd", lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-2,
        group_weight_decay={"head": 0.0},
    )

    def make(groups):
        return torch.optim.SGD(
            [{"params": groups["backbone"]}, {"params": groups["head"], "weight_decay": 0.0}],
            lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-2,
        )

    run_against_torch(config, make)


def test_plain_sgd():
    config = slade.OptimizerConfig(name="sgd", lr=0.1, momentum=0.0)
    run_against_torch(config, lambda g: torch.optim.SGD([{"params": g["backbone"]}, {"params": g["head"]}], lr=0.1))


def test_adam_defaults_and_state():
    config = slade.OptimizerConfig(name="adam", lr=1e-2, backbone_lr=3e-3)

    def make(groups):
        return torch.optim.Adam(
            [{"params": groups["backbone"], "lr": 3e-3}, {"params": groups["head"]}], lr=1e-2
        )

    trainer, optimizer, mirror = run_against_torch(config, make, steps=6)
    assert_state_equal(trainer, optimizer, mirror, ["step", "exp_avg", "exp_avg_sq"])


def test_adam_with_l2_weight_decay():
    config = slade.OptimizerConfig(name="adam", lr=1e-2, weight_decay=0.1, betas=(0.8, 0.99), eps=1e-6)

    def make(groups):
        return torch.optim.Adam(
            [{"params": groups["backbone"]}, {"params": groups["head"]}],
            lr=1e-2, weight_decay=0.1, betas=(0.8, 0.99), eps=1e-6,
        )

    run_against_torch(config, make)


def test_adamw_default_weight_decay():
    config = slade.OptimizerConfig(name="adamw", lr=1e-2)

    def make(groups):
        return torch.optim.AdamW([{"params": groups["backbone"]}, {"params": groups["head"]}], lr=1e-2)

    trainer, optimizer, mirror = run_against_torch(config, make)
    assert_state_equal(trainer, optimizer, mirror, ["step", "exp_avg", "exp_avg_sq"])


def test_clipping_equals_clip_grad_norm():
    config = slade.OptimizerConfig(name="sgd", lr=0.05, momentum=0.9, clip_grad_norm=0.5)

    def make(groups):
        return torch.optim.SGD([{"params": groups["backbone"]}, {"params": groups["head"]}], lr=0.05, momentum=0.9)

    run_against_torch(config, make)


def test_frozen_backbone_is_skipped_like_grad_none():
    config = slade.OptimizerConfig(name="adam", lr=1e-2, weight_decay=0.01)

    def make(groups):
        params = [{"params": groups["backbone"]}, {"params": groups["head"]}]
        return torch.optim.Adam(params, lr=1e-2, weight_decay=0.01)

    trainer, optimizer, mirror = run_against_torch(config, make, steps=4, freeze_backbone_at=2)
    state = trainer.optimizer_state()
    assert int(state["blocks.0.conv.weight"]["step"]) == 2
    assert int(state["embedding.weight"]["step"]) == 4


def warmup_then(optimizer, after, warmup=3, start=0.25):
    warm = lr_scheduler.LinearLR(optimizer, start_factor=start, end_factor=1.0, total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, [warm, after], milestones=[warmup])


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_warmup_cosine_schedule(name):
    config = slade.OptimizerConfig(
        name=name, lr=0.02, head_lr=0.05, momentum=0.9, schedule="cosine",
        warmup_steps=3, warmup_start_factor=0.25, total_steps=10,
    )
    cls = torch.optim.SGD if name == "sgd" else torch.optim.Adam
    extra = {"momentum": 0.9} if name == "sgd" else {}

    def make(groups):
        return cls([{"params": groups["backbone"]}, {"params": groups["head"], "lr": 0.05}], lr=0.02, **extra)

    def schedule(opt):
        return warmup_then(opt, lr_scheduler.CosineAnnealingLR(opt, T_max=7, eta_min=0.0))

    run_against_torch(config, make, schedule, steps=10)


def test_warmup_step_schedule():
    config = slade.OptimizerConfig(
        name="sgd", lr=0.05, schedule="step", warmup_steps=3, warmup_start_factor=0.25,
        step_size=2, gamma=0.5,
    )

    def make(groups):
        return torch.optim.SGD([{"params": groups["backbone"]}, {"params": groups["head"]}], lr=0.05, momentum=0.9)

    def schedule(opt):
        return warmup_then(opt, lr_scheduler.StepLR(opt, step_size=2, gamma=0.5))

    run_against_torch(config, make, schedule, steps=9)


def test_step_schedule_without_warmup():
    config = slade.OptimizerConfig(name="adamw", lr=0.01, schedule="step", step_size=3, gamma=0.3)

    def make(groups):
        return torch.optim.AdamW([{"params": groups["backbone"]}, {"params": groups["head"]}], lr=0.01)

    run_against_torch(config, make, lambda o: lr_scheduler.StepLR(o, step_size=3, gamma=0.3), steps=7)


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"name": "lamb"}, '"sgd", "adam", "adamw"'),
        ({"schedule": "poly"}, '"constant", "cosine", "step"'),
        ({"schedule": "cosine"}, "total_steps"),
        ({"schedule": "cosine", "total_steps": 5, "warmup_steps": 5}, "exceed"),
        ({"lr": -1.0}, "lr"),
        ({"name": "sgd", "momentum": 0.0, "nesterov": True}, "nesterov"),
        ({"betas": (1.5, 0.9)}, "betas"),
        ({"clip_grad_norm": 0.0}, "clip_grad_norm"),
        ({"group_weight_decay": {"basis": 0.1}}, "basis"),
        ({"basis_lr": 0.1}, "basis"),
        ({"warmup_steps": 2, "warmup_start_factor": 0.0}, "warmup_start_factor"),
    ],
)
def test_bad_optimizer_settings_are_config_errors(fields, match):
    with pytest.raises(slade.ConfigError, match=match):
        slade.SwavTrainer(MODEL, slade.OptimizerConfig(**fields), num_prototypes=4)


def test_unknown_optimizer_key_is_a_config_error():
    with pytest.raises(slade.ConfigError, match="learning_rate"):
        slade.SwavTrainer(MODEL, {"name": "sgd", "learning_rate": 0.1}, num_prototypes=4)
    with pytest.raises(slade.ConfigError, match="precision"):
        slade.SwavTrainer(MODEL, precision="fp8", num_prototypes=4)
