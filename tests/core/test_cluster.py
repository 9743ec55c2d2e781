"""slade.kmeans, slade.cluster.cluster_labels and slade.nmi against scikit-learn and against a
plain numpy Lloyd written here; NMI in slade.retrieval_metrics against PML's
AccuracyCalculator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

import slade


def blobs(n, dim, centres, seed, spread=1.0, scale=10.0):
    """`n` points around `centres` random Gaussian centres, float32."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim)) * scale
    labels = rng.integers(0, centres, size=n)
    x = c[labels] + spread * rng.normal(size=(n, dim))
    return x.astype(np.float32), labels


def numpy_lloyd(x, init, iters):
    """Plain Lloyd in float64: exact distances, ties to the smaller centroid index, float64
    means stored in the input's dtype, an empty cluster re-seeded with the point farthest
    from its own centroid (farthest first, ties to the smaller index), stopping early when
    no label changes."""
    dtype = x.dtype
    x = x.astype(np.float64)
    c = init.astype(np.float64).copy()
    k = len(c)

    def assign(c):
        d2 = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)
        return d2.argmin(1), d2

    previous = None
    for _ in range(iters):
        labels, d2 = assign(c)
        if previous is not None and (labels == previous).all():
            break
        counts = np.bincount(labels, minlength=k).astype(np.int64)
        sums = np.zeros_like(c)
        np.add.at(sums, labels, x)
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            own = d2[np.arange(len(x)), labels]
            far = np.lexsort((np.arange(len(x)), -own))[: len(empty)]
            for j, p in zip(empty, far):
                sums[labels[p]] -= x[p]
                counts[labels[p]] -= 1
                sums[j] = x[p]
                counts[j] = 1
        new = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], c)
        c = new.astype(dtype).astype(np.float64)
        previous = labels
    labels, d2 = assign(c)
    return c, labels, float(d2[np.arange(len(x)), labels].sum())


# ---------------------------------------------------------------------------------------
# Parity with scikit-learn and with the numpy reference, same initial centroids.


@pytest.mark.parametrize(
    "n,dim,k,centres,dtype",
    [
        (500, 2, 5, 5, np.float64),
        (2000, 16, 20, 12, np.float32),
        (3000, 64, 40, 50, np.float32),
        (1200, 33, 7, 3, np.float64),
    ],
)
def test_same_init_matches_sklearn(n, dim, k, centres, dtype):
    x, _ = blobs(n, dim, centres, seed=n, spread=3.0)
    x = x.astype(dtype)
    init = x[np.random.default_rng(1).choice(n, k, replace=False)]
    ours = slade.kmeans(x, k, init=init, iters=15)
    theirs = KMeans(k, init=init, n_init=1, max_iter=15, tol=0.0, algorithm="lloyd").fit(x)
    np.testing.assert_array_equal(ours.labels.numpy(), theirs.labels_)
    assert ours.inertia == pytest.approx(theirs.inertia_, rel=1e-4)
    np.testing.assert_allclose(ours.centroids.numpy(), theirs.cluster_centers_, atol=1e-4)
    assert ours.centroids.dtype == torch.from_numpy(x).dtype
    assert ours.labels.dtype == torch.int64


@pytest.mark.parametrize("iters", [0, 1, 3, 30])
def test_matches_a_numpy_lloyd(iters):
    x, _ = blobs(800, 8, 10, seed=iters, spread=4.0)
    init = x[:12] + 0.5
    c_ref, labels_ref, inertia_ref = numpy_lloyd(x, init, iters)
    ours = slade.kmeans(torch.from_numpy(x), 12, init=torch.from_numpy(init), iters=iters)
    np.testing.assert_array_equal(ours.labels.numpy(), labels_ref)
    np.testing.assert_allclose(ours.centroids.numpy(), c_ref, rtol=1e-6, atol=1e-6)
    assert ours.inertia == pytest.approx(inertia_ref, rel=1e-9)


def test_empty_clusters_are_reseeded_like_the_reference():
    x, _ = blobs(400, 5, 4, seed=3)
    # Three copies of one centroid: the copies with larger ids start empty.
    init = np.concatenate([x[:3], np.repeat(x[3:4], 3, axis=0)])
    c_ref, labels_ref, inertia_ref = numpy_lloyd(x, init, 10)
    ours = slade.kmeans(x, 6, init=init, iters=10)
    np.testing.assert_array_equal(ours.labels.numpy(), labels_ref)
    np.testing.assert_allclose(ours.centroids.numpy(), c_ref, rtol=1e-6, atol=1e-6)
    assert ours.inertia == pytest.approx(inertia_ref, rel=1e-9)
    assert len(np.unique(ours.labels.numpy())) == 6


