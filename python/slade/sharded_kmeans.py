"""k-means with the points sharded over the ranks of a process group (DESIGN.md §6).

Each rank keeps its own rows of the data (the ranks' rows, in rank order, are the data
set); only centroids, per-cluster sums and counts, a few candidate points and scalars cross
between the ranks (``torch.distributed`` all-reduce on the points' device: Gloo on the CPU,
NCCL on GPUs). Outside a process group the same algorithm runs on all the points, so a
result does not depend on the number of ranks (up to the order of float64 sums).

- Seeding (``init="k-means++"``): scikit-learn's greedy k-means++ over the global set. The
  first centroid is a uniformly drawn point; each next one is the best of ``2 + ln k``
  candidates drawn by D^2 sampling (probability proportional to the squared distance to
  the nearest centroid so far): the one that lowers the global sum of those distances most.
  Every rank draws the same numbers from one generator seeded with ``seed``; a draw falls
  to the rank whose part of the cumulative D^2 holds it. ``"random"``: ``k`` distinct
  points drawn uniformly.
- Lloyd iterations: each rank assigns its points to the nearest centroid (float64
  distances ``|x|^2 + |c|^2 - 2 x.c``, ties to the smaller index) and sums them per cluster
  in float64; sums and counts are all-reduced, and every rank computes the same means. An
  empty cluster is re-seeded with the point farthest from its own centroid (farthest first,
  ties to the smaller global index), which leaves its old cluster, as :func:`slade.kmeans`
  and scikit-learn do. The loop stops as :func:`slade.kmeans`'s: after ``iters``
  iterations, when no label changes on any rank, or when the squared centroid shift is at
  most ``tol`` times the mean per-feature variance of the global set.

The seeding draws differ from :func:`slade.kmeans`'s, so the two give different clusterings
for the same seed; from the same initial centroids they give the same one, except for points
whose two nearest centroids are equally far within float64 rounding (:func:`slade.kmeans`
re-decides those exactly).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from . import distributed
from ._convert import as_float, as_int, as_tensor
from .cluster import KMeansResult, _init_arg
from .errors import DeviceError, DtypeError, InvalidArgumentError, NonFiniteError, ShapeError

#: Rows of points per block of the distance GEMM (a block holds rows x k float64 values).
BLOCK_ROWS = 4096


@torch.no_grad()
def sharded_kmeans(
    x: Any,
    k: int,
    *,
    iters: int = 20,
    seed: int = 0,
    init: Any = "k-means++",
    tol: float = 0.0,
) -> KMeansResult:
    """k-means of the rows of every rank's ``x`` together, each rank's points staying on it.

    Args:
        x: this rank's ``(n, dim)`` points (float tensor or numpy array, n >= 1 on every
            rank, the same dim everywhere).
        k: number of clusters, ``1 <= k <=`` the total number of points.
        iters, seed, tol: as :func:`slade.kmeans`.
        init: ``"k-means++"``, ``"random"`` or a ``(k, dim)`` tensor of initial centroids
            (rank 0's is used).

    Returns:
        ``KMeansResult(centroids, labels, inertia)`` with ``.iterations``: the centroids
        (float64 for float64 points, float32 otherwise) and the global inertia are the same
        on every rank; ``labels`` are this rank's points' cluster ids.
    """
    x = _points(x)
    iters, seed, tol, init = (
        _count(iters, "iters"),
        _count(seed, "seed"),
        _tol(tol),
        _init_arg(init),
    )
    points = _Shard(x)
    k = _clusters(k, points.total)
    centroids = _initial_centroids(points, k, init, seed).to(points.kind)
    limit = tol * points.mean_variance() if tol > 0 else 0.0
    previous = settled = None
    iterations = 0
    for _ in range(iters):
        labels, distances = points.assign(centroids)
        if previous is not None and distributed.all_ranks(torch.equal(previous, labels)):
            settled = labels  # the centroids are already the means of these labels
            break
        centroids, shift = _update(points, labels, distances, centroids)
        previous, iterations = labels, iterations + 1
        if shift <= limit:
            break
    labels = settled if settled is not None else points.assign(centroids)[0]
    result = KMeansResult(centroids, labels, points.inertia(labels, centroids))
    result.iterations = iterations
    return result


class _Shard:
    """This rank's points (float64) and their place among all ranks' points."""

    def __init__(self, x: torch.Tensor) -> None:
        self.kind = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.x = x.to(torch.float64).contiguous()
        self.norms = (self.x * self.x).sum(1)
        slots = torch.zeros(distributed.world_size(), 2, dtype=torch.int64, device=x.device)
        slots[distributed.rank()] = torch.tensor(x.shape, device=x.device)
        shapes = distributed.all_sum(slots, "gathering the shard sizes").tolist()
        if any(dim != x.shape[1] for _, dim in shapes):
            raise ShapeError(
                f"x must have the same dim on every rank, got {[d for _, d in shapes]}"
            )
        self.rows_per_rank = [n for n, _ in shapes]
        self.total = sum(self.rows_per_rank)
        self.offset = sum(self.rows_per_rank[: distributed.rank()])

    def sq_distances(self, c: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """``|x - c_j|^2`` (float64, >= 0) of the points ``rows`` to the rows of ``c``."""
        c = c.to(torch.float64)
        keys = torch.addmm((c * c).sum(1)[None], self.x[rows], c.T, alpha=-2)
        return keys.add_(self.norms[rows, None]).clamp_min_(0)

    def assign(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest centroid of each point and its squared distance, block by block."""
        c = c.to(torch.float64)
        parts = [self._nearest(c, start) for start in range(0, self.x.shape[0], BLOCK_ROWS)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _nearest(self, c: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows ``start:start + BLOCK_ROWS``: the GEMM's nearest centroid, re-decided by
        ``sum_l (x_l - c_l)^2`` (ties to the smaller index) among the centroids whose GEMM
        distance is within twice its rounding bound of the best (identical centroids, say,
        whose GEMM columns round differently)."""
        rows = slice(start, start + BLOCK_ROWS)
        distances = self.sq_distances(c, rows)
        best = distances.min(1)
        labels, values = best.indices, best.values
        gamma = 1.1 * (c.shape[1] + 16) * 2.0**-53
        bound = 2 * gamma * (self.norms[rows].sqrt() + (c * c).sum(1).max().sqrt()) ** 2
        near = distances <= (values + bound)[:, None]
        tied = (near.sum(1) > 1).nonzero()[:, 0]
        step = max(1, 2**22 // (c.shape[0] * c.shape[1]))
        for ids in tied.split(step):
            exact = ((self.x[rows][ids, None] - c[None]) ** 2).sum(-1)
            exact = exact.where(near[ids], torch.inf)
            labels[ids] = exact.argmin(1)
            values[ids] = exact.min(1).values
        return labels, values

    def owned(self, ids: torch.Tensor) -> torch.Tensor:
        """The global points ``ids`` (float64) on every rank, each sent by its owner."""
        ids = ids.to(self.x.device)
        rows = torch.zeros(len(ids), self.x.shape[1], dtype=torch.float64, device=self.x.device)
        mine = (ids >= self.offset) & (ids < self.offset + self.x.shape[0])
        rows[mine] = self.x[ids[mine] - self.offset]
        return distributed.all_sum(rows, "sending k-means points")

    def per_rank(self, values: torch.Tensor) -> torch.Tensor:
        """Every rank's ``values`` (same shape on each), stacked in rank order, on the CPU."""
        world = distributed.world_size()
        rows = torch.zeros(world, *values.shape, dtype=values.dtype, device=values.device)
        rows[distributed.rank()] = values
        return distributed.all_sum(rows, "sharing k-means sums").cpu()

    def drawn(
        self, closest: torch.Tensor, rank_sums: torch.Tensor, draws: torch.Tensor
    ) -> torch.Tensor:
        """The points (float64, on every rank) where the cumulative D^2 over all ranks'
        points in rank order (``closest`` here, ``rank_sums`` each rank's total) first
        reaches each of the CPU float64 ``draws`` (numpy's ``searchsorted``, side left, as
        scikit-learn draws its candidates); each is sent by the rank that holds it."""
        ends = rank_sums.cumsum(0)
        owners = torch.searchsorted(ends, draws).clamp_max(len(ends) - 1)
        mine = owners == distributed.rank()
        start = ends[distributed.rank()] - rank_sums[distributed.rank()]
        local = torch.searchsorted(closest.cumsum(0), (draws[mine] - start).to(closest.device))
        rows = torch.zeros(len(draws), self.x.shape[1], dtype=torch.float64, device=self.x.device)
        rows[mine.to(self.x.device)] = self.x[local.clamp_max(self.x.shape[0] - 1)]
        return distributed.all_sum(rows, "sending the k-means++ candidates")

    def mean_variance(self) -> float:
        """Mean over features of the population variance of all ranks' points."""
        mean = distributed.all_sum(self.x.sum(0), "summing the points") / self.total
        squares = distributed.all_sum(((self.x - mean) ** 2).sum(0), "summing the points")
        return float((squares / self.total).mean())

    def inertia(self, labels: torch.Tensor, c: torch.Tensor) -> float:
        """Sum over all ranks of the squared distances of the points to their centroids."""
        diff = self.x - c.to(torch.float64)[labels]
        total = (diff * diff).sum().reshape(1)
        return float(distributed.all_sum(total, "summing the inertia"))


def _initial_centroids(points: _Shard, k: int, init: Any, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if isinstance(init, torch.Tensor):
        return _given(init, points, k)
    if init == "random":
        return points.owned(torch.randperm(points.total, generator=generator)[:k])
    if init == "k-means++":
        return _plus_plus(points, k, generator)
    raise InvalidArgumentError(
        f'unknown k-means init {init!r}; expected "k-means++", "random" or a (k, dim) tensor '
        "of centroids"
    )


def _plus_plus(points: _Shard, k: int, generator: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ (see the module docs), in float64: two collectives per centroid."""
    trials = 2 + int(math.log(k))
    first = torch.randint(points.total, (1,), generator=generator)
    centroids = [points.owned(first)]
    closest = points.sq_distances(centroids[0])[:, 0]
    rank_sums = points.per_rank(closest.sum().reshape(1))[:, 0]
    for _ in range(1, k):
        draws = torch.rand(trials, generator=generator, dtype=torch.float64) * rank_sums.sum()
        candidates = points.drawn(closest, rank_sums, draws)
        distances = torch.minimum(closest[:, None], points.sq_distances(candidates))
        sums = points.per_rank(distances.sum(0))  # (ranks, trials)
        best = int(torch.argmin(sums.sum(0)))
        closest, rank_sums = distances[:, best].contiguous(), sums[:, best]
        centroids.append(candidates[best : best + 1])
    return torch.cat(centroids)


def _given(init: torch.Tensor, points: _Shard, k: int) -> torch.Tensor:
    """User-given centroids, checked, rank 0's on every rank."""
    c = _points(init, "init")
    if c.device != points.x.device:
        raise DeviceError(
            f"init is on {c.device} but x is on {points.x.device}; move them to one device"
        )
    if tuple(c.shape) != (k, points.x.shape[1]):
        raise ShapeError(
            f"init has shape {list(c.shape)} but k={k} centroids of dim "
            f"{points.x.shape[1]} (the dim of x) are needed"
        )
    c = c.to(points.x.device, torch.float64).contiguous()
    if distributed.rank() != 0:
        c.zero_()
    return distributed.all_sum(c, "sharing the initial centroids")


def _update(
    points: _Shard, labels: torch.Tensor, distances: torch.Tensor, centroids: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """The global means of the clusters (empty ones re-seeded) and the squared shift."""
    k = centroids.shape[0]
    sums = torch.zeros(k, points.x.shape[1], dtype=torch.float64, device=points.x.device)
    sums.index_add_(0, labels, points.x)
    counts = torch.bincount(labels, minlength=k).to(torch.float64)
    stats = distributed.all_sum(torch.cat([sums, counts[:, None]], 1), "summing the clusters")
    sums, counts = stats[:, :-1], stats[:, -1]
    empty = (counts == 0).nonzero()[:, 0]
    if len(empty):
        _reseed(points, labels, distances, empty, sums, counts)
    old = centroids.to(torch.float64)
    means = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], old)
    updated = means.to(points.kind)
    return updated, float(((updated.to(torch.float64) - old) ** 2).sum())


def _reseed(
    points: _Shard,
    labels: torch.Tensor,
    distances: torch.Tensor,
    empty: torch.Tensor,
    sums: torch.Tensor,
    counts: torch.Tensor,
) -> None:
    """Moves the points farthest from their own centroids (farthest first, ties to the
    smaller global id) into the ``empty`` clusters, in place on ``sums`` and ``counts``."""
    m = len(empty)
    order = torch.sort(distances, descending=True, stable=True).indices[:m]
    # Each rank fills its own slots (present, distance, global id, label); the sum over
    # ranks holds every rank's candidates.
    slots = torch.zeros(distributed.world_size(), m, 4, dtype=torch.float64, device=sums.device)
    slots[distributed.rank(), : len(order)] = torch.stack(
        [
            torch.ones_like(distances[order]),
            distances[order],
            (order + points.offset).to(torch.float64),
            labels[order].to(torch.float64),
        ],
        1,
    )
    shared = distributed.all_sum(slots, "re-seeding empty clusters").view(-1, 4)
    shared = shared[shared[:, 0] == 1]
    shared = shared[torch.argsort(shared[:, 2], stable=True)]
    far = shared[torch.sort(shared[:, 1], descending=True, stable=True).indices[:m]]
    moved = points.owned(far[:, 2].to(torch.int64))
    for j, source, row in zip(empty.tolist(), far[:, 3].to(torch.int64).tolist(), moved):
        sums[source] -= row
        counts[source] -= 1
        sums[j] = row
        counts[j] = 1


def _points(x: Any, name: str = "x") -> torch.Tensor:
    """``x`` checked: a non-empty 2-D floating tensor of finite values."""
    x = as_tensor(x, name)
    if x.dim() != 2:
        raise ShapeError(
            f"{name} must be a 2-D tensor (samples x dim), got {x.dim()}-D with shape {list(x.shape)}"
        )
    if not x.is_floating_point():
        raise DtypeError(f"{name} must be a floating tensor (float32 or float64), got {x.dtype}")
    if x.numel() == 0:
        raise InvalidArgumentError(
            f"{name} is empty (shape {list(x.shape)}); it needs at least one row and one column"
        )
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise NonFiniteError(f"{name} contains {bad} NaN or Inf value(s); remove or fix them first")
    return x


def _count(value: Any, name: str) -> int:
    number = as_int(value, name)
    if number < 0:
        raise InvalidArgumentError(f"{name} must be a non-negative integer, got {number}")
    return number


def _clusters(k: Any, total: int) -> int:
    k = _count(k, "k")
    if k == 0:
        raise InvalidArgumentError("k must be at least 1")
    if k > total:
        raise InvalidArgumentError(
            f"k={k} is larger than the number of points on all ranks ({total}); k-means needs "
            "k <= N"
        )
    return k


def _tol(tol: Any) -> float:
    value = as_float(tol, "tol")
    if not (math.isfinite(value) and value >= 0):
        raise InvalidArgumentError(f"tol must be a finite number >= 0, got {value}")
    return value
