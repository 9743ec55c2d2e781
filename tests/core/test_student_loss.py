"""slade.StudentLoss against the plain PyTorch + PML student objective of
tests/reference_slade.py on the same embeddings and state (value, metrics, gradients w.r.t.
the embeddings and W_a, running statistics, over several updates), for every variant,
regulariser and threshold rule; a torch model trained with StudentLoss against
slade.StudentTrainer (same weights); module behaviour (state_dict, .to(), eval, DDP) and bad
input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import slade
from checks import assert_releases_the_gil
from reference_slade import (
    ReferenceBasis,
    ReferenceStudent,
    param_groups,
    reference_model,
    sync_from,
)

TOL = dict(rtol=1e-5, atol=1e-5)
APPROX = dict(rel=1e-5, abs=1e-5)
DIM, NUM_BASIS, CLUSTERS = 16, 4, 5
BASIS_FIELDS = ("momentum", "sd_margin", "sd_weight", "regularizer", "sd_statistics")
REFERENCE_FIELDS = (
    "variant", "lambda1", "lambda2", "basis_warmup", "t1", "t2", "require_pseudo_agreement",
    "loss", "miner", "epsilon", "mining",
)


def embeddings(n=16, seed=0, dtype=torch.float32):
    """Labeled embeddings (labels in [0, NUM_BASIS)) and unlabeled ones (pseudo labels in
    [0, CLUSTERS)), L2-normalised, grouped by class and cluster."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(NUM_BASIS).repeat(n // NUM_BASIS)[torch.randperm(n, generator=g)]
    pseudo = torch.arange(CLUSTERS).repeat(n // CLUSTERS + 1)[:n][torch.randperm(n, generator=g)]
    centres = torch.randn(NUM_BASIS + CLUSTERS, DIM, generator=g, dtype=torch.float64)
    noise = lambda: 0.8 * torch.randn(n, DIM, generator=g, dtype=torch.float64)  # noqa: E731
    fl = F.normalize(centres[labels] + noise(), dim=1).to(dtype)
    fu = F.normalize(centres[NUM_BASIS + pseudo] + noise(), dim=1).to(dtype)
    return fl, labels, fu, pseudo


def reference_of(loss_fn, settings):
    """The reference objective starting from loss_fn's basis (its weights, copied)."""
    basis = None
    if loss_fn.basis is not None:
        o = loss_fn.objective
        basis = ReferenceBasis(
            loss_fn.basis.weight,
            loss_fn.basis.pseudo_head,
            **{name: getattr(o, name) for name in BASIS_FIELDS},
        )
    return ReferenceStudent(None, basis, **{k: v for k, v in settings.items() if k in REFERENCE_FIELDS})


def leaf(t):
    return t.detach().clone().requires_grad_(True)


CASES = [
    dict(variant="pseudo_only"),
    dict(variant="basis"),
    dict(variant="basis_mining"),
    dict(variant="basis_mining", regularizer="global_ce", num_pseudo_classes=6, loss="multi_similarity"),
    dict(variant="basis_mining", regularizer="local_ce", num_pseudo_classes=6, miner=True),
    dict(variant="basis_mining", basis_warmup=2, loss="multi_similarity", miner=True),
    dict(variant="basis", regularizer="global_ce", num_pseudo_classes=5, basis_warmup=1),
    dict(variant="basis_mining", t1="mu+", t2="mid", require_pseudo_agreement=False),
    dict(variant="basis_mining", t1=0.9, t2=0.5, lambda1=0.5, lambda2=2.0, sd_margin=0.3, momentum=0.9),
    dict(variant="basis_mining", t1="all", t2="mu+", sd_weight=0.5),
    dict(variant="basis_mining", sd_statistics="blended", momentum=0.9),
    dict(variant="basis", sd_statistics="blended", sd_margin=0.8),
    dict(variant="basis_mining", num_basis=9, t1="mid", t2="all"),
    dict(variant="basis_mining", mining="oracle", t1="mu+", t2="mu-"),
    dict(variant="basis_mining", t1="auto", t2=0.25, require_pseudo_agreement=False, loss="multi_similarity"),
]


def student_loss(settings, dtype=None):
    settings = dict(settings)
    num_basis = settings.pop("num_basis", NUM_BASIS)
    return slade.StudentLoss(DIM, num_basis, dtype=dtype, **settings)


@pytest.mark.parametrize("settings", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_value_metrics_and_gradients_equal_the_plain_pytorch_objective(settings):
    torch.manual_seed(0)
    ours = student_loss(settings)
    ref = reference_of(ours, settings)
    optimizer = ref_optimizer = None
    if ref.basis is not None:
        optimizer = torch.optim.SGD(ours.parameters(), lr=0.5)
        ref_optimizer = torch.optim.SGD(ref.basis.parameters(), lr=0.5)
    for step in range(4):
        fl, labels, fu, pseudo = embeddings(seed=step)
        truth = torch.arange(len(pseudo)) % 3  # hidden labels for oracle mining
        inputs, ref_inputs = [leaf(fl), leaf(fu)], [leaf(fl), leaf(fu)]
        warming_up = step < settings.get("basis_warmup", 0)
        assert ours.warming_up == warming_up
        loss, metrics = ours(inputs[0], labels, inputs[1], pseudo, true_labels=truth)
        if warming_up:  # the reference's warm-up: no gradient reaches the model
            ref_inputs = [t.detach() for t in ref_inputs]
        expected, parts = ref.objective(ref_inputs[0], labels, ref_inputs[1], pseudo, truth)
        assert loss.item() == pytest.approx(expected.item(), **APPROX)
        for name, value in parts.items():
            if value is None:  # a threshold rule whose statistic is not defined yet
                assert name not in metrics, name
                continue
            value = value.item() if torch.is_tensor(value) else value
            assert metrics[name] == pytest.approx(value, **APPROX), name
        assert metrics["warmup"] == float(warming_up)
        _assert_same_gradients(ours, ref, loss, expected, inputs, ref_inputs, optimizer, ref_optimizer)
        _assert_same_state(ours, ref)
    assert ours.step_count.item() == 4


def _assert_same_gradients(ours, ref, loss, expected, inputs, ref_inputs, optimizer, ref_optimizer):
    """Backward on both sides, equal gradients w.r.t. the embeddings and the basis; then one
    SGD update of each basis."""
    for opt in (optimizer, ref_optimizer):
        if opt is not None:
            opt.zero_grad()
    loss.backward()
    expected.backward()
    for ours_emb, ref_emb in zip(inputs, ref_inputs):
        if ref_emb.requires_grad:
            torch.testing.assert_close(ours_emb.grad, ref_emb.grad, **TOL)
        else:
            assert ours_emb.grad is None
    if ref.basis is None:
        assert list(ours.parameters()) == []
        return
    for param, ref_param in zip(ours.parameters(), ref.basis.parameters()):
        assert param.grad.abs().sum() > 0
        torch.testing.assert_close(param.grad, ref_param.grad, **TOL)
    optimizer.step()
    ref_optimizer.step()


def _assert_same_state(ours, ref):
    if ref.basis is None:
        return
    torch.testing.assert_close(ours.W_a.detach(), ref.basis.weight.detach(), **TOL)
    for side in ("pos", "neg"):
        running = ref.basis.running[side]
        if running is None:
            assert getattr(ours.basis, f"updates_{side}").item() == 0
            continue
        torch.testing.assert_close(getattr(ours.basis, f"mu_{side}"), running[0].float(), **TOL)
        torch.testing.assert_close(getattr(ours.basis, f"var_{side}"), running[1].float(), **TOL)


def test_float64_embeddings_and_basis_equal_the_reference_closely():
    torch.manual_seed(1)
    ours = slade.StudentLoss(DIM, NUM_BASIS, dtype=torch.float64, loss="multi_similarity")
    ref = reference_of(ours, dict(loss="multi_similarity"))
    for step in range(2):
        fl, labels, fu, pseudo = embeddings(seed=step, dtype=torch.float64)
        a, b = [leaf(fl), leaf(fu)], [leaf(fl), leaf(fu)]
        loss, _ = ours(a[0], labels, a[1], pseudo)
        expected, _ = ref.objective(b[0], labels, b[1], pseudo)
        assert loss.dtype == torch.float64
        torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-10)
        grads = torch.autograd.grad(loss, [*a, ours.W_a])
        ref_grads = torch.autograd.grad(expected, [*b, ref.basis.weight])
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


def test_random_mining_keeps_as_many_pseudo_pairs_as_basis_mining():
    by_basis = slade.StudentLoss(DIM, NUM_BASIS, t1="mu+", t2="mu-")
    by_chance = slade.StudentLoss(DIM, NUM_BASIS, t1="mu+", t2="mu-", mining="random")
    by_chance.load_state_dict(by_basis.state_dict())
    fl, labels, fu, pseudo = embeddings()
    a, b = by_basis(fl, labels, fu, pseudo)[1], by_chance(fl, labels, fu, pseudo)[1]
    assert (a["pairs/positive"], a["pairs/negative"]) == (b["pairs/positive"], b["pairs/negative"])
    assert 0 < b["pairs/positive"] < b["pairs/pseudo_positive"]


# ---- against StudentTrainer ------------------------------------------------------------------

MODEL = slade.ModelConfig("convnet", 1, DIM)
SGD = dict(lr=0.05, basis_lr=0.1, momentum=0.9, weight_decay=1e-4)


def images(n=16, seed=0):
    """Labeled and unlabeled images with class- and cluster-dependent patterns."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(NUM_BASIS).repeat(n // NUM_BASIS)[torch.randperm(n, generator=g)]
    pseudo = torch.arange(CLUSTERS).repeat(n // CLUSTERS + 1)[:n][torch.randperm(n, generator=g)]
    patterns = torch.randn(NUM_BASIS + CLUSTERS, 1, 28, 28, generator=g)
    noise = lambda: 0.5 * torch.randn(n, 1, 28, 28, generator=g)  # noqa: E731
    return patterns[labels] + noise(), labels, patterns[NUM_BASIS + pseudo] + noise(), pseudo


def user_step(model, loss_fn, optimizer, batch):
    """A user's training step: their model's forward and optimizer, slade's objective."""
    xl, labels, xu, pseudo = batch
    model.train()
    if loss_fn.warming_up:  # as the trainer: the backbone's BatchNorm in evaluation mode
        model.body.eval()
    f = model(torch.cat([xl, xu]))
    loss, metrics = loss_fn(f[: len(xl)], labels, f[len(xl):], pseudo)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss, metrics


@pytest.mark.parametrize("settings", [
    dict(variant="basis_mining"),
    dict(variant="basis_mining", basis_warmup=2, loss="multi_similarity", miner=True),
    dict(variant="basis", regularizer="global_ce", num_pseudo_classes=5),
    dict(variant="pseudo_only"),
], ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_torch_model_with_student_loss_equals_student_trainer(settings):
    """Each step from the trainer's weights and basis state (float32 rounding of earlier
    steps would otherwise flip ReLU or max-pool near-ties; see reference_slade.sync_from):
    the same loss, metrics, weights and basis after it."""
    optim = slade.OptimizerConfig(name="sgd", **SGD)
    trainer = slade.StudentTrainer(MODEL, optim, num_basis=NUM_BASIS, seed=1, **settings)
    model = reference_model(trainer)
    loss_fn = slade.StudentLoss(DIM, NUM_BASIS, objective=trainer.student_config)
    optimizer = torch.optim.SGD(param_groups(model, loss_fn, 0.05, 0.1), momentum=0.9, weight_decay=1e-4)
    for step in range(4):
        sync_from(trainer, model)
        state = {k: v for k, v in trainer.state_dict().items() if k.startswith("basis.")}
        loss_fn.load_state_dict({**state, "step_count": torch.tensor(step)})
        batch = images(seed=step)
        metrics = trainer.step(*batch)
        loss, ours = user_step(model, loss_fn, optimizer, batch)
        assert metrics["loss"] == pytest.approx(loss.item(), **APPROX)
        for name, value in ours.items():
            assert metrics[name] == pytest.approx(value, **APPROX), name
        names = model.slade_names()
        for key, value in trainer.state_dict().items():
            other = loss_fn.state_dict()[key] if key.startswith("basis.") else names[key]
            torch.testing.assert_close(value, other.detach(), **TOL, msg=key)


# ---- module behaviour ------------------------------------------------------------------------


def test_state_is_module_state_named_as_the_trainer_names_it():
    loss_fn = slade.StudentLoss(DIM, NUM_BASIS, regularizer="local_ce", num_pseudo_classes=6)
    trainer = slade.StudentTrainer(MODEL, num_basis=NUM_BASIS, regularizer="local_ce", num_pseudo_classes=6)
    trainer_basis = {k for k in trainer.state_dict() if k.startswith("basis.")}
    assert set(loss_fn.state_dict()) == trainer_basis | {"step_count"}
    assert [name for name, _ in loss_fn.named_parameters()] == ["basis.weight", "basis.pseudo_head"]
    assert loss_fn.W_a is loss_fn.basis.weight and isinstance(loss_fn, torch.nn.Module)
    assert slade.StudentLoss(DIM, None, variant="pseudo_only").state_dict().keys() == {"step_count"}
    fl, labels, fu, pseudo = embeddings()
    loss_fn(fl, labels, fu, pseudo)
    copy = slade.StudentLoss(DIM, NUM_BASIS, regularizer="local_ce", num_pseudo_classes=6)
    copy.load_state_dict(loss_fn.state_dict())
    assert copy.step_count.item() == 1 and copy.basis.updates_pos.item() == 1
    a, _ = loss_fn(fl, labels, fu, pseudo)
    b, _ = copy(fl, labels, fu, pseudo)
    assert a.item() == b.item()


def test_to_float64_and_eval_mode():
    loss_fn = slade.StudentLoss(DIM, NUM_BASIS).to(torch.float64)
    assert loss_fn.W_a.dtype == torch.float64 and loss_fn.basis.mu_pos.dtype == torch.float64
    assert loss_fn.step_count.dtype == torch.int64
    fl, labels, fu, pseudo = embeddings(dtype=torch.float64)
    loss, _ = loss_fn(fl, labels, fu, pseudo)
    assert loss.dtype == torch.float64
    state = {k: v.clone() for k, v in loss_fn.state_dict().items()}
    loss_fn.eval()
    _, metrics = loss_fn(fl, labels, fu, pseudo)
    for key, value in loss_fn.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert metrics["warmup"] == 0.0


def test_settings_come_from_the_dataclass_and_are_checked():
    config = slade.StudentObjectiveConfig(variant="basis", lambda2=0.5, momentum=0.9)
    loss_fn = slade.StudentLoss(DIM, NUM_BASIS, objective=config, lambda1=2.0)
    assert loss_fn.objective == slade.StudentObjectiveConfig(
        variant="basis", lambda1=2.0, lambda2=0.5, momentum=0.9, num_basis=NUM_BASIS
    )
    assert loss_fn.basis.momentum == 0.9
    loss_fn.objective.lambda1 = 7.0  # a copy
    assert loss_fn.objective.lambda1 == 2.0
    with pytest.raises(slade.ConfigError, match="lambda1"):
        slade.StudentLoss(DIM, NUM_BASIS, lambda1=-1.0)
    with pytest.raises(slade.ConfigError, match="varient"):
        slade.StudentLoss(DIM, NUM_BASIS, varient="basis")
    with pytest.raises(slade.ConfigError, match="num_basis must be set"):
        slade.StudentLoss(DIM, None)
    with pytest.raises(slade.SladeError, match="num_pseudo_classes"):
        slade.StudentLoss(DIM, NUM_BASIS, regularizer="global_ce")


def test_distributed_data_parallel_wraps_it(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(2)
        loss_fn = slade.StudentLoss(DIM, NUM_BASIS)
        plain = slade.StudentLoss(DIM, NUM_BASIS)
        plain.load_state_dict(loss_fn.state_dict())
        wrapped = torch.nn.parallel.DistributedDataParallel(loss_fn)
        fl, labels, fu, pseudo = embeddings()
        wrapped(fl, labels, fu, pseudo)[0].backward()
        plain(fl, labels, fu, pseudo)[0].backward()
        torch.testing.assert_close(loss_fn.W_a.grad, plain.W_a.grad, **TOL)
    finally:
        dist.destroy_process_group()


def test_the_gil_is_released_during_the_objective():
    loss_fn = slade.StudentLoss(DIM, NUM_BASIS, loss="multi_similarity", miner=True)
    fl, labels, fu, pseudo = embeddings(n=1500)
    assert_releases_the_gil(lambda: loss_fn(fl, labels, fu, pseudo))


# ---- bad input -------------------------------------------------------------------------------


def test_bad_inputs_are_clear_errors_naming_the_argument():
    loss_fn = slade.StudentLoss(DIM, NUM_BASIS, regularizer="global_ce", num_pseudo_classes=CLUSTERS)
    fl, labels, fu, pseudo = embeddings()
    cases = [
        ((fl[0], labels, fu, pseudo), slade.ShapeError, "emb_labeled must be a 2-D tensor"),
        ((fl, labels, fu.view(4, 4, DIM), pseudo), slade.ShapeError, "emb_unlabeled must be a 2-D tensor"),
        ((fl[:, :8], labels, fu[:, :8], pseudo), slade.ShapeError, "dim 8 but the feature basis has dim 16"),
        ((fl, labels, fu[:, :8], pseudo), slade.ShapeError, "emb_unlabeled has dim 8 but emb_labeled has dim 16"),
        ((fl, labels, fu / 0.0, pseudo), slade.NonFiniteError, "emb_unlabeled contains 256 NaN or Inf"),
        ((fl.masked_fill(torch.eye(16, DIM, dtype=torch.bool), float("nan")), labels, fu, pseudo),
         slade.NonFiniteError, "emb_labeled contains 16 NaN"),
        ((fl, labels, fu, pseudo[:10]), slade.ShapeError, "pseudo_labels has 10 entries but emb_unlabeled has 16"),
        ((fl, labels[:3], fu, pseudo), slade.ShapeError, "labels has 3 entries but emb_labeled has 16"),
        ((fl, labels + NUM_BASIS, fu, pseudo), slade.InvalidArgumentError, "labels contains 4"),
        ((fl, labels, fu, pseudo - 1), slade.InvalidArgumentError, "pseudo_labels contains -1"),
        ((fl, labels, fu, pseudo + 1), slade.InvalidArgumentError, r"pseudo_labels contains 5.*num_pseudo_classes"),
        ((fl, labels.float(), fu, pseudo), slade.DtypeError, "labels must be an integer tensor"),
        ((fl.long(), labels, fu, pseudo), slade.DtypeError, "emb_labeled must be a floating tensor"),
        ((fl.to("meta"), labels, fu.to("meta"), pseudo), slade.DeviceError, "emb_labeled is on .* but the basis W_a"),
        ((fl, labels, fu.to("meta"), pseudo), slade.DeviceError, "emb_unlabeled is on .* but emb_labeled"),
        ((fl, [0, 1], fu, pseudo), slade.DtypeError, "labels must be a torch.Tensor"),
    ]
    before = {k: v.clone() for k, v in loss_fn.state_dict().items()}
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            loss_fn(*args)
    for key, value in loss_fn.state_dict().items():
        assert torch.equal(value, before[key]), key
    oracle = slade.StudentLoss(DIM, NUM_BASIS, mining="oracle")
    with pytest.raises(slade.InvalidArgumentError, match="true_labels"):
        oracle(fl, labels, fu, pseudo)
    with pytest.raises(slade.ShapeError, match="true_labels has 3 entries"):
        oracle(fl, labels, fu, pseudo, true_labels=pseudo[:3])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu_and_rejects_mixed_devices():
    torch.manual_seed(3)
    cpu = slade.StudentLoss(DIM, NUM_BASIS, loss="multi_similarity", miner=True)
    cuda = slade.StudentLoss(DIM, NUM_BASIS, loss="multi_similarity", miner=True)
    cuda.load_state_dict(cpu.state_dict())
    cuda.to("cuda")
    for step in range(3):
        fl, labels, fu, pseudo = embeddings(seed=step)
        a, b = [leaf(fl), leaf(fu)], [leaf(fl.cuda()), leaf(fu.cuda())]
        loss, metrics = cpu(a[0], labels, a[1], pseudo)
        loss_cuda, metrics_cuda = cuda(b[0], labels, b[1], pseudo.cuda())  # labels on the CPU
        assert loss_cuda.is_cuda
        assert loss_cuda.item() == pytest.approx(loss.item(), **APPROX)
        assert metrics_cuda["pairs/positive"] == metrics["pairs/positive"]
        loss.backward()
        loss_cuda.backward()
        torch.testing.assert_close(b[0].grad.cpu(), a[0].grad, **TOL)
        torch.testing.assert_close(cuda.W_a.grad.cpu(), cpu.W_a.grad, **TOL)
    with pytest.raises(slade.DeviceError, match="emb_labeled is on"):
        cuda(fl, labels, fu, pseudo)
    with pytest.raises(slade.DeviceError, match="emb_unlabeled is on"):
        cuda(fl.cuda(), labels, fu, pseudo)
