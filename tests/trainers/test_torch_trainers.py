"""slade.torch_train's Python-step trainers against the Rust trainers (an independent
implementation of the same steps) on the built-in networks' torch twins started from the
Rust trainers' weights, torch's own schedulers, exact resume, Ctrl-C and bad input."""

from __future__ import annotations

import dataclasses
import math
import os
import signal

import pytest
import torch
import torch.nn.functional as F

import slade
from checks import assert_same_state
from signals import needs_main_thread
from slade.deploy.networks import embedding_network

TOL = dict(rtol=1e-5, atol=1e-5)
APPROX = dict(rel=1e-5, abs=1e-5)
MODEL = slade.ModelConfig("convnet", 1, 16)
NUM_BASIS, CLUSTERS = 4, 5
# As in test_teacher.py: Adam's eps bounds how far float32 noise in ~0 gradients moves a weight.
SGD = slade.OptimizerConfig(name="sgd", lr=0.05, basis_lr=0.1, momentum=0.9, weight_decay=1e-4, warmup_steps=2)
ADAM = slade.OptimizerConfig(
    name="adam", lr=1e-3, basis_lr=1e-2, eps=1e-6, warmup_steps=3, clip_grad_norm=0.5, weight_decay=1e-4
)


def images(n=16, classes=NUM_BASIS, side=28, channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % classes)[torch.randperm(n, generator=g)]
    patterns = torch.randn(classes, channels, side, side, generator=g)
    return patterns[labels] + 0.5 * torch.randn(n, channels, side, side, generator=g), labels


def student_batch(seed=0, n=16):
    xl, labels = images(n, seed=seed)
    xu, pseudo = images(n, classes=CLUSTERS, seed=100 + seed)
    return xl, labels, xu, pseudo


def twin(rust):
    """The built-in network's torch twin holding the Rust trainer's model weights."""
    network = embedding_network(rust.model_config)
    network.load_state_dict({k: v.clone() for k, v in rust.model_state_dict().items()})
    return network


def assert_close_state(rust, ours, tol=TOL):
    state = ours.state_dict()
    for name, value in rust.state_dict().items():
        torch.testing.assert_close(state[name].double(), value.double(), **tol, msg=name)


def assert_same_metrics(rust_metrics, ours):
    assert set(ours) == set(rust_metrics)
    for name, value in rust_metrics.items():
        assert ours[name] == pytest.approx(value, **APPROX), name


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("optim", [SGD, ADAM], ids=["sgd", "adam"])
@pytest.mark.parametrize("ranking", [dict(loss="contrastive"), dict(loss="multi_similarity", miner=True)])
def test_teacher_steps_equal_the_rust_teacher(optim, ranking):
    """Five steps from the same weights. The multi-similarity miner keeps a pair by a
    comparison float32 rounding can flip (then Adam's normalised update moves the weights by
    up to lr): with it each step starts from the Rust trainer's weights, the optimizer state
    carrying over on each side, as in test_teacher.py."""
    optim = dataclasses.replace(optim, basis_lr=None)
    rust = slade.TeacherTrainer(MODEL, optim, seed=1, **ranking)
    ours = slade.TorchTeacherTrainer(twin(rust), optim, seed=1, dim=16, **ranking)
    for step in range(5):
        if ranking.get("miner"):
            ours.load_model(rust)
        batch = images(seed=step)
        assert_same_metrics(rust.step(*batch), ours.step(*batch))
    assert ours.learning_rates == pytest.approx(rust.learning_rates)
    assert_close_state(rust, ours)


STUDENTS = [
    dict(variant="basis_mining", basis_warmup=2),
    dict(variant="basis", regularizer="global_ce", num_pseudo_classes=CLUSTERS, loss="multi_similarity"),
    dict(variant="pseudo_only"),
]


@pytest.mark.parametrize("optim", [SGD, ADAM], ids=["sgd", "adam"])
@pytest.mark.parametrize("settings", STUDENTS, ids=lambda s: s["variant"])
def test_student_steps_equal_the_rust_student(optim, settings):
    rust = slade.StudentTrainer(MODEL, optim, num_basis=NUM_BASIS, seed=1, **settings)
    ours = slade.TorchStudentTrainer(
        twin(rust), optim, dim=16, num_basis=NUM_BASIS, seed=1, objective=rust.student_config
    )
    basis = {k: v for k, v in rust.state_dict().items() if k.startswith("basis.")}
    ours.objective.load_state_dict({**basis, "step_count": torch.tensor(0)})
    for step in range(5):
        batch = student_batch(seed=step)
        assert_same_metrics(rust.step(*batch), ours.step(*batch))
    assert_close_state(rust, ours)
    assert ours.basis_statistics == pytest.approx(rust.basis_statistics, **APPROX)


