"""Conversion of a miner's index tuple before it crosses into the Rust core."""

from __future__ import annotations

from typing import Any

import torch

from ._convert import as_tensor
from .errors import ShapeError


def pairs_arg(pairs: Any) -> list[torch.Tensor] | None:
    """``pairs`` as a list of index tensors: PML's ``(a1, p, a2, n)`` or ``(a, p, n)``."""
    if pairs is None:
        return None
    if not isinstance(pairs, (tuple, list)) or len(pairs) not in (3, 4):
        got = f"{len(pairs)} items" if isinstance(pairs, (tuple, list)) else type(pairs).__name__
        raise ShapeError(
            "pairs must be a tuple of 4 index tensors (a1, p, a2, n) or 3 (a, p, n), "
            f"as a miner returns; got {got}"
        )
    return [as_tensor(t, f"pairs[{i}]") for i, t in enumerate(pairs)]
