"""The teacher against DESIGN.md §3's plain PyTorch + pytorch-metric-learning sketch, on the
same protocol, seeds and evaluation, to locate a gap between the two.

The reference is written here from the sketch's description, not from slade: a torch
ConvNet (four conv3x3(64)-BN-ReLU-maxpool blocks, global average pooling, Linear 128, L2
normalisation) with torch's default initialisation, PML's ContrastiveLoss and
MPerClassSampler, Adam, per-image random shifts (pad + random crop). Both are evaluated by
the same function (slade.retrieval_metrics, which matches PML's AccuracyCalculator, see
tests/core/test_retrieval.py) on the same test images.

Switches move one difference at a time from the sketch toward slade's teacher:
``--init kaiming`` (the reference's convolutions get slade's kaiming_normal fan_out init),
``--m M ...`` (images per class in the reference's batches), ``--slade-m M ...`` (the same
for slade's teacher), ``--slade key=value ...`` (overrides of slade's teacher). Prints
each run, then mean ± standard error per row and the paired difference of every two rows.

    python bench/teacher_reference.py --preset omniglot-ssl --seeds 0 1 2 3 4 --m 4 8 16
    python bench/teacher_reference.py --split val --seeds 0 1 2 3 4 --slade-m 4 16 --m
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses, samplers
from torch import nn
from torchvision.transforms import v2 as T

import slade
from slade._images import as_image_dataset
from slade.pipeline.evaluate import evaluation_sets

VAL_OVERRIDES = {"omniglot-ssl": ["data.val_groups=1"], "fashion-mnist-ssl": ["data.val_classes=2"]}


class Block(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, 64, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)


class Sketch(nn.Module):
    """ConvNet -> Linear(64, dim) -> L2 normalisation, torch's default initialisation."""

    def __init__(self, dim: int = 128, init: str = "torch") -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[Block(1 if i == 0 else 64) for i in range(4)])
        self.head = nn.Linear(64, dim)
        if init == "kaiming":
            for block in self.blocks:
                nn.init.kaiming_normal_(block.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.adaptive_avg_pool2d(self.blocks(x), 1).flatten(1)
        return F.normalize(self.head(h), dim=1)


def tensors(part) -> tuple[torch.Tensor, torch.Tensor]:
    """(images N x 1 x H x W in [0, 1], labels) of a part of the loaded data."""
    images = as_image_dataset(part).images
    return images.unsqueeze(1).float() / 255.0, part.labels


def reference_teacher(config, data, args, seed: int, m: int) -> dict[str, float]:
    torch.manual_seed(seed)
    np.random.seed(seed)  # PML's MPerClassSampler draws from numpy's global generator
    images, labels = tensors(data.labeled)
    model = Sketch(config.model.dim, args.init)
    loss_fn = losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.teacher.optimizer.lr)
    batch = config.teacher.batch_size
    steps = config.teacher.steps
    sampler = samplers.MPerClassSampler(labels, m, batch_size=batch, length_before_new_iter=steps * batch)
    order = list(iter(sampler))
    shift = config.data.shift
    augment = T.RandomCrop(images.shape[-1], padding=shift) if shift else nn.Identity()
    model.train()
    for step in range(steps):
        index = torch.tensor(order[step * batch : (step + 1) * batch])
        x = torch.stack([augment(image) for image in images[index]])
        loss = loss_fn(model(x), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    queries, _ = evaluation_sets(data, args.split)
    test_images, test_labels = tensors(queries)
    with torch.no_grad():
        embeddings = torch.cat([model(chunk) for chunk in test_images.split(1024)])
    return slade.retrieval_metrics(embeddings, test_labels)


def slade_teacher(config, data, split: str) -> dict[str, float]:
    teacher = slade.train_teacher(data, config)
    return slade.evaluate(teacher, data, config=config, split=split)


def mean_se(values: list[float]) -> str:
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{100 * mean:5.1f} ± {100 * se:3.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="omniglot-ssl")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--init", choices=("torch", "kaiming"), default="torch")
    parser.add_argument("--m", type=int, nargs="*", default=None, help="the sketch's m per class")
    parser.add_argument("--slade", nargs="*", default=[], help="overrides of slade's teacher")
    parser.add_argument("--slade-m", type=int, nargs="+", default=None, help="slade's m per class")
    parser.add_argument("--no-slade", action="store_true", help="only the reference")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    base = ["progress=false"] + (VAL_OVERRIDES[args.preset] if args.split == "val" else [])
    default_m = slade.config.preset(args.preset).teacher.m
    sketch_ms = args.m if args.m is not None else ([] if args.slade_m else [default_m])
    slade_ms = [] if args.no_slade else args.slade_m or [default_m]
    rows: dict[str, list[float]] = {}
    for seed in args.seeds:
        overrides = base + [f"seed={seed}"] + args.slade
        config = slade.config.preset(args.preset, overrides)
        data = slade.load_data(config)
        for m in slade_ms:
            start = time.perf_counter()
            ours = slade_teacher(
                slade.config.preset(args.preset, overrides + [f"teacher.m={m}"]), data, args.split
            )
            name = f"slade m={m}"
            rows.setdefault(name, []).append(ours["map_at_r"])
            print(f"seed {seed} {name} MAP@R {100 * ours['map_at_r']:5.1f} "
                  f"P@1 {100 * ours['precision_at_1']:5.1f} ({time.perf_counter() - start:.0f} s)",
                  flush=True)
        for m in sketch_ms:
            start = time.perf_counter()
            ref = reference_teacher(config, data, args, seed, m)
            name = f"sketch m={m} init={args.init}"
            rows.setdefault(name, []).append(ref["map_at_r"])
            print(f"seed {seed} {name} MAP@R {100 * ref['map_at_r']:5.1f} "
                  f"P@1 {100 * ref['precision_at_1']:5.1f} ({time.perf_counter() - start:.0f} s)",
                  flush=True)
    print(f"\n{args.preset}, {args.split} split, seeds {args.seeds}: MAP@R mean ± SE")
    for name, values in rows.items():
        print(f"  {name:28s} {mean_se(values)}")
    names = list(rows)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            diffs = [x - y for x, y in zip(rows[a], rows[b])]
            print(f"  {a} - {b} (paired): {mean_se(diffs)}")


if __name__ == "__main__":
    main()