def test_swav_steps_equal_the_rust_swav_trainer():
    optim = slade.OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, warmup_steps=2)
    rust = slade.SwavTrainer(MODEL, optim, seed=2, num_prototypes=10, freeze_prototypes_steps=1)
    ours = slade.TorchSwavTrainer(twin(rust), optim, dim=16, seed=2, swav=rust.swav_config)
    with torch.no_grad():
        ours.prototypes.copy_(rust.prototypes)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        crops = [torch.randn(8, 1, s, s, generator=g) for s in (28, 28, 16, 16)]
        assert_same_metrics(rust.step(crops), ours.step(crops))
    assert_close_state(rust, ours)


def test_resnet18_teacher_steps_equal_the_rust_teacher():
    model, optim = slade.ModelConfig("resnet18", 3, 32), dataclasses.replace(SGD, basis_lr=None)
    rust = slade.TeacherTrainer(model, optim, loss="multi_similarity", miner=True)
    ours = slade.TorchTeacherTrainer(twin(rust), optim, dim=32, loss="multi_similarity", miner=True)
    for step in range(2):
        batch = images(n=8, channels=3, side=32, seed=step)
        assert_same_metrics(rust.step(*batch), ours.step(*batch))
    assert_close_state(rust, ours)


# --------------------------------------------------------------------------- optimizer


class Custom(torch.nn.Module):
    """A small module of a user's: backbone ``body``, head ``embedding``, with dropout."""

    def __init__(self, dim=16, p=0.0):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Dropout(p),
        )
        self.embedding = torch.nn.Linear(8, dim)

    def forward(self, x):
        return F.normalize(self.embedding(self.body(x)), dim=1)


def test_groups_rates_and_schedule_equal_torch_schedulers():
    """Groups: ``embedding.*`` is the head, W_a the basis; the rates after each step follow
    torch's LinearLR warm-up then CosineAnnealingLR (SequentialLR), as OptimizerConfig says."""
    optim = slade.OptimizerConfig(
        name="adamw", lr=0.01, head_lr=0.02, basis_lr=0.1, group_weight_decay={"head": 0.0},
        schedule="cosine", warmup_steps=2, warmup_start_factor=0.25, total_steps=6,
    )
    trainer = slade.TorchStudentTrainer(Custom, optim, dim=16, num_basis=NUM_BASIS, variant="basis")
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert [id(p) for p in groups["head"]["params"]] == [id(p) for p in trainer.model.module.embedding.parameters()]
    assert groups["basis"]["params"] == [trainer.basis]
    assert {n: g["weight_decay"] for n, g in groups.items()} == {"backbone": 0.01, "head": 0.0, "basis": 0.01}
    reference = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
    torch_optimizer = torch.optim.AdamW([{"params": [p], "lr": lr} for p, lr in zip(reference, (0.01, 0.02, 0.1))])
    warmup = torch.optim.lr_scheduler.LinearLR(torch_optimizer, start_factor=0.25, total_iters=2)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(torch_optimizer, T_max=4)
    scheduler = torch.optim.lr_scheduler.SequentialLR(torch_optimizer, [warmup, cosine], milestones=[2])
    for step in range(6):
        expected = [g["lr"] for g in torch_optimizer.param_groups]
        assert list(trainer.learning_rates.values()) == pytest.approx(expected, abs=1e-12)
        metrics = trainer.step(*student_batch(seed=step))
        assert [metrics[f"lr/{n}"] for n in ("backbone", "head", "basis")] == pytest.approx(expected, abs=1e-12)
        torch_optimizer.step()
        scheduler.step()


def test_group_settings_for_a_group_the_trainer_lacks_are_refused():
    with pytest.raises(slade.ConfigError, match="basis"):
        slade.TorchTeacherTrainer(Custom, slade.OptimizerConfig(basis_lr=0.1))


# --------------------------------------------------------------------------- checkpoints


