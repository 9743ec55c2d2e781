"""Scale-out on torch.distributed (DESIGN.md §6): what a trainer and the pipeline need when
they run as one rank of a process group (``torchrun``; NCCL on GPUs, Gloo on the CPU).

The conventions, in one place:

- The global batch is the batch one process would draw at step t; rank r holds rows
  ``share(B)`` of it (:func:`share`), contiguous, in rank order.
- Every rank computes the loss of the whole global batch (:func:`gather` concatenates the
  ranks' embeddings; gradient flows back to each rank's own rows), so the loss value is the
  same on every rank and is the one-process loss: it is not divided by the world size.
- Gradients are averaged over ranks (:func:`average_gradients`, in buckets), as DDP does.
  ``gather``'s backward sums the ranks' gradients of each rank's rows, which the average
  makes up for: the parameters receive the one-process gradient of the global batch, so the
  learning rate of one process applies unchanged and no loss needs scaling by world size.
- BatchNorm in training mode normalises with the global batch's statistics
  (:func:`sync_batchnorm`), so 2 ranks give the weights of 1 process to float rounding.
- Rank 0 writes files; every rank reads them.

Outside a process group (or with ``torch.distributed`` unavailable) every function here is
the one-process identity: ``rank() == 0``, ``world_size() == 1``, ``gather(x) is x``.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError, DistributedError

#: Bytes of gradients averaged by one all_reduce call (DDP's default bucket size).
BUCKET_BYTES = 25 * 2**20


def active() -> bool:
    """Whether this process is a rank of an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_writer() -> bool:
    """Whether this process writes the run's files (rank 0)."""
    return rank() == 0


def launched() -> bool:
    """Whether the environment of a ``torchrun`` worker is set (``WORLD_SIZE``, ``RANK``)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init_from_environment(device: str, backend: str, timeout: float) -> None:
    """Joins the process group ``torchrun`` set up (no-op when already initialised):
    ``backend="auto"`` is NCCL for a CUDA ``device``, Gloo otherwise; a collective waiting
    longer than ``timeout`` seconds for a rank fails instead of hanging. The group is
    destroyed when the interpreter exits: one left alive can abort the process in its C++
    teardown ("terminate called without an active exception"), even after a run that
    succeeded."""
    if active():
        return
    if backend == "auto":
        backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    _destroy_at_exit()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def rank_device(device: str) -> str:
    """The device of this rank: ``"cuda"`` is the rank's own GPU (``LOCAL_RANK``) in a
    process group; other devices are used as given."""
    if active() and device == "cuda":
        return f"cuda:{local_rank()}"
    return device


def share(batch_size: int) -> slice:
    """This rank's rows of a global batch of ``batch_size`` rows (contiguous, rank order)."""
    size = batch_size // world_size()
    return slice(rank() * size, (rank() + 1) * size)


def check_share(batch_size: int, m: int, key: str) -> None:
    """The global batch ``key`` must split into equal shares of whole m-per-class groups."""
    world = world_size()
    if batch_size % (world * m):
        raise ConfigError(
            f"{key} = {batch_size} does not split over {world} ranks into shares of whole "
            f"classes ({m} images each): make it a multiple of {world * m} (the global batch "
            "stays the config's; each rank takes batch / world size of it)"
        )


@contextmanager
def _collective(what: str) -> Iterator[None]:
    """A collective's failure (a rank that died, or did not join it within the process
    group's timeout) as a DistributedError naming it and this rank. The process group is
    then destroyed when the interpreter exits, also one the caller initialised: one left
    with a failed operation aborts the process in its C++ teardown ("terminate called
    without an active exception"), which would replace the error's exit status by
    SIGABRT."""
    try:
        yield
    except (RuntimeError, dist.DistError) as err:
        _destroy_at_exit()
        raise DistributedError(
            f"rank {rank()} of {world_size()}: {what} failed, another rank died or did not "
            f"join it within the timeout (distributed.timeout): {err}"
        ) from err


def _destroy_at_exit() -> None:
    """Registers the destruction of the default process group at exit, once however often
    it is called (``unregister`` drops an earlier registration)."""
    atexit.unregister(_destroy_group)
    atexit.register(_destroy_group)


def _destroy_group() -> None:
    if active():
        with suppress(Exception):
            dist.destroy_process_group()


def gather(x: torch.Tensor) -> torch.Tensor:
    """The ranks' ``x`` (same shape on every rank) concatenated along dim 0, in rank order;
    gradient flows back to this rank's rows (the sum of the ranks' gradients for them)."""
    if world_size() == 1:
        return x
    with _collective("gathering the batch"):
        if not x.requires_grad:
            parts = [torch.empty_like(x) for _ in range(world_size())]
            dist.all_gather(parts, x.contiguous())
            return torch.cat(parts)
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(x.contiguous()))


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """The ranks' ``x`` concatenated along dim 0 in rank order, without gradient; the ranks
    may hold different numbers of rows (a data set's shards)."""
    if world_size() == 1:
        return x
    counts = [torch.zeros(1, dtype=torch.int64, device=x.device) for _ in range(world_size())]
    with _collective("gathering embeddings"):
        dist.all_gather(counts, torch.tensor([x.shape[0]], device=x.device))
        rows = [int(c) for c in counts]
        padded = x.new_zeros((max(rows), *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in rows]
        dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, rows)])


