"""Conversion of user inputs to torch tensors and Python scalars before they cross into the
Rust core, refusing values of the wrong type with a DtypeError that names the argument."""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from .errors import DtypeError, InvalidArgumentError


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


def as_tensors(values: Any, name: str, what: str) -> list[torch.Tensor]:
    """A list (or tuple) of tensors, each as :func:`as_tensor` takes it (named
    ``name[i]``); ``what`` describes the list in the error, e.g. ``[global_1, global_2, ...]``."""
    if isinstance(values, (torch.Tensor, str, bytes)) or not isinstance(values, Sequence):
        raise DtypeError(f"{name} must be a list of tensors {what}, got {type(values).__name__}")
    return [as_tensor(v, f"{name}[{i}]") for i, v in enumerate(values)]


def _kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def as_int(value: Any, name: str) -> int:
    """``value`` as an int: an int, a numpy integer or a one-element integer tensor; not a
    bool, a float or a string. The range is the core's to check."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise DtypeError(f"{name} must be an int, got {_kind(value)}")


def positive_int(value: Any, name: str) -> int:
    """An int of at least 1, for sizes that no core call checks."""
    number = as_int(value, name)
    if number < 1:
        raise InvalidArgumentError(f"{name} must be at least 1, got {number}")
    return number


def optional_int(value: Any, name: str) -> int | None:
    return None if value is None else as_int(value, name)


def as_ints(values: Any, name: str) -> list[int]:
    """A sequence of ints (a list, a tuple, a 1-D array or tensor) as a list."""
    one_dim = not isinstance(values, (torch.Tensor, np.ndarray)) or values.ndim == 1
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable) or not one_dim:
        raise DtypeError(f"{name} must be a sequence of ints (e.g. [1, 2, 4]), got {_kind(values)}")
    return [as_int(v, f"{name}[{i}]") for i, v in enumerate(values)]


def as_float(value: Any, name: str) -> float:
    """``value`` as a float: a real number (numpy scalars and one-element tensors included),
    not a bool or a string. Whether it is finite is the core's to check."""
    if not isinstance(value, (bool, str, bytes)):
        try:
            return float(value)
        except (TypeError, ValueError, RuntimeError):
            pass
    raise DtypeError(f"{name} must be a number, got {_kind(value)}")


def as_bool(value: Any, name: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise DtypeError(f"{name} must be a bool (True or False), got {_kind(value)}")


def as_str(value: Any, name: str) -> str:
    """An option name; which names are valid is the core's to check."""
    if isinstance(value, str):
        return value
    raise DtypeError(f"{name} must be a str (an option name), got {_kind(value)}")
