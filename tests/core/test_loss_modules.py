"""The drop-in modules slade.losses.ContrastiveLoss / MultiSimilarityLoss / TripletMarginLoss
and slade.miners.MultiSimilarityMiner against pytorch-metric-learning 2.9.0's classes (the
same training loop with either gives the same losses and weights), their module behaviour
and the PML arguments they refuse; slade.TeacherLoss against PML's losses and miner, and
slade.SwavLoss against the SwAV reference of tests/reference_nets.py."""

from __future__ import annotations

import copy

import pytest
import torch
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning import reducers as pml_reducers
from pytorch_metric_learning import regularizers as pml_regularizers

import slade
from reference_nets import swav_loss
from reference_slade import ReferenceRanking

TOL = dict(rtol=1e-5, atol=1e-5)

# (PML class name, constructor arguments other than the defaults).
LOSSES = {
    "ContrastiveLoss": {"pos_margin": 0.1, "neg_margin": 0.8},
    "MultiSimilarityLoss": {"alpha": 2.5, "beta": 40.0, "base": 0.4},
    "TripletMarginLoss": {"margin": 0.1},
}


def pair(name, **kwargs):
    """(slade's module, PML's module) of one class name and arguments."""
    return getattr(slade.losses, name)(**kwargs), getattr(pml_losses, name)(**kwargs)


