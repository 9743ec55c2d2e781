"""A trained model out of slade: TorchScript, ONNX or safetensors, each with its JSON
(:class:`ModelCard`), and read back without the Rust extension."""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from .._durable import write_bytes
from ..data.transforms import Preprocessing, eval_preprocessing
from ..errors import ConfigError, InvalidArgumentError, MissingFileError
from .model_card import FORMATS, ModelCard, card_path
from .networks import embedding_network, to_torch


def export(
    source: Any,
    path: str | os.PathLike,
    format: str | None = None,
    *,
    preprocessing: Preprocessing | dict | None = None,
    config: Any = None,
) -> ModelCard:
    """Writes a model as a file that needs only torch (TorchScript, safetensors) or
    onnxruntime (ONNX), plus its JSON beside it (``<file>.json``).

    Args:
        source: an :class:`~slade.EmbeddingModel`, a trainer, or a checkpoint path.
        path: the model file to write.
        format: ``"torchscript"`` (``.pt``), ``"onnx"`` (``.onnx``, dynamic batch axis) or
            ``"safetensors"`` (the plain network's state_dict); default from the suffix.
        preprocessing: how images become inputs; default: the run's (its ``config.json``
            beside a checkpoint, or ``config``), else by input channels: 1 grayscale images
            at their stored size, 3 ImageNet-normalised 224 px centre crops.
        config: a :class:`slade.Config`, preset name or dict whose data section says how
            images are preprocessed.

    Returns:
        The :class:`ModelCard` written beside the file.
    """
    from ..pipeline.inputs import as_model

    path = Path(path)
    format = _format_of(path, format)
    model = as_model(source)
    network = to_torch(model).cpu()
    card = ModelCard(
        format=format,
        file=path.name,
        model=network_config(model),
        preprocessing=preprocessing_for(source, model, preprocessing, config),
        source=_source(source),
        slade_version=__version__,
    )
    write_bytes(path, _WRITERS[format](network, card.preprocessing))
    card.write(card_path(path))
    return card


def load(path: str | os.PathLike, *, device: Any = "cpu") -> tuple[Any, ModelCard]:
    """An exported model and its card: a ``torch.nn.Module`` (TorchScript, safetensors)
    or an ``onnxruntime.InferenceSession`` (ONNX)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no such exported model: {path}")
    card = ModelCard.read(card_path(path))
    if card.file != path.name:
        raise ConfigError(f"{card_path(path)} describes {card.file}, not {path.name}")
    try:
        if card.format == "torchscript":
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated")
                return torch.jit.load(str(path), map_location=device).eval(), card
        if card.format == "safetensors":
            from safetensors.torch import load_file

            network = embedding_network(card.model)
            network.load_state_dict(load_file(str(path)))
            return network.to(device).eval(), card
    except (RuntimeError, ValueError, OSError) as err:
        raise ConfigError(f"{path} is not a readable {card.format} model: {err}") from None
    import onnxruntime  # type: ignore[import-untyped]

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]), card


def network_config(model: Any) -> Any:
    """The :class:`~slade.ModelConfig` of a slade model or trainer."""
    return model.model_config if hasattr(model, "model_config") else model.config


def _format_of(path: Path, format: str | None) -> str:
    if format is None:
        found = [name for name, suffix in FORMATS.items() if path.suffix == suffix]
        if not found:
            raise InvalidArgumentError(
                f"format: cannot tell it from {path.name!r}; pass one of {sorted(FORMATS)}"
            )
        return found[0]
    if format not in FORMATS:
        raise InvalidArgumentError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
    return format


def preprocessing_for(
    source: Any, model: Any, given: Any = None, config: Any = None
) -> Preprocessing:
    """``given`` (a Preprocessing or its dict), else the run's (``config``, or the
    ``config.json`` of the run a checkpoint path ``source`` lies in), else the default of
    the model's input channels."""
    if given is not None:
        return as_preprocessing(given)
    from ..pipeline.run_folder import run_config_of

    run_config = config if config is not None else run_config_of(source)
    if run_config is not None:
        from ..pipeline.data_loading import eval_preprocessing_of
        from ..pipeline.inputs import as_config

        return eval_preprocessing_of(as_config(run_config))
    in_channels = network_config(model).in_channels
    return eval_preprocessing("grayscale" if in_channels == 1 else "natural")


def as_preprocessing(given: Any) -> Preprocessing:
    return given if isinstance(given, Preprocessing) else Preprocessing.from_dict(given)


def _source(source: Any) -> dict[str, Any]:
    if not isinstance(source, (str, os.PathLike)):
        return {}
    from .. import _core
    from ..pipeline.run_folder import run_config_of

    kind, _, _, step = _core.read_checkpoint_info(os.fspath(source))
    path = Path(source)
    found = {"checkpoint": str(path), "kind": kind, "step": step, "stage": path.parent.name}
    run = run_config_of(source)
    return found | ({"config": run} if run is not None else {})


def _example_input(preprocessing: Preprocessing) -> torch.Tensor:
    side = preprocessing.input_size or 64
    return torch.zeros(2, preprocessing.channels, side, side)


def _torchscript(network: torch.nn.Module, preprocessing: Preprocessing) -> bytes:
    """A scripted module (torch marks TorchScript deprecated in favour of torch.export;
    the caller asked for this format, so its notice is not repeated here)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.[a-z]+` is deprecated", DeprecationWarning)
        torch.jit.save(torch.jit.script(network), buffer)
    return buffer.getvalue()


def _onnx(network: torch.nn.Module, preprocessing: Preprocessing) -> bytes:
    """ONNX through torch.export; the batch axis is dynamic, and so are height and width
    where the preprocessing keeps the images' own size."""
    axes = {0: torch.export.Dim("batch")}
    if preprocessing.input_size is None:
        axes |= {2: torch.export.Dim("height", min=16), 3: torch.export.Dim("width", min=16)}
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        # torch.export's own deprecation notice, not the caller's business.
        warnings.filterwarnings("ignore", "`isinstance\\(treespec, LeafSpec\\)`", FutureWarning)
        target = Path(folder) / "model.onnx"
        torch.onnx.export(
            network,
            (_example_input(preprocessing),),
            str(target),
            input_names=["images"],
            output_names=["embeddings"],
            dynamic_shapes={"x": axes},
            dynamo=True,
            verbose=False,
            external_data=False,
        )
        return target.read_bytes()


def _safetensors(network: torch.nn.Module, preprocessing: Preprocessing) -> bytes:
    from safetensors.torch import save

    return save({name: t.contiguous() for name, t in network.state_dict().items()})


_WRITERS = {"torchscript": _torchscript, "onnx": _onnx, "safetensors": _safetensors}
