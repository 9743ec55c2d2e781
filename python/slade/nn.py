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
from .errors import DtypeError
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

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The core's very parameter tensors, in torch's order."""
        return iter(self._core.named_parameters())

    def parameters(self) -> Iterator[torch.Tensor]:
        return (p for _, p in self._core.named_parameters())

    def named_buffers(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self._core.named_buffers())

    def state_dict(self) -> OrderedDict[str, torch.Tensor]:
        """Parameters and buffers, detached but sharing memory, as torch's state_dict()."""
        return OrderedDict(self._core.state_dict())

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> dict:
        """Copies a state_dict with these names in; with ``strict`` every name must match."""
        return self._core.load_state_dict(named_tensor_list(state_dict, "state_dict"), strict)


class EmbeddingModel(CoreModule):
    """Backbone + embedding head with its parameters held by the Rust core.

    Parameters and buffers are the core's very tensors (``named_parameters()``), so in-place
    changes from Python are seen by Rust and the other way round.

    Args:
        config: a :class:`ModelConfig` (or a dict of its fields); default ``ModelConfig()``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a torch.device.
        seed: seeds the initial weights (torchvision's initialisation for ResNets).
    """

    def __init__(self, config: ModelConfig | Mapping | None = None, *, device: Any = "cpu", seed: int = 0):
        self._core = _core._EmbeddingModel(
            ModelConfig.mapping(config, {}, "model config"), device_name(device), seed
        )
        self.config = ModelConfig.from_core(self._core.config)

    @property
    def training(self) -> bool:
        return self._core.training

    def train(self, mode: bool = True) -> EmbeddingModel:
        """Training mode: BatchNorm uses batch statistics and updates its running ones."""
        self._core.set_training(bool(mode))
        return self

    def eval(self) -> EmbeddingModel:
        return self.train(False)

    def forward(self, images: Any) -> torch.Tensor:
        """L2-normalised embeddings (N, dim) of a (N, C, H, W) batch in the current mode."""
        return self._core.forward(as_tensor(images, "images"))

    __call__ = forward

    def features(self, images: Any, train: bool | None = None) -> torch.Tensor:
        """Pooled backbone features before the head."""
        return self._core.features(as_tensor(images, "images"), train)


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
