"""One SLADE student step: slade.StudentTrainer (Rust) against the same step in plain PyTorch
+ pytorch-metric-learning (tests/reference_slade.py).

The step (DESIGN.md §2.4, variant "basis_mining", contrastive loss, L_SD): the labeled and
unlabeled images go through the network in one pass; L_rank on the labeled pairs, the feature
basis loss L_CE + L_SD, pair mining with T1 = mu+ and T2 = mu-, L_rank on the mined unlabeled
pairs, backward, Adam update. Both sides start from the same weights and take the same
batches; the script first checks that one step gives the same losses and weights, then times
`--steps` steps of each, alternating, and reports the median step time as images/s (labeled +
unlabeled images per second).

    python bench/train_step.py                       # ConvNet 28x28 (protocol), ResNet-18 32x32
    python bench/train_step.py --backbone resnet18 --size 64
    python bench/train_step.py --device cuda --backbone resnet50 --size 224
    python bench/train_step.py --precision bf16     # both sides in bfloat16 (fast with AVX512-BF16)

Last line: `speedup: X.XX` (PyTorch time / slade time of the first row; > 1 means slade is
faster).
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
from reference_slade import (  # noqa: E402
    ReferenceBasis,
    ReferenceStudent,
    mine_pairs,
    param_groups,
    reference_model,
)

DEFAULT_ROWS = [("convnet", 28), ("resnet18", 32)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_batch(n_labeled, n_unlabeled, classes, clusters, channels, side, device, seed=0):
    """m-per-class batches: `classes` labels and `clusters` pseudo labels, equal counts."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n_labeled // classes)
    pseudo = torch.arange(clusters).repeat_interleave(n_unlabeled // clusters)
    patterns = torch.randn(classes + clusters, channels, side, side, generator=g)
    labeled = patterns[labels] + 0.5 * torch.randn(len(labels), channels, side, side, generator=g)
    unlabeled = patterns[classes + pseudo] + 0.5 * torch.randn(len(pseudo), channels, side, side, generator=g)
    return tuple(t.to(device) for t in (labeled, labels, unlabeled, pseudo))


def run_row(backbone, side, args):
    channels = 1 if backbone == "convnet" else 3
    device = args.device
    model_config = slade.ModelConfig(backbone, channels, args.dim)
    optim = slade.OptimizerConfig(name="adam", lr=1e-3, basis_lr=1e-2)
    settings = dict(variant="basis_mining", loss="contrastive")
    trainer = slade.StudentTrainer(
        model_config, optim, device=device, num_basis=args.classes, precision=args.precision, **settings
    )
    model = reference_model(trainer, device)
    state = trainer.state_dict()
    basis = ReferenceBasis(state["basis.weight"])
    ref = ReferenceStudent(model, basis, **settings)
    opt = torch.optim.Adam(param_groups(model, basis, 1e-3, 1e-2))
    amp = args.precision == "fp16" and device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda") if amp else None
    bf16 = args.precision == "bf16"

    batch = make_batch(args.batch, args.unlabeled, args.classes, args.clusters, channels, side, device)
    step_count = [0]

    def ours():
        return trainer.step(*batch)["loss"]

    def theirs():
        opt.zero_grad()
        if amp:
            with torch.autocast("cuda", dtype=torch.float16):
                x = torch.cat([batch[0], batch[2]])
                f = model(x)
            # the losses in float32, as slade does
            loss = _reference_terms(ref, f.float(), batch)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        elif bf16:
            # torch's autocast in bfloat16 on the backbone, head and losses in float32, as slade
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
                features = model.body(torch.cat([batch[0], batch[2]]))
            h = model.embedding(features.float())
            loss = _reference_terms(ref, torch.nn.functional.normalize(h, dim=1), batch)
            loss.backward()
            opt.step()
        else:
            loss, _ = ref.loss(*batch, step=step_count[0])
            loss.backward()
            opt.step()
        step_count[0] += 1
        return loss.item()

    first_ours, first_theirs = ours(), theirs()  # the same first step
    names = model.slade_names()
    worst = max(
        (v.double() - names[k].detach().double()).abs().max().item()
        for k, v in trainer.state_dict().items()
        if k in names
    )
    # The weights' agreement is printed, not asserted: Adam moves a weight whose gradient is
    # ~0 by up to lr on rounding noise (tests/trainers/test_student.py checks the weights).
    tolerance = 1e-2 if amp else (1e-4 if device.startswith("cuda") or bf16 else 1e-5)
    assert abs(first_ours - first_theirs) <= tolerance * max(1.0, abs(first_theirs)), (first_ours, first_theirs)
    for _ in range(args.warmup):
        ours()
        theirs()
    times_ours, times_theirs = [], []
    for _ in range(args.steps):
        for fn, times in ((ours, times_ours), (theirs, times_theirs)):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - start)
    t_ours, t_theirs = statistics.median(times_ours), statistics.median(times_theirs)
    images = args.batch + args.unlabeled
    return dict(
        row=f"{backbone} {channels}x{side}x{side}",
        first=(first_ours, first_theirs, worst),
        ours=images / t_ours,
        theirs=images / t_theirs,
        ms=(t_ours * 1000, t_theirs * 1000),
        speedup=t_theirs / t_ours,
    )