def shard_range(n: int) -> range:
    """This rank's contiguous part of ``range(n)`` (the first ``n % world`` ranks one more)."""
    world, r = world_size(), rank()
    base, extra = divmod(n, world)
    start = r * base + min(r, extra)
    return range(start, start + base + (r < extra))


def all_ranks(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank (so that all ranks take the same branch)."""
    if world_size() == 1:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        value = value.cuda()
    with _collective("agreeing on a step"):
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def all_sum(x: torch.Tensor, what: str) -> torch.Tensor:
    """``x`` replaced in place by its sum over the ranks (``what`` names it in an error)."""
    if world_size() > 1:
        with _collective(what):
            dist.all_reduce(x)
    return x


def barrier() -> None:
    if world_size() > 1:
        with _collective("waiting for the other ranks"):
            dist.barrier()


def broadcast_tensors(tensors: Iterable[torch.Tensor]) -> None:
    """Rank 0's values of ``tensors`` (parameters, buffers) copied in place on every rank."""
    if world_size() == 1:
        return
    with torch.no_grad(), _collective("broadcasting rank 0's weights"):
        for tensor in tensors:
            dist.broadcast(tensor.data, src=0)


def _buckets(tensors: list[torch.Tensor], limit: int) -> Iterator[list[torch.Tensor]]:
    """Consecutive groups of same-dtype, same-device tensors of at most ``limit`` bytes
    (a larger tensor alone)."""
    bucket: list[torch.Tensor] = []
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        fits = bucket and bucket[0].dtype == t.dtype and bucket[0].device == t.device
        if bucket and (not fits or size + nbytes > limit):
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += nbytes
    if bucket:
        yield bucket


def average_gradients(parameters: Iterable[torch.Tensor], bucket_bytes: int = BUCKET_BYTES) -> None:
    """Each parameter's ``.grad`` replaced by its mean over the ranks: one all_reduce per
    bucket of flattened gradients (parameters without a gradient are left out on every rank
    alike, as they take part in the same step)."""
    if world_size() == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    for bucket in _buckets(grads, bucket_bytes):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        with _collective("averaging gradients"):
            dist.all_reduce(flat)
        flat.div_(world_size())
        offset = 0
        for g in bucket:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode statistics are those of the global batch: mean and
    biased variance over the ranks' rows (two all_reduce calls with gradient, the variance
    from the global mean), the running variance updated with the unbiased one, as
    ``torch.nn.BatchNorm*d`` on the whole batch. torch's ``SyncBatchNorm`` only runs on GPUs;
    this one runs on every device and backend. The parameter and buffer names are
    BatchNorm's, so weights load either way."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {input.dim()}-D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        local = torch.cat([x.sum(dims), x.new_tensor([x.numel() // x.shape[1]])])
        total = all_reduce(local)
        count = int(total[-1].item())
        mean = total[:-1] / count
        centred = x - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / count
        self._update_running(mean.detach(), var.detach(), count)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out

    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        if not self.track_running_stats or self.running_mean is None or self.running_var is None:
            return
        assert self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            momentum = 1.0 / float(self.num_batches_tracked)
        else:
            momentum = self.momentum
        with torch.no_grad():
            self.running_mean.lerp_(mean, momentum)
            self.running_var.lerp_(var * count / max(count - 1, 1), momentum)


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm layer synchronised over the ranks, in place (its
    weights and buffers kept): torch's ``SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm`
    elsewhere."""
    if world_size() == 1:
        return module
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(
            child, GlobalBatchNorm
        ):
            setattr(module, name, _global_twin(child))
        else:
            _convert(child)
    return module


def _global_twin(bn: nn.modules.batchnorm._BatchNorm) -> GlobalBatchNorm:
    """A GlobalBatchNorm holding ``bn``'s very parameters and buffers."""
    twin = GlobalBatchNorm(
        bn.num_features,
        bn.eps,
        bn.momentum,
        bn.affine,
        bn.track_running_stats,
        device=next(iter(bn.buffers()), torch.empty(0)).device,
    )
    if bn.affine:
        twin.weight, twin.bias = bn.weight, bn.bias
    for buffer in ("running_mean", "running_var", "num_batches_tracked"):
        setattr(twin, buffer, getattr(bn, buffer))
    twin.train(bn.training)
    return twin


@contextmanager
def writes_by_rank0() -> Iterator[None]:
    """Inside, only rank 0 writes durable files (:mod:`slade._durable`); the other ranks'
    writes are skipped."""
    from . import _durable

    with _durable.skipped(not is_writer()):
        yield
