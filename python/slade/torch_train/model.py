"""A user's ``torch.nn.Module`` as slade's training and evaluation code see it: built from
a factory under a seed, on its device, its outputs checked, its weights loaded by name.

The module maps a batch of images to embeddings ``(N, dim)``; slade does not normalise them
(the built-in networks end in an L2 normalisation: end yours in one too, e.g.
``torch.nn.functional.normalize``, for the ranking losses' margins to mean what they say).
Parameters whose names start with ``embedding.`` form the optimizer group ``"head"``, every
other parameter of the module the group ``"backbone"`` (the built-in networks' names).
"""

from __future__ import annotations

import copy
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from .._convert import as_tensor, as_tensors
from ..errors import DeviceError, DtypeError, InvalidArgumentError, NonFiniteError, ShapeError
from ..nn import batches_of, named_tensor_list

#: A module, or a callable that returns one (called under the trainer's seed).
ModelSource = torch.nn.Module | Callable[[], torch.nn.Module]

#: Names of the head's parameters: the optimizer group "head" (the rest is "backbone").
HEAD_PREFIX = "embedding."


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Torch's global generators (the CPU's, and ``device``'s when it is CUDA) seeded with
    ``seed`` inside, as they were outside."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are one (``cuda`` is the current CUDA device)."""
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True

    def index(d: torch.device) -> int:
        return d.index if d.index is not None else torch.cuda.current_device()

    return index(a) == index(b)


