"""Ranks of a real Gloo process group on the loopback interface, for the distributed tests:
each rank is its own process (torch.multiprocessing), as under torchrun."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, function: Callable, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        function(rank, *args)
    finally:
        dist.destroy_process_group()


def spawn(function: Callable[..., None], world: int, *args: Any) -> None:
    """Runs ``function(rank, *args)`` on ``world`` ranks of one Gloo group; waits for all
    (a rank's exception fails the call). ``function`` must be importable (module level)."""
    mp.spawn(_rank, args=(world, free_port(), function, args), nprocs=world, join=True)
