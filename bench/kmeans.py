"""k-means: slade vs faiss.Kmeans vs scikit-learn KMeans, on the same data in one run.

N = 48,000 unit-norm points of dim 512 drawn around 300 Gaussian centres (realistic
embeddings), k = 400 clusters, at most 20 Lloyd iterations each: faiss with its own random
seeding, scikit-learn with greedy k-means++ (n_init=1), slade with k-means++.
slade stops early once no label changes (as scikit-learn does; faiss does not).
Prints each one's time and inertia (the sum of squared distances to the nearest
centroid, recomputed here in float64 for all three) and, last,
`time_vs_faiss: X.XX  inertia_vs_sklearn: Y.YYYY` (slade's time / faiss's time, slade's
inertia / scikit-learn's).

    python bench/kmeans.py [--n 48000] [--dim 512] [--k 400] [--iters 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import slade


def clustered_unit_vectors(n: int, dim: int, centres: int, seed: int = 0) -> np.ndarray:
    """Unit-norm points around `centres` random directions (cosine to the centre ~0.7)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.nn.functional.normalize(torch.randn(centres, dim, generator=g), dim=1)
    labels = torch.randint(0, centres, (n,), generator=g)
    noise = torch.randn(n, dim, generator=g) / dim**0.5
    x = torch.nn.functional.normalize(c[labels] + noise, dim=1)
    return x.numpy().copy()


def inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    """Float64 sum of squared distances to the nearest centroid (for every method alike)."""
    labels = slade.knn(x.astype(np.float64), centroids.astype(np.float64), k=1)[1][:, 0]
    diff = x.astype(np.float64) - centroids.astype(np.float64)[labels.numpy()]
    return float((diff * diff).sum())


SLADE_ITERATIONS = []


def run_slade(x, k, iters, seed):
    start = time.perf_counter()
    result = slade.kmeans(x, k, iters=iters, seed=seed)
    seconds = time.perf_counter() - start
    SLADE_ITERATIONS.append(result.iterations)
    return seconds, result.centroids.numpy()


def run_faiss(x, k, iters, seed):
    import faiss

    start = time.perf_counter()
    km = faiss.Kmeans(x.shape[1], k, niter=iters, seed=seed + 1, verbose=False)
    km.train(x)
    return time.perf_counter() - start, km.centroids


def run_sklearn(x, k, iters, seed):
    from sklearn.cluster import KMeans

    start = time.perf_counter()
    km = KMeans(k, n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd", random_state=seed)
    km.fit(x)
    return time.perf_counter() - start, km.cluster_centers_


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=48_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=400)
    parser.add_argument("--centres", type=int, default=300)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs (seeds) of slade and faiss, alternating; scikit-learn runs once")
    args = parser.parse_args()

    x = clustered_unit_vectors(args.n, args.dim, args.centres)
    print(f"N {args.n}, dim {args.dim}, k {args.k}, {args.iters} iterations; "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    # slade and faiss alternate, so that a change in the machine's load hits both alike.
    runs = {"slade": ([], []), "faiss": ([], []), "sklearn": ([], [])}
    for r in range(args.repeats):
        for name, run in (("slade", run_slade), ("faiss", run_faiss)):
            seconds, centroids = run(x, args.k, args.iters, seed=r)
            runs[name][0].append(seconds)
            runs[name][1].append(inertia(x, centroids))
    seconds, centroids = run_sklearn(x, args.k, args.iters, seed=0)
    runs["sklearn"][0].append(seconds)
    runs["sklearn"][1].append(inertia(x, centroids))
    results = {}
    for name, (times, inertias) in runs.items():
        results[name] = (min(times), float(np.mean(inertias)))
        print(f"{name:8s} time {min(times):7.3f} s (best of {len(times)})   "
              f"inertia {np.mean(inertias):.2f} (mean over seeds: "
              + ", ".join(f"{v:.2f}" for v in inertias) + ")")
    print(f"slade ran {SLADE_ITERATIONS} Lloyd iterations (it stops once no label changes; "
          f"faiss always runs {args.iters}, scikit-learn stops like slade)")
    time_ratio = results["slade"][0] / results["faiss"][0]
    inertia_ratio = results["slade"][1] / results["sklearn"][1]
    print(f"time_vs_faiss: {time_ratio:.2f}  inertia_vs_sklearn: {inertia_ratio:.4f}")


if __name__ == "__main__":
    main()