def test_exact_ties_go_to_the_smaller_centroid_index():
    # Points on a grid and centroids placed so that many points are equidistant.
    g = np.arange(-3, 4, dtype=np.float32)
    x = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    init = np.array([[-1, 0], [1, 0], [0, 1], [0, -1]], dtype=np.float32)
    ours = slade.kmeans(x, 4, init=init, iters=0)
    d2 = ((x[:, None].astype(np.float64) - init[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(ours.labels.numpy(), d2.argmin(1))


# ---------------------------------------------------------------------------------------
# Own initialisation.


def test_kmeans_plus_plus_quality_matches_sklearn_best_of_three():
    x, _ = blobs(3000, 16, 15, seed=7, spread=2.0, scale=3.0)
    ours = slade.kmeans(x, 20, iters=100, seed=0)
    best = min(
        KMeans(20, n_init=1, max_iter=100, random_state=s).fit(x).inertia_ for s in range(3)
    )
    assert ours.inertia <= best * 1.005, (ours.inertia, best)


def test_kmeans_plus_plus_seeds_one_centroid_per_separated_blob():
    x, truth = blobs(2000, 10, 12, seed=11, spread=0.3, scale=20.0)
    for seed in range(3):
        seeded = slade.kmeans(x, 12, iters=0, seed=seed)
        assert normalized_mutual_info_score(truth, seeded.labels.numpy()) == pytest.approx(1.0)
    # Uniform seeding does not manage that (same data and seeds).
    uniform = [slade.kmeans(x, 12, iters=0, seed=s, init="random") for s in range(3)]
    assert min(normalized_mutual_info_score(truth, u.labels.numpy()) for u in uniform) < 1.0


def test_same_seed_same_result_and_seeds_differ():
    x, _ = blobs(3000, 24, 30, seed=5, spread=4.0)
    a = slade.kmeans(x, 25, seed=42)
    b = slade.kmeans(x, 25, seed=42)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.labels, b.labels)
    assert a.inertia == b.inertia
    c = slade.kmeans(x, 25, seed=43)
    assert not torch.equal(a.centroids, c.centroids)
    for init in ("k-means++", "random"):
        assert torch.equal(
            slade.kmeans(x, 25, seed=7, init=init, iters=0).centroids,
            slade.kmeans(x, 25, seed=7, init=init, iters=0).centroids,
        )


def test_result_fields_and_iterations():
    x, _ = blobs(600, 4, 3, seed=2, spread=0.5)
    result = slade.kmeans(x, 3, iters=50)
    centroids, labels, inertia = result
    assert centroids.shape == (3, 4) and labels.shape == (600,) and isinstance(inertia, float)
    assert 1 <= result.iterations < 50, "well separated blobs settle early"
    assert slade.kmeans(x, 3, iters=2).iterations <= 2
    # tol > 0 stops on a small centroid shift (scikit-learn's relative tolerance).
    assert slade.kmeans(x, 3, iters=50, tol=1e9).iterations == 1


# ---------------------------------------------------------------------------------------
# Degenerate inputs.


def test_k_equal_one_is_the_mean():
    x, _ = blobs(300, 6, 3, seed=1)
    result = slade.kmeans(x, 1)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(result.centroids.numpy()[0], x64.mean(0), rtol=1e-6, atol=1e-5)
    assert result.inertia == pytest.approx(((x64 - x64.mean(0)) ** 2).sum(), rel=1e-6)
    assert (result.labels == 0).all()


def test_k_equal_n_puts_every_point_in_its_own_cluster():
    x, _ = blobs(50, 3, 5, seed=2)
    for init in ("k-means++", "random"):
        result = slade.kmeans(x, 50, init=init)
        assert sorted(result.labels.tolist()) == list(range(50))
        assert result.inertia == 0.0


def test_duplicate_points():
    base, _ = blobs(10, 4, 10, seed=3)
    x = np.repeat(base, 5, axis=0)
    exact = slade.kmeans(x, 10)
    assert exact.inertia == 0.0
    assert len(np.unique(exact.labels.numpy())) == 10
    # More clusters than distinct points: allowed; duplicates share a point exactly.
    more = slade.kmeans(x, 13, seed=1)
    assert more.inertia == 0.0
    same = slade.kmeans(np.zeros((20, 3), np.float32), 4)
    assert same.inertia == 0.0 and (same.centroids == 0).all()


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(20, 4)
    nan = x.clone()
    nan[3, 2] = float("nan")
    cases = [
        (lambda: slade.kmeans(x, 21), slade.InvalidArgumentError, "larger than the number of points"),
        (lambda: slade.kmeans(x, 0), slade.InvalidArgumentError, "at least 1"),
        (lambda: slade.kmeans(x, -2), slade.InvalidArgumentError, "non-negative"),
        (lambda: slade.kmeans(nan, 3), slade.NonFiniteError, "NaN"),
        (lambda: slade.kmeans(x[0], 3), slade.ShapeError, "2-D"),
        (lambda: slade.kmeans(x[:0], 1), slade.InvalidArgumentError, "empty"),
        (lambda: slade.kmeans(x.long(), 3), slade.DtypeError, "floating"),
        (lambda: slade.kmeans(x, 3, init="kmeans++"), slade.ConfigError, "k-means\\+\\+"),
        (lambda: slade.kmeans(x, 3, init=x[:2]), slade.ShapeError, "init has shape"),
        (lambda: slade.kmeans(x, 3, init=x[:3, :2]), slade.ShapeError, "init has shape"),
        (lambda: slade.kmeans(x, 3, init=nan[2:5]), slade.NonFiniteError, "init"),
        (lambda: slade.kmeans(x, 3, tol=-1.0), slade.InvalidArgumentError, "tol"),
        (lambda: slade.kmeans(x, 3, iters=-1), slade.InvalidArgumentError, "iters"),
        (lambda: slade.kmeans(x.tolist(), 3), slade.DtypeError, "torch.Tensor or numpy"),
        (lambda: slade.cluster.cluster_labels(nan, 3), slade.NonFiniteError, "embeddings"),
        (lambda: slade.cluster.cluster_labels(x, 30), slade.InvalidArgumentError, "embeddings"),
        (lambda: slade.nmi(torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long)),
         slade.ShapeError, "labels_b"),
        (lambda: slade.nmi(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)),
         slade.InvalidArgumentError, "empty"),
        (lambda: slade.nmi(torch.zeros(3), torch.zeros(3, dtype=torch.long)), slade.DtypeError, "integer"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


# ---------------------------------------------------------------------------------------
# Pseudo labels and NMI.


def test_pseudo_labels_are_kmeans_of_normalised_embeddings():
    x, _ = blobs(1000, 12, 8, seed=4, spread=2.0)
    labels = slade.cluster.cluster_labels(x, 8, seed=3)
    assert labels.dtype == torch.int64 and labels.shape == (1000,)
    unit = torch.nn.functional.normalize(torch.from_numpy(x), dim=1)
    assert torch.equal(labels, slade.kmeans(unit, 8, seed=3).labels)
    assert torch.equal(labels, slade.cluster.cluster_labels(torch.from_numpy(x) * 7.0, 8, seed=3))
    assert torch.equal(labels, slade.cluster.cluster_labels(x.astype(np.float64), 8, seed=3))


@pytest.mark.parametrize("seed", range(4))
def test_nmi_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 3000))
    a = rng.integers(0, int(rng.integers(1, 50)), size=n)
    b = np.where(rng.random(n) < 0.6, a * 3 + 1, rng.integers(-5, 40, size=n))
    assert slade.nmi(a, b) == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-12)
    assert slade.nmi(torch.from_numpy(b), torch.from_numpy(a)) == pytest.approx(
        normalized_mutual_info_score(b, a), abs=1e-12
    )


