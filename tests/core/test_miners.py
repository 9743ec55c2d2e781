"""Multi-similarity miner against pytorch-metric-learning 2.9.0's MultiSimilarityMiner: the
same pairs (as sets) on the same tensors, the same tuple form, and bad input."""

from __future__ import annotations

import pytest
import torch
from pytorch_metric_learning import miners as pml_miners

import slade
from slade.errors import DtypeError, InvalidArgumentError, NonFiniteError, ShapeError

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SIZES = [(2, 1), (2, 2), (3, 2), (9, 3), (24, 2), (40, 5), (64, 8), (128, 16), (200, 64),
         (256, 4), (512, 64), (512, 2)]


def batch(n, classes, dtype=torch.float32, dim=16, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed * 1000 + n * 7 + classes)
    labels = torch.randint(0, classes, (n,), generator=g)
    centres = torch.randn(classes, dim, generator=g, dtype=torch.float64)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64) + 1.5 * centres[labels]
    return x.to(dtype).to(device), labels.to(device)


def pair_sets(pairs):
    a1, p, a2, n = (t.cpu().tolist() for t in pairs)
    pos, neg = list(zip(a1, p)), list(zip(a2, n))
    assert len(set(pos)) == len(pos) and len(set(neg)) == len(neg), "a pair mined twice"
    return set(pos), set(neg)


def assert_same_pairs(x, y, epsilon=0.1):
    ours = slade.miners.multi_similarity(x, y, epsilon=epsilon)
    reference = pml_miners.MultiSimilarityMiner(epsilon=epsilon)(x, y)
    assert len(ours) == 4
    for t in ours:
        assert t.dtype == torch.int64 and t.ndim == 1 and t.device == x.device
        assert not t.requires_grad
    assert pair_sets(ours) == pair_sets(reference)
    return ours


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("n,classes", SIZES)
def test_same_pairs_as_pml(n, classes, dtype):
    x, y = batch(n, classes, dtype)
    pairs = assert_same_pairs(x, y)
    if n >= 24 and classes > 1:
        assert len(pairs[0]) > 0 and len(pairs[2]) > 0  # the sweep does mine something


@pytest.mark.parametrize("epsilon", [0.0, 0.05, 0.5, 1.0, -0.2])
def test_epsilon_like_pml(epsilon):
    x, y = batch(96, 6, torch.float32, seed=3)
    assert_same_pairs(x, y, epsilon)


def test_pairs_are_hard_and_row_major():
    """Every mined positive is less similar (minus epsilon) than the anchor's hardest
    negative, every mined negative more similar (plus epsilon) than its easiest positive."""
    x, y = batch(60, 4, torch.float64, seed=5)
    a1, p, a2, n = slade.miners.multi_similarity(x, y, epsilon=0.1)
    f = torch.nn.functional.normalize(x)
    s = f @ f.T
    same = y[:, None] == y[None]
    eye = torch.eye(60, dtype=torch.bool)
    hardest_neg = s.masked_fill(same, -2).amax(1)
    easiest_pos = s.masked_fill(~same | eye, 2).amin(1)
    assert (s[a1, p] - 0.1 < hardest_neg[a1]).all() and (y[a1] == y[p]).all() and (a1 != p).all()
    assert (s[a2, n] + 0.1 > easiest_pos[a2]).all() and (y[a2] != y[n]).all()
    assert (a1[1:] >= a1[:-1]).all() and (a2[1:] >= a2[:-1]).all()


@pytest.mark.parametrize("labels", ["one_class", "distinct"])
def test_nothing_to_mine_gives_empty_int64_tensors(labels):
    x, _ = batch(20, 1)
    y = torch.zeros(20, dtype=torch.int64) if labels == "one_class" else torch.arange(20)
    pairs = assert_same_pairs(x, y)
    assert all(t.shape == (0,) for t in pairs)


def test_duplicated_embeddings_and_ties():
    x, y = batch(50, 4, torch.float32, seed=8)
    x[25:] = x[:25]
    assert_same_pairs(x, y)
    assert_same_pairs(x.double(), y)


def test_records_no_gradient_and_leaves_inputs_alone():
    x, y = batch(40, 4)
    x.requires_grad_(True)
    before = x.detach().clone()
    pairs = slade.miners.multi_similarity(x, y)
    assert all(not t.requires_grad for t in pairs)
    assert torch.equal(x.detach(), before)


def test_numpy_inputs():
    x, y = batch(40, 4)
    ours = slade.miners.multi_similarity(x.numpy(), y.numpy())
    assert pair_sets(ours) == pair_sets(pml_miners.MultiSimilarityMiner()(x, y))


def test_bad_input_is_refused():
    x, y = torch.randn(8, 4), torch.arange(8) % 3
    with pytest.raises(ShapeError, match="labels has 7 entries but embeddings has 8 rows"):
        slade.miners.multi_similarity(x, y[:7])
    with pytest.raises(ShapeError, match="embeddings must be a 2-D tensor"):
        slade.miners.multi_similarity(x[0], y)
    with pytest.raises(DtypeError, match="embeddings must be a floating tensor"):
        slade.miners.multi_similarity(x.to(torch.int32), y)
    with pytest.raises(DtypeError, match="labels must be an integer tensor"):
        slade.miners.multi_similarity(x, y.double())
    x_nan = x.clone()
    x_nan[2, 1] = float("inf")
    with pytest.raises(NonFiniteError, match="embeddings contains 1 NaN or Inf"):
        slade.miners.multi_similarity(x_nan, y)
    with pytest.raises(InvalidArgumentError, match="epsilon must be a finite"):
        slade.miners.multi_similarity(x, y, epsilon=float("nan"))


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("n,classes", [(64, 8), (512, 16)])
def test_cuda_same_pairs_as_pml(n, classes):
    x, y = batch(n, classes, device="cuda")
    assert_same_pairs(x, y)
    assert_same_pairs(x, y.cpu())
