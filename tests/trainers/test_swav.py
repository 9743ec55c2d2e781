"""slade.SwavTrainer against a plain-PyTorch SwAV step (tests/reference_nets.py), checkpoints
and resumption, Ctrl-C during a step, gradient access between the two halves of a
step, and bad input."""

from __future__ import annotations

import json
import os

import pytest
import torch

import slade
from checks import assert_releases_the_gil, assert_same_state
from reference_nets import Embedder, swav_loss
from signals import needs_main_thread, sigint_during_a_step

TOL = dict(rtol=1e-5, atol=1e-5)


def make_crops(n=8, channels=1, global_side=28, local_side=16, locals_=2, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    sides = [global_side, global_side] + [local_side] * locals_
    return [torch.randn(n, channels, s, s, generator=g).to(device) for s in sides]


def reference_from(trainer, backbone, channels, dim, device="cpu"):
    state = {k: v.detach().clone() for k, v in trainer.state_dict().items()}
    ref = Embedder(backbone, channels, dim).to(device)
    ref.load_slade_state(state)
    prototypes = state["prototypes"].clone().requires_grad_(True)
    return ref, prototypes


def assert_trainer_equals_reference(trainer, ref, prototypes, tol=TOL):
    names = ref.slade_names()
    for key, value in trainer.state_dict().items():
        other = prototypes if key == "prototypes" else names[key]
        assert torch.allclose(value.double(), other.detach().double(), **tol), key


@pytest.mark.parametrize(
    "optim,make_torch",
    [
        (
            slade.OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4),
            lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4),
        ),
        (
            slade.OptimizerConfig(name="adamw", lr=1e-3),
            lambda params: torch.optim.AdamW(params, lr=1e-3),
        ),
    ],
)
def test_swav_steps_equal_plain_pytorch(optim, make_torch):
    trainer = slade.SwavTrainer(
        slade.ModelConfig("convnet", 1, 16), optim, num_prototypes=12, seed=3
    )
    ref, prototypes = reference_from(trainer, "convnet", 1, 16)
    optimizer = make_torch(list(ref.parameters()) + [prototypes])
    ref.train()
    for step in range(3):
        crops = make_crops(seed=step)
        metrics = trainer.step(crops)
        optimizer.zero_grad()
        loss = swav_loss(ref, prototypes, crops)
        loss.backward()
        optimizer.step()
        assert metrics["loss"] == pytest.approx(loss.item(), rel=1e-5, abs=1e-5)
        assert_trainer_equals_reference(trainer, ref, prototypes)


