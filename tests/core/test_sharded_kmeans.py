"""slade.sharded_kmeans: k-means with each rank's points staying on it. One process is
checked against scikit-learn (Lloyd from the same centroids; k-means++ on separated blobs);
two real Gloo ranks holding halves of the data must give the one-process result."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

import slade
from ranks import spawn
from slade import distributed
from slade.sharded_kmeans import sharded_kmeans

CASES = {
    "given": dict(k=12, init="first rows", iters=50),
    "k-means++": dict(k=12, seed=3, iters=50),
    "random": dict(k=12, init="random", seed=4, iters=50),
    "tol": dict(k=12, seed=5, iters=50, tol=1e-3),
    "empty clusters": dict(k=6, init="repeated rows", iters=10),
}


def blobs(n=2000, dim=8, centres=12, spread=3.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(centres, dim, generator=g, dtype=torch.float64) * spread
    ids = torch.randint(centres, (n,), generator=g)
    return (c[ids] + torch.randn(n, dim, generator=g, dtype=torch.float64)).to(dtype)


def options(case, x):
    opts = dict(CASES[case])
    if opts.get("init") == "first rows":
        opts["init"] = x[: opts["k"]].clone()
    if opts.get("init") == "repeated rows":  # three of the six start at one point
        opts["init"] = torch.cat([x[:3], x[3:4].repeat(3, 1)])
    k = opts.pop("k")
    return k, opts


def one_process(case, dtype=torch.float64):
    x = blobs(dtype=dtype)
    k, opts = options(case, x)
    return sharded_kmeans(x, k, **opts)


def test_lloyd_from_given_centroids_is_scikit_learns():
    x = blobs()
    ours = one_process("given")
    reference = KMeans(12, init=x[:12].numpy(), n_init=1, max_iter=50, tol=0, algorithm="lloyd")
    reference.fit(x.numpy())
    assert np.array_equal(ours.labels.numpy(), reference.labels_)
    assert np.allclose(ours.centroids.numpy(), reference.cluster_centers_, rtol=0, atol=1e-12)
    assert ours.inertia == pytest.approx(reference.inertia_, rel=1e-12)
    assert ours.labels.dtype == torch.int64 and ours.centroids.dtype == torch.float64


def test_an_empty_cluster_takes_the_farthest_point_as_scikit_learn_does():
    x = blobs()
    init = torch.cat([x[:5], x[4:5]])  # one of the two equal centroids gets no point
    ours = sharded_kmeans(x, 6, init=init, iters=10)
    reference = KMeans(6, init=init.numpy(), n_init=1, max_iter=10, tol=0, algorithm="lloyd")
    reference.fit(x.numpy())
    assert np.array_equal(ours.labels.numpy(), reference.labels_)
    assert np.allclose(ours.centroids.numpy(), reference.cluster_centers_, rtol=0, atol=1e-12)


def test_from_the_same_centroids_it_is_slade_kmeans():
    x = blobs(dtype=torch.float32)
    k, opts = options("empty clusters", x.double())
    ours = sharded_kmeans(x, k, **opts)
    exact = slade.kmeans(x, k, **opts)
    assert torch.equal(ours.labels, exact.labels)
    assert ours.centroids.dtype == torch.float32
    assert torch.allclose(ours.centroids, exact.centroids, rtol=0, atol=1e-6)
    assert ours.iterations == exact.iterations


def test_k_means_plus_plus_finds_the_blobs_scikit_learn_finds():
    x = blobs(spread=10.0, dtype=torch.float32)
    best = KMeans(12, n_init=10, random_state=0).fit(x.numpy()).inertia_
    found = [sharded_kmeans(x, 12, seed=s).inertia for s in range(8)]
    assert found == pytest.approx([best] * 8, rel=1e-4)
    # The check can fail: uniformly drawn starts miss some of the blobs.
    drawn = [sharded_kmeans(x, 12, seed=s, init="random").inertia for s in range(8)]
    assert max(drawn) > 1.5 * best


def test_the_same_seed_gives_the_same_clusters_and_another_seed_others():
    x = blobs()
    a, b, c = (sharded_kmeans(x, 12, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)
    assert not torch.equal(a.centroids, c.centroids)


def test_bad_arguments_are_named():
    x = blobs()
    with pytest.raises(slade.InvalidArgumentError, match="k=2001"):
        sharded_kmeans(x, 2001)
    with pytest.raises(slade.ShapeError, match="x must be a 2-D"):
        sharded_kmeans(x[:, 0], 3)
    spoilt = x.clone()
    spoilt[7, 2] = float("nan")
    with pytest.raises(slade.NonFiniteError, match="x contains 1 NaN"):
        sharded_kmeans(spoilt, 3)
    with pytest.raises(slade.ShapeError, match="init has shape"):
        sharded_kmeans(x, 3, init=x[:4])
    with pytest.raises(slade.InvalidArgumentError, match="unknown k-means init"):
        sharded_kmeans(x, 3, init="farthest")
    with pytest.raises(slade.InvalidArgumentError, match="tol"):
        sharded_kmeans(x, 3, tol=-1.0)


def _sharded(rank, folder):
    x = blobs(n=2001)  # 1001 and 1000 rows
    rows = distributed.shard_range(len(x))
    results = {}
    for case in CASES:
        k, opts = options(case, x)
        results[case] = sharded_kmeans(x[rows.start : rows.stop], k, **opts)
    torch.save(results, f"{folder}/rank{rank}.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sharded")
    spawn(_sharded, 2, str(folder))
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_give_the_clusters_of_one_process(two_ranks, case):
    x = blobs(n=2001)
    k, opts = options(case, x)
    one = sharded_kmeans(x, k, **opts)
    halves = [r[case] for r in two_ranks]
    assert torch.equal(torch.cat([h.labels for h in halves]), one.labels)
    for half in halves:
        assert torch.allclose(half.centroids, one.centroids, rtol=0, atol=1e-12)
        assert half.inertia == pytest.approx(one.inertia, rel=1e-12)
        assert half.iterations == one.iterations
    assert one.iterations > 1
