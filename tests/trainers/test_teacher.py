"""slade.TeacherTrainer against a plain PyTorch + pytorch-metric-learning teacher step
(tests/reference_slade.py), checkpoints, Ctrl-C during a step, weight import and bad
input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import slade
from checks import assert_same_state
from reference_nets import Embedder
from reference_slade import ReferenceRanking, reference_model, sync_from
from signals import needs_main_thread, sigint_during_a_step

TOL = dict(rtol=1e-5, atol=1e-5)
APPROX = dict(rel=1e-5, abs=1e-5)
MODEL = slade.ModelConfig("convnet", 1, 16)


def make_batch(n=16, classes=4, channels=1, side=28, seed=0, device="cpu"):
    """Images whose mean depends on the class, so that the classes are learnable."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat(n // classes)[torch.randperm(n, generator=g)]
    pattern = torch.randn(classes, channels, side, side, generator=g)
    images = pattern[labels] + 0.5 * torch.randn(n, channels, side, side, generator=g)
    return images.to(device), labels.to(device)


def assert_model_equals(trainer, ref, tol=TOL):
    names = ref.slade_names()
    for key, value in trainer.state_dict().items():
        assert torch.allclose(value.double(), names[key].detach().double(), **tol), key


RANKING = [
    ("contrastive", False, "sgd"),
    ("contrastive", True, "sgd"),
    ("multi_similarity", False, "adam"),
    ("multi_similarity", True, "sgd"),
]


# Adam's update is lr * m / (sqrt(v) + eps): for a gradient entry that is ~0 in exact
# arithmetic it turns float32 rounding noise into a move of up to lr. eps = 1e-6 damps that,
# and its weights are compared to 5% of one update (SGD's to 1e-5).
ADAM_EPS = 1e-6
ADAM_TOL = dict(rtol=1e-5, atol=5e-5)


def make_optimizer(name, params):
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)
    return torch.optim.Adam(params, lr=1e-3, eps=ADAM_EPS)


def optim_config(name):
    if name == "sgd":
        return slade.OptimizerConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4)
    return slade.OptimizerConfig(name="adam", lr=1e-3, eps=ADAM_EPS)


@pytest.mark.parametrize("loss,miner,optimizer", RANKING)
def test_teacher_steps_equal_plain_pytorch(loss, miner, optimizer):
    trainer = slade.TeacherTrainer(MODEL, optim_config(optimizer), loss=loss, miner=miner, seed=1)
    ref = reference_model(trainer)
    ranking = ReferenceRanking(loss, miner)
    opt = make_optimizer(optimizer, list(ref.parameters()))
    ref.train()
    for step in range(3):
        sync_from(trainer, ref)  # each step from identical weights; momentum carries over
        images, labels = make_batch(seed=step)
        metrics = trainer.step(images, labels)
        opt.zero_grad()
        f = ref(images)
        expected = ranking(f, labels)
        expected.backward()
        opt.step()
        assert metrics["loss"] == pytest.approx(expected.item(), **APPROX)
        assert metrics["loss/rank"] == metrics["loss"]
        if miner:
            a1, _, a2, _ = ranking.miner(f.detach(), labels)
            assert (metrics["pairs/positive"], metrics["pairs/negative"]) == (len(a1), len(a2))
        else:
            same = (labels[:, None] == labels[None, :]).sum().item() - len(labels)
            assert metrics["pairs/positive"] == same
        assert metrics["step"] == step + 1
        assert_model_equals(trainer, ref, ADAM_TOL if optimizer == "adam" else TOL)


def test_resnet18_teacher_step_equals_plain_pytorch():
    trainer = slade.TeacherTrainer(
        slade.ModelConfig("resnet18", 3, 32),
        slade.OptimizerConfig(name="sgd", lr=0.05, momentum=0.9),
        loss="multi_similarity",
        miner=True,
    )
    ref = reference_model(trainer)
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    images, labels = make_batch(n=8, channels=3, side=32)
    metrics = trainer.step(images, labels)
    expected = ReferenceRanking("multi_similarity", True)(ref(images), labels)
    expected.backward()
    opt.step()
    assert metrics["loss"] == pytest.approx(expected.item(), **APPROX)
    assert_model_equals(trainer, ref)