def _reference_terms(ref, f, batch):
    """The reference loss from precomputed embeddings (the fp16 path embeds under autocast)."""
    xl, labels, xu, pseudo = batch
    n = len(xl)
    fl, fu = f[:n], f[n:]
    total = ref.labeled(fl, labels)
    ce, reg = ref.basis.loss(fl, labels, fu, pseudo)
    t1, t2 = ref.basis.threshold(ref.t1), ref.basis.threshold(ref.t2)
    with torch.no_grad():
        pairs = mine_pairs(ref.basis.similarity(fu.detach()), pseudo, t1, t2, ref.require)
    return total + ref.lambda2 * (ce + reg) + ref.lambda1 * ref.unlabeled(fu, pseudo, pairs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", help="one row with this backbone (default: convnet and resnet18)")
    parser.add_argument("--size", type=int, help="image side (default 28 for convnet, 32 for resnets)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32, help="labeled images per step")
    parser.add_argument("--unlabeled", type=int, default=32, help="unlabeled images per step")
    parser.add_argument("--classes", type=int, default=8, help="labeled classes per batch (= num_basis)")
    parser.add_argument("--clusters", type=int, default=8, help="pseudo classes per batch")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "fp16", "bf16"],
        help="both sides: fp16 = CUDA autocast with loss scaling; bf16 = the backbone under "
        "autocast in bfloat16 (slade's precision='bf16'), any device",
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    if args.backbone:
        rows = [(args.backbone, args.size or (28 if args.backbone == "convnet" else 32))]
    else:
        rows = [(b, args.size or s) for b, s in DEFAULT_ROWS]

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"student step (basis_mining, contrastive, L_SD), batch {args.batch} labeled + "
        f"{args.unlabeled} unlabeled, dim {args.dim}, device {args.device} ({device_name}), "
        f"{args.precision}, threads {torch.get_num_threads()}, median of {args.steps} steps"
    )
    print("| model | slade img/s | pytorch+PML img/s | slade ms | pytorch ms | speedup |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    results = []
    for backbone, side in rows:
        r = run_row(backbone, side, args)
        results.append(r)
        print(
            f"| {r['row']} | {r['ours']:.0f} | {r['theirs']:.0f} | {r['ms'][0]:.1f} | "
            f"{r['ms'][1]:.1f} | {r['speedup']:.2f} |"
        )
    for r in results:
        ours, theirs, worst = r["first"]
        print(
            f"{r['row']}: first step loss slade {ours:.6f} pytorch {theirs:.6f}, "
            f"max |w_slade - w_pytorch| after it {worst:.1e} (Adam, lr 1e-3)"
        )
    print(f"speedup: {results[0]['speedup']:.2f}")


if __name__ == "__main__":
    main()
