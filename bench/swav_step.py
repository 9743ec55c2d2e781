"""One SwAV training step: slade.SwavTrainer (Rust) against the same step in plain PyTorch.

Both start from the same weights and take the same multi-crop batches (2 global + local
crops); the script checks that losses agree, then times `steps` steps of each, alternating,
and prints the median step times and their ratio.

    python bench/swav_step.py [--backbone resnet18] [--batch 32] [--global-side 96]
        [--local-side 48] [--locals 2] [--steps 10] [--device cpu]

Last line: `speedup: X.XX` (PyTorch time / slade time; > 1 means slade is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

import slade

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from reference_nets import Embedder, swav_loss  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--prototypes", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--global-side", type=int, default=96)
    parser.add_argument("--local-side", type=int, default=48)
    parser.add_argument("--locals", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    model_config = slade.ModelConfig(args.backbone, args.channels, args.dim)
    optim = slade.OptimizerConfig(name="sgd", lr=0.01, momentum=0.9, weight_decay=1e-6)
    trainer = slade.SwavTrainer(
        model_config, optim, device=args.device, num_prototypes=args.prototypes
    )
    state = {k: v.detach().clone() for k, v in trainer.state_dict().items()}
    ref = Embedder(args.backbone, args.channels, args.dim).to(args.device)
    ref.load_slade_state(state)
    ref.train()
    prototypes = state["prototypes"].clone().requires_grad_(True)
    optimizer = torch.optim.SGD(
        list(ref.parameters()) + [prototypes], lr=0.01, momentum=0.9, weight_decay=1e-6
    )

    g = torch.Generator().manual_seed(0)
    sides = [args.global_side] * 2 + [args.local_side] * args.locals
    crops = [torch.randn(args.batch, args.channels, s, s, generator=g).to(args.device) for s in sides]

    def ours():
        return trainer.step(crops)["loss"]

    def theirs():
        optimizer.zero_grad()
        loss = swav_loss(ref, prototypes, crops)
        loss.backward()
        optimizer.step()
        return loss.item()

    first_ours, first_theirs = ours(), theirs()  # warm-up, and the same first loss
    assert abs(first_ours - first_theirs) <= 1e-4 * max(1.0, abs(first_theirs)), (
        first_ours,
        first_theirs,
    )
    times_ours, times_theirs = [], []
    for _ in range(args.steps):
        for fn, times in ((ours, times_ours), (theirs, times_theirs)):
            sync(args.device)
            start = time.perf_counter()
            fn()
            sync(args.device)
            times.append(time.perf_counter() - start)
    t_ours, t_theirs = statistics.median(times_ours), statistics.median(times_theirs)
    print(
        f"{args.backbone}, batch {args.batch} x ({2} x {args.global_side}px + "
        f"{args.locals} x {args.local_side}px), K={args.prototypes}, device {args.device}, "
        f"threads {torch.get_num_threads()}"
    )
    print(f"first loss: slade {first_ours:.6f}  pytorch {first_theirs:.6f}")
    print(f"median step: slade {t_ours * 1000:.1f} ms  pytorch {t_theirs * 1000:.1f} ms")
    print(f"speedup: {t_theirs / t_ours:.2f}")


if __name__ == "__main__":
    main()
