"""Ranking losses against pytorch-metric-learning 2.9.0: values and gradients w.r.t. the
embeddings on the same tensors, with and without miner pairs, edge batches, gradcheck and
bad input."""

from __future__ import annotations

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

import slade
from slade.errors import (
    DtypeError,
    InvalidArgumentError,
    NonFiniteError,
    ShapeError,
    SladeError,
)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}

# (batch size, number of classes): from the smallest batch to 512, 2 to 64 classes.
SIZES = [(2, 1), (2, 2), (3, 2), (9, 3), (24, 2), (40, 5), (64, 8), (128, 16), (200, 64),
         (256, 4), (512, 64), (512, 2)]


def batch(n, classes, dtype=torch.float32, dim=16, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed * 1000 + n * 7 + classes)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    labels = torch.randint(0, classes, (n,), generator=g)
    # Pull each class together a little so every kind of pair (easy, hard) occurs.
    centres = torch.randn(classes, dim, generator=g, dtype=torch.float64)
    x = (x + 1.5 * centres[labels]).to(dtype)
    return x.to(device), labels.to(device)


def value_and_grad(loss_fn, x):
    x = x.detach().clone().requires_grad_(True)
    loss = loss_fn(x)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


def assert_parity(ours, reference, x):
    tol = TOL[x.dtype]
    loss, grad = value_and_grad(ours, x)
    ref_loss, ref_grad = value_and_grad(reference, x)
    assert loss.dtype == ref_loss.dtype and loss.shape == ref_loss.shape == ()
    torch.testing.assert_close(loss, ref_loss, rtol=tol, atol=tol)
    torch.testing.assert_close(grad, ref_grad, rtol=tol, atol=tol)
    assert torch.isfinite(grad).all()
    return loss, grad


LOSSES = {
    "contrastive": (
        lambda x, y, **kw: slade.losses.contrastive(x, y, **kw),
        lambda: pml_losses.ContrastiveLoss(),
    ),
    "multi_similarity": (
        lambda x, y, **kw: slade.losses.multi_similarity(x, y, **kw),
        lambda: pml_losses.MultiSimilarityLoss(),
    ),
    "triplet_margin": (
        lambda x, y, **kw: slade.losses.triplet_margin(x, y, **kw),
        lambda: pml_losses.TripletMarginLoss(),
    ),
}


