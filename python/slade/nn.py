"""Embedding networks: a backbone followed by an embedding head.

f = normalize(W h(x) + b), with h the globally pooled backbone features (DESIGN.md §2: the
paper's ResNet-50 with a 512-d embedding). Backbones:

- ``"convnet"``: four blocks conv3x3(64)-BatchNorm-ReLU-maxpool2, then global average
  pooling (64-d); for small grayscale images (28x28, 105x105), at least 16x16 pixels.
- ``"resnet18"``, ``"resnet50"``: torchvision's architectures and parameter/buffer names
  (``conv1.weight``, ``layer1.0.bn1.running_mean``, ...), without the classifier ``fc``.

The head's parameters are ``embedding.weight`` and ``embedding.bias``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from . import _core
from ._convert import as_int, as_tensor
from .errors import DtypeError, NotSupportedError, SladeError
from .settings import ModelConfig


def device_name(device: Any) -> str:
    if isinstance(device, torch.device):
        return str(device)
    if isinstance(device, str):
        return device
    raise DtypeError(f"device must be a str or torch.device, got {type(device).__name__}")


def named_tensor_list(state: Any, name: str) -> list[tuple[str, torch.Tensor]]:
    """The items of a state_dict-like mapping, checking that every value is a tensor."""
    if not isinstance(state, Mapping):
        raise DtypeError(f"{name} must be a dict of tensors, got {type(state).__name__}")
    items = []
    for key, value in state.items():
        if not isinstance(key, str):
            raise DtypeError(f"{name} keys must be str, got {key!r}")
        if not isinstance(value, torch.Tensor):
            raise DtypeError(f"{name}[{key!r}] must be a torch.Tensor, got {type(value).__name__}")
        items.append((key, value))
    return items


def batches_of(images: Any, name: str) -> Iterator[torch.Tensor]:
    """A tensor (or array) as itself, or an iterable of tensors / (tensor, ...) tuples."""
    if isinstance(images, torch.Tensor) or hasattr(images, "__array__"):
        yield as_tensor(images, name)
        return
    if not isinstance(images, Iterable):
        raise DtypeError(f"{name} must be a tensor, an array or an iterable of batches")
    for batch in images:
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        yield as_tensor(batch, name)


class CoreModule:
    """What slade's models and trainers share: the core object's tensors and embedding."""

    _core: Any

    @property
    def device(self) -> torch.device:
        return torch.device(self._core.device)

    def freeze_backbone(self, frozen: bool = True) -> None:
        """Stops (or restarts) training the backbone: no gradients, no optimizer update, and
        its BatchNorm layers use (and keep) their running statistics."""
        self._core.set_backbone_frozen(bool(frozen))

    @property
    def backbone_frozen(self) -> bool:
        return self._core.backbone_frozen

    def embed(self, images: Any, batch_size: int = 256) -> torch.Tensor:
        """Embeddings in evaluation mode without autograd, ``batch_size`` images at a time;
        the mode and BatchNorm statistics are left as they were.

        ``images`` is a tensor (any device; the result is on the same device) or an iterable
        of batches (e.g. a DataLoader yielding ``(images, labels)``).
        """
        size = as_int(batch_size, "batch_size")
        parts = [self._core.embed(b, size) for b in batches_of(images, "images")]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def to_torch(self) -> torch.nn.Module:
        """A plain ``torch.nn.Module`` copy of the model (backbone, head, L2
        normalisation; torchvision's names for ResNets) with the same outputs, in
        evaluation mode on the model's device: see :mod:`slade.deploy`."""
        from .deploy.networks import to_torch

        return to_torch(self)

    def model_state_dict(self) -> OrderedDict[str, torch.Tensor]:
        """The network's parameters and buffers (backbone and embedding head, without a
        trainer's own parameters such as the basis or prototypes), detached but sharing
        memory."""
        return OrderedDict(self._core.model_state_dict())


def incompatible_keys(report: Mapping[str, Any]) -> Any:
    """torch's ``load_state_dict`` result, ``(missing_keys, unexpected_keys)``, of a core
    load report."""
    return torch.nn.modules.module._IncompatibleKeys(
        list(report["missing"]), list(report["unexpected"])
    )


class EmbeddingModel(CoreModule, torch.nn.Module):
    """Backbone + embedding head with its parameters held by the Rust core: a
    ``torch.nn.Module`` whose parameters and buffers are the core's very tensors.

    In-place changes from Python are seen by Rust and the other way round, and gradients of
    a loss on its output land in ``.grad`` of ``parameters()``, so it trains in a plain
    torch loop (``torch.optim``, hooks, ``nn.Sequential``) as well as in slade's trainers.
    ``.to(device)`` / ``.cuda()`` / ``.cpu()`` move it; build optimizers after moving, as
    the moved model holds new tensors. The weights stay float32 (``.double()``, ``.half()``
    raise :class:`slade.NotSupportedError`; the fp16 path is a trainer's ``precision``).
    Copies (``copy.deepcopy``, ``torch.save`` of the module) rebuild it from its config and
    state.

    Args:
        config: a :class:`ModelConfig` (or a dict of its fields); default ``ModelConfig()``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a torch.device.
        seed: seeds the initial weights (torchvision's initialisation for ResNets).
    """

    def __init__(
        self, config: ModelConfig | Mapping | None = None, *, device: Any = "cpu", seed: int = 0
    ):
        torch.nn.Module.__init__(self)
        core = _core._EmbeddingModel(
            ModelConfig.mapping(config, {}, "model config"), device_name(device), seed
        )
        self.config = ModelConfig.from_core(core.config)
        self._attach(core)

    def _attach(self, core: Any) -> None:
        """Holds ``core`` and registers its tensors as this module's parameters and buffers."""
        self._core = core
        self._parameters.clear()
        self._parameters.update(core.named_parameters())
        self._buffers.clear()
        self._buffers.update(core.named_buffers())
        self._state_order = [name for name, _ in core.state_dict()]

    # The mode lives in the core (nn.Module.__init__ sets it before the core exists).
    @property
    def training(self) -> bool:
        core = self.__dict__.get("_core")
        return True if core is None else core.training

    @training.setter
    def training(self, mode: bool) -> None:
        core = self.__dict__.get("_core")
        if core is not None:
            core.set_training(bool(mode))

    def forward(self, images: Any) -> torch.Tensor:
        """L2-normalised embeddings (N, dim) of a (N, C, H, W) batch in the current mode."""
        return self._core.forward(as_tensor(images, "images"))

    def model_state_dict(self) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict(self.state_dict())

    def features(self, images: Any, train: bool | None = None) -> torch.Tensor:
        """Pooled backbone features before the head."""
        return self._core.features(as_tensor(images, "images"), train)

    def extra_repr(self) -> str:
        c = self.config
        return f"backbone={c.backbone!r}, in_channels={c.in_channels}, dim={c.dim}, device={self.device}"

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        """torchvision's key order (parameters and buffers interleaved per layer)."""
        tensors = {**self._parameters, **self._buffers}
        for name in self._state_order:
            tensor = tensors[name]
            assert tensor is not None
            destination[prefix + name] = tensor if keep_vars else tensor.detach()

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Copies a state_dict with these names into the core's tensors; with ``strict``
        every name must match (a missing ``num_batches_tracked`` is tolerated, as in torch).
        Returns torch's ``(missing_keys, unexpected_keys)``."""
        if assign:
            raise NotSupportedError("load_state_dict: assign=True (the core owns the tensors)")
        items = named_tensor_list(state_dict, "state_dict")
        return incompatible_keys(self._core.load_state_dict(items, strict))

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: Any,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """A parent module's ``load_state_dict``: this model's keys under ``prefix``."""
        mine = [(k[len(prefix) :], v) for k, v in state_dict.items() if k.startswith(prefix)]
        try:
            report = self._core.load_state_dict(named_tensor_list(dict(mine), "state_dict"), False)
        except SladeError as error:
            error_msgs.append(str(error))
            return
        missing_keys.extend(prefix + k for k in report["missing"])
        unexpected_keys.extend(prefix + k for k in report["unexpected"])

    def _apply(self, fn: Any, recurse: bool = True) -> EmbeddingModel:
        """``to`` / ``cuda`` / ``cpu`` / ``float``: a conversion that keeps float32 moves the
        model to the device it names (a new core with the same config and state)."""
        target = fn(torch.empty(0, device=self.device))
        if target.dtype != torch.float32:
            raise NotSupportedError(
                f"EmbeddingModel holds float32 weights, not {target.dtype}: use a trainer's "
                "precision for fp16, or to_torch() for a module of any dtype"
            )
        if target.device != self.device:
            self._attach(self._moved_core(target.device))
        return self

    def _moved_core(self, device: torch.device) -> Any:
        core = _core._EmbeddingModel(self.config.to_core(), device_name(device), 0)
        core.load_state_dict(self._core.state_dict(), True)
        core.set_training(self.training)
        core.set_backbone_frozen(self.backbone_frozen)
        return core

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickling and ``copy.deepcopy``: rebuilt from the config and a copy of the state."""
        state = OrderedDict((k, v.detach().cpu()) for k, v in self._core.state_dict())
        arguments = (
            self.config.to_core(),
            str(self.device),
            state,
            self.training,
            self.backbone_frozen,
        )
        return (_rebuilt_model, arguments)


def _rebuilt_model(
    config: Mapping[str, Any],
    device: str,
    state: Mapping[str, torch.Tensor],
    training: bool,
    frozen: bool,
) -> EmbeddingModel:
    model = EmbeddingModel(config, device=device)
    model.load_state_dict(state)
    model.train(training)
    model.freeze_backbone(frozen)
    return model


def _unwrap_checkpoint(obj: Any) -> Any:
    """Checkpoints often wrap the state_dict: ``{"state_dict": {...}}`` or ``{"model": {...}}``."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and not isinstance(obj.get("conv1.weight"), torch.Tensor):
                return inner
    return obj


def load_torchvision_weights(
    target: Any,
    weights: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    ignore_prefixes: Sequence[str] = ("fc.",),
    strip_prefix: str | None = None,
) -> dict:
    """Loads backbone weights from a torchvision-style state_dict into a model or trainer.

    Args:
        target: an :class:`EmbeddingModel` or a trainer (e.g. :class:`slade.SwavTrainer`).
        weights: a state_dict (e.g. ``torchvision.models.resnet50().state_dict()``), a
            ``.safetensors`` file (read by the Rust core) or a ``.pt``/``.pth`` file (read with
            ``torch.load(path, weights_only=True)``).
        strict: any backbone tensor absent from ``weights``, or any key of ``weights`` the
            backbone lacks, is an error (listing them). A missing ``num_batches_tracked`` is
            tolerated, as torch does. Shapes must always match.
        ignore_prefixes: keys to skip; by default torchvision's classifier ``fc.*``.
        strip_prefix: removed from the start of every key first (e.g. ``"module."`` for
            checkpoints saved from DistributedDataParallel).

    Returns:
        ``{"loaded": n, "missing": [...], "unexpected": [...], "ignored": [...]}``.
    """
    core = getattr(target, "_core", None)
    if core is None or not hasattr(core, "load_backbone"):
        raise DtypeError(
            f"target must be a slade EmbeddingModel or trainer, got {type(target).__name__}"
        )
    ignore = list(ignore_prefixes)
    if isinstance(weights, (str, os.PathLike)):
        path = os.fspath(weights)
        if path.endswith(".safetensors"):
            return core.load_backbone(path, strict, ignore, strip_prefix)
        if not os.path.exists(path):
            from .errors import MissingFileError

            raise MissingFileError(f"no such weights file: {path}")
        weights = _unwrap_checkpoint(torch.load(path, map_location="cpu", weights_only=True))
    items = named_tensor_list(weights, "weights")
    return core.load_backbone(items, strict, ignore, strip_prefix)


__all__ = ["ModelConfig", "EmbeddingModel", "load_torchvision_weights"]
