"""slade.StudentTrainer against a plain PyTorch + pytorch-metric-learning SLADE student step
(tests/reference_slade.py: PML losses and miner, feature basis, L_SD, CE regularisers and
pair mining written in plain PyTorch), for every variant and regulariser and with the basis
warm-up; checkpoints, Ctrl-C during a step, shared tensors and bad input."""

from __future__ import annotations

import pytest
import torch

import slade
from checks import assert_same_state
from reference_slade import (
    ReferenceBasis,
    ReferenceStudent,
    param_groups,
    reference_model,
    sync_from,
)
from signals import needs_main_thread, sigint_during_a_step

TOL = dict(rtol=1e-5, atol=1e-5)
APPROX = dict(rel=1e-5, abs=1e-5)
MODEL = slade.ModelConfig("convnet", 1, 16)
NUM_BASIS = 4
# See tests/trainers/test_teacher.py: Adam's eps decides how much float32 rounding noise in gradients
# that are zero in exact arithmetic can move a weight.
ADAM_EPS = 1e-6


def make_batch(n=16, classes=NUM_BASIS, clusters=5, channels=1, side=28, seed=0, device="cpu"):
    """A labeled batch (labels in [0, classes)) and an unlabeled one (pseudo labels in
    [0, clusters)), with class- and cluster-dependent images."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat(n // classes)[torch.randperm(n, generator=g)]
    pseudo = torch.arange(clusters).repeat(n // clusters + 1)[:n][torch.randperm(n, generator=g)]
    patterns = torch.randn(classes + clusters, channels, side, side, generator=g)
    noise = lambda: 0.5 * torch.randn(n, channels, side, side, generator=g)  # noqa: E731
    labeled = patterns[labels] + noise()
    unlabeled = patterns[classes + pseudo] + noise()
    return tuple(t.to(device) for t in (labeled, labels, unlabeled, pseudo))


def student(seed=1, optim=None, device="cpu", model=MODEL, **kw):
    optim = optim or slade.OptimizerConfig(name="adam", lr=1e-3, basis_lr=1e-2, eps=ADAM_EPS)
    kw.setdefault("num_basis", NUM_BASIS)
    return slade.StudentTrainer(model, optim, device=device, seed=seed, **kw)


def reference_for(trainer, device="cpu", **kw):
    model = reference_model(trainer, device)
    state = trainer.state_dict()
    basis = None
    if "basis.weight" in state:
        basis = ReferenceBasis(
            state["basis.weight"],
            state.get("basis.pseudo_head"),
            momentum=kw.get("momentum", 0.99),
            sd_margin=kw.get("sd_margin", 0.5),
            sd_weight=kw.get("sd_weight", 1.0),
            regularizer=kw.get("regularizer", "sd"),
            sd_statistics=kw.get("sd_statistics", "batch"),
        )
    names = (
        "variant", "lambda1", "lambda2", "basis_warmup", "t1", "t2",
        "require_pseudo_agreement", "loss", "miner", "epsilon", "mining",
    )
    settings = {k: v for k, v in kw.items() if k in names}
    return ReferenceStudent(model, basis, **settings)


def assert_trainer_equals_reference(trainer, ref, tol=TOL):
    names = ref.model.slade_names()
    for key, value in trainer.state_dict().items():
        if key.startswith("basis."):
            leaf = key.split(".", 1)[1]
            if leaf in ("weight", "pseudo_head"):
                other = getattr(ref.basis, leaf)
            else:
                side = "pos" if leaf.endswith("pos") else "neg"
                running = ref.basis.running[side]
                if leaf.startswith("updates"):
                    continue
                other = running[0] if leaf.startswith("mu") else running[1]
        else:
            other = names[key]
        assert torch.allclose(value.double(), other.detach().double(), **tol), key


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
    dict(variant="basis_mining", t1="all", t2="mu+"),
    dict(variant="basis_mining", sd_statistics="blended", momentum=0.9),
    dict(variant="basis", sd_statistics="blended", sd_margin=0.8),
    dict(variant="basis_mining", num_basis=9, t1="mid", t2="all"),
    dict(variant="basis_mining", mining="oracle", t1="mu+", t2="mu-"),
    dict(variant="basis_mining", t1="mu-", t2="mu+"),
    dict(variant="basis_mining", t1="auto", t2=0.25, require_pseudo_agreement=False),
]


SGD = slade.OptimizerConfig(name="sgd", lr=0.05, basis_lr=0.1, momentum=0.9, weight_decay=1e-4)


def torch_sgd(ref):
    return torch.optim.SGD(param_groups(ref.model, ref.basis, 0.05, 0.1), momentum=0.9, weight_decay=1e-4)


@pytest.mark.parametrize("settings", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_student_steps_equal_plain_pytorch(settings):
    _compare_steps(student(optim=SGD, **settings), settings, torch_sgd, TOL)


@pytest.mark.parametrize("name", ["fashion-mnist-ssl", "omniglot-ssl"])
def test_preset_student_settings_equal_plain_pytorch(name):
    """The small presets' actual student settings (B, thresholds, statistics, weights)."""
    s = slade.config.preset(name).student
    keys = ("variant", "lambda1", "lambda2", "basis_warmup", "momentum", "sd_margin",
            "sd_weight", "t1", "t2", "require_pseudo_agreement", "sd_statistics", "mining",
            "regularizer")
    settings = {key: getattr(s, key) for key in keys}
    settings.update(num_basis=s.num_basis or NUM_BASIS, loss=s.loss, miner=s.miner)
    _compare_steps(student(optim=SGD, **settings), settings, torch_sgd, TOL)


