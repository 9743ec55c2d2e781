"""Property-based tests (hypothesis) of k-NN, the retrieval metrics, the miners and k-means
against brute-force references written here with plain loops, on small random inputs with
ties, duplicates, single-class and all-distinct labels, float32 and float64.

Distances in the references are exact: squared Euclidean distances of the given float
values as fractions, so a tie is a tie and the tie rule (the smaller index) is checked
exactly. The implementations evaluate distances in float64 (k-NN, k-means) or compare
values rounded to their dtype against a threshold (cosine similarities in the miners):
examples that put two compared values within rounding of each other are rejected with
``assume``, either answer being right there, but for the exact ties every evaluation sees
alike (equal rows; points on a coarse grid, whose distances are exact in float32).

Every test runs the same examples on every run (``derandomize``).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import slade

PROPERTY = settings(max_examples=100, deadline=None, derandomize=True, database=None)
DTYPES = st.sampled_from([np.float32, np.float64])


# --- inputs -------------------------------------------------------------------------------


@st.composite
def points(draw, n: int | None = None, dim: int | None = None, dtype=None, min_n: int = 1):
    """An ``(n, dim)`` array of one of three kinds: values on a coarse grid (many exact ties
    and duplicates), rows drawn from a small pool (duplicates), or arbitrary floats."""
    dtype = draw(DTYPES) if dtype is None else dtype
    n = draw(st.integers(min_n, 10)) if n is None else n
    dim = draw(st.integers(1, 4)) if dim is None else dim
    kind = draw(st.sampled_from(["grid", "pool", "floats"]))
    width = 32 if dtype == np.float32 else 64
    # No magnitudes in (0, 1e-3): their squares vanish in float64 sums next to larger ones,
    # where the exact reference would still tell the distances apart.
    floats = st.floats(-8, 8, width=width).map(lambda v: 0.0 if abs(v) < 1e-3 else v)
    if kind == "grid":
        values = draw(st.lists(st.integers(-4, 4), min_size=n * dim, max_size=n * dim))
        return np.array(values, dtype=dtype).reshape(n, dim) / 2
    if kind == "pool":
        size = draw(st.integers(1, 3))
        pool = draw(st.lists(floats, min_size=size * dim, max_size=size * dim))
        pick = draw(st.lists(st.integers(0, size - 1), min_size=n, max_size=n))
        return np.array(pool, dtype=dtype).reshape(size, dim)[pick]
    values = draw(st.lists(floats, min_size=n * dim, max_size=n * dim))
    return np.array(values, dtype=dtype).reshape(n, dim)


@st.composite
def label_sets(draw, n: int):
    kind = draw(st.sampled_from(["one class", "all distinct", "random"]))
    if kind == "one class":
        return np.full(n, draw(st.integers(-3, 3)), dtype=np.int64)
    if kind == "all distinct":
        return np.arange(n, dtype=np.int64) * 3 - 2
    classes = draw(st.integers(1, 4))
    return np.array(draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n)))


def exact_sq_distances(a: np.ndarray, b: np.ndarray) -> list[list[Fraction]]:
    rows = [[Fraction(float(v)) for v in row] for row in a]
    cols = [[Fraction(float(v)) for v in row] for row in b]
    return [[sum(((x - y) ** 2 for x, y in zip(p, q)), Fraction(0)) for q in cols] for p in rows]


def on_grid(a: np.ndarray) -> bool:
    """Values that are multiples of 1/2 in [-4, 4]: every distance between such points is
    exact in float64 (and float32), so the float evaluation sees exactly the exact ties."""
    return bool(np.all((2 * a == np.round(2 * a)) & (np.abs(a) <= 4)))


def neighbour_order(query: np.ndarray, reference: np.ndarray | None) -> list[list[int]]:
    """Each query's references, nearest first, ties to the smaller index; a query is not
    its own neighbour when ``reference`` is None.

    The implementations rank by distances evaluated in float64, whose rounding may order
    two distances that differ by less than it, or tie exactly only in exact arithmetic,
    either way: such examples are rejected (``assume``), but for ties between equal rows,
    and all ties on the grid (:func:`on_grid`), which every evaluation sees alike."""
    self_search = reference is None
    gallery = query if self_search else reference
    exact = on_grid(query) and on_grid(gallery)
    d2 = exact_sq_distances(query, gallery)
    orders = []
    for i, row in enumerate(d2):
        candidates = [j for j in range(len(row)) if not (self_search and j == i)]
        order = sorted(candidates, key=lambda j: (row[j], j))
        for a, b in zip(order, order[1:]):
            if row[a] == row[b]:
                assume(exact or np.array_equal(gallery[a], gallery[b]))
            else:
                assume(float(row[b] - row[a]) > 1e-12 * (1 + float(row[a])))
        orders.append(order)
    return orders


# --- k-NN ---------------------------------------------------------------------------------


@st.composite
def searches(draw):
    dtype = draw(DTYPES)
    dim = draw(st.integers(1, 4))
    if draw(st.booleans()):
        query = draw(points(dim=dim, dtype=dtype, min_n=2))
        reference = None
        available = len(query) - 1
    else:
        query = draw(points(dim=dim, dtype=dtype))
        reference = draw(points(dim=dim, dtype=dtype))
        available = len(reference)
    return query, reference, draw(st.integers(1, available))


@pytest.mark.parametrize("engine", ["auto", "gemm", "kdtree", "torch"])
@PROPERTY
@given(search=searches())
def test_knn_is_the_brute_force_neighbours(engine, search):
    query, reference, k = search
    distances, indices = slade.knn(
        torch.from_numpy(query),
        None if reference is None else torch.from_numpy(reference),
        k=k,
        engine=engine,
    )
    order = neighbour_order(query, reference)
    assert indices.tolist() == [row[:k] for row in order]
    d2 = exact_sq_distances(query, query if reference is None else reference)
    want = [[math.sqrt(d2[i][j]) for j in row[:k]] for i, row in enumerate(order)]
    assert distances.dtype == torch.float32
    np.testing.assert_allclose(distances.numpy(), np.array(want, np.float32), rtol=1e-6, atol=0)


# --- retrieval metrics --------------------------------------------------------------------


def brute_force_metrics(
    query_labels, reference_labels, order, recall_at, exclude_lone, avg_of_avgs
):
    """The definitions (Musgrave et al.), one query at a time; None if every query is lone
    and lone queries are excluded."""
    scores, classes = [], []
    for i, label in enumerate(query_labels):
        r = sum(1 for j in order[i] if reference_labels[j] == label)
        if r == 0:
            if not exclude_lone:
                scores.append([0.0] * (3 + len(recall_at)))
                classes.append(label)
            continue
        hits = [reference_labels[j] == label for j in order[i]]
        found, average_precision = 0, 0.0
        for position in range(r):
            if hits[position]:
                found += 1
                average_precision += found / (position + 1)
        row = [average_precision / r, sum(hits[:r]) / r, float(hits[0])]
        row += [float(any(hits[:kk])) for kk in recall_at]
        scores.append(row)
        classes.append(label)
    if not scores:
        return None
    if avg_of_avgs:
        per_class = []
        for c in sorted(set(classes)):
            members = [s for s, cl in zip(scores, classes) if cl == c]
            per_class.append([sum(col) / len(members) for col in zip(*members)])
        scores = per_class
    means = [sum(col) / len(scores) for col in zip(*scores)]
    names = ["map_at_r", "r_precision", "precision_at_1"]
    return dict(zip(names + [f"recall_at_{kk}" for kk in recall_at], means))


@st.composite
def retrievals(draw):
    query, reference, _ = draw(searches())
    query_labels = draw(label_sets(len(query)))
    if reference is None:
        reference_labels = None
        available = len(query) - 1
    else:
        # Gallery labels overlapping the queries' in part: some queries are lone.
        reference_labels = draw(label_sets(len(reference)))
        available = len(reference)
    recall_at = draw(st.lists(st.integers(1, available), min_size=1, max_size=3, unique=True))
    return query, query_labels, reference, reference_labels, recall_at


@PROPERTY
@given(
    case=retrievals(),
    exclude_lone=st.booleans(),
    avg_of_avgs=st.booleans(),
    engine=st.sampled_from(["auto", "gemm", "kdtree"]),
    all_neighbours=st.booleans(),
)
def test_retrieval_metrics_are_the_brute_force_definitions(
    case, exclude_lone, avg_of_avgs, engine, all_neighbours
):
    """Also with ``k`` = every reference, more neighbours than the metrics need."""
    query, query_labels, reference, reference_labels, recall_at = case
    self_search = reference is None
    want = brute_force_metrics(
        query_labels.tolist(),
        (query_labels if self_search else reference_labels).tolist(),
        neighbour_order(query, reference),
        recall_at,
        exclude_lone,
        avg_of_avgs,
    )
    options = dict(
        recall_at=recall_at,
        exclude_lone_queries=exclude_lone,
        avg_of_avgs=avg_of_avgs,
        engine=engine,
        k=(len(query) - 1 if self_search else len(reference)) if all_neighbours else None,
    )
    args = [torch.from_numpy(query), torch.from_numpy(query_labels)]
    if not self_search:
        args += [torch.from_numpy(reference), torch.from_numpy(reference_labels)]
    if want is None:
        with pytest.raises(slade.InvalidArgumentError, match="lone"):
            slade.retrieval_metrics(*args, **options)
        return
    got = slade.retrieval_metrics(*args, **options)
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name


# --- the multi-similarity miner -----------------------------------------------------------


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """cos of two rows in float64, each scaled by 1 / max(|row|, 1e-12)."""
    na = max(math.sqrt(sum(float(v) ** 2 for v in a)), 1e-12)
    nb = max(math.sqrt(sum(float(v) ** 2 for v in b)), 1e-12)
    return sum(float(x) * float(y) for x, y in zip(a, b)) / (na * nb)


def rounding(dtype) -> float:
    return 1e-5 if dtype == np.float32 else 1e-12


@PROPERTY
@given(data=st.data(), epsilon=st.sampled_from([0.0, 0.05, 0.1, 0.3]))
def test_multi_similarity_miner_keeps_the_pairs_of_its_definition(data, epsilon):
    x = data.draw(points(min_n=2))
    labels = data.draw(label_sets(len(x)))
    n = len(x)
    s = [[cosine(x[i], x[j]) for j in range(n)] for i in range(n)]
    tol = rounding(x.dtype)

    def decided(value: float, threshold: float) -> None:
        """Rejects the example when value is within rounding of threshold. Exact ties are
        among them: with epsilon 0, a duplicated row is both the hardest negative and a
        positive, and the GEMM's rounding (which may differ between equal columns, in
        PML as here) decides."""
        assume(abs(value - threshold) > tol)

    positives, negatives = [], []
    for i in range(n):
        pos = [j for j in range(n) if j != i and labels[j] == labels[i]]
        neg = [k for k in range(n) if labels[k] != labels[i]]
        if neg:
            hardest = max(neg, key=lambda k: s[i][k])
            for j in pos:
                decided(s[i][j] - epsilon, s[i][hardest])
                if s[i][j] - epsilon < s[i][hardest]:
                    positives.append((i, j))
        if pos:
            easiest = min(pos, key=lambda j: s[i][j])
            for k in neg:
                decided(s[i][k] + epsilon, s[i][easiest])
                if s[i][k] + epsilon > s[i][easiest]:
                    negatives.append((i, k))
    a1, p, a2, neg_ = slade.miners.multi_similarity(
        torch.from_numpy(x), torch.from_numpy(labels), epsilon=epsilon
    )
    assert list(zip(a1.tolist(), p.tolist())) == positives
    assert list(zip(a2.tolist(), neg_.tolist())) == negatives
    assert all(t.dtype == torch.int64 for t in (a1, p, a2, neg_))


# --- basis pair mining --------------------------------------------------------------------

THRESHOLDS = [-0.77, -0.31, 0.13, 0.42, 0.66, 0.93]
RULES = ["mu+", "mu-", "mid", "all", "auto"]


def rule_value(rule: float | str, side: str, mu_pos: float, mu_neg: float) -> float:
    if not isinstance(rule, str):
        return rule
    if rule == "auto":
        rule = "mu+" if side == "t1" else "mu-"
    return {
        "mu+": mu_pos,
        "mu-": mu_neg,
        "mid": (mu_pos + mu_neg) / 2,
        "all": -2.0 if side == "t1" else 2.0,
    }[rule]


@PROPERTY
@given(
    data=st.data(),
    t1=st.sampled_from(THRESHOLDS + RULES),
    t2=st.sampled_from(THRESHOLDS + RULES),
    mu=st.tuples(st.sampled_from(THRESHOLDS), st.sampled_from(THRESHOLDS)),
    agreement=st.booleans(),
)
def test_basis_pairs_follow_the_t1_t2_rules(data, t1, t2, mu, agreement):
    dim = data.draw(st.integers(1, 4))
    emb = data.draw(points(dim=dim, dtype=np.float32, min_n=2))
    num_basis = data.draw(st.integers(1, 4))
    weight = data.draw(points(n=num_basis, dim=dim, dtype=np.float32))
    pseudo = data.draw(label_sets(len(emb)))
    pseudo = pseudo - pseudo.min()
    basis = slade.FeatureBasis(num_basis, dim)
    with torch.no_grad():
        basis.weight.copy_(torch.from_numpy(weight))
        basis.mu_pos.fill_(mu[0])
        basis.mu_neg.fill_(mu[1])
        basis.updates_pos.fill_(1)
        basis.updates_neg.fill_(1)
    mu_pos, mu_neg = (float(np.float32(m)) for m in mu)
    low, high = rule_value(t1, "t1", mu_pos, mu_neg), rule_value(t2, "t2", mu_pos, mu_neg)
    r = [[sum(float(w) * float(e) for w, e in zip(row, f)) for row in weight] for f in emb]
    n = len(emb)
    s = [[cosine(np.array(r[i]), np.array(r[j])) for j in range(n)] for i in range(n)]
    for i in range(n):
        for j in range(n):
            assume(abs(s[i][j] - low) > 1e-5 and abs(s[i][j] - high) > 1e-5)
    positives = [
        (i, j)
        for i in range(n)
        for j in range(n)
        if i != j and s[i][j] >= low and (not agreement or pseudo[i] == pseudo[j])
    ]
    negatives = [
        (i, j)
        for i in range(n)
        for j in range(n)
        if i != j and s[i][j] <= high and (not agreement or pseudo[i] != pseudo[j])
    ]
    a1, p, a2, neg = slade.miners.basis_pairs(
        basis,
        torch.from_numpy(emb),
        torch.from_numpy(pseudo),
        t1=t1,
        t2=t2,
        require_pseudo_agreement=agreement,
    )
    assert list(zip(a1.tolist(), p.tolist())) == positives
    assert list(zip(a2.tolist(), neg.tolist())) == negatives


@PROPERTY
@given(rule=st.sampled_from(["mu+", "mu-", "mid", "auto"]), side=st.sampled_from(["t1", "t2"]))
def test_a_rule_on_undefined_statistics_is_refused(rule, side):
    basis = slade.FeatureBasis(2, 3)
    thresholds = {"t1": 0.5, "t2": -0.5, side: rule}
    with pytest.raises(slade.InvalidArgumentError, match=side):
        slade.miners.basis_pairs(basis, torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), **thresholds)


# --- k-means ------------------------------------------------------------------------------


def sq_distances_f64(x: np.ndarray, c: np.ndarray) -> list[list[float]]:
    return [[sum((float(a) - float(b)) ** 2 for a, b in zip(p, q)) for q in c] for p in x]


def brute_force_lloyd(x: np.ndarray, init: np.ndarray, iters: int):
    """Lloyd's algorithm with plain loops, in float64, centroids stored in x's dtype after
    each update: assign each point to its nearest centroid (ties to the smaller index),
    stop when no label changes, else move each centroid to the mean of its points; a
    cluster left empty takes the point farthest from its own centroid (farthest first,
    ties to the smaller point index), which leaves its old cluster. Labels are finally
    assigned to the last centroids. Rejects (``assume``) examples in which a point is
    within rounding of two centroids (the float64 sums may break such ties either way),
    but for equal initial centroids, which are equally far for every summation order, and
    examples whose choice of the farthest points is within rounding."""
    n, k = len(x), len(init)
    c = [list(map(float, row)) for row in init]

    def assign(c, initial):
        d2 = sq_distances_f64(x, np.array(c))
        labels = []
        for row in d2:
            order = sorted(range(k), key=lambda j: (row[j], j))
            if k > 1 and not (initial and c[order[0]] == c[order[1]]):
                assume(row[order[1]] - row[order[0]] > 1e-9 * (1 + row[order[0]]))
            labels.append(order[0])
        return labels, d2

    previous = None
    for step in range(iters):
        labels, d2 = assign(c, step == 0)
        if labels == previous:
            break
        members = [[i for i in range(n) if labels[i] == j] for j in range(k)]
        empty = [j for j in range(k) if not members[j]]
        if empty:
            own = [d2[i][labels[i]] for i in range(n)]
            ranked = sorted(range(n), key=lambda i: (-own[i], i))
            for p, q in zip(ranked, ranked[1 : len(empty) + 1]):
                if not (labels[p] == labels[q] and np.array_equal(x[p], x[q])):
                    assume(own[p] - own[q] > 1e-9 * (1 + own[p]))
            far = ranked[: len(empty)]
            for j, point in zip(empty, far):
                members[labels[point]].remove(point)
                members[j] = [point]
        for j in range(k):
            if members[j]:
                mean = [
                    sum(float(x[i][d]) for i in members[j]) / len(members[j])
                    for d in range(x.shape[1])
                ]
                c[j] = [float(v) for v in np.array(mean).astype(x.dtype)]
        previous = labels
    labels, d2 = assign(c, iters == 0)
    return np.array(c), labels, sum(d2[i][labels[i]] for i in range(n))


@st.composite
def clusterings(draw):
    x = draw(points(min_n=1))
    k = draw(st.integers(1, len(x)))
    return x, k


@PROPERTY
@given(case=clusterings(), iters=st.integers(0, 6), data=st.data())
def test_kmeans_from_given_centroids_is_the_brute_force_lloyd(case, iters, data):
    x, k = case
    init = data.draw(points(n=k, dim=x.shape[1], dtype=x.dtype))
    centroids, labels, inertia = brute_force_lloyd(x, init, iters)
    got = slade.kmeans(torch.from_numpy(x), k, init=torch.from_numpy(init), iters=iters)
    assert got.labels.tolist() == labels
    np.testing.assert_allclose(got.centroids.numpy(), centroids, rtol=1e-6, atol=1e-6)
    assert got.inertia == pytest.approx(inertia, rel=1e-9, abs=1e-9)


@PROPERTY
@given(
    case=clusterings(),
    init=st.sampled_from(["k-means++", "random"]),
    seed=st.integers(0, 3),
    iters=st.integers(0, 10),
)
def test_kmeans_labels_are_the_nearest_returned_centroids(case, init, seed, iters):
    x, k = case
    got = slade.kmeans(torch.from_numpy(x), k, init=init, seed=seed, iters=iters)
    c = got.centroids.numpy()
    assert c.shape == (k, x.shape[1])
    assert c.dtype == (np.float64 if x.dtype == np.float64 else np.float32)
    labels = got.labels.tolist()
    d2 = exact_sq_distances(x, c)
    for i, row in enumerate(d2):
        best = min(row)
        # The nearest centroid, to the rounding of a float64 evaluation.
        assert float(row[labels[i]] - best) <= 1e-12 * (1 + float(best)), i
    inertia = sum(float(d2[i][labels[i]]) for i in range(len(x)))
    assert got.inertia == pytest.approx(inertia, rel=1e-9, abs=1e-12)
    if got.iterations < iters:
        # Converged: every non-empty cluster's centroid is the mean of its points.
        for j in set(labels):
            mean = x[np.array(labels) == j].astype(np.float64).mean(0)
            np.testing.assert_allclose(c[j], mean, rtol=1e-6, atol=1e-6)


@PROPERTY
@given(x=points(min_n=1), seed=st.integers(0, 3))
def test_kmeans_with_a_cluster_per_point_has_zero_inertia(x, seed):
    """k = N (duplicates included): every point can sit on a centroid."""
    got = slade.kmeans(torch.from_numpy(x), len(x), seed=seed)
    assert got.inertia == 0.0
    np.testing.assert_array_equal(got.centroids.numpy()[got.labels.numpy()], x)
