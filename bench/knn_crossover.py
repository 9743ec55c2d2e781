"""k-d tree vs blocked GEMM: where does the k-d tree stop paying off?

Times `slade.knn(x, k=K, engine=...)` for both CPU engines on the same clustered data over a
range of dimensions and prints the ratio. `Engine::Auto` uses the k-d tree up to the largest
dimension where it is faster (`KDTREE_MAX_DIM` in src/retrieval/knn.rs). Both engines return
identical neighbours (checked here too).

    python bench/knn_crossover.py [--n 20000] [--k 50]
"""

from __future__ import annotations

import argparse
import time

import torch

import slade


def best_time(fn, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3, 4, 5, 6, 8, 12, 16])
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    print(f"N = {args.n}, k = {args.k}, self-retrieval, threads {torch.get_num_threads()}")
    print(f"{'dim':>4} {'kdtree s':>9} {'gemm s':>8} {'gemm/kdtree':>12}")
    crossover = None
    for dim in args.dims:
        centres = torch.randn(100, dim, generator=g) * 3
        x = centres[torch.randint(0, 100, (args.n,), generator=g)] + torch.randn(args.n, dim, generator=g)
        t_tree, (_, i_tree) = best_time(lambda x=x: slade.knn(x, k=args.k, engine="kdtree"))
        t_gemm, (_, i_gemm) = best_time(lambda x=x: slade.knn(x, k=args.k, engine="gemm"))
        assert torch.equal(i_tree, i_gemm), f"engines disagree at dim {dim}"
        print(f"{dim:>4} {t_tree:9.3f} {t_gemm:8.3f} {t_gemm / t_tree:12.2f}")
        if t_tree < t_gemm:
            crossover = dim
    print(f"largest dimension where the k-d tree is faster: {crossover}")


if __name__ == "__main__":
    main()
