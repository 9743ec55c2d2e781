"""Peak memory of evaluation, k-means and a student step, checked against bounds derived
from the algorithms.

Each case runs in a fresh process. Its baseline is the resident memory (VmRSS) after
`import torch, slade`, a small warm-up call (thread pools and libraries started) and the
creation of the data; the high-water mark VmHWM is then reset (/proc/self/clear_refs) and
read after the call (ru_maxrss would also keep the peaks of exited threads). "Working
memory" is peak - baseline, i.e. what the call adds above its input data.

1. Evaluation: `slade.retrieval_metrics(x, labels)` on N unit-norm float32 embeddings of
   dim 128 in 200 classes (bench/retrieval.py's large case: its generator, seed 1), so
   k = R_max = the largest class size - 1 (~1,100 neighbours per query at N = 200,000).
   Bound (src/retrieval/knn.rs, topk.rs), the larger of two phases:
   - scan and re-rank: the k-NN keeps c = k + 8 + k/8 candidates per query in a list of
     `c + c/2 + 32` slots of 8 bytes ((f32 key, u32 id)) plus 8 bytes of length and
     threshold per row. The lists are still alive while the exact re-rank builds each
     query's answer (k u32 ids in a Vec of its own: 4k bytes, 16 of malloc header, 56 of
     struct), next to two copies of the labels and the relevant counts (24 B/row) and the
     float64 squared norms (16 B/row);
   - output: the lists are freed, the answers become the N x k int64 neighbour matrix
     (8k B/row) while a second N x 56-byte answer vector exists;
   plus one 1,024 x 1,024 float32 GEMM tile per rayon worker and one spare (4 MiB each),
   plus the allocator: ALLOCATOR_SLACK, and 1/8 of the answers' bytes for heap
   fragmentation (the 4k-byte answers are allocated between per-query temporaries of
   varying size, the sorted candidates and the ordering buffer, freed right after them;
   9% measured at N = 200,000).
2. k-means: `slade.kmeans(x, 400)` on the same embeddings (greedy k-means++ seeding, at
   most 20 Lloyd iterations). The data are read in place (float32, contiguous: no copy),
   so the bound is the data plus O(block) working space plus a few bytes per point
   (src/cluster/init.rs, lloyd.rs), the larger of two phases:
   - seeding: pools of P = min(2^24 // N, 256) points (at least 2 + ln k) whose P x N
     float32 distances come from one GEMM. While a new pool is drawn, the old pool's
     matrix, the new GEMM output and the new distance matrix coexist: 3 P N x 4 bytes,
     at most 192 MiB whatever N (for N <= 2^24 / (2 + ln k)); plus 32 B/point (float64
     norms, nearest distance and its running sum; float32 norms twice);
   - Lloyd: one block of GEMM keys (2^21 elements: 8 MiB in float32), the gathered rows
     and results of a block (at most 8,192 rows x (4 dim + 32) bytes) and 56 B/point
     (norms, Hamerly's bounds, three label vectors, the stale ids and the member order,
     the distances of an empty-cluster re-seed, the int64 labels returned);
   plus ALLOCATOR_SLACK.
3. Student step: `slade.StudentTrainer` on the default ConvNet (`slade.ModelConfig()`,
   1 x 28 x 28, dim 128, variant "basis_mining", Adam) with the same fixed batch every
   step: 32 labeled images (8 classes x 4), 32 unlabeled (8 pseudo labels x 4). Reports
   the peak of the first step (which also allocates Adam's state) and of step 100 above
   the RSS before it (no bound). Then `--steps` steps in all; from step 200 on, every
   100 steps, the lowest VmRSS of the last 5 steps (so a transient buffer alive at one
   reading does not count as growth; a leak raises every reading). A least-squares line
   of those samples against the step must rise by less than LEAK_SLOPE = 8 KiB per step
   (14 MiB over the default 1,800 steps). A leak of one batch's tensors per step (its 64
   input images alone are 196 KiB) would give 24x that slope; allocator noise (arena
   reuse, fragmentation) moves RSS by a few MiB without a trend. Leaks smaller than
   8 KiB per step (a few tensor headers or Python objects) are not detected.

ALLOCATOR_SLACK = 64 MiB: glibc's trim threshold rises to at most 64 MiB (twice its
largest dynamic mmap threshold, 32 MiB), so up to that much freed memory may stay resident
at the top of a heap, plus thread stacks and library buffers created during the call.

Prints one line per check with PASS or FAIL, then a one-line summary; exits with status 1
on any FAIL.

    python bench/memory.py                       # all three, N = 200,000, 2,000 steps
    python bench/memory.py --only student --steps 500
    python bench/memory.py --only eval --n 50000
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import time

import torch

import slade

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from index import peak, release, reset_peak, resident  # noqa: E402
from retrieval import clustered_embeddings  # noqa: E402

MIB = 2**20
DIM = 128
CLASSES = 200
KMEANS_K = 400
WARMUP_STEPS = 200
SAMPLE_EVERY = 100
SAMPLE_WINDOW = 5  # steps whose lowest VmRSS is a sample
# Allowance for the allocator, thread stacks and library buffers (see the module docs).
ALLOCATOR_SLACK = 64 * MIB
LEAK_SLOPE = 8 * 1024  # bytes per step
TILE_BYTES = 1024 * 1024 * 4  # src/retrieval/knn.rs: BLOCK x BLOCK float32
POOL_ELEMENTS = 1 << 24  # src/cluster/init.rs
MAX_POOL = 256
KEY_BLOCK_ELEMENTS = 1 << 21  # src/cluster/lloyd.rs: BLOCK_ELEMENTS
MAX_BLOCK_ROWS = 8192


# --------------------------------------------------------------------------------------
# Bounds (bytes of working memory above the baseline)


def workers() -> int:
    """rayon's global pool size: RAYON_NUM_THREADS, else the CPUs this process may use."""
    return int(os.environ.get("RAYON_NUM_THREADS") or 0) or len(os.sched_getaffinity(0))


