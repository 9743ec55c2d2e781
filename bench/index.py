"""Exact gallery search: slade.Index.search against faiss's IndexFlatL2 on the same data.

For each gallery (default 100,000 x 128, 1,000,000 x 128 and 100,000 x 512; 1,000 queries,
k = 10; unit-norm embeddings around 1,000 centres, 1% of the gallery duplicated):
- time: one process builds both indexes and alternates their searches (a warm-up round,
  then --repeats rounds), keeping each side's best time;
- memory: each side in a fresh process records the resident memory its index holds and the
  peak one search adds (the high-water mark VmHWM, reset through /proc/self/clear_refs
  before the search), and writes its neighbours;
- neighbours: rows that differ are classified with float64 distances as exact ties or as
  faiss's float32 rounding.
Prints both sides per gallery and, last, `speedup: X.XX` (faiss's time / ours, geometric
mean over the galleries).

    python bench/index.py
    python bench/index.py --sizes 100000x128 --device cuda
    python bench/index.py --engine gemm      # slade.knn with that engine instead of Index.search
    python bench/index.py --threads 1        # both sides on one core (torch, rayon, faiss)
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import slade

MIB = 2**20


def embeddings(n: int, dim: int, seed: int) -> torch.Tensor:
    """Unit-norm points around 1,000 fixed centres (cosine ~0.7 to their centre)."""
    centres = torch.randn(1000, dim, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    x = centres[torch.randint(0, 1000, (n,), generator=g)]
    x = torch.nn.functional.normalize(x, dim=1)
    x += torch.randn(n, dim, generator=g) / dim**0.5
    return torch.nn.functional.normalize(x, dim=1)


def gallery_of(n: int, dim: int) -> torch.Tensor:
    """The gallery; its last 1% of rows are exact copies of its first (images added twice)."""
    x = embeddings(n, dim, seed=1)
    copies = n // 100
    x[n - copies :] = x[:copies]
    return x


def cpu_model() -> str:
    with open("/proc/cpuinfo") as info:
        return next((line.split(":", 1)[1].strip() for line in info if "model name" in line), "?")


def release() -> None:
    """Frees garbage and hands freed heap memory back to the system, so RSS counts what is held."""
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)


def status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def resident() -> int:
    return status_kib("VmRSS")


def reset_peak() -> bool:
    """Resets the resident high-water mark (Linux >= 4.0); False where that is refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak() -> int:
    """The resident high-water mark (VmHWM: what clear_refs resets; ru_maxrss also keeps the
    peaks that exited threads recorded)."""
    return status_kib("VmHWM")


def searcher(side: str, gallery: torch.Tensor, queries: torch.Tensor, args: argparse.Namespace):
    """Builds one side's index of `gallery`; returns its search of `queries` (numpy results)."""
    if side == "slade":
        index = slade.Index(device=args.device)
        index.add(gallery)
        on_device = index.embeddings

        def search():
            if args.engine == "auto":
                result = index.search(queries, args.k)
            else:
                result = slade.knn(queries, on_device, k=args.k, engine=args.engine)
            return [t.cpu().numpy() for t in result]

        return search
    import faiss

    flat = faiss.IndexFlatL2(gallery.shape[1])
    flat.add(gallery.numpy())
    q = queries.numpy()

    def search():
        squared, indices = flat.search(q, args.k)
        return [np.sqrt(squared), indices]

    return search


def setup(args: argparse.Namespace) -> None:
    import faiss

    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)


def memory_child(side: str, n: int, dim: int, args: argparse.Namespace, out: Path) -> None:
    """One side in this (fresh) process: the memory its index holds and the peak a search
    adds; writes its neighbours."""
    queries = embeddings(args.queries, dim, seed=2)
    searcher(side, embeddings(4096, dim, seed=3), queries, args)()  # libraries and thread pools
    release()
    baseline = resident()
    search = searcher(side, gallery_of(n, dim), queries, args)
    release()
    held = resident() - baseline
    search()
    release()
    before = resident()
    was_reset = reset_peak()
    cuda = side == "slade" and args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        device_before = torch.cuda.memory_allocated()
    np.save(out / f"{side}_indices.npy", search()[1])
    figures = {
        "held_mib": held / MIB,
        "search_peak_mib": max(0, peak() - before) / MIB,
        "peak_was_reset": was_reset,
    }
    if cuda:
        figures["device_peak_mib"] = (torch.cuda.max_memory_allocated() - device_before) / MIB
    (out / f"{side}.json").write_text(json.dumps(figures))


def timing_child(n: int, dim: int, args: argparse.Namespace, out: Path) -> None:
    """Both sides in one process, their searches alternating (a change of the machine's load
    hits both alike); the best time of each."""
    gallery, queries = gallery_of(n, dim), embeddings(args.queries, dim, seed=2)
    searches = {side: searcher(side, gallery, queries, args) for side in ("slade", "faiss")}
    del gallery
    best = dict.fromkeys(searches, math.inf)
    for _ in range(args.repeats + 1):  # the first round warms up
        for side, search in searches.items():
            start = time.perf_counter()
            search()
            best[side] = min(best[side], time.perf_counter() - start)
    (out / "seconds.json").write_text(json.dumps(best))