def test_nmi_special_cases_match_sklearn():
    cases = [
        ([0, 0, 0], [5, 5, 5]),
        ([0, 0, 0, 0], [0, 1, 2, 3]),
        ([0, 1, 2, 3], [0, 0, 0, 0]),
        ([1, 1, 2, 2], [1, 2, 1, 2]),
        ([7], [3]),
        ([0, 1], [1, 0]),
    ]
    for a, b in cases:
        expected = normalized_mutual_info_score(a, b)
        assert slade.nmi(np.array(a), np.array(b)) == pytest.approx(expected, abs=1e-12), (a, b)


def test_retrieval_nmi_is_kmeans_of_the_queries_like_pml():
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    x, labels = blobs(1500, 32, 12, seed=9, spread=4.0, scale=1.5)
    without = slade.retrieval_metrics(x, labels, recall_at=(1,))
    assert "nmi" not in without
    ours = slade.retrieval_metrics(x, labels, recall_at=(1,), nmi=True)
    clusters = slade.kmeans(x, len(np.unique(labels)), seed=0).labels.numpy()
    assert ours["nmi"] == pytest.approx(normalized_mutual_info_score(labels, clusters), abs=1e-12)
    assert 0.2 < ours["nmi"] < 0.99, "overlapping classes: a non-trivial value"
    # PML's pipeline (cluster count, inputs, NMI) with its k-means swapped for ours.
    calc = AccuracyCalculator(
        include=("NMI",),
        device=torch.device("cpu"),
        kmeans_func=lambda q, k: slade.kmeans(q, k, seed=0).labels,
    )
    theirs = calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(labels))["NMI"]
    assert ours["nmi"] == pytest.approx(theirs, abs=1e-12)
    for name in ("map_at_r", "precision_at_1"):
        assert ours[name] == without[name]


