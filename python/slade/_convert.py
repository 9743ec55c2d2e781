"""Conversion of user inputs to torch tensors before they cross into the Rust core."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .errors import DtypeError


def as_tensor(value: Any, name: str) -> torch.Tensor:
    """Returns ``value`` as a torch tensor without copying it.

    Torch tensors pass through unchanged (any device, autograd intact); numpy arrays are
    wrapped with ``torch.from_numpy``, which shares their memory.
    """
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype == np.bool_ or value.dtype.kind not in "iuf":
            raise DtypeError(f"{name} must be a numeric array, got dtype {value.dtype}")
        if any(stride < 0 for stride in value.strides):
            value = np.ascontiguousarray(value)
        return torch.from_numpy(value)
    raise DtypeError(
        f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}"
    )


def optional_tensor(value: Any, name: str) -> torch.Tensor | None:
    return None if value is None else as_tensor(value, name)