def _student(model=Custom, **kw):
    optim = slade.OptimizerConfig(name="adam", lr=3e-3, schedule="cosine", warmup_steps=2, total_steps=10)
    return slade.TorchStudentTrainer(
        model, optim, dim=16, num_basis=NUM_BASIS, seed=5, basis_warmup=1, mining="random", **kw
    )


def dropout_model():
    return Custom(p=0.3)


def test_save_load_then_step_equals_an_uninterrupted_run(tmp_path):
    """Dropout and random mining draw from the trainer's own generator state, which the
    checkpoint holds: the resumed steps equal the uninterrupted ones bit for bit, whatever
    the process draws in between."""
    path = tmp_path / "student.safetensors"
    reference = _student(dropout_model)
    for step in range(3):
        reference.step(*student_batch(seed=step))
    reference.save(path)
    assert path.with_suffix(".json").is_file()
    expected = [reference.step(*student_batch(seed=step)) for step in (3, 4)]

    torch.rand(100)  # draws between the steps change nothing
    resumed = slade.TorchStudentTrainer.from_checkpoint(path, dropout_model)
    assert resumed.step_count == 3
    got = [resumed.step(*student_batch(seed=step)) for step in (3, 4)]
    assert got == expected
    assert_same_state(reference, resumed)
    for name, slots in reference.optimizer_state().items():
        for slot, value in slots.items():
            assert torch.equal(value, resumed.optimizer_state()[name][slot]), (name, slot)

    loaded = slade.load_trainer(path, model=dropout_model)
    assert isinstance(loaded, slade.TorchStudentTrainer) and loaded.step_count == 3
    with pytest.raises(slade.InvalidArgumentError, match="model of your own"):
        slade.load_trainer(path)
    with pytest.raises(slade.ConfigError, match="t1"):
        _student(dropout_model, t1=0.5).load(path)
    with pytest.raises(slade.ConfigError, match="student checkpoint, not a teacher"):
        slade.TorchTeacherTrainer.from_checkpoint(path, dropout_model)


@needs_main_thread
def test_ctrl_c_during_a_step_raises_after_it_and_the_trainer_has_taken_it():
    class Interrupting(Custom):
        def forward(self, x):
            if self.training and getattr(self, "interrupt", False):
                self.interrupt = False
                os.kill(os.getpid(), signal.SIGINT)
            return super().forward(x)

    trainer, fresh = _student(Interrupting), _student(Interrupting)
    trainer.step(*student_batch(seed=0))
    trainer.model.module.interrupt = True
    with pytest.raises(KeyboardInterrupt):
        trainer.step(*student_batch(seed=1))
    assert trainer.step_count == 2
    for step in range(2):
        fresh.step(*student_batch(seed=step))
    assert_same_state(trainer, fresh)


# --------------------------------------------------------------------------- bad input


class Output(torch.nn.Module):
    """A module whose output is ``make(x)``."""

    def __init__(self, make):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 16, 3)
        self.make = make

    def forward(self, x):
        return self.make(self.conv(x))


def test_bad_models_are_clear_errors_and_change_nothing():
    batch = images()
    cases = [
        (lambda h: h, slade.ShapeError, r"shape \(N, dim\)"),
        (lambda h: h.mean((2, 3))[:, :8], slade.ShapeError, "model.dim=8"),
        (lambda h: h.mean((2, 3)) * float("nan"), slade.NonFiniteError, "not updated"),
        (lambda h: "embeddings", slade.DtypeError, "tensor of embeddings"),
    ]
    for make, error, message in cases:
        trainer = slade.TorchTeacherTrainer(Output(make), dim=16)
        before = {k: v.clone() for k, v in trainer.state_dict().items()}
        with pytest.raises(error, match=message):
            trainer.step(*batch)
        assert trainer.step_count == 0
        for name, value in trainer.state_dict().items():
            assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("nonfinite", ["raise", "skip"])
