"""Embedding a pool (forward only): slade's `EmbeddingModel.embed` against a plain torch
`model.eval()` loop under `torch.no_grad()` over the same tensors, and both against the
training step's rate on the same model and device.

The plain network is the model's own torch twin (`model.to_torch()`, the same weights), so
both sides compute the same embeddings (checked first). Rows:

- slade: `model.embed(x, batch_size)`, as the pipeline embeds the pool and the test images;
- torch: `twin(x[i:i + batch_size])` in a loop, `torch.no_grad()`, default memory format;
- torch, channels-last: the same loop on `twin.to(memory_format=torch.channels_last)`
  (a different kernel, so embeddings equal only to float rounding; shown as the headroom
  a channels-last path would have on this CPU);
- teacher step: `TeacherTrainer.step` (forward, contrastive loss, backward, Adam) on
  m-per-class batches of `--step-batch` images, as images per second.

Times are the best of `--repeats` rounds, the rows alternating within each round.

    python bench/embed.py                         # ConvNet, 28x28 grayscale, 30,000 images
    python bench/embed.py --backbone resnet18 --size 32 --channels 3 --images 4096
    python bench/embed.py --device cuda --backbone resnet50 --size 224 --channels 3 --images 2048

Last line: `embed vs torch: X.XX` (torch time / slade time; >= 1 means slade is as fast).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

import slade


def best_time(fn, repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="convnet")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--images", type=int, default=30_000)
    parser.add_argument("--batch-size", type=int, default=1024, help="the pipeline's default")
    parser.add_argument("--step-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = slade.ModelConfig(backbone=args.backbone, in_channels=args.channels)
    model = slade.EmbeddingModel(config, device=args.device)
    twin = model.to_torch().eval()
    twin_cl = copy.deepcopy(twin).to(memory_format=torch.channels_last)
    x = torch.rand(args.images, args.channels, args.size, args.size, device=args.device)
    bs = args.batch_size
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}")
    print(f"{args.backbone}, {args.channels}x{args.size}x{args.size}, {args.images} images, "
          f"batch {bs}")

    def ours():
        return model.embed(x, batch_size=bs)

    def plain(net):
        with torch.no_grad():
            return torch.cat([net(x[i : i + bs]) for i in range(0, len(x), bs)])

    head = slice(0, min(len(x), 2 * bs))
    with torch.no_grad():
        diff = (model.embed(x[head], batch_size=bs) - twin(x[head])).abs().max().item()
    print(f"max |slade - torch| embedding difference: {diff:.1e}")

    trainer = slade.TeacherTrainer(config, seed=0, device=args.device)
    m = 4
    labels = torch.arange(args.step_batch // m).repeat_interleave(m).to(args.device)
    batch = x[: args.step_batch]
    trainer.step(batch, labels)  # warm-up
    steps = max(1, min(50, args.images // (4 * args.step_batch)))

    def train_steps():
        for _ in range(steps):
            trainer.step(batch, labels)

    rounds = {"slade": [], "torch": [], "torch, channels-last": [], "teacher step": []}
    for _ in range(args.repeats):
        rounds["slade"].append(best_time(ours, 1, args.device))
        rounds["torch"].append(best_time(lambda: plain(twin), 1, args.device))
        rounds["torch, channels-last"].append(best_time(lambda: plain(twin_cl), 1, args.device))
        rounds["teacher step"].append(best_time(train_steps, 1, args.device))
    rates = {}
    for name, times in rounds.items():
        images = steps * args.step_batch if name == "teacher step" else args.images
        rates[name] = images / min(times)
        print(f"{name:22s} {rates[name]:9.0f} img/s")
    print(f"slade embed / teacher step: {rates['slade'] / rates['teacher step']:.2f}")
    print(f"embed vs torch: {rates['slade'] / rates['torch']:.2f}")


if __name__ == "__main__":
    main()