def compare(n: int, dim: int, args: argparse.Namespace, out: Path) -> str:
    """How many rows agree; rows that differ classified by float64 distances."""
    ours, theirs = (np.load(out / f"{side}_indices.npy") for side in ("slade", "faiss"))
    differing = np.flatnonzero((ours != theirs).any(axis=1))
    text = f"{len(ours) - len(differing)}/{len(ours)} rows identical"
    if len(differing) == 0:
        return text
    gallery = gallery_of(n, dim).double().numpy()
    queries = embeddings(args.queries, dim, seed=2).double().numpy()
    ties = ours_nearer = 0
    worst = 0.0
    for i in differing:
        d_ours = ((gallery[ours[i]] - queries[i]) ** 2).sum(1)
        d_theirs = ((gallery[theirs[i]] - queries[i]) ** 2).sum(1)
        if np.array_equal(np.sort(d_ours), np.sort(d_theirs)):
            ties += 1
        elif (np.sort(d_ours) <= np.sort(d_theirs)).all():
            ours_nearer += 1
            worst = max(worst, float((np.sort(d_theirs) - np.sort(d_ours)).max()))
    others = len(differing) - ties - ours_nearer
    text += f"; of the {len(differing)} others {ties} differ only in how exact distance ties are ordered"
    if ours_nearer:
        text += (
            f", {ours_nearer} where faiss's float32 distances misorder near-ties (slade's "
            f"neighbours nearer by at most {worst:.1e} in squared distance)"
        )
    return text + (f", {others} for another reason" if others else "")


def run_child(role: str, size: str, args: argparse.Namespace, out: Path) -> dict:
    command = [sys.executable, __file__, "--child", role, "--sizes", size, "--out", str(out)]
    command += ["--queries", str(args.queries), "--k", str(args.k), "--repeats", str(args.repeats)]
    command += ["--device", args.device, "--engine", args.engine, "--threads", str(args.threads)]
    env = dict(os.environ)
    if args.threads:  # the thread pools read these when they start
        for name in ("OMP_NUM_THREADS", "RAYON_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(args.threads)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{role} on {size} failed:\n{done.stdout}{done.stderr}")
    return json.loads((out / f"{'seconds' if role == 'time' else role}.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=["100000x128", "1000000x128", "100000x512"])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5, help="searches timed (best kept)")
    parser.add_argument("--device", default="cpu", help="slade's device (faiss-cpu stays on CPU)")
    parser.add_argument("--engine", default="auto", help="auto: Index.search; else slade.knn")
    parser.add_argument("--threads", type=int, default=0, help="threads per side (0: default)")
    parser.add_argument("--child", choices=["slade", "faiss", "time"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes]
    if args.child:
        setup(args)
        if args.child == "time":
            timing_child(*sizes[0], args, Path(args.out))
        else:
            memory_child(args.child, *sizes[0], args, Path(args.out))
        return

    import faiss

    ours_name = "slade Index.search" if args.engine == "auto" else f"slade.knn {args.engine}"
    threads = (
        args.threads or f"{torch.get_num_threads()} (torch), {faiss.omp_get_max_threads()} (faiss)"
    )
    print(
        f"torch {torch.__version__}, faiss {faiss.__version__}, threads {threads}; "
        f"{args.queries} queries, k = {args.k}, "
        f"best of {args.repeats}; slade on {args.device}, faiss IndexFlatL2 on cpu"
    )
    print(f"{cpu_model()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    ratios = []
    for (n, dim), size in zip(sizes, args.sizes):
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder)
            seconds = run_child("time", size, args, out)
            ours, theirs = (run_child(side, size, args, out) for side in ("slade", "faiss"))
            agreement = compare(n, dim, args, out)
        ours["seconds"], theirs["seconds"] = seconds["slade"], seconds["faiss"]
        ratios.append(theirs["seconds"] / ours["seconds"])
        print(f"gallery {n:,} x {dim} (embeddings {n * dim * 4 / MIB:.0f} MiB):")
        for name, fig in ((ours_name, ours), ("faiss IndexFlatL2", theirs)):
            device = (
                f", device peak +{fig['device_peak_mib']:.1f} MiB"
                if "device_peak_mib" in fig
                else ""
            )
            reset = "" if fig["peak_was_reset"] else " (peak not reset: includes the build)"
            print(
                f"  {name:20s} {fig['seconds']:7.3f} s   index holds {fig['held_mib']:7.1f} MiB   "
                f"search peak +{fig['search_peak_mib']:.1f} MiB{reset}{device}"
            )
        print(f"  neighbours: {agreement}")
        print(f"  time slade / faiss: {ours['seconds'] / theirs['seconds']:.2f}")
    print(f"load average {os.getloadavg()[0]:.1f}")
    print(f"speedup: {math.exp(sum(math.log(r) for r in ratios) / len(ratios)):.2f}")


if __name__ == "__main__":
    main()
