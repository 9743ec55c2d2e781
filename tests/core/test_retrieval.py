"""slade.retrieval_metrics and slade.knn against pytorch-metric-learning's AccuracyCalculator
(faiss k-NN) and against a brute-force reference written here in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

import slade
from checks import assert_releases_the_gil

PML_METRICS = {
    "map_at_r": "mean_average_precision_at_r",
    "r_precision": "r_precision",
    "precision_at_1": "precision_at_1",
}


def pml_metrics(query, query_labels, reference=None, reference_labels=None, avg_of_avgs=False):
    calc = AccuracyCalculator(
        include=tuple(PML_METRICS.values()),
        k="max_bin_count",
        avg_of_avgs=avg_of_avgs,
        device=torch.device("cpu"),
    )
    if reference is None:
        result = calc.get_accuracy(query, query_labels)
    else:
        result = calc.get_accuracy(query, query_labels, reference, reference_labels)
    return {ours: result[theirs] for ours, theirs in PML_METRICS.items()}


def brute_force_neighbours(query, reference, k, self_search):
    """Exact float64 neighbours, ties broken by the smaller reference index."""
    q = np.asarray(query, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    d2 = ((q[:, None, :] - r[None, :, :]) ** 2).sum(-1)
    if self_search:
        np.fill_diagonal(d2, np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(len(r)), d2.shape), d2), axis=1)
    return order[:, :k], np.take_along_axis(d2, order[:, :k], axis=1)


def brute_force_metrics(query, labels, reference=None, ref_labels=None, recall_at=(1,),
                        exclude_lone=True, avg_of_avgs=False):
    """The definitions of DESIGN.md §2.5, one query at a time."""
    self_search = reference is None
    if self_search:
        reference, ref_labels = query, labels
    labels, ref_labels = np.asarray(labels), np.asarray(ref_labels)
    order, _ = brute_force_neighbours(query, reference, len(reference) - self_search, self_search)
    per_query, classes = [], []
    for i, label in enumerate(labels):
        r = int((ref_labels == label).sum()) - int(self_search)
        if r == 0:
            if not exclude_lone:
                per_query.append([0.0] * (3 + len(recall_at)))
                classes.append(label)
            continue
        hits = ref_labels[order[i]] == label
        precision = np.cumsum(hits[:r]) / np.arange(1, r + 1)
        scores = [float((precision * hits[:r]).sum() / r), float(hits[:r].sum() / r), float(hits[0])]
        scores += [float(hits[:kk].any()) for kk in recall_at]
        per_query.append(scores)
        classes.append(label)
    per_query, classes = np.array(per_query), np.array(classes)
    if avg_of_avgs:
        values = np.mean([per_query[classes == c].mean(0) for c in np.unique(classes)], axis=0)
    else:
        values = per_query.mean(0)
    names = ["map_at_r", "r_precision", "precision_at_1"] + [f"recall_at_{kk}" for kk in recall_at]
    return dict(zip(names, values))


def clustered(n, dim, classes, seed, spread=1.0, zipf=False):
    rng = np.random.default_rng(seed)
    if zipf:
        weights = 1.0 / np.arange(1, classes + 1)
        labels = rng.choice(classes, size=n, p=weights / weights.sum())
    else:
        labels = rng.integers(0, classes, size=n)
    centres = rng.normal(size=(classes, dim))
    x = centres[labels] + spread * rng.normal(size=(n, dim))
    return x.astype(np.float32), labels


def assert_metrics_close(ours, theirs, tol=1e-6):
    for name, value in theirs.items():
        assert ours[name] == pytest.approx(value, abs=tol), (name, ours[name], value)


# (n, dim, classes, zipf): from 2 points to 20k, dims 2 to 512, 2 to 1000 classes.
PML_CASES = [
    (2, 4, 1, False),
    (7, 2, 2, False),
    (50, 3, 5, True),
    (300, 8, 30, False),
    (1000, 64, 100, True),
    (2000, 128, 1000, False),
    (3000, 512, 40, True),
    (20_000, 32, 200, False),
]


@pytest.mark.parametrize("n,dim,classes,zipf", PML_CASES)
def test_self_retrieval_matches_pml(n, dim, classes, zipf):
    x, labels = clustered(n, dim, classes, seed=n + dim, spread=2.0, zipf=zipf)
    ours = slade.retrieval_metrics(torch.from_numpy(x), torch.from_numpy(labels), recall_at=(1,))
    assert_metrics_close(ours, pml_metrics(torch.from_numpy(x), torch.from_numpy(labels)))
    assert ours["recall_at_1"] == ours["precision_at_1"]


@pytest.mark.parametrize("nq,nr,dim,classes", [(40, 300, 16, 10), (500, 4000, 64, 50), (1, 5, 2, 2)])
def test_query_gallery_split_matches_pml(nq, nr, dim, classes):
    q, q_labels = clustered(nq, dim, classes, seed=1, spread=1.5)
    r, r_labels = clustered(nr, dim, classes, seed=2, spread=1.5)
    q_labels[0] = r_labels[0]  # at least one query has relevant references
    args = [torch.from_numpy(a) for a in (q, q_labels, r, r_labels)]
    ours = slade.retrieval_metrics(*args, recall_at=(1,))
    assert_metrics_close(ours, pml_metrics(*args))
    assert_metrics_close(ours, brute_force_metrics(q, q_labels, r, r_labels))


def test_lone_queries_are_excluded_like_pml():
    x, labels = clustered(400, 16, 40, seed=3)
    labels[:25] = np.arange(1000, 1025)  # 25 singleton classes: lone queries
    ours = slade.retrieval_metrics(x, labels, recall_at=(1, 2))
    assert_metrics_close(ours, pml_metrics(torch.from_numpy(x), torch.from_numpy(labels)))
    assert_metrics_close(ours, brute_force_metrics(x, labels, recall_at=(1, 2)))


def test_lone_queries_can_count_as_zero():
    x, labels = clustered(300, 8, 30, seed=4)
    labels[:10] = np.arange(500, 510)
    ours = slade.retrieval_metrics(x, labels, recall_at=(1, 4), exclude_lone_queries=False)
    expected = brute_force_metrics(x, labels, recall_at=(1, 4), exclude_lone=False)
    assert_metrics_close(ours, expected, tol=1e-12)
    included = slade.retrieval_metrics(x, labels, recall_at=(1, 4))
    assert ours["map_at_r"] < included["map_at_r"]


def test_avg_of_avgs_matches_pml():
    x, labels = clustered(600, 16, 12, seed=5, zipf=True)
    ours = slade.retrieval_metrics(x, labels, recall_at=(1,), avg_of_avgs=True)
    theirs = pml_metrics(torch.from_numpy(x), torch.from_numpy(labels), avg_of_avgs=True)
    assert_metrics_close(ours, theirs)
    assert_metrics_close(ours, brute_force_metrics(x, labels, avg_of_avgs=True))


@pytest.mark.parametrize("engine", ["auto", "gemm", "kdtree", "torch"])
@pytest.mark.parametrize("dim", [2, 3, 16])
def test_exact_duplicates_and_ties_follow_the_tie_rule(engine, dim):
    # Values on a coarse dyadic grid: many exact ties and duplicated points, and every
    # distance is exact in float64 whatever the summation order.
    rng = np.random.default_rng(dim)
    x = (np.round(rng.normal(size=(600, dim)) * 2) / 2).astype(np.float32)
    x[100:150] = x[0]  # 51 copies of one point
    labels = rng.integers(0, 6, size=600)
    dist, idx = slade.knn(x, k=60, engine=engine)
    expected_idx, expected_d2 = brute_force_neighbours(x, x, 60, self_search=True)
    np.testing.assert_array_equal(idx.numpy(), expected_idx)
    np.testing.assert_allclose(dist.numpy(), np.sqrt(expected_d2), rtol=1e-6)
    ours = slade.retrieval_metrics(x, labels, recall_at=(1, 2, 4, 8), engine=engine)
    assert_metrics_close(ours, brute_force_metrics(x, labels, recall_at=(1, 2, 4, 8)), tol=1e-12)


@pytest.mark.parametrize("engine", ["gemm", "kdtree", "torch"])
def test_engines_agree_with_brute_force_on_a_gallery(engine):
    q, _ = clustered(200, 24, 10, seed=6)
    r, _ = clustered(2500, 24, 10, seed=7)
    dist, idx = slade.knn(torch.from_numpy(q), torch.from_numpy(r), k=17, engine=engine)
    expected_idx, expected_d2 = brute_force_neighbours(q, r, 17, self_search=False)
    np.testing.assert_array_equal(idx.numpy(), expected_idx)
    np.testing.assert_allclose(dist.numpy(), np.sqrt(expected_d2), rtol=1e-5)
    assert dist.dtype == torch.float32 and idx.dtype == torch.int64


def test_float64_and_numpy_inputs_and_any_integer_labels():
    x, labels = clustered(500, 12, 20, seed=8)
    expected = brute_force_metrics(x, labels, recall_at=(1, 8))
    as_float64 = slade.retrieval_metrics(
        torch.from_numpy(x.astype(np.float64)), torch.from_numpy(labels), recall_at=(1, 8)
    )
    assert_metrics_close(as_float64, expected, tol=1e-12)
    # Labels of other integer dtypes and arbitrary values (negative, huge) mean the same classes.
    remapped = (labels.astype(np.int64) * 7_919_000_003 - 5).astype(np.int64)
    for lab in (labels.astype(np.int16), labels.astype(np.uint8), remapped):
        ours = slade.retrieval_metrics(x, lab, recall_at=(1, 8))
        assert_metrics_close(ours, expected, tol=1e-12)


def test_numpy_input_is_not_copied():
    x = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
    from slade._convert import as_tensor

    assert as_tensor(x, "x").data_ptr() == x.__array_interface__["data"][0]


def test_knn_k_and_distances():
    x, _ = clustered(300, 5, 3, seed=9)
    dist, idx = slade.knn(x, k=10)
    assert dist.shape == (300, 10) and idx.shape == (300, 10)
    assert (idx != torch.arange(300)[:, None]).all(), "a query never retrieves itself"
    assert (dist[:, 1:] >= dist[:, :-1]).all(), "nearest first"


def test_the_gil_is_released_during_a_long_call():
    x = torch.randn(12_000, 256)
    assert_releases_the_gil(lambda: slade.knn(x, k=50))


# ---------------------------------------------------------------------------------------
# Bad input: each gets a specific, clear error.


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(20, 4)
    labels = torch.arange(20) % 4
    cases = [
        (lambda: slade.retrieval_metrics(x, labels[:-1]), slade.ShapeError, "query_labels has 19"),
        (lambda: slade.retrieval_metrics(x[0], labels), slade.ShapeError, "2-D"),
        (lambda: slade.retrieval_metrics(x[None], labels), slade.ShapeError, "2-D"),
        (lambda: slade.retrieval_metrics(x[:0], labels[:0]), slade.InvalidArgumentError, "empty"),
        (lambda: slade.retrieval_metrics(x.long(), labels), slade.DtypeError, "floating"),
        (lambda: slade.retrieval_metrics(x, labels.float()), slade.DtypeError, "integer"),
        (lambda: slade.retrieval_metrics(x, labels.bool()), slade.DtypeError, "integer"),
        (lambda: slade.retrieval_metrics(x, labels, x), slade.InvalidArgumentError, "reference_labels"),
        (lambda: slade.retrieval_metrics(x, labels, None, labels), slade.InvalidArgumentError, "reference"),
        (lambda: slade.retrieval_metrics(x, labels, x[:, :3], labels), slade.ShapeError, "dim"),
        (
            lambda: slade.retrieval_metrics(x, labels, k=100),
            slade.InvalidArgumentError,
            "larger than the reference set",
        ),
        (lambda: slade.retrieval_metrics(x, labels, k=2), slade.InvalidArgumentError, "smaller than"),
        (lambda: slade.retrieval_metrics(x, labels, recall_at=(0,)), slade.InvalidArgumentError, "recall_at"),
        (lambda: slade.retrieval_metrics(x, labels, recall_at=(50,)), slade.InvalidArgumentError, "recall_at"),
        (lambda: slade.retrieval_metrics(x, torch.arange(20)), slade.InvalidArgumentError, "lone"),
        (lambda: slade.retrieval_metrics(x.tolist(), labels), slade.DtypeError, "torch.Tensor or numpy"),
        (lambda: slade.knn(x, k=20), slade.InvalidArgumentError, "larger than the reference set"),
        (lambda: slade.knn(x, k=0), slade.InvalidArgumentError, "at least 1"),
        (lambda: slade.knn(x, k=-3), slade.InvalidArgumentError, "non-negative"),
        (lambda: slade.knn(x, k=3, engine="faiss"), slade.ConfigError, "unknown k-NN engine"),
        (lambda: slade.knn(np.array(["a", "b"]), k=1), slade.DtypeError, "numeric"),
    ]
    for call, error, fragment in cases:
        with pytest.raises(error, match=fragment):
            call()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_embeddings_are_refused(bad):
    x = torch.randn(10, 3)
    x[4, 1] = bad
    with pytest.raises(slade.NonFiniteError, match="1 NaN or Inf"):
        slade.knn(x, k=2)
    with pytest.raises(ValueError):  # also a ValueError, as PyTorch users expect
        slade.retrieval_metrics(torch.randn(10, 3), torch.arange(10) % 2, x, torch.arange(10) % 2)


def test_errors_are_slade_errors_and_builtins():
    with pytest.raises(slade.SladeError):
        slade.knn(torch.randn(3, 2), k=5)
    with pytest.raises(TypeError):
        slade.knn(torch.ones(3, 2, dtype=torch.int32), k=1)


# ---------------------------------------------------------------------------------------
# CUDA: the device engine against the same references.


@pytest.mark.cuda
@pytest.mark.parametrize("n,dim,classes,zipf", PML_CASES[2:7])
def test_cuda_matches_pml(n, dim, classes, zipf):
    x, labels = clustered(n, dim, classes, seed=n, spread=2.0, zipf=zipf)
    xc, lc = torch.from_numpy(x).cuda(), torch.from_numpy(labels).cuda()
    ours = slade.retrieval_metrics(xc, lc, recall_at=(1,))
    assert_metrics_close(ours, pml_metrics(torch.from_numpy(x), torch.from_numpy(labels)))


@pytest.mark.cuda
def test_cuda_knn_matches_cpu_and_stays_on_device():
    x = torch.randn(3000, 64)
    d_cpu, i_cpu = slade.knn(x, k=20, engine="gemm")
    d_gpu, i_gpu = slade.knn(x.cuda(), k=20)
    assert d_gpu.is_cuda and i_gpu.is_cuda
    torch.testing.assert_close(i_gpu.cpu(), i_cpu, rtol=0, atol=0)
    torch.testing.assert_close(d_gpu.cpu(), d_cpu)


@pytest.mark.cuda
def test_cuda_mixed_devices_are_refused():
    with pytest.raises(slade.DeviceError, match="one device"):
        slade.retrieval_metrics(torch.randn(10, 3).cuda(), torch.arange(10) % 2,
                                torch.randn(10, 3), torch.arange(10) % 2)
