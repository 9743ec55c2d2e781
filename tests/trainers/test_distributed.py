"""Data-parallel training with torch.distributed on the trainers' own tensors: two Gloo ranks
each compute gradients on their half of a batch, average them with all_reduce, and apply
them. Both ranks must end with the same parameters, equal to one update with the mean of
the two halves' gradients computed in this process."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import slade
from ranks import free_port

MODEL = slade.ModelConfig("convnet", 1, 16)
OPTIM = slade.OptimizerConfig(name="sgd", lr=0.1, momentum=0.9)


def make_halves():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat(4)[torch.randperm(16, generator=g)]
    images = torch.randn(4, 1, 28, 28, generator=g)[labels] + 0.5 * torch.randn(
        16, 1, 28, 28, generator=g
    )
    return [(images[:8], labels[:8]), (images[8:], labels[8:])]


def teacher():
    return slade.TeacherTrainer(MODEL, OPTIM, seed=3)


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    trainer = teacher()
    for _ in range(2):  # two steps: the optimizer's momentum carries over
        trainer.compute_gradients(*make_halves()[rank])
        for _, p in trainer.named_parameters():
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world)
        trainer.apply_gradients()
    torch.save(dict(trainer.named_parameters()), os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_gloo_ranks_train_like_one_averaged_update(tmp_path):
    mp.spawn(_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    # The same two updates in this process: gradients of each half, averaged by hand.
    halves = make_halves()
    reference, workers = teacher(), [teacher(), teacher()]
    for _ in range(2):
        grads = []
        for worker, half in zip(workers, halves):
            worker.compute_gradients(*half)
            grads.append({n: p.grad.clone() for n, p in worker.named_parameters()})
        reference.compute_gradients(*halves[0])
        for name, p in reference.named_parameters():
            p.grad.copy_((grads[0][name] + grads[1][name]) / 2)
        reference.apply_gradients()
        for worker in workers:  # each worker continues from the averaged weights
            worker.compute_gradients(*halves[0])
            for name, p in worker.named_parameters():
                p.grad.copy_((grads[0][name] + grads[1][name]) / 2)
            worker.apply_gradients()

    expected = dict(reference.named_parameters())
    assert set(ranks[0]) == set(expected)
    for name, value in expected.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        assert torch.allclose(ranks[0][name], value.detach(), rtol=1e-5, atol=1e-6), name
    initial = dict(teacher().named_parameters())
    assert any(not torch.equal(initial[n], v.detach()) for n, v in expected.items())