def data(n=96, classes=8, inputs=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat(n // classes)
    x = torch.randn(n, inputs, generator=g) + 0.7 * torch.randn(classes, inputs, generator=g)[labels]
    return x, labels


def m_per_class_batches(labels, steps, classes_per_batch=4, m=4, seed=1):
    """Index batches of ``m`` samples from each of ``classes_per_batch`` random classes."""
    g = torch.Generator().manual_seed(seed)
    by_class = [torch.where(labels == c)[0] for c in range(int(labels.max()) + 1)]
    for _ in range(steps):
        chosen = torch.randperm(len(by_class), generator=g)[:classes_per_batch]
        yield torch.cat([by_class[c][torch.randperm(len(by_class[c]), generator=g)[:m]] for c in chosen])


def net(inputs=20, dim=8, seed=2):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(inputs, 32), torch.nn.ReLU(), torch.nn.Linear(32, dim))


def train(model, loss_fn, miner, optimizer_name, steps=20):
    """A user's PML training loop; returns the loss of every step."""
    x, labels = data()
    params = model.parameters()
    if optimizer_name == "sgd":
        optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    else:
        optimizer = torch.optim.Adam(params, lr=1e-2)
    history = []
    for batch in m_per_class_batches(labels, steps):
        embeddings, y = model(x[batch]), labels[batch]
        indices_tuple = miner(embeddings, y) if miner is not None else None
        loss = loss_fn(embeddings, y, indices_tuple)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    return history


@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
@pytest.mark.parametrize("mined", [False, True], ids=["all_pairs", "miner"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_training_loop_with_slade_modules_equals_pml(name, mined, optimizer_name):
    ours, theirs = pair(name, **LOSSES[name])
    miners = (slade.miners.MultiSimilarityMiner(epsilon=0.2), pml_miners.MultiSimilarityMiner(epsilon=0.2))
    model = net()
    reference = copy.deepcopy(model)
    got = train(model, ours, miners[0] if mined else None, optimizer_name)
    expected = train(reference, theirs, miners[1] if mined else None, optimizer_name)
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert len(set(expected)) > 1  # the loop does train
    for (key, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, **TOL, msg=key)


@pytest.mark.parametrize("name", list(LOSSES))
def test_defaults_equal_pml_defaults(name):
    ours, theirs = pair(name)
    x, labels = data(n=40, classes=5, seed=3)
    torch.testing.assert_close(ours(x, labels), theirs(x, labels), **TOL)
    miner = slade.miners.MultiSimilarityMiner()
    assert miner.epsilon == pml_miners.MultiSimilarityMiner().epsilon
    mined = miner(x, labels)
    torch.testing.assert_close(ours(x, labels, mined), theirs(x, labels, mined), **TOL)


@pytest.mark.parametrize("name", list(LOSSES))
def test_modules_behave_as_pml_modules(name):
    ours, theirs = pair(name)
    miner = slade.miners.MultiSimilarityMiner()
    for module, pml in ((ours, theirs), (miner, pml_miners.MultiSimilarityMiner())):
        assert isinstance(module, torch.nn.Module)
        assert module.state_dict().keys() == pml.state_dict().keys()
        module.load_state_dict(pml.state_dict())
        assert module.to(torch.float64) is module and module.to("cpu") is module
    x, labels = data(n=24, classes=3, seed=4)
    x64 = x.double().requires_grad_(True)
    loss = ours(x64, labels, indices_tuple=miner(x64, labels))
    loss.backward()
    assert loss.dtype == torch.float64 and x64.grad is not None
    assert type(miner(x, labels)) is tuple and len(miner(x, labels)) == 4
    assert repr(ours).startswith(f"{name}(")


# Arguments PML takes, with values slade does not implement (PML accepts every one).
UNSUPPORTED = [
    ("ContrastiveLoss", {"distance": pml_distances.CosineSimilarity()}, "distance"),
    ("ContrastiveLoss", {"distance": pml_distances.LpDistance(power=2)}, "distance"),
    ("ContrastiveLoss", {"reducer": pml_reducers.MeanReducer()}, "reducer"),
    ("ContrastiveLoss", {"embedding_regularizer": pml_regularizers.LpRegularizer()}, "embedding_regularizer"),
    ("ContrastiveLoss", {"collect_stats": True}, "collect_stats"),
    ("MultiSimilarityLoss", {"distance": pml_distances.LpDistance()}, "distance"),
    ("MultiSimilarityLoss", {"reducer": pml_reducers.AvgNonZeroReducer()}, "reducer"),
    ("TripletMarginLoss", {"swap": True}, "swap"),
    ("TripletMarginLoss", {"smooth_loss": True}, "smooth_loss"),
    ("TripletMarginLoss", {"triplets_per_anchor": 5}, "triplets_per_anchor"),
    ("TripletMarginLoss", {"distance": pml_distances.DotProductSimilarity()}, "distance"),
]


@pytest.mark.parametrize("name,kwargs,argument", UNSUPPORTED, ids=[f"{n}-{a}" for n, _, a in UNSUPPORTED])
def test_unsupported_pml_arguments_are_refused_by_name(name, kwargs, argument):
    getattr(pml_losses, name)(**kwargs)
    with pytest.raises(slade.NotSupportedError, match=f"{name}: {argument}=") as raised:
        getattr(slade.losses, name)(**kwargs)
    assert isinstance(raised.value, NotImplementedError)


def test_pml_default_objects_and_unused_arguments_are_accepted():
    x, labels = data(n=24, classes=3, seed=5)
    accepted = [
        ("ContrastiveLoss", {"distance": pml_distances.LpDistance(), "reducer": pml_reducers.AvgNonZeroReducer()}),
        ("MultiSimilarityLoss", {"distance": pml_distances.CosineSimilarity(), "reducer": pml_reducers.MeanReducer()}),
        ("TripletMarginLoss", {"embedding_reg_weight": 0.5, "collect_stats": False, "swap": False}),
    ]
    for name, kwargs in accepted:
        ours, theirs = pair(name, **kwargs)
        torch.testing.assert_close(ours(x, labels), theirs(x, labels), **TOL)
    miner = slade.miners.MultiSimilarityMiner(distance=pml_distances.CosineSimilarity())
    assert len(miner(x, labels)[0]) > 0


def test_miner_refuses_what_it_does_not_implement():
    pml_miners.MultiSimilarityMiner(distance=pml_distances.LpDistance())
    with pytest.raises(slade.NotSupportedError, match="MultiSimilarityMiner: distance="):
        slade.miners.MultiSimilarityMiner(distance=pml_distances.LpDistance())
    with pytest.raises(TypeError, match="reducer"):
        slade.miners.MultiSimilarityMiner(reducer=pml_reducers.MeanReducer())
    with pytest.raises(TypeError, match="margin"):
        slade.losses.ContrastiveLoss(margin=0.5)
    x, labels = data(n=12, classes=3)
    with pytest.raises(slade.NotSupportedError, match="MultiSimilarityMiner: ref_emb"):
        slade.miners.MultiSimilarityMiner()(x, labels, ref_emb=x)


@pytest.mark.parametrize("name", list(LOSSES))
def test_ref_emb_is_refused_by_name(name):
    x, labels = data(n=12, classes=3)
    loss = getattr(slade.losses, name)()
    with pytest.raises(slade.NotSupportedError, match=f"{name}: ref_emb is not supported"):
        loss(x, labels, ref_emb=x, ref_labels=labels)
    with pytest.raises(slade.NotSupportedError, match="ref_labels"):
        loss(x, labels, ref_labels=labels)


# ---- TeacherLoss ---------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [
    dict(loss="contrastive"),
    dict(loss="contrastive", miner=True, epsilon=0.2, pos_margin=0.1, neg_margin=0.9),
    dict(loss="multi_similarity"),
    dict(loss="multi_similarity", miner=True, alpha=3.0, beta=30.0, base=0.4),
], ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_teacher_loss_equals_pml(settings):
    x, labels = data(n=32, classes=4, seed=6)
    ours = slade.TeacherLoss(**settings)
    reference = ReferenceRanking(**settings)
    e, e_ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    loss, metrics = ours(e, labels)
    expected = reference(e_ref, labels)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(loss, expected, **TOL)
    torch.testing.assert_close(e.grad, e_ref.grad, **TOL)
    assert metrics["loss/rank"] == pytest.approx(expected.item(), rel=1e-5)
    if reference.miner is not None:
        a1, _, a2, _ = reference.miner(x, labels)
        assert (metrics["pairs/positive"], metrics["pairs/negative"]) == (len(a1), len(a2))
    assert ours.ranking == slade.RankingConfig(**settings)
    assert isinstance(ours, torch.nn.Module) and ours.state_dict() == {}


def test_teacher_loss_bad_input():
    with pytest.raises(slade.ConfigError, match="loss"):
        slade.TeacherLoss(loss="triplet")
    with pytest.raises(slade.ConfigError, match="neg_margn"):
        slade.TeacherLoss(neg_margn=1.0)
    loss = slade.TeacherLoss()
    x, labels = data(n=8, classes=2)
    with pytest.raises(slade.ShapeError, match="embeddings must be a 2-D"):
        loss(x[0], labels)
    with pytest.raises(slade.ShapeError, match="labels has 7 entries"):
        loss(x, labels[:7])
    with pytest.raises(slade.NonFiniteError, match="embeddings contains 1 NaN"):
        loss(torch.where(torch.arange(160).view(8, 20) == 3, float("nan"), x), labels)


# ---- SwavLoss ------------------------------------------------------------------------------


def crops(n=12, dim=16, views=4, seed=7):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, dim, generator=g)
    return [torch.nn.functional.normalize(base + 0.5 * torch.randn(n, dim, generator=g), dim=1) for _ in range(views)]


@pytest.mark.parametrize("views,temperature", [(2, 0.1), (4, 0.1), (5, 0.25)])
def test_swav_loss_equals_the_swav_reference(views, temperature):
    torch.manual_seed(8)
    ours = slade.SwavLoss(16, num_prototypes=10, temperature=temperature)
    prototypes = ours.prototypes.detach().clone().requires_grad_(True)
    z = [c.requires_grad_(True) for c in crops(views=views)]
    z_ref = [c.detach().clone().requires_grad_(True) for c in z]
    loss = ours(z)
    expected = swav_loss(torch.nn.Identity(), prototypes, z_ref, temperature=temperature)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(loss, expected, **TOL)
    torch.testing.assert_close(ours.prototypes.detach(), prototypes.detach(), **TOL)  # normalised in place
    torch.testing.assert_close(ours.prototypes.grad, prototypes.grad, **TOL)
    for a, b in zip(z, z_ref):
        torch.testing.assert_close(a.grad, b.grad, **TOL)


def test_swav_loss_freezes_its_prototypes_then_trains_them():
    torch.manual_seed(9)
    ours = slade.SwavLoss(16, num_prototypes=6, freeze_prototypes_steps=2)
    optimizer = torch.optim.SGD(ours.parameters(), lr=0.5)
    for step in range(3):
        z = [c.requires_grad_(True) for c in crops(seed=step)]
        normalised = torch.nn.functional.normalize(ours.prototypes.detach(), dim=1)
        optimizer.zero_grad()
        ours(z).backward()
        optimizer.step()
        assert (ours.prototypes.grad is None) == (step < 2)
        assert all(c.grad is not None for c in z)
        unchanged = torch.allclose(ours.prototypes.detach(), normalised, rtol=0, atol=1e-6)
        assert unchanged == (step < 2)
    assert ours.step_count.item() == 3
    assert set(ours.state_dict()) == {"prototypes", "step_count"}
    ours.eval()
    ours(crops())
    assert ours.step_count.item() == 3


def test_swav_loss_bad_input():
    ours = slade.SwavLoss(16, num_prototypes=6)
    z = crops()
    with pytest.raises(slade.InvalidArgumentError, match="at least the two global crops"):
        ours(z[:1])
    with pytest.raises(slade.DtypeError, match="list of tensors"):
        ours(z[0])
    with pytest.raises(slade.ShapeError, match=r"embeddings\[1\] has dim 8 but prototypes has dim 16"):
        ours([z[0], z[1][:, :8]])
    with pytest.raises(slade.ShapeError, match=r"embeddings\[0\] has 12 rows but embeddings\[2\] has 5"):
        ours([z[0], z[1], z[2][:5]])
    with pytest.raises(slade.NonFiniteError, match=r"embeddings\[1\] contains"):
        ours([z[0], z[1] / 0.0])
    with pytest.raises(slade.DeviceError, match=r"embeddings\[0\] is on"):
        ours([z[0].to("meta"), z[1].to("meta")])
    with pytest.raises(slade.ConfigError, match="temperature"):
        slade.SwavLoss(16, temperature=0.0)
