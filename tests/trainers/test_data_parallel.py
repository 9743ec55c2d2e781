"""The Python-step trainers as ranks of a Gloo process group (slade.distributed): two ranks,
each stepping on its half of every global batch, must give the weights, BatchNorm
statistics and losses of one process stepping on the whole batch (to float rounding) and
stay equal to each other; the batch shares, sharded embedding and global BatchNorm must be
the one-process ones. Every rank is a real process (torch.multiprocessing) with a real
process group; the one-process references are computed in this process with plain torch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torchvision.transforms import ToTensor

import slade
from ranks import free_port
from slade import distributed
from slade._images import StepBatches, TensorImages, TransformImages, embed_dataset
from slade.data import ImageTensorDataset, MPerClassSampler
from slade.deploy.networks import ConvNetEmbedding

WORLD = 2
STEPS = 3
OPTIM = {"name": "adam", "lr": 1e-3}
STUDENT = {"variant": "basis_mining", "basis_warmup": 1, "t1": "mu-", "t2": "mu+"}


def network():
    return ConvNetEmbedding(1, 16)


def batches(seed=0):
    """Global batches of the three trainers: 16 labeled images of 4 classes (m = 4; each
    rank's half holds two whole classes), 16 unlabeled ones with pseudo labels, and crops."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(4).repeat_interleave(4)
    centres = torch.randn(4, 1, 28, 28, generator=g)
    labeled = centres[labels] + 0.5 * torch.randn(16, 1, 28, 28, generator=g)
    pseudo = torch.arange(4).repeat_interleave(4)
    unlabeled = centres[pseudo] + 0.7 * torch.randn(16, 1, 28, 28, generator=g)
    crops = [torch.rand(16, 1, 28, 28, generator=g) for _ in range(2)]
    crops += [torch.rand(16, 1, 16, 16, generator=g) for _ in range(2)]
    return labels, labeled, pseudo, unlabeled, crops


def trainers(sync_batchnorm=True):
    common = dict(seed=5, sync_batchnorm=sync_batchnorm)
    return {
        "teacher": slade.TorchTeacherTrainer(network, OPTIM, dim=16, **common),
        "student": slade.TorchStudentTrainer(
            network, OPTIM, dim=16, num_basis=4, objective=STUDENT, **common
        ),
        "swav": slade.TorchSwavTrainer(network, OPTIM, dim=16, num_prototypes=8, **common),
    }


def train(rows=slice(None), sync_batchnorm=True):
    """Each trainer after STEPS steps on ``rows`` of every global batch: its state and its
    per-step losses."""
    out = {}
    for kind, trainer in trainers(sync_batchnorm).items():
        losses = []
        for step in range(STEPS):
            labels, labeled, pseudo, unlabeled, crops = batches(step)
            if kind == "teacher":
                metrics = trainer.step(labeled[rows], labels[rows])
            elif kind == "student":
                metrics = trainer.step(labeled[rows], labels[rows], unlabeled[rows], pseudo[rows])
            else:
                metrics = trainer.step([c[rows] for c in crops])
            losses.append(metrics["loss"])
        out[kind] = {"state": dict(trainer.state_dict()), "losses": losses}
    return out


def shares():
    """This rank's batches of the in-memory (batch-wise shifts) and the DataLoader (per-image
    transform, one worker) paths, and the sharded embedding of a data set."""
    g = torch.Generator().manual_seed(1)
    images = (torch.rand(40, 16, 16, generator=g) * 255).to(torch.uint8)
    labels = torch.arange(5).repeat_interleave(8)
    classes = [str(c) for c in range(5)]
    dataset = ImageTensorDataset(images, labels, classes, slade.data.train_transform("grayscale"))
    out = {}
    for name, source in (
        ("tensor", TensorImages(images, 2)),
        ("loader", TransformImages(dataset, num_workers=1)),
    ):
        sampler = MPerClassSampler(labels, 4, 16, seed=3)
        steps = StepBatches(source, sampler, labels, seed=11, start=2, device=torch.device("cpu"))
        out[name] = [next(steps) for _ in range(3)]
    torch.manual_seed(0)
    model = slade.torch_train.model.TorchModel(ConvNetEmbedding(1, 8).eval(), 8)
    out["embedded"] = embed_dataset(
        model, ImageTensorDataset(images[:37], labels[:37], classes, ToTensor()), batch_size=5
    )
    return out


def global_batchnorm():
    """A GlobalBatchNorm on this rank's half of a batch: output, input gradient, parameter
    gradients and running statistics."""
    x = torch.randn(12, 3, 5, 5, generator=torch.Generator().manual_seed(2)) * 3 + 1
    rows = distributed.share(12)
    local = x[rows].clone().requires_grad_(True)
    bn = distributed.sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)))[0]
    assert isinstance(bn, distributed.GlobalBatchNorm)
    weights = torch.linspace(-1, 1, 12 * 3 * 25).view(12, 3, 5, 5)
    out = bn(local)
    (out * weights[rows]).sum().backward()  # this rank's part of the whole batch's sum
    for p in bn.parameters():
        dist.all_reduce(p.grad)
    return {
        "out": out.detach(),
        "grad": local.grad,
        "weight": bn.weight.grad,
        "bias": bn.bias.grad,
        "mean": bn.running_mean.clone(),
        "var": bn.running_var.clone(),
    }