@pytest.mark.parametrize("backbone,channels,tol", [("convnet", 1, 1e-4), ("resnet18", 3, 1e-3)])
def test_bf16_teacher_step_is_plain_pytorch_under_cpu_autocast(backbone, channels, tol):
    """precision="bf16" computes the convolutions in bfloat16, as torch's CPU autocast does,
    and the embedding head and the loss in float32."""
    model = slade.ModelConfig(backbone, channels, 32)
    optim = slade.OptimizerConfig(name="sgd", lr=0.05, momentum=0.9)
    ranking = dict(loss="multi_similarity", miner=True)
    trainer = slade.TeacherTrainer(model, optim, precision="bf16", **ranking)
    full = slade.TeacherTrainer(model, optim, **ranking)
    ref = reference_model(trainer)
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    images, labels = make_batch(n=16, channels=channels, side=32)
    metrics = trainer.step(images, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = ref.body(images)
    assert features.dtype == torch.bfloat16
    f = F.normalize(ref.embedding(features.float()), dim=1)
    expected = ReferenceRanking("multi_similarity", True)(f, labels)
    expected.backward()
    opt.step()
    assert metrics["loss"] == pytest.approx(expected.item(), **APPROX)
    assert metrics["loss"] != pytest.approx(full.step(images, labels)["loss"], rel=1e-6)
    assert all(v.dtype in (torch.float32, torch.int64) for v in trainer.state_dict().values())
    assert_model_equals(trainer, ref, dict(rtol=tol, atol=tol))


def test_short_run_decreases_the_loss():
    trainer = slade.TeacherTrainer(MODEL, slade.OptimizerConfig(name="adam", lr=3e-3))
    losses = [trainer.step(*make_batch(seed=step % 4))["loss"] for step in range(12)]
    assert sum(losses[-4:]) < 0.7 * sum(losses[:4]), losses
    assert trainer.step_count == 12


def test_nonfinite_skip_takes_good_steps_as_raise_does_and_skips_a_nan_one():
    def trainer(nonfinite, lr=1e-3):
        return slade.TeacherTrainer(MODEL, slade.OptimizerConfig(lr=lr, nonfinite=nonfinite))

    raising, skipping = trainer("raise"), trainer("skip")
    for step in range(3):
        assert "skipped" not in raising.step(*make_batch(seed=step))
        assert skipping.step(*make_batch(seed=step))["skipped"] == 0.0
    assert_same_state(raising, skipping)
    # An absurd learning rate: the second loss is NaN.
    raising, skipping = trainer("raise", 1e30), trainer("skip", 1e30)
    for t in (raising, skipping):
        t.step(*make_batch(seed=0))
    before = {k: v.clone() for k, v in skipping.state_dict().items()}
    with pytest.raises(slade.NonFiniteError, match="loss is NaN in step 2"):
        raising.step(*make_batch(seed=1))
    metrics = skipping.step(*make_batch(seed=1))
    assert metrics["skipped"] == 1.0 and np.isnan(metrics["loss"])
    assert (raising.step_count, skipping.step_count) == (1, 2)
    for k, v in skipping.state_dict().items():
        assert torch.equal(v, before[k]), k


def _trainer(**kw):
    return slade.TeacherTrainer(
        MODEL,
        slade.OptimizerConfig(name="adam", lr=1e-3, schedule="cosine", warmup_steps=2, total_steps=10),
        loss="multi_similarity",
        miner=True,
        seed=kw.pop("seed", 5),
        **kw,
    )


def test_save_load_then_step_equals_an_uninterrupted_run(tmp_path):
    path = tmp_path / "teacher.safetensors"
    reference = _trainer()
    for step in range(3):
        reference.step(*make_batch(seed=step))
    reference.save(path)
    expected = [reference.step(*make_batch(seed=step)) for step in (3, 4)]

    resumed = _trainer(epsilon=0.2)
    with pytest.raises(slade.ConfigError, match="epsilon"):
        resumed.load(path)
    resumed = _trainer()
    resumed.load(path)
    assert resumed.step_count == 3
    got = [resumed.step(*make_batch(seed=step)) for step in (3, 4)]
    assert got == expected
    assert_same_state(reference, resumed)

    rebuilt = slade.TeacherTrainer.from_checkpoint(path)
    assert rebuilt.ranking_config == reference.ranking_config
    assert rebuilt.step(*make_batch(seed=3)) == expected[0]
    with pytest.raises(slade.ConfigError, match="teacher checkpoint, not a student"):
        slade.StudentTrainer.from_checkpoint(path)
    swav = slade.SwavTrainer(MODEL, num_prototypes=8)
    swav.save(tmp_path / "swav.safetensors")
    with pytest.raises(slade.ConfigError, match="swav"):
        slade.TeacherTrainer.from_checkpoint(tmp_path / "swav.safetensors")


@needs_main_thread
def test_ctrl_c_during_a_step_raises_after_it_and_the_trainer_has_taken_it():
    """README: Ctrl-C during step() lets the step finish in Rust, then step() raises
    KeyboardInterrupt; the trainer equals one that took the same steps uninterrupted."""
    trainer = _trainer()
    returned = sigint_during_a_step(lambda: trainer.step(*make_batch(128, seed=trainer.step_count)))
    assert trainer.step_count == returned + 1
    fresh = _trainer()
    for step in range(trainer.step_count):
        fresh.step(*make_batch(128, seed=step))
    assert_same_state(trainer, fresh)
    assert trainer.step(*make_batch(seed=9)) == fresh.step(*make_batch(seed=9))


def test_backbone_weights_from_swav_or_torchvision_and_same_init_as_the_student(tmp_path):
    swav = slade.SwavTrainer(MODEL, num_prototypes=8, seed=7)
    swav.step([make_batch()[0], make_batch(seed=1)[0]])
    teacher = slade.TeacherTrainer(MODEL)
    student = slade.StudentTrainer(MODEL, num_basis=4)
    for trainer in (teacher, student):
        report = trainer.load_backbone(swav.state_dict(), ignore_prefixes=("prototypes",))
        assert report["missing"] == [] and report["unexpected"] == []
    swav_state = swav.state_dict()
    for name, value in teacher.state_dict().items():
        if not name.startswith("embedding."):
            assert torch.equal(value, swav_state[name]), name
    # Same seed: the student starts from the teacher's initialisation.
    _assert_models_equal(teacher, student)

    resnet = slade.TeacherTrainer(slade.ModelConfig("resnet18", 3, 8))
    torchvision_net = Embedder("resnet18", 3, 8).body
    report = resnet.load_backbone(torchvision_net.state_dict())
    assert report["loaded"] > 0 and report["missing"] == []
    torch.save(torchvision_net.state_dict(), tmp_path / "r18.pt")
    resnet.load_backbone(tmp_path / "r18.pt")
    assert torch.equal(resnet.state_dict()["conv1.weight"], torchvision_net.conv1.weight)


def _assert_models_equal(a, b):
    sa, sb = a.model_state_dict(), b.model_state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def test_embed_uses_eval_mode_without_touching_state():
    trainer = _trainer()
    trainer.step(*make_batch())
    ref = reference_model(trainer).eval()
    images = torch.randn(10, 1, 28, 28)
    buffers = {k: v.clone() for k, v in trainer.named_buffers()}
    out = trainer.embed(images, batch_size=4)
    with torch.no_grad():
        assert torch.allclose(out, ref(images), **TOL)
    for k, v in trainer.named_buffers():
        assert torch.equal(v, buffers[k]), k


def test_numpy_inputs_and_gradients_between_the_halves():
    a, b = _trainer(), _trainer()
    images, labels = make_batch()
    a.compute_gradients(images.numpy(), labels.numpy().astype(np.int32))
    grads = {name: p.grad.clone() for name, p in a.named_parameters()}
    a.apply_gradients()
    b.step(images, labels)
    assert_same_state(a, b)
    assert all(torch.isfinite(g).all() for g in grads.values())


def test_bad_inputs_raise_clear_errors_and_change_nothing():
    trainer = _trainer()
    images, labels = make_batch()
    before = {k: v.clone() for k, v in trainer.state_dict().items()}
    cases = [
        ((images[0], labels), slade.ShapeError, "4-D"),
        ((torch.randn(16, 3, 28, 28), labels), slade.ShapeError, "channel"),
        ((images, labels[:5]), slade.ShapeError, "labels has 5 entries"),
        ((images, labels.float()), slade.DtypeError, "labels"),
        ((images.long(), labels), slade.DtypeError, "images"),
        ((images * float("nan"), labels), slade.NonFiniteError, "images"),
        ((images[:, :, :8, :8], labels), slade.ShapeError, "16x16"),
        (([1, 2], labels), slade.DtypeError, "images"),
    ]
    for args, error, match in cases:
        with pytest.raises(error, match=match):
            trainer.step(*args)
    assert trainer.step_count == 0
    for k, v in trainer.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(slade.ConfigError, match="multi_similarity"):
        slade.TeacherTrainer(MODEL, loss="arcface")
    with pytest.raises(slade.ConfigError, match="optimizer"):
        slade.TeacherTrainer(MODEL, slade.OptimizerConfig(name="lamb"))
    with pytest.raises(slade.ConfigError, match="backbone"):
        slade.TeacherTrainer(slade.ModelConfig("vgg", 1, 16))
    with pytest.raises(slade.ConfigError, match="optimizer.learning_rate: unknown field"):
        slade.TeacherTrainer(MODEL, {"name": "adam", "learning_rate": 1.0})
    with pytest.raises(slade.InvalidArgumentError, match="alpha"):
        slade.TeacherTrainer(MODEL, loss="multi_similarity", alpha=0.0)


@pytest.mark.cuda
def test_teacher_step_on_cuda_equals_plain_pytorch_and_rejects_mixed_devices():
    torch.backends.cudnn.deterministic = True
    trainer = slade.TeacherTrainer(
        slade.ModelConfig("resnet18", 3, 32),
        slade.OptimizerConfig(name="sgd", lr=0.05, momentum=0.9),
        device="cuda",
        loss="multi_similarity",
        miner=True,
    )
    ref = reference_model(trainer, device="cuda")
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    images, labels = make_batch(n=16, channels=3, side=64, device="cuda")
    metrics = trainer.step(images, labels.cpu())  # labels may live on the CPU
    expected = ReferenceRanking("multi_similarity", True)(ref(images), labels)
    expected.backward()
    opt.step()
    assert metrics["loss"] == pytest.approx(expected.item(), rel=1e-4, abs=1e-4)
    assert_model_equals(trainer, ref, tol=dict(rtol=1e-4, atol=1e-4))
    with pytest.raises(slade.DeviceError, match="cuda"):
        trainer.step(images.cpu(), labels)


@pytest.mark.cuda
def test_fp16_teacher_on_cuda_learns():
    trainer = slade.TeacherTrainer(
        slade.ModelConfig("resnet18", 3, 32),
        slade.OptimizerConfig(name="adam", lr=1e-3),
        device="cuda",
        precision="fp16",
    )
    images, labels = make_batch(n=32, channels=3, side=64, device="cuda")
    metrics = [trainer.step(images, labels) for _ in range(15)]
    values = [m["loss"] for m in metrics if m["skipped"] == 0.0]
    assert len(values) >= 10 and values[-1] < values[0]
