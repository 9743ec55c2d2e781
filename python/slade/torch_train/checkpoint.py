"""Checkpoints of the Python-step trainers: one ``.safetensors`` file holding the module's
state (``model.``), the objective's (``objective.``), the optimizer's per parameter
(``optim.<parameter>.<slot>``) and the step's random generators (``rng.cpu``,
``rng.cuda``); its metadata holds the format, trainer kind, step, settings and the
module's class. A JSON file beside it repeats the metadata. Both are written atomically and
durably (:mod:`slade._durable`), the JSON first: the ``.safetensors`` file, the one
:func:`read` reads, is the commit point, as for the Rust trainers' checkpoints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._durable import write_json, write_with
from ..errors import ConfigError, MissingFileError, SladeIOError

#: The layout version; the Rust trainers' checkpoints are format "1".
FORMAT = "torch-1"
_FORMAT_KEY = "slade.format"


@dataclass
class CheckpointInfo:
    """What a checkpoint says about itself."""

    kind: str
    step: int
    settings: dict[str, Any]  # optimizer, seed, dim, precision
    objective: dict[str, Any]
    model: str  # the module's class, for messages


def sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def save(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], info: CheckpointInfo) -> None:
    """Writes the checkpoint (CPU copies of ``tensors``) and its JSON file."""
    from safetensors.torch import save_file

    path = Path(path)
    if not path.parent.is_dir():
        raise MissingFileError(f"cannot save to {path}: no folder {path.parent}")
    plain = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}
    metadata = {
        _FORMAT_KEY: FORMAT,
        "slade.trainer": info.kind,
        "slade.step": str(info.step),
        "slade.settings": json.dumps(info.settings),
        "slade.objective": json.dumps(info.objective),
        "slade.model": info.model,
    }
    description = {"format": FORMAT, **vars(info), "tensors": path.name}
    write_json(sidecar(path), description)
    write_with(path, lambda temporary: save_file(plain, os.fspath(temporary), metadata))


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    if not path.exists():
        raise MissingFileError(f"no such checkpoint: {path}")
    try:
        with safe_open(os.fspath(path), framework="pt") as file:
            return dict(file.metadata() or {})
    except (SafetensorError, OSError) as error:
        raise SladeIOError(f"{path} is not a readable safetensors file: {error}") from error


def is_torch_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a checkpoint of a Python-step trainer (a model of the user's);
    False for an unreadable file, whose reader then says what is wrong."""
    try:
        return _metadata(Path(path)).get(_FORMAT_KEY) == FORMAT
    except SladeIOError:
        return False


def read_info(path: str | os.PathLike) -> CheckpointInfo:
    """The kind, step and settings of a Python-step trainer's checkpoint."""
    path = Path(path)
    metadata = _metadata(path)
    if metadata.get(_FORMAT_KEY) != FORMAT:
        raise ConfigError(
            f"{path} is not a checkpoint of a trainer of your own model (format "
            f"{metadata.get(_FORMAT_KEY)!r}); load it with slade.load_trainer(path)"
        )
    try:
        return CheckpointInfo(
            kind=metadata["slade.trainer"],
            step=int(metadata["slade.step"]),
            settings=json.loads(metadata["slade.settings"]),
            objective=json.loads(metadata["slade.objective"]),
            model=metadata["slade.model"],
        )
    except (KeyError, ValueError) as error:
        raise SladeIOError(f"{path}: corrupt checkpoint metadata ({error})") from error


def read(path: str | os.PathLike) -> tuple[CheckpointInfo, dict[str, torch.Tensor]]:
    """The checkpoint's information and its tensors (on the CPU)."""
    from safetensors.torch import load_file

    info = read_info(path)
    return info, load_file(os.fspath(path))


def sections(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The tensors by section (``model``, ``objective``, ``optim``, ``rng``), the prefix
    removed."""
    parts: dict[str, dict[str, torch.Tensor]] = {"model": {}, "objective": {}, "optim": {}, "rng": {}}
    for name, tensor in tensors.items():
        section, _, rest = name.partition(".")
        if section not in parts or not rest:
            raise SladeIOError(f"unexpected tensor {name!r} in the checkpoint")
        parts[section][rest] = tensor
    return parts