def module_device(module: torch.nn.Module, default: torch.device) -> torch.device:
    """The device of the module's first parameter or buffer (``default`` without any)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return default


def build_module(source: ModelSource, device: torch.device) -> torch.nn.Module:
    """The module itself (it must be on ``device``), or ``source()`` moved to ``device``
    (the trainers call it with torch's generators seeded: :func:`seeded`)."""
    if isinstance(source, torch.nn.Module):
        found = module_device(source, device)
        if not same_device(found, device):
            raise DeviceError(
                f"the model is on {found} but the trainer's device (config.device) is {device}: "
                f"move it with model.to({str(device)!r}) or set the device to {str(found)!r}"
            )
        return source
    if not callable(source):
        raise DtypeError(
            "model must be a torch.nn.Module or a callable that returns one, got "
            f"{type(source).__name__}"
        )
    module = source()
    if not isinstance(module, torch.nn.Module):
        raise DtypeError(f"model() must return a torch.nn.Module, got {type(module).__name__}")
    return module.to(device)


def fresh(source: ModelSource) -> ModelSource:
    """What a stage of a run trains: a factory as it is (each trainer calls it), a copy of a
    module (so each stage starts from its weights as given)."""
    return copy.deepcopy(source) if isinstance(source, torch.nn.Module) else source


def check_embeddings(f: Any, rows: int, dim: int | None, step: int | None = None) -> torch.Tensor:
    """The module's output, checked: a floating ``(rows, dim)`` tensor of finite values
    (``step``: the 1-based number of the training step they are for, for messages)."""
    if not isinstance(f, torch.Tensor):
        raise DtypeError(f"the model must return a tensor of embeddings, got {type(f).__name__}")
    if f.dim() != 2 or f.shape[0] != rows:
        raise ShapeError(
            f"the model must return embeddings of shape (N, dim) = ({rows}, dim) for {rows} "
            f"images, got shape {tuple(f.shape)} (flatten or pool its output)"
        )
    if dim is not None and f.shape[1] != dim:
        raise ShapeError(
            f"the model gives {f.shape[1]}-d embeddings but the trainer's dim (config.model.dim) "
            f"is {dim}: set model.dim={f.shape[1]} or change the model's output"
        )
    if not f.is_floating_point():
        raise DtypeError(f"the model's embeddings must be floating point, got {f.dtype}")
    if not bool(torch.isfinite(f.detach()).all()):
        if step is None:
            raise NonFiniteError("the embeddings are NaN or Inf (check the model and the images)")
        raise NonFiniteError(
            f"the embeddings are NaN or Inf in step {step}; the parameters were not updated "
            "(lower the learning rate, enable clip_grad_norm, check the batch, or set "
            'optimizer.nonfinite="skip" to skip such steps)'
        )
    return f


def check_images(images: Any, name: str, device: torch.device) -> torch.Tensor:
    """A batch of images: a floating tensor (or numpy array) with at least one image, on the
    model's device. Its rank, channels and size are the module's to check."""
    images = as_tensor(images, name)
    if not images.is_floating_point():
        raise DtypeError(f"{name} must be a floating tensor, got {images.dtype}")
    if images.ndim == 0 or images.shape[0] == 0:
        raise InvalidArgumentError(
            f"{name} is empty (shape {list(images.shape)}); it needs at least one image"
        )
    if not same_device(images.device, device):
        raise DeviceError(f"{name} are on {images.device} but the model is on {device}")
    return images


def check_crops(crops: Any, device: torch.device) -> list[torch.Tensor]:
    """SwAV's ``[global_1, global_2, local_1, ...]``: at least the two global crops, each a
    batch of :func:`check_images` holding the same images."""
    views = as_tensors(crops, "crops", "[global_1, global_2, local_1, ...]")
    if len(views) < 2:
        raise InvalidArgumentError(
            f"crops must hold at least the two global crops, got {len(views)} tensor(s)"
        )
    views = [check_images(c, f"crops[{i}]", device) for i, c in enumerate(views)]
    for i, view in enumerate(views[1:], 1):
        if view.shape[0] != views[0].shape[0]:
            raise ShapeError(
                f"every crop must hold the same images: crops[0] has {views[0].shape[0]} "
                f"but crops[{i}] has {view.shape[0]}"
            )
    return views


class TorchModel:
    """A user's module for embedding (evaluation, pseudo labels): ``embed`` and ``device``,
    as slade's own models offer them.

    Args:
        module: maps ``(N, C, H, W)`` images to ``(N, dim)`` embeddings.
        dim: the embedding width to check (None: any).
    """

    def __init__(self, module: torch.nn.Module, dim: int | None = None) -> None:
        if not isinstance(module, torch.nn.Module):
            raise DtypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        self.dim = dim

    @property
    def device(self) -> torch.device:
        return module_device(self.module, torch.device("cpu"))

    def forward(self, images: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """Checked embeddings of a batch in the module's current mode (``step``: the
        1-based training step, for messages)."""
        return check_embeddings(self.module(images), images.shape[0], self.dim, step)

    def embed(self, images: Any, batch_size: int = 256) -> torch.Tensor:
        """Embeddings in evaluation mode without autograd, ``batch_size`` images at a time
        (on the images' device); the module's mode is left as it was."""
        parts = [self._embed_batch(b, batch_size) for b in batches_of(images, "images")]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _embed_batch(self, images: torch.Tensor, batch_size: int) -> torch.Tensor:
        device, was_training = self.device, self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                parts = [
                    self.forward(images[i : i + batch_size].to(device)).to(images.device)
                    for i in range(0, images.shape[0], batch_size)
                ]
        finally:
            self.module.train(was_training)
        if not parts:
            return images.new_zeros((0, self.dim or 0))
        return torch.cat(parts)

    def to_torch(self) -> torch.nn.Module:
        """A copy of the module in evaluation mode."""
        return copy.deepcopy(self.module).eval()


def read_weights(source: Any) -> Mapping[str, torch.Tensor]:
    """Named tensors from a state_dict, a module, a slade model or trainer, or a file
    (``.safetensors``, else ``torch.load(path, weights_only=True)``)."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            from ..errors import MissingFileError

            raise MissingFileError(f"no such weights file: {path}")
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(source, torch.nn.Module):
        return source.state_dict()
    for method in ("model_state_dict", "state_dict"):
        if not isinstance(source, Mapping) and hasattr(source, method):
            return getattr(source, method)()
    return OrderedDict(named_tensor_list(source, "weights"))


def load_weights(
    module: torch.nn.Module,
    weights: Mapping[str, torch.Tensor],
    *,
    backbone_only: bool,
    strict: bool = True,
    ignore_prefixes: Sequence[str] = (),
    strip_prefix: str | None = None,
) -> dict:
    """Copies ``weights`` into the module by name: all of its tensors, or with
    ``backbone_only`` those outside the head (``embedding.*``). Names under
    ``ignore_prefixes`` (and the head's) are skipped on both sides: the module's are left as
    they are. With ``strict`` every other tensor of the module must be given and every
    given one must exist; a missing ``num_batches_tracked`` is tolerated, as torch does.
    Shapes must match.

    Returns ``{"loaded": n, "missing": [...], "unexpected": [...], "ignored": [...]}``."""
    items = named_tensor_list(weights, "weights")
    if strip_prefix:
        items = [(k[len(strip_prefix) :] if k.startswith(strip_prefix) else k, v) for k, v in items]
    skip = tuple(ignore_prefixes) + ((HEAD_PREFIX,) if backbone_only else ())
    ignored = [k for k, _ in items if skip and k.startswith(skip)]
    given = {k: v for k, v in items if not (skip and k.startswith(skip))}
    own = module.state_dict()
    targets = {k for k in own if not (skip and k.startswith(skip))}
    missing = sorted(k for k in targets - set(given) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(given) - targets)
    if strict and (missing or unexpected):
        raise ShapeError(
            f"the weights do not match the model: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''} (strict=False loads the rest)"
        )
    loaded = {k: v for k, v in given.items() if k in targets}
    for name, tensor in loaded.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise ShapeError(
                f"weights[{name!r}] has shape {tuple(tensor.shape)} but the model's is "
                f"{tuple(own[name].shape)}"
            )
    module.load_state_dict(loaded, strict=False)
    return {"loaded": len(loaded), "missing": missing, "unexpected": unexpected, "ignored": ignored}
