"""Ranking losses: slade vs pytorch-metric-learning on the same tensors.

One training step's loss work: contrastive loss + multi-similarity miner + multi-similarity
loss, forward and backward, on L2-normalisable embeddings of dim 512 at batch sizes 64,
256 and 1024. slade runs the miner and the MS loss in one call that computes the cosine
similarity once (`slade.losses.multi_similarity_with_miner`); the "slade, separate" column
runs them as two calls, as PML does. Prints the median time per step of each, checks that
loss and gradient agree, and ends with `speedup: X.XX` (geometric mean over batch sizes of
PML time / slade time).

    python bench/losses.py                 # CPU
    python bench/losses.py --device cuda   # a CUDA device
    python bench/losses.py --threads 1     # one intra-op thread (steadier on a busy machine)
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

import slade


def embeddings(n: int, dim: int, classes: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    centres = torch.randn(classes, dim, generator=g)
    x = torch.randn(n, dim, generator=g) + 0.5 * centres[labels]
    return x.to(device), labels.to(device)


def pml_step():
    contrastive, ms = pml_losses.ContrastiveLoss(), pml_losses.MultiSimilarityLoss()
    miner = pml_miners.MultiSimilarityMiner()
    return lambda x, y: contrastive(x, y) + ms(x, y, miner(x, y))


def slade_step(x, y):
    return slade.losses.contrastive(x, y) + slade.losses.multi_similarity_with_miner(x, y)


def slade_separate_step(x, y):
    pairs = slade.miners.multi_similarity(x, y)
    return slade.losses.contrastive(x, y) + slade.losses.multi_similarity(x, y, pairs=pairs)


def run(step, x, y):
    e = x.detach().requires_grad_(True)
    loss = step(e, y)
    loss.backward()
    return loss.detach(), e.grad


def timed(steps, x, y, repeats: int, sync) -> list[float]:
    """Median time of each step; the steps take turns so that load from other processes
    falls on all of them alike."""
    times = [[] for _ in steps]
    for step in steps:
        run(step, x, y)  # warm-up
    for _ in range(repeats):
        for step, record in zip(steps, times):
            sync()
            start = time.perf_counter()
            run(step, x, y)
            sync()
            record.append(time.perf_counter() - start)
    return [statistics.median(record) for record in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=0, help="0: by batch size")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"device {name}, torch threads {torch.get_num_threads()}, dim {args.dim}")
    print(f"{'batch':>6} {'PML ms':>10} {'slade ms':>10} {'slade, separate ms':>19} {'speedup':>8}")
    ratios = []
    pml = pml_step()
    for n in args.sizes:
        x, y = embeddings(n, args.dim, max(2, n // 8), args.device)
        ref_loss, ref_grad = run(pml, x, y)
        for step in (slade_step, slade_separate_step):
            loss, grad = run(step, x, y)
            torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)
        repeats = args.repeats or max(5, 4096 // n)
        t_pml, t_slade, t_separate = timed(
            (pml, slade_step, slade_separate_step), x, y, repeats, sync
        )
        ratios.append(t_pml / t_slade)
        print(f"{n:>6} {1e3 * t_pml:>10.3f} {1e3 * t_slade:>10.3f} {1e3 * t_separate:>19.3f}"
              f" {t_pml / t_slade:>8.2f}")
    print("losses and gradients equal PML's (rtol = atol = 1e-5)")
    print(f"speedup: {math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}")


if __name__ == "__main__":
    main()
