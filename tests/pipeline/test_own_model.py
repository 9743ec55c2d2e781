"""The pipeline on a model of the user's (``model=``): a whole run with its files and an
exact resume, the Python-step stages against the Rust-step stages on the built-in network's
torch twin, evaluation and pseudo labels of a plain module, the students' initialisation,
SwAV, and clear errors for bad models."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import slade
from slade.config import stage_trainer_arguments
from slade.deploy.networks import embedding_network

needs_fashion = pytest.mark.usefixtures("fashion_mnist_root")

TINY = [
    "teacher.steps=6",
    "student.steps=6",
    "pseudo_labels.k=6",
    "data.max_unlabeled=400",
    "data.max_test=300",
    "checkpoint_every=2",
    "progress=false",
    "eval.examples=2",
    "eval.top_k=4",
    "model.dim=16",
]
TOL = dict(rtol=1e-5, atol=1e-5)


def tiny(*extra: str) -> slade.Config:
    return slade.config.preset("fashion-mnist-ssl", TINY + list(extra))


@pytest.fixture(scope="module")
def fashion(fashion_mnist_root):
    return slade.load_data(tiny())


class SmallNet(torch.nn.Module):
    """A user's module: two conv blocks, the head ``embedding``, L2-normalised outputs."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        )
        self.embedding = torch.nn.Linear(16, dim)

    def forward(self, x):
        return F.normalize(self.embedding(self.body(x)), dim=1)


def stop_at(stage: str, step: int, error: BaseException):
    def callback(name, number, metrics):
        if name == stage and number == step:
            raise error

    return callback


def assert_same_module(a: torch.nn.Module, b: torch.nn.Module, names=None):
    sa, sb = a.state_dict(), b.state_dict()
    for name in names or sa:
        assert torch.equal(sa[name], sb[name]), name


# --------------------------------------------------------------------------- a whole run


@needs_fashion
def test_a_run_on_a_factory_writes_its_files_and_resumes_bit_for_bit(tmp_path, fashion):
    config = tiny()
    reference = slade.run(config, data=fashion, out=tmp_path / "reference", model=SmallNet)
    out = tmp_path / "reference"
    for name in ("results.json", "teacher/final.safetensors", "teacher/final.json",
                 "student_round1/final.safetensors", "student_round1/history.json",
                 "plots/training_curves.png", "plots/retrieval_examples.png"):
        assert (out / name).is_file(), name
    assert isinstance(reference.trainers["teacher"], slade.TorchTeacherTrainer)
    assert isinstance(reference.trainers["student_round1"], slade.TorchStudentTrainer)
    assert json.loads((out / "results.json").read_text())["student"] == reference.student
    history = json.loads((out / "student_round1" / "history.json").read_text())
    assert [row["step"] for row in history] == list(range(1, 7))
    assert {"loss", "loss/basis", "pairs/positive", "lr/backbone", "lr/head", "lr/basis"} <= set(history[0])

    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        slade.run(config, data=fashion, out=interrupted, model=SmallNet,
                  callback=stop_at("teacher", 3, KeyboardInterrupt()))
    checkpoint = interrupted / "teacher" / "checkpoint.safetensors"
    assert slade.load_trainer(checkpoint, model=SmallNet).step_count == 3
    with pytest.raises(RuntimeError, match="power cut"):
        slade.run(config, data=fashion, out=interrupted, model=SmallNet,
                  callback=stop_at("student_round1", 5, RuntimeError("power cut")))
    steps = []
    resumed = slade.run(config, data=fashion, out=interrupted, model=SmallNet,
                        callback=lambda s, n, m: steps.append((s, n)))
    assert steps == [("student_round1", 5), ("student_round1", 6)]
    assert (resumed.teacher, resumed.student) == (reference.teacher, reference.student)
    assert resumed.pseudo_labels == reference.pseudo_labels
    for stage in ("teacher", "student_round1"):
        assert (interrupted / stage / "history.json").read_text() == (out / stage / "history.json").read_text()
        final = slade.load_trainer(interrupted / stage / "final.safetensors", model=SmallNet)
        expected = slade.load_trainer(out / stage / "final.safetensors", model=SmallNet)
        for name, value in expected.state_dict().items():
            assert torch.equal(final.state_dict()[name], value), (stage, name)


@needs_fashion
def test_a_module_given_to_run_is_copied_for_each_stage(fashion):
    module = SmallNet()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    result = slade.run(tiny("student.init=ssl", "eval.plots=false"), data=fashion, model=module)
    for name, value in module.state_dict().items():
        assert torch.equal(value, before[name]), name
    teacher, student = result.trainers["teacher"].model.module, result.trainers["student_round1"].model.module
    assert teacher is not module and student is not module and student is not teacher


# --------------------------------------------------------------------------- Python step = Rust step


def rust_initial_twin(config: slade.Config) -> torch.nn.Module:
    """The built-in network's torch twin with the initial weights of the run's Rust teacher."""
    rust = slade.TeacherTrainer(**stage_trainer_arguments(config, config.teacher))
    network = embedding_network(config.model)
    network.load_state_dict(rust.model_state_dict())
    return network


