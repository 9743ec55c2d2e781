"""Retrieval metrics: slade vs pytorch-metric-learning's AccuracyCalculator + faiss-cpu.

Both compute MAP@R, R-Precision and P@1 (k="max_bin_count", self-retrieval) on the same
embeddings in one run. Also times the bare symmetric float32 GEMM of the same data (the
blocks on and above the diagonal of X X^T through torch.mm, and on the CPU also through
numpy's BLAS, 2,048-row blocks, nothing else done with them): the floor for any exact
method that computes the similarities once with that GEMM.
Prints the three times, both metric sets and, last, `speedup: X.XX` (PML + faiss / slade).

    python bench/retrieval.py                  # N = 20,000, dim 512, 200 classes
    python bench/retrieval.py --large          # also N = 200,000, dim 128: time and peak memory
    python bench/retrieval.py --device cuda --n 200000 --dim 128 --classes 1000
    python bench/retrieval.py --device cuda --n 1000000 --dim 128 --classes 5000 --no-pml

With ``--device cuda`` slade and the bare GEMM run on the GPU, and PML's AccuracyCalculator
gets the embeddings on the GPU too (its k-NN search is faiss-cpu's). ``--no-pml`` leaves PML
out (at a million points its search alone takes many minutes).
"""

from __future__ import annotations

import argparse
import gc
import resource
import subprocess
import sys
import time

import torch

import slade

METRICS = ("mean_average_precision_at_r", "r_precision", "precision_at_1")
OURS = ("map_at_r", "r_precision", "precision_at_1")


def clustered_embeddings(n: int, dim: int, classes: int, seed: int = 0):
    """Unit-norm embeddings of `classes` Gaussian clusters with realistic overlap."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(classes, dim, generator=g), dim=1)
    labels = torch.randint(0, classes, (n,), generator=g)
    noise = torch.randn(n, dim, generator=g) / dim**0.5
    x = torch.nn.functional.normalize(centres[labels] + 3.0 * noise, dim=1)
    return x.contiguous(), labels


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_pml(x, labels):
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(include=METRICS, k="max_bin_count", device=x.device)
    start = time.perf_counter()
    result = calc.get_accuracy(x, labels)
    return time.perf_counter() - start, {o: result[m] for o, m in zip(OURS, METRICS)}


def run_slade(x, labels):
    start = time.perf_counter()
    result = slade.retrieval_metrics(x, labels, recall_at=(1,))
    return time.perf_counter() - start, {m: result[m] for m in OURS}


def run_bare_gemm_numpy(x, block: int = 2048):
    """`run_bare_gemm` through numpy's BLAS (OpenBLAS in numpy's wheels), on the CPU."""
    import numpy as np

    x = x.numpy()
    n = x.shape[0]
    out = np.empty(block * block, dtype=np.float32)
    start = time.perf_counter()
    for i0 in range(0, n, block):
        rows = x[i0 : i0 + block]
        for j0 in range(i0, n, block):
            cols = x[j0 : j0 + block]
            np.matmul(rows, cols.T, out=out[: len(rows) * len(cols)].reshape(len(rows), len(cols)))
    return time.perf_counter() - start


def run_bare_gemm(x, block: int = 2048):
    """The symmetric half of X X^T in float32 blocks, into one reused buffer."""
    n = x.shape[0]
    out = torch.empty(block * block, device=x.device)
    sync(x.device)
    start = time.perf_counter()
    for i0 in range(0, n, block):
        rows = x[i0 : i0 + block]
        for j0 in range(i0, n, block):
            cols = x[j0 : j0 + block]
            torch.mm(rows, cols.t(), out=out[: len(rows) * len(cols)].view(len(rows), len(cols)))
    sync(x.device)
    return time.perf_counter() - start


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def large_child(which: str) -> None:
    """Runs one side of the large benchmark in this (fresh) process; prints time and peak."""
    x, labels = clustered_embeddings(200_000, 128, 200, seed=1)
    gc.collect()
    before = peak_rss_gib()
    seconds, metrics = (run_slade if which == "slade" else run_pml)(x, labels)
    print(f"{which}: {seconds:.1f} s, peak RSS {peak_rss_gib():.2f} GiB "
          f"(inputs {before:.2f} GiB), {metrics}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--large", action="store_true", help="also run N=200k, dim 128")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--no-pml", action="store_true", help="time slade and the GEMM only")
    parser.add_argument("--large-child", choices=["slade", "pml"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.large_child:
        large_child(args.large_child)
        return

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {name}")
    x, labels = (t.to(device) for t in clustered_embeddings(args.n, args.dim, args.classes))
    print(f"N = {args.n}, dim {args.dim}, {args.classes} classes, self-retrieval")
    ours, bare, bare_numpy = [], [], []
    for _ in range(args.repeats):  # interleaved, so all see the same load
        ours.append(run_slade(x, labels))
        bare.append(run_bare_gemm(x))
        if device.type == "cpu":
            bare_numpy.append(run_bare_gemm_numpy(x))
    ours = min(ours, key=lambda r: r[0])
    print(f"slade          {ours[0]:7.3f} s  {ours[1]}")
    print(f"bare GEMM      {min(bare):7.3f} s  torch.mm (slade / bare GEMM: {ours[0] / min(bare):.2f})")
    if bare_numpy:
        print(
            f"bare GEMM      {min(bare_numpy):7.3f} s  numpy's BLAS "
            f"(slade / bare GEMM: {ours[0] / min(bare_numpy):.2f})"
        )
    if args.no_pml:
        return
    theirs = min((run_pml(x, labels) for _ in range(args.repeats)), key=lambda r: r[0])
    print(f"PML + faiss    {theirs[0]:7.3f} s  {theirs[1]}")
    worst = max(abs(ours[1][m] - theirs[1][m]) for m in OURS)
    print(f"max |difference| of metrics: {worst:.2e}")

    if args.large:
        print("N = 200,000, dim 128, 200 classes (each side in a fresh process):")
        for which in ("slade", "pml"):
            done = subprocess.run(
                [sys.executable, __file__, "--large-child", which],
                capture_output=True, text=True,
            )
            tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["(no output)"]
            status = "" if done.returncode == 0 else f" [exit code {done.returncode}]"
            print(f"  {tail[0]}{status}")
    print(f"speedup: {theirs[0] / ours[0]:.2f}")


if __name__ == "__main__":
    main()