def test_nan_steps_are_refused_or_skipped_as_the_rust_trainer_does(nonfinite):
    """After a huge update the next step's loss is NaN; a batch of NaN images too. "raise":
    an error naming the step; "skip": the step counts (schedule included) without an
    update. Either way the weights and BatchNorm statistics stay."""
    optim = slade.OptimizerConfig(name="sgd", lr=1e30, momentum=0.0, warmup_steps=3, nonfinite=nonfinite)
    rust = slade.TeacherTrainer(MODEL, optim, seed=1)
    ours = slade.TorchTeacherTrainer(twin(rust), optim, seed=1, dim=16)
    assert_same_metrics(rust.step(*images(seed=0)), ours.step(*images(seed=0)))
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    nan_images = (images(seed=2)[0] * float("nan"), images(seed=2)[1])
    for batch, what in ((images(seed=1), "embeddings"), (nan_images, "images")):
        if nonfinite == "raise":
            with pytest.raises(slade.NonFiniteError):
                rust.step(*batch)
            with pytest.raises(slade.NonFiniteError, match=f"{what} .*in step 2; the parameters were not updated"):
                ours.step(*batch)
            continue
        expected, got = rust.step(*batch), ours.step(*batch)
        assert got["skipped"] == expected["skipped"] == 1.0 and math.isnan(got["loss"])
        shared = [k for k in expected if k.startswith("lr/")] + ["step"]
        assert [got[k] for k in shared] == pytest.approx([expected[k] for k in shared])
    assert ours.step_count == rust.step_count == (1 if nonfinite == "raise" else 3)
    assert ours.learning_rates == pytest.approx(rust.learning_rates)
    for name, value in ours.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_a_non_finite_loss_restores_the_batchnorm_statistics():
    trainer = slade.TorchTeacherTrainer(Custom, slade.OptimizerConfig(name="sgd", lr=1e30, momentum=0.0))
    trainer.step(*images(seed=0))
    before = {k: v.clone() for k, v in trainer.state_dict().items()}
    with pytest.raises(slade.NonFiniteError, match="not updated"):
        trainer.step(*images(seed=1))
    assert trainer.step_count == 1
    for name, value in trainer.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_devices_and_arguments_are_checked():
    with pytest.raises(slade.DeviceError, match="config.device"):
        slade.TorchTeacherTrainer(Custom().to("meta"))
    trainer = slade.TorchTeacherTrainer(Custom)
    with pytest.raises(slade.DeviceError, match="images are on meta"):
        trainer.step(torch.zeros(4, 1, 28, 28, device="meta"), torch.arange(4))
    with pytest.raises(slade.DtypeError, match="must return a torch.nn.Module"):
        slade.TorchTeacherTrainer(lambda: "not a module")
    with pytest.raises(slade.DtypeError, match="callable"):
        slade.TorchTeacherTrainer(3)
    with pytest.raises(slade.SladeError, match="labels"):
        trainer.step(images()[0], torch.arange(3))
    student = slade.TorchStudentTrainer(Custom, dim=16, num_basis=NUM_BASIS)
    xl, labels, xu, pseudo = student_batch()
    with pytest.raises(slade.ShapeError, match="one batch"):
        student.step(xl, labels, xu[:, :, :20, :20], pseudo)
    with pytest.raises(slade.SladeError, match="pseudo_labels"):
        student.step(xl, labels, xu, pseudo[:5])
    with pytest.raises(slade.NotSupportedError, match='precision "bf16"'):
        slade.TorchTeacherTrainer(Custom, precision="bfloat16")
    assert trainer.step_count == student.step_count == 0


@pytest.mark.parametrize("form", ["trainer", "pt", "safetensors"])
def test_weights_load_by_name_backbone_without_the_head(tmp_path, form):
    source, target = slade.TorchTeacherTrainer(Custom, seed=1), slade.TorchTeacherTrainer(Custom, seed=2)
    assert_same_state(source, slade.TorchTeacherTrainer(Custom, seed=1))  # the factory, seeded
    source.step(*images())  # weights and BatchNorm statistics of its own
    weights = {"trainer": source, "pt": tmp_path / "w.pt", "safetensors": tmp_path / "w.safetensors"}[form]
    if form == "pt":
        torch.save(source.model.module.state_dict(), weights)
    if form == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.model.module.state_dict().items()}, str(weights))
    head = target.model.module.embedding.weight.clone()
    report = target.load_backbone(weights)
    assert report["missing"] == [] and report["unexpected"] == []
    assert sorted(report["ignored"]) == ["embedding.bias", "embedding.weight"]
    assert torch.equal(target.model.module.embedding.weight, head)
    assert torch.equal(target.model.module.body[0].weight, source.model.module.body[0].weight)
    assert torch.equal(target.model.module.body[1].running_var, source.model.module.body[1].running_var)
    with pytest.raises(slade.ShapeError, match="missing"):
        target.load_model({"embedding.weight": head})
