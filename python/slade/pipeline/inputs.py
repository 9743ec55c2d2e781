"""The arguments stages take, checked: configs (a Config, a preset name or a dict) and
models (a trainer, a model, a module of your own or a checkpoint path)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .. import _core, train
from ..config import Config, preset
from ..errors import ConfigError, DtypeError, InvalidArgumentError, MissingFileError
from ..nn import CoreModule
from ..torch_train import TorchModel, TorchTrainer, load_torch_trainer
from ..torch_train.checkpoint import is_torch_checkpoint, read_info


def as_config(config: Config | str | Mapping | None) -> Config:
    """A validated Config from a Config, a preset name, a dict or None (the defaults)."""
    if config is None:
        return Config().validate()
    if isinstance(config, str):
        return preset(config)
    if isinstance(config, Config):
        return config.validate()
    if isinstance(config, Mapping):
        return Config.from_dict(config).validate()
    raise DtypeError(
        f"config must be a slade Config, a preset name or a dict, got {type(config).__name__}"
    )


def load_trainer(path: str | os.PathLike, *, model: Any = None, device: Any = "cpu") -> Any:
    """The trainer a checkpoint (``.safetensors`` written by ``save``) was saved from; one of
    a model of your own needs ``model``, the module or factory it was trained from (one of
    slade's networks trained in a process group is rebuilt from its run's ``config.json``)."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"no such checkpoint: {path}")
    if is_torch_checkpoint(path):
        model = model if model is not None else _run_network(path)
        if model is None:
            raise InvalidArgumentError(
                f"{path} is a checkpoint of a model of your own "
                f"({read_info(path).model}): pass the module or a factory that builds it, "
                "slade.load_trainer(path, model=...)"
            )
        return load_torch_trainer(path, model, device=device)
    kind = _core.read_checkpoint_info(os.fspath(path))[0]
    classes = {"swav": "SwavTrainer", "teacher": "TeacherTrainer", "student": "StudentTrainer"}
    cls = getattr(train, classes.get(kind, ""), None)
    if cls is None:
        raise ConfigError(f"{path} is a {kind!r} checkpoint, which slade cannot load here")
    return cls.from_checkpoint(path, device=device)


def _run_network(path: Path) -> Any:
    """A factory of the slade network a torch checkpoint of a run holds (a distributed run
    trains the networks' torch twins), from the run's ``config.json``; None otherwise."""
    from ..deploy.networks import embedding_network
    from .run_folder import run_config_of

    saved = run_config_of(path)
    if saved is None or not read_info(path).model.startswith("slade.deploy.networks."):
        return None
    network = Config.from_dict(saved).model
    return lambda: embedding_network(network)


def as_model(source: Any, device: Any = "cpu") -> Any:
    """A slade trainer or model as it is; a ``torch.nn.Module`` of your own as a
    :class:`~slade.torch_train.TorchModel`; a checkpoint path loaded onto ``device``."""
    if isinstance(source, (CoreModule, TorchTrainer, TorchModel)):
        return source
    if isinstance(source, torch.nn.Module):
        return TorchModel(source)
    if isinstance(source, (str, os.PathLike)):
        return load_trainer(source, device=device)
    raise DtypeError(
        "expected a slade trainer or model (e.g. from train_teacher), a torch.nn.Module or a "
        f"checkpoint path, got {type(source).__name__}"
    )
