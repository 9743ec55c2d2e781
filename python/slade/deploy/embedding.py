"""Embedding images with a trained model: a tensor batch, a list of image files or a
folder, through the model's evaluation preprocessing, batched, on any device."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._convert import as_tensor
from ..data._files import image_files_under, load_image
from ..data.transforms import Preprocessing
from ..errors import ConfigError, DtypeError, MissingFileError
from .exporting import as_preprocessing, load, preprocessing_for
from .model_card import card_path


@dataclass
class Embeddings:
    """What :func:`embed` returns; unpacks as ``embeddings, paths = slade.embed(...)``.

    Attributes:
        embeddings: ``(N, dim)`` float32, L2-normalised, on the model's device.
        paths: the image files in the order of the rows (None for a tensor input).
    """

    embeddings: torch.Tensor
    paths: list[str] | None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.embeddings, self.paths))


def embed(
    model: Any,
    images: Any,
    *,
    batch_size: int = 256,
    device: Any = None,
    preprocessing: Preprocessing | dict | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> Embeddings:
    """Embeddings of images by a trained model, in evaluation mode without autograd.

    Args:
        model: a slade model or trainer, a checkpoint path, an exported model's path
            (TorchScript, safetensors or ONNX, with its JSON beside it), or any
            ``torch.nn.Module`` mapping ``(N, C, H, W)`` to ``(N, dim)``.
        images: a ``(N, C, H, W)`` tensor of inputs already preprocessed, a list of image
            files, or a folder (every image file below it, sorted by path).
        batch_size: images per forward pass.
        device: where to run; default the model's device (CPU for files).
        preprocessing: how files become inputs; default the checkpoint's run's, or the
            export's JSON (see :func:`slade.deploy.export`).
        num_workers: DataLoader processes decoding the files.
        progress: show a progress bar.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
    forward, model_preprocessing, device = _forward_of(model, device, preprocessing)
    paths = _image_paths(images)
    if paths is None:
        batches: Any = as_tensor(images, "images").split(batch_size)
    else:
        if model_preprocessing is None:
            raise ConfigError(
                "preprocessing: a torch.nn.Module does not say how image files become its "
                "inputs; pass preprocessing=slade.data.eval_preprocessing(...)"
            )
        batches = _file_batches(paths, model_preprocessing, batch_size, num_workers)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="embed", unit="batch")
    with torch.inference_mode():
        parts = [forward(batch.to(device)) for batch in batches]
    if not parts:
        raise ConfigError("images: nothing to embed (no images given)")
    return Embeddings(torch.cat(parts), [str(p) for p in paths] if paths is not None else None)


def _forward_of(model: Any, device: Any, given: Any) -> tuple[Any, Preprocessing | None, Any]:
    """The forward function, the preprocessing and the device of a model argument."""
    from ..nn import CoreModule
    from ..pipeline.inputs import as_model

    if isinstance(model, (str, os.PathLike)) and _is_export(Path(model)):
        network, card = load(model, device=device or "cpu")
        prep = as_preprocessing(given) if given is not None else card.preprocessing
        return _exported_forward(network, card.format), prep, device or "cpu"
    if isinstance(model, (str, os.PathLike, CoreModule)):
        loaded = as_model(model, device or "cpu")
        if device is not None and torch.device(device) != loaded.device:
            raise ConfigError(f"device: the model is on {loaded.device}, not {device}")
        prep = preprocessing_for(model, loaded, given)
        return lambda batch: loaded._core.embed(batch, batch.shape[0]), prep, loaded.device
    if isinstance(model, torch.nn.Module):
        dev = device or next(iter(model.parameters()), torch.empty(0)).device
        own = as_preprocessing(given) if given is not None else None
        return _module_forward(model.to(dev)), own, dev
    raise DtypeError(
        "model must be a slade model or trainer, a checkpoint or exported model path, or a "
        f"torch.nn.Module, got {type(model).__name__}"
    )


def _is_export(path: Path) -> bool:
    if not path.exists():
        raise MissingFileError(f"model: no such file {path}")
    return path.suffix in (".pt", ".onnx") or (
        card_path(path).is_file() and '"preprocessing"' in card_path(path).read_text()
    )


def _module_forward(module: torch.nn.Module) -> Any:
    def forward(batch: torch.Tensor) -> torch.Tensor:
        was_training = module.training
        module.eval()
        try:
            return module(batch)
        finally:
            module.train(was_training)

    return forward


def _exported_forward(network: Any, format: str) -> Any:
    if format != "onnx":
        return network

    def run_onnx(batch: torch.Tensor) -> torch.Tensor:
        (out,) = network.run(None, {"images": batch.cpu().numpy()})
        return torch.from_numpy(out)

    return run_onnx


def _image_paths(images: Any) -> list[Path] | None:
    """The image files an ``images`` argument names; None for a tensor or array."""
    if isinstance(images, (str, os.PathLike)):
        folder = Path(images)
        if folder.is_dir():
            found = image_files_under(folder)
            if not found:
                raise MissingFileError(f"images: no image files under {folder}")
            return found
        return [folder]
    if (
        isinstance(images, Sequence)
        and images
        and all(isinstance(p, (str, os.PathLike)) for p in images)
    ):
        return [Path(p) for p in images]
    if isinstance(images, Sequence) and not images:
        raise ConfigError("images: nothing to embed (an empty list)")
    return None


class _ImageFiles(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], preprocessing: Preprocessing):
        self.paths = paths
        self.mode = preprocessing.mode
        self.transform = preprocessing.transform()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(load_image(self.paths[index], self.mode))


def _file_batches(
    paths: list[Path], preprocessing: Preprocessing, batch_size: int, num_workers: int
) -> Any:
    return torch.utils.data.DataLoader(
        _ImageFiles(paths, preprocessing), batch_size=batch_size, num_workers=num_workers
    )


__all__ = ["Embeddings", "embed"]