def _rank(rank, world, port, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rows = distributed.share(16)
        result = {
            "synced": train(rows),
            "per_rank": train(rows, sync_batchnorm=False),
            "shares": shares(),
            "bn": global_batchnorm(),
        }
        torch.save(result, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _late_rank(rank, world, port, folder):
    """Rank 1 joins a step 10 s late; rank 0 (timeout 3 s) must fail with a clear error."""
    import time
    from datetime import timedelta

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=3))
    trainer = trainers()["teacher"]
    labels, labeled, *_ = batches()
    rows = distributed.share(16)
    if rank == 1:
        time.sleep(10)
    began = time.monotonic()
    try:
        trainer.step(labeled[rows], labels[rows])
        outcome = "stepped"
    except slade.DistributedError as err:
        outcome = str(err)
    torch.save(
        {"outcome": outcome, "seconds": time.monotonic() - began},
        os.path.join(folder, f"late{rank}.pt"),
    )


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ranks")
    mp.spawn(_rank, args=(WORLD, free_port(), str(folder)), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def one_process():
    return train()


def assert_states_close(state, reference, tol=2e-5):
    assert state.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.allclose(state[name].double(), value.double(), rtol=tol, atol=tol), name


@pytest.mark.parametrize("kind", ["teacher", "student", "swav"])
def test_two_ranks_give_the_weights_and_losses_of_one_process(ranks, one_process, kind):
    ours, reference = [r["synced"][kind] for r in ranks], one_process[kind]
    for name, value in ours[0]["state"].items():  # the ranks stay equal, bit for bit
        assert torch.equal(value, ours[1]["state"][name]), name
    assert ours[0]["losses"] == ours[1]["losses"]
    assert_states_close(ours[0]["state"], reference["state"])
    assert ours[0]["losses"] == pytest.approx(reference["losses"], rel=1e-5, abs=1e-6)
    started = trainers()[kind].state_dict()
    moved = [n for n, v in reference["state"].items() if not torch.equal(started[n], v)]
    assert any("running_mean" in n for n in moved) and any("weight" in n for n in moved)


def test_per_rank_batchnorm_is_an_option_that_changes_the_statistics(ranks, one_process):
    ours = [r["per_rank"]["teacher"]["state"] for r in ranks]
    reference = one_process["teacher"]["state"]
    name = next(n for n in reference if n.endswith("running_var"))
    # Each rank's BatchNorm statistics are its own half's: they differ from the ranks'
    # average, unlike those of the synchronised run.
    assert not torch.allclose(ours[0][name], ours[1][name])
    assert not torch.allclose(ours[0][name], reference[name], rtol=1e-3)
    weights = [n for n in reference if n.endswith("embedding.weight")]
    assert weights and torch.equal(ours[0][weights[0]], ours[1][weights[0]])


@pytest.mark.parametrize("path", ["tensor", "loader"])
def test_the_ranks_shares_of_each_step_are_the_one_process_batch(ranks, path):
    one = shares()[path]
    for step, (images, labels) in enumerate(one):
        parts = [r["shares"][path][step] for r in ranks]
        assert torch.equal(torch.cat([p[1] for p in parts]), labels)
        assert torch.equal(torch.cat([p[0] for p in parts]), images)


def test_each_rank_embeds_its_shard_and_gets_every_embedding(ranks):
    one = shares()["embedded"]
    for r in ranks:
        assert r["shares"]["embedded"].shape == one.shape == (37, 8)
        assert torch.allclose(r["shares"]["embedded"], one, atol=1e-6)


def test_global_batchnorm_equals_batchnorm_on_the_whole_batch(ranks):
    x = torch.randn(12, 3, 5, 5, generator=torch.Generator().manual_seed(2)) * 3 + 1
    x.requires_grad_(True)
    bn = nn.BatchNorm2d(3)
    weights = torch.linspace(-1, 1, 12 * 3 * 25).view(12, 3, 5, 5)
    out = bn(x)
    (out * weights).sum().backward()
    parts = [r["bn"] for r in ranks]
    assert torch.allclose(torch.cat([p["out"] for p in parts]), out.detach(), atol=1e-5)
    assert torch.allclose(torch.cat([p["grad"] for p in parts]), x.grad, atol=1e-5)
    for p in parts:
        assert torch.allclose(p["weight"], bn.weight.grad, atol=1e-4)
        assert torch.allclose(p["bias"], bn.bias.grad, atol=1e-4)
        assert torch.allclose(p["mean"], bn.running_mean, atol=1e-6)
        assert torch.allclose(p["var"], bn.running_var, atol=1e-5)


def test_batch_shares_that_split_a_class_are_refused():
    assert distributed.world_size() == 1
    distributed.check_share(32, 8, "teacher.batch_size")  # one process: any multiple of m


def test_a_rank_that_does_not_join_a_step_is_a_clear_error_within_the_timeout(tmp_path):
    mp.spawn(_late_rank, args=(WORLD, free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    waited = torch.load(tmp_path / "late0.pt")
    # The step's first collective: the ranks agree that their images are finite.
    assert waited["outcome"].startswith(
        "rank 0 of 2: agreeing on a step failed, another rank died or did not join it within "
        "the timeout (distributed.timeout)"
    )
    assert "Timed out" in waited["outcome"]
    assert waited["seconds"] < 15