def test_retrieval_nmi_with_a_gallery_uses_the_queries():
    x, labels = blobs(600, 8, 6, seed=10, spread=0.5)
    q, ql, r, rl = x[:200], labels[:200], x[200:], labels[200:]
    ours = slade.retrieval_metrics(q, ql, r, rl, recall_at=(1,), nmi=True)
    clusters = slade.kmeans(q, len(np.unique(ql)), seed=0).labels.numpy()
    assert ours["nmi"] == pytest.approx(normalized_mutual_info_score(ql, clusters), abs=1e-12)


# ---------------------------------------------------------------------------------------
# CUDA: the device engine against the CPU one and the references.


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_same_init_matches_cpu_and_sklearn(dtype):
    x, _ = blobs(3000, 40, 25, seed=12, spread=3.0)
    x = x.astype(dtype)
    init = x[np.random.default_rng(2).choice(len(x), 30, replace=False)]
    gpu = slade.kmeans(torch.from_numpy(x).cuda(), 30, init=torch.from_numpy(init).cuda(), iters=10)
    cpu = slade.kmeans(x, 30, init=init, iters=10)
    theirs = KMeans(30, init=init, n_init=1, max_iter=10, tol=0.0, algorithm="lloyd").fit(x)
    assert gpu.labels.is_cuda and gpu.centroids.is_cuda
    np.testing.assert_array_equal(gpu.labels.cpu().numpy(), cpu.labels.numpy())
    np.testing.assert_array_equal(gpu.labels.cpu().numpy(), theirs.labels_)
    assert gpu.inertia == pytest.approx(cpu.inertia, rel=1e-9)
    np.testing.assert_allclose(gpu.centroids.cpu().numpy(), cpu.centroids.numpy(), atol=1e-5)


@pytest.mark.cuda
def test_cuda_own_init_is_deterministic_and_good():
    x, _ = blobs(3000, 16, 15, seed=7, spread=2.0, scale=3.0)
    xc = torch.from_numpy(x).cuda()
    a = slade.kmeans(xc, 20, iters=100, seed=0)
    b = slade.kmeans(xc, 20, iters=100, seed=0)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)
    best = min(
        KMeans(20, n_init=1, max_iter=100, random_state=s).fit(x).inertia_ for s in range(3)
    )
    assert a.inertia <= best * 1.005
    empty_init = torch.cat([xc[:3], xc[3:4].repeat(3, 1)])
    c_ref, labels_ref, inertia_ref = numpy_lloyd(x, empty_init.cpu().numpy(), 10)
    ours = slade.kmeans(xc, 6, init=empty_init, iters=10)
    np.testing.assert_array_equal(ours.labels.cpu().numpy(), labels_ref)
    assert ours.inertia == pytest.approx(inertia_ref, rel=1e-9)


@pytest.mark.cuda
def test_cuda_pseudo_labels_and_nmi_stay_on_device():
    x, labels = blobs(800, 16, 6, seed=13, spread=0.5)
    pseudo = slade.cluster.cluster_labels(torch.from_numpy(x).cuda(), 6)
    assert pseudo.is_cuda and pseudo.dtype == torch.int64
    assert slade.nmi(pseudo, torch.from_numpy(labels).cuda()) == pytest.approx(1.0)
    with pytest.raises(slade.DeviceError):
        slade.kmeans(torch.from_numpy(x).cuda(), 3, init=torch.from_numpy(x[:3]))
