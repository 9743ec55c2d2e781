"""Scale-out on this machine: the Python-step trainers on one process against two Gloo ranks
with the same global batch, the time a step spends in collectives, and k-means of a pool
gathered on every rank against k-means sharded over the ranks.

    python bench/distributed.py
    python bench/distributed.py --steps 40 --n 48000 --k 400

Rows, each from one run of this script:

- ``step``: TorchTeacherTrainer and TorchStudentTrainer on the ConvNet (1 x 28 x 28, dim
  128), global batch 64 labeled (+ 64 unlabeled for the student), median step time after
  warm-up, as images/s: one process with ``--threads`` threads against 2 ranks with
  ``--threads / 2`` each (the same cores). ``collectives`` is the time per step a rank
  spends in ``distributed.gather`` (forward), ``average_gradients`` and ``all_ranks``;
  BatchNorm's statistics and the gather's backward run inside the step and are not in it.
- ``k-means``: an ``--n x --dim`` pool of unit vectors, ``--k`` clusters: ``slade.kmeans``
  on all points in one process (what every rank runs on the gathered embeddings) against
  ``slade.sharded_kmeans`` on 2 ranks holding half the points each, and in one process;
  time, inertia and the embeddings each rank holds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import slade
from slade import distributed
from slade.deploy.networks import ConvNetEmbedding

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from ranks import spawn  # noqa: E402

OPTIM = {"name": "adam", "lr": 1e-3}
STUDENT = {"variant": "basis_mining", "basis_warmup": 0, "t1": "mu+", "t2": "all"}
TIMED = ("gather", "average_gradients", "all_ranks")


def network() -> torch.nn.Module:
    return ConvNetEmbedding(1, 128)


def trainer(kind: str):
    if kind == "teacher":
        return slade.TorchTeacherTrainer(network, OPTIM, dim=128, seed=0)
    return slade.TorchStudentTrainer(network, OPTIM, dim=128, num_basis=16, objective=STUDENT, seed=0)


def global_batch(step: int, batch: int) -> tuple[torch.Tensor, ...]:
    """m-per-class batches (m = 8): labeled images and labels, unlabeled and pseudo labels."""
    g = torch.Generator().manual_seed(step)
    labels = torch.arange(batch // 8).repeat_interleave(8)
    patterns = torch.randn(2 * batch // 8, 1, 28, 28, generator=g)
    labeled = patterns[labels] + 0.5 * torch.randn(batch, 1, 28, 28, generator=g)
    unlabeled = patterns[batch // 8 + labels] + 0.5 * torch.randn(batch, 1, 28, 28, generator=g)
    return labeled, labels, unlabeled, labels.clone()


def timed_collectives() -> dict[str, float]:
    """Wraps the collectives the step calls so that their time adds up in the returned dict."""
    spent = {"seconds": 0.0}
    for name in TIMED:
        original = getattr(distributed, name)

        def wrapper(*args, _original: Callable = original, **kwargs):
            began = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                spent["seconds"] += time.perf_counter() - began

        setattr(distributed, name, wrapper)
    return spent


def step_times(kind: str, steps: int, batch: int) -> tuple[list[float], float]:
    """Seconds of each timed step of this process's share, and collective seconds per step."""
    spent = timed_collectives()
    model = trainer(kind)
    rows = distributed.share(batch)
    times = []
    for step in range(steps + 3):
        labeled, labels, unlabeled, pseudo = (t[rows] for t in global_batch(step, batch))
        if step == 3:
            spent["seconds"] = 0.0
        began = time.perf_counter()
        if kind == "teacher":
            model.step(labeled, labels)
        else:
            model.step(labeled, labels, unlabeled, pseudo)
        if step >= 3:
            times.append(time.perf_counter() - began)
    return times, spent["seconds"] / steps


def unit_vectors(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Points around n / 100 random centres on the unit sphere, as embeddings cluster."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(max(1, n // 100), dim, generator=g)
    x = centres[torch.randint(len(centres), (n,), generator=g)] + 0.3 * torch.randn(n, dim, generator=g)
    return torch.nn.functional.normalize(x, dim=1)


def kmeans_run(function: Callable, x: torch.Tensor, k: int) -> dict[str, float]:
    began = time.perf_counter()
    result = function(x, k, seed=0)
    return {"seconds": time.perf_counter() - began, "inertia": result.inertia, "rows": len(x)}


def rank_main(rank: int, args: argparse.Namespace, folder: str) -> None:
    torch.set_num_threads(max(1, args.threads // 2))
    out = {kind: step_times(kind, args.steps, args.batch) for kind in ("teacher", "student")}
    x = unit_vectors(args.n, args.dim)
    shard = distributed.shard_range(len(x))
    out["sharded"] = kmeans_run(slade.sharded_kmeans, x[shard.start : shard.stop], args.k)
    torch.save(out, Path(folder) / f"rank{rank}.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="cores in use on each side")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64, help="global labeled batch")
    parser.add_argument("--n", type=int, default=30_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=250)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    one = {kind: step_times(kind, args.steps, args.batch) for kind in ("teacher", "student")}
    x = unit_vectors(args.n, args.dim)
    gathered = kmeans_run(slade.kmeans, x, args.k)
    sharded_one = kmeans_run(slade.sharded_kmeans, x, args.k)
    with tempfile.TemporaryDirectory() as folder:
        spawn(rank_main, 2, args, folder)
        ranks = [torch.load(Path(folder) / f"rank{r}.pt", weights_only=False) for r in range(2)]

    print(f"{torch.get_num_threads()} threads; global batch {args.batch} (+{args.batch} unlabeled "
          f"for the student), ConvNet 28x28 dim 128, median of {args.steps} steps")
    print(f"{'step':8s} {'1 process img/s':>16s} {'2 ranks img/s':>14s} {'ratio':>6s} "
          f"{'collectives ms/step':>20s}")
    for kind in ("teacher", "student"):
        images = args.batch * (1 if kind == "teacher" else 2)
        single = images / statistics.median(one[kind][0])
        # A step ends when the slower rank ends it: the global batch per the slower median.
        double = images / max(statistics.median(r[kind][0]) for r in ranks)
        collective = 1e3 * max(r[kind][1] for r in ranks)
        print(f"{kind:8s} {single:16.0f} {double:14.0f} {double / single:6.2f} {collective:20.1f}")
    print(f"\nk-means of {args.n} x {args.dim} unit vectors, k = {args.k}, 20 iterations at most")
    print(f"{'':34s} {'seconds':>8s} {'inertia':>10s} {'rows per rank':>14s}")
    sharded_two = max(r["sharded"]["seconds"] for r in ranks)
    rows = [
        ("slade.kmeans, gathered (1 process)", gathered),
        ("sharded_kmeans, 1 process", sharded_one),
        ("sharded_kmeans, 2 ranks", {**ranks[0]["sharded"], "seconds": sharded_two}),
    ]
    for name, row in rows:
        print(f"{name:34s} {row['seconds']:8.2f} {row['inertia']:10.2f} {row['rows']:14d}")
    relative = ranks[0]["sharded"]["inertia"] / gathered["inertia"] - 1
    print(f"sharded 2 ranks vs 1 process: {sharded_two / sharded_one['seconds']:.2f}x the time; "
          f"inertia {100 * relative:+.2f}% against gathered")


if __name__ == "__main__":
    main()