def sweep(small_triplets):
    """(loss, batch size, classes); the triplet loss only where PML's reference stays small:
    all triplets of 512 samples in 2 classes are 33M, and PML pairs every mined positive
    pair with every mined negative pair through a |P| x |N| mask."""
    return [
        (name, n, classes)
        for name in LOSSES
        for n, classes in SIZES
        if name != "triplet_margin" or small_triplets(n, classes)
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,n,classes", sweep(lambda n, classes: (n, classes) != (512, 2)))
def test_all_pairs_match_pml(name, n, classes, dtype):
    x, y = batch(n, classes, dtype)
    ours, reference = LOSSES[name]
    pml = reference()
    assert_parity(lambda e: ours(e, y), lambda e: pml(e, y), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,n,classes", sweep(lambda n, classes: n <= 128))
def test_miner_pairs_match_pml(name, n, classes, dtype):
    x, y = batch(n, classes, dtype, seed=1)
    pairs = pml_miners.MultiSimilarityMiner()(x, y)
    ours_pairs = slade.miners.multi_similarity(x, y)
    ours, reference = LOSSES[name]
    pml = reference()
    assert_parity(lambda e: ours(e, y, pairs=ours_pairs), lambda e: pml(e, y, pairs), x)
    # PML's own tuple is accepted too, and without labels.
    assert_parity(lambda e: ours(e, None, pairs=pairs), lambda e: pml(e, y, pairs), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("n,classes", [(2, 2), (9, 3), (64, 8), (256, 4), (512, 64), (512, 2)])
def test_multi_similarity_with_miner_matches_pml(n, classes, dtype):
    x, y = batch(n, classes, dtype, seed=2)
    loss_fn, miner = pml_losses.MultiSimilarityLoss(), pml_miners.MultiSimilarityMiner()
    assert_parity(
        lambda e: slade.losses.multi_similarity_with_miner(e, y),
        lambda e: loss_fn(e, y, miner(e, y)),
        x,
    )


@pytest.mark.parametrize(
    "kwargs,pml_kwargs",
    [
        ({"pos_margin": 0.2, "neg_margin": 0.7}, {"pos_margin": 0.2, "neg_margin": 0.7}),
        ({"pos_margin": -0.1, "neg_margin": 2.5}, {"pos_margin": -0.1, "neg_margin": 2.5}),
    ],
)
def test_contrastive_margins_match_pml(kwargs, pml_kwargs):
    x, y = batch(48, 6, torch.float64)
    pml = pml_losses.ContrastiveLoss(**pml_kwargs)
    assert_parity(lambda e: slade.losses.contrastive(e, y, **kwargs), lambda e: pml(e, y), x)


@pytest.mark.parametrize("alpha,beta,base", [(1.0, 10.0, 0.0), (4.0, 40.0, 0.7), (0.5, 80.0, 0.3)])
def test_multi_similarity_weights_match_pml(alpha, beta, base):
    x, y = batch(48, 6, torch.float64)
    pml = pml_losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base)
    assert_parity(
        lambda e: slade.losses.multi_similarity(e, y, alpha=alpha, beta=beta, base=base),
        lambda e: pml(e, y),
        x,
    )


@pytest.mark.parametrize("margin", [0.0, 0.2, 1.0])
def test_triplet_margins_and_triplet_tuples_match_pml(margin):
    x, y = batch(30, 4, torch.float64)
    pml = pml_losses.TripletMarginLoss(margin=margin)
    assert_parity(
        lambda e: slade.losses.triplet_margin(e, y, margin=margin), lambda e: pml(e, y), x
    )
    g = torch.Generator().manual_seed(5)
    triplets = tuple(torch.randint(0, 30, (50,), generator=g) for _ in range(3))
    assert_parity(
        lambda e: slade.losses.triplet_margin(e, pairs=triplets, margin=margin),
        lambda e: pml(e, y, triplets),
        x,
    )


@pytest.mark.parametrize("name", ["contrastive", "multi_similarity"])
def test_explicit_pairs_with_duplicates_and_triplet_tuples_match_pml(name):
    """Unlabeled mined pairs (the student's case): explicit, with repeats, no labels."""
    x, y = batch(50, 5, torch.float64)
    g = torch.Generator().manual_seed(9)
    a1, p = torch.randint(0, 50, (80,), generator=g), torch.randint(0, 50, (80,), generator=g)
    a2, n = torch.randint(0, 50, (300,), generator=g), torch.randint(0, 50, (300,), generator=g)
    a1[:10], p[:10] = a1[10:20], p[10:20]  # repeated positive pairs
    if name == "multi_similarity":  # a pair may not be positive and negative at once
        neg = ~((a2[:, None] == a1[None]) & (n[:, None] == p[None])).any(1)
        a2, n = a2[neg], n[neg]
    ours, reference = LOSSES[name]
    pml = reference()
    pairs = (a1, p, a2, n)
    assert_parity(lambda e: ours(e, None, pairs=pairs), lambda e: pml(e, None, pairs), x)
    triplets = (a1, p, n[:80])
    if name == "multi_similarity":
        return
    assert_parity(lambda e: ours(e, None, pairs=triplets), lambda e: pml(e, None, triplets), x)


@pytest.mark.parametrize("name", list(LOSSES))
def test_at_most_one_pair_each_gives_zero_as_pml(name):
    x, y = batch(6, 2, torch.float64)
    pairs = (torch.tensor([0]), torch.tensor([1]), torch.tensor([2]), torch.tensor([3]))
    ours, reference = LOSSES[name]
    loss, grad = assert_parity(lambda e: ours(e, y, pairs=pairs), lambda e: reference()(e, y, pairs), x)
    if name != "triplet_margin":  # triplets: (0, 1, 3) only if anchors agree; they do not
        assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("n", [2, 12, 40])
@pytest.mark.parametrize("kind", ["one_class", "distinct_classes"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_one_class_and_distinct_class_batches(name, kind, n):
    x, _ = batch(n, 1, torch.float32)
    y = torch.zeros(n, dtype=torch.int64) if kind == "one_class" else torch.arange(n)
    ours, reference = LOSSES[name]
    pml = reference()
    assert_parity(lambda e: ours(e, y), lambda e: pml(e, y), x)
    # With the miner's pairs (none in either batch) every loss is 0 with a zero gradient.
    pairs = slade.miners.multi_similarity(x, y)
    assert all(len(t) == 0 for t in pairs)
    loss, grad = assert_parity(
        lambda e: ours(e, y, pairs=pairs), lambda e: pml(e, y, pml_miners.MultiSimilarityMiner()(e, y)), x
    )
    assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0
    loss, grad = value_and_grad(lambda e: slade.losses.multi_similarity_with_miner(e, y), x)
    assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("n", [10, 60])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_duplicated_embeddings(name, dtype, n):
    """Identical rows (zero distance, also between classes): finite and equal to PML's."""
    x, y = batch(n, 3, dtype)
    x[n // 2:] = x[: n - n // 2]
    ours, reference = LOSSES[name]
    pml = reference()
    assert_parity(lambda e: ours(e, y), lambda e: pml(e, y), x)
    pairs = pml_miners.MultiSimilarityMiner()(x, y)
    assert_parity(lambda e: ours(e, y, pairs=pairs), lambda e: pml(e, y, pairs), x)


def test_single_sample_gives_zero():
    x = torch.randn(1, 8, requires_grad=True)
    y = torch.tensor([3])
    for loss in (slade.losses.contrastive(x, y), slade.losses.multi_similarity(x, y),
                 slade.losses.triplet_margin(x, y), slade.losses.multi_similarity_with_miner(x, y)):
        (grad,) = torch.autograd.grad(loss, x)
        assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0


def test_gradients_reach_the_model_as_with_pml():
    """loss.backward() in Python fills the parameters' gradients through the Rust loss."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    inputs, y = torch.randn(64, 20), torch.randint(0, 6, (64,))

    def grads(loss_fn):
        model.zero_grad()
        loss = loss_fn(model(inputs))
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    miner = pml_miners.MultiSimilarityMiner()
    contrastive, ms = pml_losses.ContrastiveLoss(), pml_losses.MultiSimilarityLoss()
    ours = grads(lambda e: slade.losses.contrastive(e, y) + slade.losses.multi_similarity_with_miner(e, y))
    ref = grads(lambda e: contrastive(e, y) + ms(e, y, miner(e, y)))
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(ours[1], ref[1]):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_non_contiguous_embeddings_and_numpy_inputs():
    x, y = batch(30, 4, torch.float64)
    xt = x.t().contiguous().t()
    assert not xt.is_contiguous()
    pml = pml_losses.ContrastiveLoss()
    assert_parity(lambda e: slade.losses.contrastive(e.t().contiguous().t(), y), lambda e: pml(e, y), x)
    from_numpy = slade.losses.multi_similarity(x.numpy(), y.numpy())
    torch.testing.assert_close(from_numpy, pml_losses.MultiSimilarityLoss()(x, y), rtol=1e-10, atol=1e-10)
    pairs = tuple(t.numpy() for t in slade.miners.multi_similarity(x.numpy(), y.numpy()))
    torch.testing.assert_close(
        slade.losses.contrastive(x, y, pairs=pairs),
        pml(x, y, tuple(torch.from_numpy(t) for t in pairs)),
        rtol=1e-10,
        atol=1e-10,
    )


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda e, y: slade.losses.contrastive(e, y, pos_margin=0.1, neg_margin=0.9),
        lambda e, y: slade.losses.multi_similarity(e, y, beta=10.0),
        lambda e, y: slade.losses.multi_similarity_with_miner(e, y, epsilon=0.5, beta=10.0),
        lambda e, y: slade.losses.triplet_margin(e, y, margin=0.3),
    ],
    ids=["contrastive", "multi_similarity", "multi_similarity_with_miner", "triplet_margin"],
)
def test_gradcheck_float64(loss_fn):
    x, y = batch(10, 3, torch.float64, dim=5, seed=4)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: loss_fn(e, y), (x,), eps=1e-6, atol=1e-6)


def test_half_precision_runs_in_the_graph():
    x, y = batch(32, 4, torch.float32)
    for dtype in (torch.float16, torch.bfloat16):
        e = x.to(dtype).requires_grad_(True)
        loss = slade.losses.contrastive(e, y) + slade.losses.multi_similarity(e, y)
        loss.backward()
        assert loss.dtype == dtype and torch.isfinite(e.grad).all()


# ---- bad input ---------------------------------------------------------------------------

ALL_LOSSES = [
    slade.losses.contrastive,
    slade.losses.multi_similarity,
    slade.losses.triplet_margin,
    slade.losses.multi_similarity_with_miner,
]
IDS = ["contrastive", "multi_similarity", "triplet_margin", "multi_similarity_with_miner"]


@pytest.mark.parametrize("loss_fn", ALL_LOSSES, ids=IDS)
def test_bad_embeddings_and_labels_are_refused(loss_fn):
    x, y = torch.randn(8, 4), torch.arange(8) % 3
    cases = [
        ((x, y[:7]), ShapeError, "labels has 7 entries but embeddings has 8 rows"),
        ((x[0], y), ShapeError, "embeddings must be a 2-D tensor"),
        ((x.view(2, 4, 4), y), ShapeError, "embeddings must be a 2-D tensor"),
        ((x.to(torch.int64), y), DtypeError, "embeddings must be a floating tensor"),
        ((torch.where(torch.arange(32).view(8, 4) == 5, float("nan"), x), y), NonFiniteError,
         "1 NaN or Inf"),
        ((x, y.float()), DtypeError, "labels must be an integer tensor"),
        ((x, y.view(2, 4)), ShapeError, "labels must be a 1-D tensor"),
        ((x[:0], y[:0]), InvalidArgumentError, "embeddings is empty"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            loss_fn(*args)
    with pytest.raises(SladeError):
        loss_fn(x, [0, 1])


@pytest.mark.parametrize("loss_fn", ALL_LOSSES[:3], ids=IDS[:3])
def test_bad_pairs_are_refused(loss_fn):
    x, y = torch.randn(8, 4), torch.arange(8) % 3
    i = torch.tensor([0, 1])
    cases = [
        ((i, i + 8, i, i + 2), InvalidArgumentError, r"pairs\[p\] holds index 9 but embeddings has 8 rows"),
        ((i, i, i - 1, i), InvalidArgumentError, r"pairs\[a2\] holds index -1"),
        ((i, i), ShapeError, "tuple of 4 index tensors"),
        ((i, i, i, i, i), ShapeError, "tuple of 4 index tensors"),
        ((i, i[:1], i, i + 2), ShapeError, "lengths 2 and 1"),
        ((i.view(2, 1), i, i, i + 2), ShapeError, "1-D index tensor"),
        ((i.float(), i, i, i + 2), DtypeError, "integer tensor of indices"),
    ]
    for pairs, error, message in cases:
        with pytest.raises(error, match=message):
            loss_fn(x, y, pairs=pairs)
    with pytest.raises(ShapeError, match="tuple of 4 index tensors"):
        loss_fn(x, y, pairs=i)
    with pytest.raises(ShapeError, match="embeddings must be a 2-D tensor"):
        loss_fn(x[0], y, pairs=(i, i + 1, i, i + 2))
    with pytest.raises(ShapeError, match="labels has 7 entries"):
        loss_fn(x, y[:7], pairs=(i, i + 1, i, i + 2))
    with pytest.raises(InvalidArgumentError, match="give labels"):
        loss_fn(x)


def test_bad_parameters_are_refused():
    x, y = torch.randn(8, 4), torch.arange(8) % 3
    with pytest.raises(InvalidArgumentError, match="alpha must be a positive"):
        slade.losses.multi_similarity(x, y, alpha=0.0)
    with pytest.raises(InvalidArgumentError, match="beta must be a positive"):
        slade.losses.multi_similarity_with_miner(x, y, beta=-1.0)
    with pytest.raises(InvalidArgumentError, match="neg_margin must be a finite"):
        slade.losses.contrastive(x, y, neg_margin=float("inf"))
    with pytest.raises(InvalidArgumentError, match="margin must be a finite"):
        slade.losses.triplet_margin(x, y, margin=float("nan"))
    with pytest.raises(InvalidArgumentError, match="epsilon must be a finite"):
        slade.losses.multi_similarity_with_miner(x, y, epsilon=float("nan"))
    both = (torch.tensor([0, 1]), torch.tensor([3, 4]), torch.tensor([0, 2]), torch.tensor([3, 5]))
    with pytest.raises(InvalidArgumentError, match="both positive and negative"):
        slade.losses.multi_similarity(x, pairs=both)
    assert issubclass(InvalidArgumentError, ValueError) and issubclass(DtypeError, TypeError)


# ---- CUDA ----------------------------------------------------------------------------------


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("n,classes", [(64, 8), (512, 16)])
@pytest.mark.parametrize("name", list(LOSSES))
def test_cuda_matches_pml(name, n, classes):
    x, y = batch(n, classes, torch.float32, device="cuda")
    ours, reference = LOSSES[name]
    pml = reference()
    loss, grad = assert_parity(lambda e: ours(e, y), lambda e: pml(e, y), x)
    assert loss.is_cuda and grad.is_cuda
    pairs = slade.miners.multi_similarity(x, y)
    assert all(t.is_cuda for t in pairs)
    if name != "triplet_margin" or n <= 128:
        assert_parity(lambda e: ours(e, y, pairs=pairs), lambda e: pml(e, y, pairs), x)


@pytest.mark.cuda
@requires_cuda
def test_cuda_with_miner_and_cpu_labels():
    x, y = batch(256, 8, torch.float32, device="cuda")
    loss_fn, miner = pml_losses.MultiSimilarityLoss(), pml_miners.MultiSimilarityMiner()
    loss, _ = assert_parity(
        lambda e: slade.losses.multi_similarity_with_miner(e, y.cpu()),
        lambda e: loss_fn(e, y, miner(e, y)),
        x,
    )
    assert loss.is_cuda