THRESHOLDS = ["auto", "mu+", "mu-", "mid", "all", 0.3, -1]


@pytest.mark.parametrize("rule", THRESHOLDS)
def test_student_and_miner_take_the_same_thresholds(rule):
    """One rule type: what the student accepts, the standalone miner accepts and mines
    alike (the same pairs from the same basis and batch); bad values fail both, naming t1."""
    trainer = student(variant="basis_mining", t1=rule, t2=rule)
    batch = make_batch()
    trainer.step(*batch)
    assert trainer.student_config.t1 == rule
    basis = slade.diagnostics.basis_of(trainer)
    _, _, xu, pseudo = batch
    emb_u = trainer.embed(xu)
    a1, p, a2, n = slade.miners.basis_pairs(basis, emb_u, pseudo, t1=rule, t2=rule)
    stats = trainer.basis_statistics
    rules = trainer.threshold_rules()
    t1, t2 = (slade.diagnostics.threshold_value(rules[i], stats, i) for i in (0, 1))
    s = basis.similarity(emb_u)
    same = pseudo[:, None] == pseudo[None, :]
    off_diagonal = ~torch.eye(len(pseudo), dtype=torch.bool)
    pos = (s >= t1) & off_diagonal & same
    neg = (s <= t2) & off_diagonal & ~same
    assert (a1.tolist(), p.tolist()) == tuple(t.tolist() for t in torch.where(pos))
    assert (a2.tolist(), n.tolist()) == tuple(t.tolist() for t in torch.where(neg))


@pytest.mark.parametrize("bad", ["median", float("nan"), [0.5], None])
def test_bad_thresholds_fail_the_student_and_the_miner_alike(bad):
    basis = slade.FeatureBasis(NUM_BASIS, MODEL.dim)
    emb, pseudo = torch.randn(8, MODEL.dim), torch.arange(8) % 2
    basis.loss(None, None, emb, pseudo)
    with pytest.raises(slade.ConfigError, match="t1") as from_student:
        student(t1=bad)
    with pytest.raises((slade.ConfigError, TypeError), match="t1") as from_miner:
        slade.miners.basis_pairs(basis, emb, pseudo, t1=bad)
    assert isinstance(from_student.value, slade.InvalidArgumentError)
    if isinstance(bad, str):
        assert str(from_miner.value) == str(from_student.value)