@needs_fashion
def test_the_python_step_stages_equal_the_rust_step_stages_on_the_built_in_network(fashion):
    """Same batches, same steps: the teachers, and (basis-free, so that all their state is
    the network's) students both started from the Rust teacher, give the same weights and
    histories; evaluation and pseudo labels of the plain module agree with the Rust
    teacher's. (Students started from the two teachers, which agree to float32 rounding,
    drift apart by more: Adam's normalised update magnifies the rounding in near-zero
    gradients, see tests/trainers/test_teacher.py.)"""
    config = tiny("student.variant=pseudo_only", "teacher.optimizer.warmup_steps=2")
    rust = slade.train_teacher(fashion, config)
    ours = slade.train_teacher(fashion, config, model=rust_initial_twin(config))
    assert_close_states(rust.model_state_dict(), ours.model_state_dict())
    assert_close_histories(rust.history, ours.history)

    pseudo = slade.pseudo_label(rust, fashion, config=config)
    from_module = slade.pseudo_label(ours.to_torch(), fashion, config=config)
    assert torch.equal(from_module.labels, pseudo.labels)
    metrics = slade.evaluate(rust, fashion, config=config)
    assert slade.evaluate(ours.to_torch(), fashion, config=config) == pytest.approx(metrics, abs=1e-6)

    rust_student = slade.train_student(fashion, pseudo, config, teacher=rust)
    student = slade.train_student(fashion, pseudo, config, teacher=rust, model=embedding_network(config.model))
    assert_close_states(rust_student.model_state_dict(), student.model_state_dict())
    assert_close_histories(rust_student.history, student.history)


def assert_close_states(expected, got):
    assert list(expected) == list(got)
    for name, value in expected.items():
        torch.testing.assert_close(got[name].double(), value.double(), **TOL, msg=name)


def assert_close_histories(expected, got):
    assert [set(row) for row in got] == [set(row) for row in expected]
    for row, other in zip(expected, got):
        assert other == pytest.approx(row, rel=1e-5, abs=1e-5)


# --------------------------------------------------------------------------- initialisation


@needs_fashion
@pytest.mark.parametrize("init", ["teacher", "ssl"])
def test_the_student_starts_from_the_teacher_or_where_the_teacher_started(fashion, init):
    """During the basis warm-up the module runs in evaluation mode without gradients, so a
    student that only warms up keeps its starting weights and BatchNorm statistics."""
    config = tiny(f"student.init={init}", "student.steps=2", "student.basis_warmup=2", "student.variant=basis")
    teacher = slade.train_teacher(fashion, config, model=SmallNet)
    pseudo = slade.pseudo_label(teacher, fashion, config=config)
    student = slade.train_student(fashion, pseudo, config, teacher=teacher, model=SmallNet)
    assert student.history[-1]["warmup"] == 1.0
    torch.manual_seed(config.seed)
    start = teacher.model.module if init == "teacher" else SmallNet()
    assert_same_module(start, student.model.module)


@needs_fashion
def test_swav_on_a_model_initialises_the_teachers_backbone(fashion):
    config = tiny("ssl.enabled=true", "ssl.steps=2", "ssl.batch_size=16", "teacher.steps=1",
                  "teacher.optimizer.lr=0")
    ssl = slade.train_ssl(fashion, config, model=SmallNet)
    assert isinstance(ssl, slade.TorchSwavTrainer) and len(ssl.history) == 2
    teacher = slade.train_teacher(fashion, config, init=ssl, model=SmallNet)
    torch.manual_seed(config.seed)
    fresh = SmallNet()
    parameters = [name for name, _ in fresh.named_parameters()]
    body = [n for n in parameters if n.startswith("body.")]
    assert_same_module(ssl.model.module, teacher.model.module, body)
    assert_same_module(fresh, teacher.model.module, ["embedding.weight", "embedding.bias"])


# --------------------------------------------------------------------------- bad models


class Output(torch.nn.Module):
    def __init__(self, make):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 16, 3)
        self.make = make

    def forward(self, x):
        return self.make(self.conv(x))


@needs_fashion
def test_bad_models_are_clear_errors_naming_what_to_fix(fashion):
    config = tiny()
    cases = [
        (Output(lambda h: h), slade.ShapeError, r"shape \(N, dim\)"),
        (Output(lambda h: h.mean((2, 3))[:, :8]), slade.ShapeError, "model.dim=8"),
        (Output(lambda h: h.mean((2, 3)) * float("nan")), slade.NonFiniteError, "NaN"),
        (SmallNet().to("meta"), slade.DeviceError, "config.device"),
    ]
    for model, error, message in cases:
        with pytest.raises(error, match=message):
            slade.train_teacher(fashion, config, model=model)
    with pytest.raises(slade.ShapeError, match=r"shape \(N, dim\)"):
        slade.evaluate(Output(lambda h: h), fashion, config=config)
    with pytest.raises(slade.DtypeError, match="torch.nn.Module"):
        slade.evaluate(object(), fashion, config=config)
    with pytest.raises(slade.InvalidArgumentError, match="pseudo_labels"):
        slade.train_student(fashion, torch.zeros(3, dtype=torch.int64), config, model=SmallNet)


class NanAtThirdStep(SmallNet):
    """NaN embeddings in its third training-mode forward pass."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        f = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls == 3:
                return f * float("nan")
        return f


@needs_fashion
def test_a_nan_step_stops_naming_the_intact_checkpoint_or_is_skipped(tmp_path, fashion):
    with pytest.raises(slade.NonFiniteError, match=r"teacher, step 3: .*\(step 2\), is intact"):
        slade.train_teacher(fashion, tiny(), model=NanAtThirdStep, out=tmp_path / "raise")
    assert slade.load_trainer(tmp_path / "raise" / "checkpoint.safetensors", model=NanAtThirdStep).step_count == 2
    with pytest.warns(slade.SladeWarning, match="1 of 6 steps skipped"):
        teacher = slade.train_teacher(fashion, tiny("teacher.optimizer.nonfinite=skip"), model=NanAtThirdStep)
    assert [row["skipped"] for row in teacher.history] == [0, 0, 1, 0, 0, 0]