def eval_terms(n: int, k: int) -> dict[str, int]:
    """The terms of item 1 of the module docs, in bytes."""
    c = min(k + 8 + k // 8, n - 1)
    lists = n * (8 * (c + c // 2 + 32) + 8)
    answers = n * (4 * k + 16 + 56)
    small = n * (24 + 16)
    output = n * (8 * k + 56 + 24) + answers
    return {
        "lists + answers": max(lists + answers + small, output),
        "tiles": (workers() + 1) * TILE_BYTES,
        "allocator": ALLOCATOR_SLACK + answers // 8,
    }


def kmeans_terms(n: int, k: int, dim: int) -> dict[str, int]:
    """The terms of item 2 of the module docs, in bytes."""
    trials = 2 + int(math.log(k))
    pool = min(max(POOL_ELEMENTS // n, trials), MAX_POOL)
    seeding = 3 * pool * n * 4 + 32 * n
    rows = min(max(KEY_BLOCK_ELEMENTS // k, 64), MAX_BLOCK_ROWS, n)
    lloyd = 56 * n + 4 * rows * k + rows * (4 * dim + 32)
    return {"pools or blocks": max(seeding, lloyd), "allocator": ALLOCATOR_SLACK}


# --------------------------------------------------------------------------------------
# Children (each in a fresh process; prints one JSON line)


def measured(call) -> dict:
    """Runs `call` with the high-water mark reset: baseline RSS, peak, seconds."""
    release()
    baseline = resident()
    was_reset = reset_peak()
    start = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - start
    return dict(baseline=baseline, peak=peak(), seconds=seconds, reset=was_reset, result=result)


def eval_child(n: int) -> dict:
    small, small_labels = clustered_embeddings(4096, DIM, 20, seed=2)
    slade.retrieval_metrics(small, small_labels)  # thread pools, torch per-thread state
    del small, small_labels
    x, labels = clustered_embeddings(n, DIM, CLASSES, seed=1)
    k = int(torch.bincount(labels).max()) - 1
    out = measured(lambda: slade.retrieval_metrics(x, labels)["map_at_r"])
    data = x.numel() * x.element_size() + labels.numel() * labels.element_size()
    return dict(out, data=data, k=k, terms=eval_terms(n, k))


def kmeans_child(n: int) -> dict:
    small, _ = clustered_embeddings(4096, DIM, 20, seed=2)
    slade.kmeans(small, 20, iters=2)
    del small
    x, _ = clustered_embeddings(n, DIM, CLASSES, seed=1)
    out = measured(lambda: slade.kmeans(x, KMEANS_K).inertia)
    return dict(
        out, data=x.numel() * x.element_size(), k=KMEANS_K, terms=kmeans_terms(n, KMEANS_K, DIM)
    )


def student_batch(per_side: int = 32, classes: int = 8, side: int = 28):
    """Fixed random images; labels and pseudo labels with per_side / classes images each."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(classes).repeat_interleave(per_side // classes)
    pseudo = torch.arange(classes).repeat_interleave(per_side // classes)
    labeled = torch.randn(per_side, 1, side, side, generator=g)
    unlabeled = torch.randn(per_side, 1, side, side, generator=g)
    return labeled, labels, unlabeled, pseudo


def student_child(steps: int) -> dict:
    batch = student_batch()
    trainer = slade.StudentTrainer(slade.ModelConfig(), slade.OptimizerConfig(), num_basis=8)
    first = measured(lambda: trainer.step(*batch)["loss"])
    later, samples, recent = None, [], []
    start = time.perf_counter()
    for step in range(2, steps + 1):
        if step == WARMUP_STEPS // 2:  # before the sampled steps: measured() trims the heap
            later = measured(lambda: trainer.step(*batch)["loss"])
        else:
            trainer.step(*batch)
        recent = (recent + [resident()])[-SAMPLE_WINDOW:]
        if step >= WARMUP_STEPS and step % SAMPLE_EVERY == 0:
            samples.append((step, min(recent)))
    seconds = (time.perf_counter() - start) / (steps - 1)
    data = sum(t.numel() * t.element_size() for t in batch)
    return dict(first=first, later=later, samples=samples, step_seconds=seconds, data=data)


# --------------------------------------------------------------------------------------
# Report


def run_child(which: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--child", which]
    command += ["--n", str(args.n), "--steps", str(args.steps)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{which} failed (exit code {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def mib(value: float) -> str:
    return f"{value / MIB:,.1f} MiB"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report_peak(name: str, fig: dict) -> tuple[bool, str]:
    """One line for a bounded call (baseline, peak, data, working memory, bound), then the
    bound's terms."""
    working = fig["peak"] - fig["baseline"]
    bound = sum(fig["terms"].values())
    ok = working <= bound
    reset = "" if fig["reset"] else " (VmHWM not reset: peak includes the set-up)"
    print(
        f"{name}: baseline {mib(fig['baseline'])} (data {mib(fig['data'])}), "
        f"peak {mib(fig['peak'])}, working {mib(working)}, bound {mib(bound)} "
        f"({working / bound:.2f} of it), {fig['seconds']:.1f} s{reset}  {verdict(ok)}"
    )
    print("  bound = " + " + ".join(f"{term} {mib(v)}" for term, v in fig["terms"].items()))
    return ok, f"{name.split()[0]} {verdict(ok)} ({mib(working)} <= {mib(bound)})"


def fit_slope(samples: list[list[int]]) -> float:
    """Least-squares slope of RSS (bytes) against step."""
    steps = [s for s, _ in samples]
    rss = [r for _, r in samples]
    mean_s, mean_r = sum(steps) / len(steps), sum(rss) / len(rss)
    num = sum((s - mean_s) * (r - mean_r) for s, r in zip(steps, rss))
    return num / sum((s - mean_s) ** 2 for s in steps)


def report_student(fig: dict) -> tuple[bool, str]:
    steps = (("first step", fig["first"]), (f"step {WARMUP_STEPS // 2}", fig["later"]))
    for label, step in steps:
        if step is None:
            continue
        print(
            f"student, {label}: baseline {mib(step['baseline'])} (batch {mib(fig['data'])}), "
            f"peak {mib(step['peak'])}, working {mib(step['peak'] - step['baseline'])}"
        )
    samples = fig["samples"]
    if len(samples) < 2:
        print("student growth: fewer than 2 samples (raise --steps)  FAIL")
        return False, "student FAIL (no samples)"
    slope = fit_slope(samples)
    span = samples[-1][0] - samples[0][0]
    rss = [r for _, r in samples]
    ok = slope < LEAK_SLOPE
    print(
        f"student growth, steps {samples[0][0]}-{samples[-1][0]} ({len(samples)} samples, "
        f"{fig['step_seconds'] * 1000:.0f} ms/step): RSS {mib(rss[0])} -> {mib(rss[-1])} "
        f"(range {mib(max(rss) - min(rss))}), fitted slope {slope / 1024:.2f} KiB/step "
        f"= {mib(slope * span)} over {span} steps, bound {LEAK_SLOPE / 1024:.0f} KiB/step "
        f"({mib(LEAK_SLOPE * span)})  {verdict(ok)}"
    )
    return ok, f"student {verdict(ok)} ({slope / 1024:.2f} KiB/step < {LEAK_SLOPE / 1024:.0f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["eval", "kmeans", "student"])
    parser.add_argument("--n", type=int, default=200_000, help="points for eval and k-means")
    parser.add_argument("--steps", type=int, default=2000, help="student steps in all")
    parser.add_argument("--child", choices=["eval", "kmeans", "student"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child = {"eval": eval_child, "kmeans": kmeans_child, "student": student_child}
        gc.collect()
        print(json.dumps(child[args.child](args.steps if args.child == "student" else args.n)))
        return

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"{workers()} rayon workers, load average {os.getloadavg()[0]:.1f}"
    )
    results = []
    for which in ("eval", "kmeans", "student") if args.only is None else (args.only,):
        fig = run_child(which, args)
        if which == "eval":
            results.append(report_peak(f"eval N={args.n:,} x {DIM}, k={fig['k']:,}", fig))
        elif which == "kmeans":
            results.append(report_peak(f"kmeans N={args.n:,} x {DIM}, k={fig['k']}", fig))
        else:
            results.append(report_student(fig))
    ok = all(r[0] for r in results)
    print(
        f"memory: {'PASS' if ok else 'FAIL'}: "
        + "; ".join(r[1] for r in results)
        + f" (load average {os.getloadavg()[0]:.1f})"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