def test_resnet18_swav_step_equals_plain_pytorch():
    trainer = slade.SwavTrainer(
        slade.ModelConfig("resnet18", 3, 32),
        slade.OptimizerConfig(name="sgd", lr=0.05, momentum=0.9),
        num_prototypes=20,
        seed=1,
    )
    ref, prototypes = reference_from(trainer, "resnet18", 3, 32)
    optimizer = torch.optim.SGD(list(ref.parameters()) + [prototypes], lr=0.05, momentum=0.9)
    crops = make_crops(n=4, channels=3, global_side=32, local_side=16, locals_=1)
    metrics = trainer.step(crops)
    loss = swav_loss(ref, prototypes, crops)
    loss.backward()
    optimizer.step()
    assert metrics["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert_trainer_equals_reference(trainer, ref, prototypes)


def test_frozen_prototypes_follow_the_reference():
    trainer = slade.SwavTrainer(
        slade.ModelConfig("convnet", 1, 16),
        slade.OptimizerConfig(name="sgd", lr=0.1, momentum=0.9),
        num_prototypes=12,
        freeze_prototypes_steps=2,
    )
    ref, prototypes = reference_from(trainer, "convnet", 1, 16)
    optimizer = torch.optim.SGD(list(ref.parameters()) + [prototypes], lr=0.1, momentum=0.9)
    for step in range(3):
        crops = make_crops(seed=step)
        before = trainer.prototypes.detach().clone()
        trainer.step(crops)
        optimizer.zero_grad()
        swav_loss(ref, prototypes, crops).backward()
        if step < 2:
            prototypes.grad = None  # as SwAV's freeze_prototypes_niters
            # Only the per-step normalisation touches the prototypes.
            assert torch.allclose(trainer.prototypes, torch.nn.functional.normalize(before, dim=1), atol=1e-7)
        optimizer.step()
        assert_trainer_equals_reference(trainer, ref, prototypes)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_short_run_decreases_the_loss(precision):
    trainer = slade.SwavTrainer(
        slade.ModelConfig("convnet", 1, 32),
        slade.OptimizerConfig(name="adam", lr=3e-3),
        num_prototypes=16,
        precision=precision,
    )
    g = torch.Generator().manual_seed(0)
    images = torch.rand(32, 1, 28, 28, generator=g)

    def augment(x, side):
        # Random shifts and noise: two views of each image differ but stay related.
        dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
        x = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
        x = x + 0.1 * torch.randn(x.shape, generator=g)
        return torch.nn.functional.interpolate(x, size=side) if side != x.shape[-1] else x

    losses = []
    for _ in range(30):
        crops = [augment(images, 28), augment(images, 28), augment(images, 16)]
        losses.append(trainer.step(crops)["loss"])
    first = sum(losses[:5]) / 5
    last = sum(losses[-5:]) / 5
    assert last < first - 0.05, losses
    assert trainer.step_count == 30


def _trainer(**kw):
    return slade.SwavTrainer(
        slade.ModelConfig("convnet", 1, 16),
        slade.OptimizerConfig(name="adam", lr=1e-3, schedule="cosine", warmup_steps=2, total_steps=10),
        num_prototypes=12,
        seed=kw.pop("seed", 5),
        **kw,
    )


def test_save_load_then_step_equals_an_uninterrupted_run(tmp_path):
    path = tmp_path / "swav.safetensors"
    reference = _trainer()
    for step in range(3):
        reference.step(make_crops(seed=step))
    reference.save(path)
    expected = [reference.step(make_crops(seed=step)) for step in (3, 4)]

    resumed = _trainer(seed=99)  # other initial weights: everything must come from the file
    with pytest.raises(slade.ConfigError, match="seed"):
        resumed.load(path)
    resumed = _trainer()
    resumed.load(path)
    assert resumed.step_count == 3
    assert resumed.learning_rates == pytest.approx(_lrs_after(reference, 3))
    got = [resumed.step(make_crops(seed=step)) for step in (3, 4)]
    assert got == expected  # bitwise: every metric equal
    assert_same_state(reference, resumed)
    state_a, state_b = reference.optimizer_state(), resumed.optimizer_state()
    for name in state_a:
        for key in state_a[name]:
            assert torch.equal(state_a[name][key], state_b[name][key]), (name, key)

    rebuilt = slade.SwavTrainer.from_checkpoint(path)
    assert rebuilt.step_count == 3
    assert rebuilt.step(make_crops(seed=3)) == expected[0]

    sidecar = json.loads((tmp_path / "swav.json").read_text())
    assert sidecar["trainer"] == "swav" and sidecar["step"] == 3
    assert sidecar["config"]["model"]["backbone"] == "convnet"
    assert sorted(os.listdir(tmp_path)) == ["swav.json", "swav.safetensors"]  # no temp files


def _lrs_after(trainer, steps):
    # Learning rates the schedule gives after `steps` updates: warm-up 2 then cosine to 10.
    import math

    if steps < 2:
        f = 0.01 + 0.99 * steps / 2
    else:
        f = (1 + math.cos(math.pi * (steps - 2) / 8)) / 2
    return {k: 1e-3 * f for k in trainer.learning_rates}


def test_checkpoint_files_are_torch_readable_and_errors_are_clear(tmp_path):
    from safetensors.torch import load_file

    trainer = _trainer()
    trainer.step(make_crops())
    path = tmp_path / "ck.safetensors"
    trainer.save(path)
    tensors = load_file(str(path))
    assert torch.equal(tensors["model.embedding.weight"], trainer.state_dict()["embedding.weight"])
    assert "optim.embedding.weight.exp_avg" in tensors
    with pytest.raises(slade.MissingFileError):
        trainer.load(tmp_path / "absent.safetensors")
    with pytest.raises(slade.MissingFileError):
        trainer.save(tmp_path / "no_such_dir" / "ck.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(slade.SladeIOError):
        trainer.load(tmp_path / "bad.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(slade.SladeIOError, match="not a slade checkpoint"):
        trainer.load(tmp_path / "plain.safetensors")


@needs_main_thread
def test_ctrl_c_during_a_step_raises_after_it_and_the_trainer_has_taken_it():
    """README: Ctrl-C during step() lets the step finish in Rust, then step() raises
    KeyboardInterrupt; the trainer equals one that took the same steps uninterrupted."""
    trainer = _trainer()
    returned = sigint_during_a_step(lambda: trainer.step(make_crops(n=64, seed=trainer.step_count)))
    assert trainer.step_count == returned + 1
    fresh = _trainer()
    for step in range(trainer.step_count):
        fresh.step(make_crops(n=64, seed=step))
    assert_same_state(trainer, fresh)
    assert trainer.step(make_crops(seed=9)) == fresh.step(make_crops(seed=9))


def test_the_gil_is_released_during_a_step():
    trainer = _trainer()
    crops = make_crops(n=64)

    def three_steps():
        for _ in range(3):
            trainer.step(crops)

    assert_releases_the_gil(three_steps)


def test_gradients_between_the_halves_of_a_step_are_torch_tensors():
    """What torch.distributed would do: edit p.grad between compute and apply."""
    config = slade.OptimizerConfig(name="sgd", lr=0.1, momentum=0.0)
    halved = slade.OptimizerConfig(name="sgd", lr=0.05, momentum=0.0)
    a = slade.SwavTrainer(slade.ModelConfig("convnet", 1, 16), config, num_prototypes=12)
    b = slade.SwavTrainer(slade.ModelConfig("convnet", 1, 16), halved, num_prototypes=12)
    crops = make_crops()
    a.compute_gradients(crops)
    for _, p in a.named_parameters():
        p.grad.mul_(0.5)  # e.g. all_reduce(SUM) / world_size
    a.apply_gradients()
    b.step(crops)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(x, y, atol=1e-7), name
    with pytest.raises(slade.InvalidArgumentError, match="compute_gradients"):
        a.apply_gradients()
    a.compute_gradients(crops)
    with pytest.raises(slade.InvalidArgumentError, match="pending"):
        a.save("unused.safetensors")


def test_step_under_no_grad_still_trains():
    a, b = _trainer(), _trainer()
    with torch.no_grad():
        a.step(make_crops())
    b.step(make_crops())
    assert_same_state(a, b)


def test_fp16_is_ignored_on_cpu():
    a, b = _trainer(), _trainer(precision="fp16")
    assert a.step(make_crops()) == b.step(make_crops())
    assert_same_state(a, b)


def test_embed_uses_eval_mode_without_touching_state():
    trainer = _trainer()
    trainer.step(make_crops())
    ref, _ = reference_from(trainer, "convnet", 1, 16)
    ref.eval()
    images = torch.randn(10, 1, 28, 28)
    buffers = {k: v.clone() for k, v in trainer.named_buffers()}
    out = trainer.embed(images, batch_size=4)
    with torch.no_grad():
        assert torch.allclose(out, ref(images), **TOL)
    for k, v in trainer.named_buffers():
        assert torch.equal(v, buffers[k]), k


def test_bad_crops_raise_clear_errors_and_change_nothing():
    trainer = _trainer()
    crops = make_crops()
    before = {k: v.clone() for k, v in trainer.state_dict().items()}
    cases = [
        (crops[:1], slade.InvalidArgumentError, "two global crops"),
        ([crops[0], crops[1][:4]], slade.ShapeError, "crops\\[1\\]"),
        ([crops[0], crops[2]], slade.ShapeError, "global crops"),
        ([crops[0], torch.randn(8, 3, 28, 28)], slade.ShapeError, "channel"),
        ([crops[0], crops[1].long()], slade.DtypeError, "crops\\[1\\]"),
        ([crops[0], crops[1] * float("inf")], slade.NonFiniteError, "crops\\[1\\]"),
        (crops[0], slade.DtypeError, "list"),
    ]
    for bad, error, match in cases:
        with pytest.raises(error, match=match):
            trainer.step(bad)
    assert trainer.step_count == 0
    for k, v in trainer.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(slade.ConfigError, match="num_prototypes"):
        slade.SwavTrainer(slade.ModelConfig("convnet", 1, 16), num_prototypes=0)
    with pytest.raises(slade.ConfigError, match="temperature"):
        slade.SwavTrainer(slade.ModelConfig("convnet", 1, 16), temperature=0.0)


def test_non_finite_loss_is_an_error_and_leaves_state_unchanged():
    trainer = slade.SwavTrainer(
        slade.ModelConfig("convnet", 1, 16),
        slade.OptimizerConfig(name="sgd", lr=1e30, momentum=0.0),
        num_prototypes=12,
    )
    trainer.step(make_crops(seed=0))  # a huge update: the next loss overflows
    before = {k: v.clone() for k, v in trainer.state_dict().items()}
    with pytest.raises(slade.NonFiniteError, match="not updated"):
        trainer.step(make_crops(seed=1))
    assert trainer.step_count == 1
    for k, v in trainer.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.cuda
def test_swav_step_on_cuda_equals_plain_pytorch():
    torch.backends.cudnn.deterministic = True
    trainer = slade.SwavTrainer(
        slade.ModelConfig("resnet18", 3, 32),
        slade.OptimizerConfig(name="sgd", lr=0.05, momentum=0.9),
        device="cuda",
        num_prototypes=20,
    )
    ref, prototypes = reference_from(trainer, "resnet18", 3, 32, device="cuda")
    optimizer = torch.optim.SGD(list(ref.parameters()) + [prototypes], lr=0.05, momentum=0.9)
    crops = make_crops(n=8, channels=3, global_side=64, local_side=32, device="cuda")
    metrics = trainer.step(crops)
    loss = swav_loss(ref, prototypes, crops)
    loss.backward()
    optimizer.step()
    assert metrics["loss"] == pytest.approx(loss.item(), rel=1e-4)
    assert_trainer_equals_reference(trainer, ref, prototypes, tol=dict(rtol=1e-4, atol=1e-4))
    with pytest.raises(slade.DeviceError, match="cuda"):
        trainer.step([c.cpu() for c in crops])


@pytest.mark.cuda
def test_fp16_training_on_cuda_runs_and_learns():
    trainer = slade.SwavTrainer(
        slade.ModelConfig("resnet18", 3, 32),
        slade.OptimizerConfig(name="adam", lr=1e-3),
        device="cuda",
        num_prototypes=20,
        precision="fp16",
    )
    crops = make_crops(n=16, channels=3, global_side=64, local_side=32, device="cuda")
    losses = [trainer.step(crops) for _ in range(15)]
    assert all("loss_scale" in m for m in losses)
    values = [m["loss"] for m in losses if m["skipped"] == 0.0]
    assert len(values) >= 10
    assert values[-1] < values[0]
    assert trainer.embed(crops[0]).dtype == torch.float32