def test_random_mining_keeps_as_many_pseudo_pairs_as_basis_mining():
    """The random bound draws, per side, the count basis mining keeps from the pseudo pairs;
    over steps it keeps other pairs than basis mining (its loss differs)."""
    settings = dict(variant="basis_mining", t1="mu+", t2="mu-")
    by_basis, by_chance = student(**settings), student(mining="random", **settings)
    differed = False
    for step in range(3):
        batch = make_batch(seed=step)
        a, b = by_basis.step(*batch), by_chance.step(*batch)
        assert (a["pairs/positive"], a["pairs/negative"]) == (b["pairs/positive"], b["pairs/negative"])
        assert b["pairs/positive"] < b["pairs/pseudo_positive"]
        differed |= a["loss/rank_unlabeled"] != b["loss/rank_unlabeled"]
        # keep both trainers on the same weights so that basis mining's count is comparable
        by_chance.load_state_dict(by_basis.state_dict())
    assert differed


def test_oracle_mining_needs_the_true_labels():
    trainer = student(variant="basis_mining", mining="oracle")
    with pytest.raises(slade.SladeError, match="true_labels"):
        trainer.step(*make_batch())
    with pytest.raises(slade.SladeError, match="true_labels"):
        trainer.step(*make_batch(), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(slade.ConfigError, match="basis_mining"):
        student(variant="basis", mining="random")
    with pytest.raises(slade.ConfigError, match="sd_statistics"):
        student(variant="basis", sd_statistics="running")


def test_student_adam_steps_equal_plain_pytorch():
    """Adam normalises each gradient entry, so float32 rounding noise in entries that are
    ~0 moves a weight by up to lr; 5% of one update is the tolerance here."""
    settings = dict(variant="basis_mining", regularizer="local_ce", num_pseudo_classes=6, basis_warmup=1)
    trainer = student(**settings)  # Adam, lr 1e-3, basis_lr 1e-2

    def adam(ref):
        return torch.optim.Adam(param_groups(ref.model, ref.basis, 1e-3, 1e-2), eps=ADAM_EPS)

    _compare_steps(trainer, settings, adam, dict(rtol=1e-5, atol=5e-5))


def _compare_steps(trainer, settings, make_optimizer, tol, steps=4):
    """`steps` steps of trainer and reference, each from identical weights and running
    statistics (see `sync_from`); optimizer state carries over on each side."""
    ref = reference_for(trainer, **settings)
    opt = make_optimizer(ref)
    for step in range(steps):
        sync_from(trainer, ref.model, ref.basis)
        batch = make_batch(seed=step)
        truth = torch.arange(len(batch[3])) % 3  # hidden labels for oracle mining
        metrics = trainer.step(*batch, truth)
        opt.zero_grad()
        loss, parts = ref.loss(*batch, step=step, true_labels=truth)
        loss.backward()
        ref.after_backward(step)
        opt.step()
        assert metrics["loss"] == pytest.approx(loss.item(), **APPROX)
        for name, value in parts.items():
            if value is None:
                assert name not in metrics, name
                continue
            value = value.item() if torch.is_tensor(value) else value
            assert metrics[name] == pytest.approx(value, **APPROX), name
        assert metrics["warmup"] == float(step < settings.get("basis_warmup", 0))
        assert_trainer_equals_reference(trainer, ref, tol)


def test_resnet18_student_step_equals_plain_pytorch():
    # One intra-op thread on both sides: with several, a loaded machine can split a
    # reduction differently, and a 1-ulp change flips a borderline mined pair of the
    # 8-image batch (seen as a 4e-4 weight difference).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _resnet18_student_steps()
    finally:
        torch.set_num_threads(threads)


def _resnet18_student_steps():
    settings = dict(variant="basis_mining", loss="multi_similarity", miner=True)
    trainer = student(
        model=slade.ModelConfig("resnet18", 3, 32),
        optim=slade.OptimizerConfig(name="sgd", lr=0.05, momentum=0.9, basis_lr=0.1),
        **settings,
    )
    ref = reference_for(trainer, **settings)
    opt = torch.optim.SGD(param_groups(ref.model, ref.basis, 0.05, 0.1), momentum=0.9)
    for step in range(2):
        batch = make_batch(n=8, channels=3, side=24, seed=step)
        metrics = trainer.step(*batch)
        opt.zero_grad()
        loss, _ = ref.loss(*batch, step=step)
        loss.backward()
        opt.step()
        assert metrics["loss"] == pytest.approx(loss.item(), **APPROX)
        assert_trainer_equals_reference(trainer, ref)
        # Each step from identical weights: a 1-ulp difference can move a max-pool near-tie
        # or a ReLU input near 0 to the other side, where the gradient jumps.
        sync_from(trainer, ref.model, ref.basis)


def test_metrics_name_every_part():
    trainer = student(regularizer="local_ce", num_pseudo_classes=5)
    metrics = trainer.step(*make_batch())
    for name in (
        "loss", "loss/rank_labeled", "loss/rank_unlabeled", "loss/basis", "loss/ce",
        "loss/local_ce", "pairs/positive", "pairs/negative", "pairs/labeled_positive",
        "pairs/labeled_negative", "threshold/t1", "threshold/t2", "basis/mu_pos",
        "basis/mu_neg", "lr/backbone", "lr/head", "lr/basis", "step",
    ):
        assert name in metrics, name
    assert metrics["lr/basis"] == 1e-2 and metrics["lr/head"] == 1e-3
    assert metrics["loss/basis"] == pytest.approx(metrics["loss/ce"] + metrics["loss/local_ce"], rel=1e-6)
    assert trainer.threshold_rules() == ("mu+", "mu-")
    assert metrics["threshold/t1"] == trainer.basis_statistics["mu_pos"]
    fixed = student(t1=0.25, t2="mid")
    metrics = fixed.step(*make_batch())
    assert metrics["threshold/t1"] == 0.25
    stats = fixed.basis_statistics
    assert metrics["threshold/t2"] == pytest.approx((stats["mu_pos"] + stats["mu_neg"]) / 2)
    assert fixed.threshold_rules() == (0.25, "mid")
    every = student(t1="all", t2="all")
    metrics = every.step(*make_batch())
    pseudo = make_batch()[3]
    same = int((pseudo[:, None] == pseudo[None, :]).sum()) - len(pseudo)
    assert (metrics["threshold/t1"], metrics["threshold/t2"]) == (-2.0, 2.0)
    assert metrics["pairs/positive"] == same
    assert metrics["pairs/negative"] == len(pseudo) * (len(pseudo) - 1) - same
    naive = student(variant="pseudo_only")
    metrics = naive.step(*make_batch())
    assert naive.basis is None and "lr/basis" not in metrics and "loss/basis" not in metrics
    assert not any(name.startswith("basis.") for name, _ in naive.named_parameters())


def test_parameters_and_buffers_are_the_core_tensors():
    trainer = student()
    params, buffers = dict(trainer.named_parameters()), dict(trainer.named_buffers())
    assert params["basis.weight"].shape == (NUM_BASIS, MODEL.dim)
    assert trainer.basis.data_ptr() == params["basis.weight"].data_ptr()
    mu = buffers["basis.mu_pos"]
    assert mu.item() == 0.0 and buffers["basis.updates_pos"].item() == 0
    trainer.step(*make_batch())
    assert mu.item() != 0.0 and buffers["basis.updates_pos"].item() == 1  # same tensor, updated
    assert "basis.mu_pos" in trainer.state_dict()
    # An in-place change from Python is what the next step uses.
    ref = reference_for(trainer, variant="basis_mining")
    ref.basis.running = {
        "pos": (buffers["basis.mu_pos"].clone(), buffers["basis.var_pos"].clone()),
        "neg": (buffers["basis.mu_neg"].clone(), buffers["basis.var_neg"].clone()),
    }
    with torch.no_grad():
        trainer.basis.mul_(2.0)
        ref.basis.weight.mul_(2.0)
    metrics = trainer.step(*make_batch(seed=1))
    _, parts = ref.loss(*make_batch(seed=1), step=1)
    assert metrics["loss/ce"] == pytest.approx(parts["loss/ce"].item(), **APPROX)


def test_short_run_decreases_the_loss():
    trainer = student(optim=slade.OptimizerConfig(name="adam", lr=3e-3, basis_lr=3e-2))
    losses = [trainer.step(*make_batch(seed=step % 4))["loss"] for step in range(16)]
    assert sum(losses[-4:]) < 0.8 * sum(losses[:4]), losses
    assert trainer.step_count == 16


def test_bf16_student_learns_near_the_float32_student():
    """precision="bf16" (the network's layers in bfloat16, as torch's CPU autocast; see
    test_teacher.py for the step against it): the same first loss to bfloat16's rounding,
    not to the bit, float32 weights and basis statistics, and a short run learns."""
    optim = slade.OptimizerConfig(name="adam", lr=3e-3, basis_lr=3e-2)
    half, full = student(optim=optim, precision="bf16"), student(optim=optim)
    first = half.step(*make_batch(seed=0))
    reference = full.step(*make_batch(seed=0))
    assert first["loss"] == pytest.approx(reference["loss"], rel=2e-2)
    assert first["loss"] != pytest.approx(reference["loss"], rel=1e-6)
    assert all(v.dtype in (torch.float32, torch.int64) for v in half.state_dict().values())
    losses = [first["loss"]] + [half.step(*make_batch(seed=s % 4))["loss"] for s in range(1, 16)]
    assert sum(losses[-4:]) < 0.8 * sum(losses[:4]), losses


def _trainer(**kw):
    optim = slade.OptimizerConfig(
        name="adam", lr=1e-3, basis_lr=1e-2, schedule="cosine", warmup_steps=2, total_steps=10
    )
    return student(optim=optim, seed=kw.pop("seed", 5), basis_warmup=1, **kw)


def test_save_load_then_step_equals_an_uninterrupted_run(tmp_path):
    path = tmp_path / "student.safetensors"
    reference = _trainer(regularizer="global_ce", num_pseudo_classes=5)
    for step in range(3):
        reference.step(*make_batch(seed=step))
    reference.save(path)
    expected = [reference.step(*make_batch(seed=step)) for step in (3, 4)]

    other = _trainer(regularizer="global_ce", num_pseudo_classes=5, t1=0.5)
    with pytest.raises(slade.ConfigError, match="t1"):
        other.load(path)
    resumed = _trainer(regularizer="global_ce", num_pseudo_classes=5, seed=5)
    resumed.load(path)
    assert resumed.step_count == 3
    assert resumed.basis_statistics == pytest.approx(_stats_before(path))
    got = [resumed.step(*make_batch(seed=step)) for step in (3, 4)]
    assert got == expected
    assert_same_state(reference, resumed)

    rebuilt = slade.StudentTrainer.from_checkpoint(path)
    assert rebuilt.student_config == reference.student_config
    assert rebuilt.step(*make_batch(seed=3)) == expected[0]
    with pytest.raises(slade.ConfigError, match="student checkpoint, not a teacher"):
        slade.TeacherTrainer.from_checkpoint(path)


def _stats_before(path):
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    names = ("mu_pos", "var_pos", "mu_neg", "var_neg", "updates_pos", "updates_neg")
    return {n: tensors[f"params.basis.{n}"].item() for n in names}


@needs_main_thread
def test_ctrl_c_during_a_step_raises_after_it_and_the_trainer_has_taken_it():
    """README: Ctrl-C during step() lets the step finish in Rust, then step() raises
    KeyboardInterrupt; the trainer equals one that took the same steps uninterrupted."""
    trainer = _trainer()
    returned = sigint_during_a_step(lambda: trainer.step(*make_batch(n=64, seed=trainer.step_count)))
    assert trainer.step_count == returned + 1
    fresh = _trainer()
    for step in range(trainer.step_count):
        fresh.step(*make_batch(n=64, seed=step))
    assert_same_state(trainer, fresh)
    assert trainer.step(*make_batch(seed=9)) == fresh.step(*make_batch(seed=9))


def test_student_starts_from_the_teacher():
    teacher = slade.TeacherTrainer(MODEL, seed=3)
    fresh = student(seed=3)
    for name, value in teacher.model_state_dict().items():
        assert torch.equal(value, fresh.model_state_dict()[name]), name
    teacher.step(*make_batch()[:2])
    other = student(seed=8)
    report = other.load_model(teacher)
    assert report["missing"] == [] and report["unexpected"] == []
    for name, value in teacher.model_state_dict().items():
        assert torch.equal(value, other.model_state_dict()[name]), name
    with pytest.raises(slade.ShapeError, match="embedding.weight"):
        student(model=slade.ModelConfig("convnet", 1, 8)).load_model(teacher)


def test_failed_step_restores_the_basis_statistics():
    trainer = student(optim=slade.OptimizerConfig(name="sgd", lr=1e30, momentum=0.0))
    trainer.step(*make_batch(seed=0))  # a huge update: the next loss is not finite
    before = {k: v.clone() for k, v in trainer.state_dict().items()}
    with pytest.raises(slade.NonFiniteError, match="not updated"):
        trainer.step(*make_batch(seed=1))
    assert trainer.step_count == 1
    for k, v in trainer.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_a_skipped_step_keeps_weights_and_basis_statistics_and_counts():
    optim = slade.OptimizerConfig(name="sgd", lr=1e30, momentum=0.0, nonfinite="skip")
    trainer = student(optim=optim)
    assert trainer.step(*make_batch(seed=0))["skipped"] == 0.0  # a huge update
    before = {k: v.clone() for k, v in trainer.state_dict().items()}
    metrics = trainer.step(*make_batch(seed=1))  # its embeddings are not finite
    assert metrics["skipped"] == 1.0 and trainer.step_count == 2
    for k, v in trainer.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_bad_inputs_raise_clear_errors_and_change_nothing():
    trainer = student(regularizer="local_ce", num_pseudo_classes=5)
    xl, y, xu, p = make_batch()
    before = {k: v.clone() for k, v in trainer.state_dict().items()}
    cases = [
        ((xl[0], y, xu, p), slade.ShapeError, "labeled_images must be a 4-D"),
        ((xl, y, torch.randn(16, 3, 28, 28), p), slade.ShapeError, "unlabeled_images has 3 channel"),
        ((xl, y[:5], xu, p), slade.ShapeError, "labels has 5 entries"),
        ((xl, y, xu, p[:3]), slade.ShapeError, "pseudo_labels has 3 entries"),
        ((xl, y.float(), xu, p), slade.DtypeError, "labels"),
        ((xl, y + NUM_BASIS, xu, p), slade.InvalidArgumentError, "num_basis"),
        ((xl, y, xu, p + 5), slade.InvalidArgumentError, "num_pseudo_classes"),
        ((xl, y, xu, p - 1), slade.InvalidArgumentError, "pseudo_labels contains -1"),
        ((xl, y, xu[:, :, :20, :20], p), slade.ShapeError, "one size"),
        ((xl, y, xu * float("inf"), p), slade.NonFiniteError, "unlabeled_images"),
    ]
    for args, error, match in cases:
        with pytest.raises(error, match=match):
            trainer.step(*args)
    assert trainer.step_count == 0
    for k, v in trainer.state_dict().items():
        assert torch.equal(v, before[k]), k
    bad_settings = [
        (dict(variant="full"), "pseudo_only"),
        (dict(regularizer="kl"), "global_ce"),
        (dict(regularizer="global_ce"), "num_pseudo_classes"),
        (dict(loss="npair"), "multi_similarity"),
        (dict(t1="median"), "t1"),
        (dict(t2=[0.5]), "t2"),
        (dict(num_basis=0), "num_basis"),
        (dict(num_basis=2.5), "num_basis"),
        (dict(variant="pseudo_only", basis_warmup=2), "basis_warmup"),
        (dict(lambda1=-1.0), "lambda1"),
        (dict(momentum=1.0), "momentum"),
        (dict(optim=slade.OptimizerConfig(name="rmsprop")), "optimizer"),
    ]
    for settings, match in bad_settings:
        with pytest.raises(slade.ConfigError, match=match):
            student(**settings)
    with pytest.raises(TypeError, match="num_basis"):
        slade.StudentTrainer(MODEL)


@pytest.mark.cuda
def test_student_step_on_cuda_equals_plain_pytorch_and_rejects_mixed_devices():
    torch.backends.cudnn.deterministic = True
    settings = dict(variant="basis_mining", loss="multi_similarity", miner=True)
    trainer = student(
        model=slade.ModelConfig("resnet18", 3, 32),
        optim=slade.OptimizerConfig(name="sgd", lr=0.05, momentum=0.9, basis_lr=0.1),
        device="cuda",
        **settings,
    )
    ref = reference_for(trainer, device="cuda", **settings)
    opt = torch.optim.SGD(param_groups(ref.model, ref.basis, 0.05, 0.1), momentum=0.9)
    for step in range(2):
        batch = make_batch(n=16, channels=3, side=64, seed=step, device="cuda")
        metrics = trainer.step(*batch)
        opt.zero_grad()
        loss, _ = ref.loss(*batch, step=step)
        loss.backward()
        opt.step()
        assert metrics["loss"] == pytest.approx(loss.item(), rel=1e-4, abs=1e-4)
        assert_trainer_equals_reference(trainer, ref, tol=dict(rtol=1e-4, atol=1e-4))
    xl, y, xu, p = make_batch(n=16, channels=3, side=64, device="cuda")
    with pytest.raises(slade.DeviceError, match="unlabeled_images"):
        trainer.step(xl, y, xu.cpu(), p)
    metrics = trainer.step(xl, y.cpu(), xu, p.cpu())  # labels may live on the CPU
    assert metrics["step"] == 3


@pytest.mark.cuda
def test_fp16_student_on_cuda_learns():
    trainer = student(
        model=slade.ModelConfig("resnet18", 3, 32),
        optim=slade.OptimizerConfig(name="adam", lr=1e-3, basis_lr=1e-2),
        device="cuda",
        precision="fp16",
    )
    batch = make_batch(n=32, channels=3, side=64, device="cuda")
    metrics = [trainer.step(*batch) for _ in range(15)]
    values = [m["loss"] for m in metrics if m["skipped"] == 0.0]
    assert len(values) >= 10 and values[-1] < values[0]
    assert trainer.basis.dtype == torch.float32


@pytest.mark.cuda
@pytest.mark.parametrize(
    "settings",
    [
        dict(variant="basis_mining", sd_statistics="blended", momentum=0.9),
        dict(variant="basis_mining", mining="oracle", t1="mu+", t2="mu-"),
        dict(variant="basis_mining", mining="random", t1="mu+", t2="mu-"),
        dict(variant="basis_mining", num_basis=9, t1="mu+", t2="all"),
    ],
    ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()),
)
def test_new_student_switches_on_cuda_equal_the_cpu(settings):
    """The CPU trainer is checked against plain PyTorch above; the CUDA one against it,
    from the same weights (random mining draws on each device's generator: counts only)."""
    on_cpu, on_gpu = student(**settings), student(device="cuda", **settings)
    on_gpu.load_state_dict(on_cpu.state_dict())
    for step in range(3):
        batch = make_batch(seed=step)
        truth = torch.arange(len(batch[3])) % 3
        a = on_cpu.step(*batch, truth)
        b = on_gpu.step(*(t.cuda() for t in batch), truth.cuda())
        keys = ("pairs/positive", "pairs/negative", "pairs/pseudo_positive")
        if settings.get("mining") != "random":
            keys += ("loss", "loss/sd", "loss/rank_unlabeled", "basis/mu_pos")
        for key in keys:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-4), key
        if settings.get("mining") == "random":
            on_gpu.load_state_dict(on_cpu.state_dict())
