"""The JSON written beside an exported model: what a caller needs to feed it.

``<model file>.json`` (``model.onnx.json``) holds the format and file name, the network (backbone, input
channels, embedding dim; outputs are L2-normalised, compared by Euclidean distance), the
input preprocessing (:class:`slade.data.Preprocessing`: colour mode, resize rule, crop,
mean/std) and where the model came from (checkpoint, stage, step, run config).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._durable import write_json
from ..data.transforms import Preprocessing
from ..errors import ConfigError, MissingFileError
from ..settings import ModelConfig

#: The export formats and their file suffixes.
FORMATS = {"torchscript": ".pt", "onnx": ".onnx", "safetensors": ".safetensors"}


def card_path(model_file: str | os.PathLike) -> Path:
    """The JSON beside a model file: its name with ``.json`` appended, so exports of
    one model in several formats keep one JSON each."""
    path = Path(model_file)
    return path.with_name(path.name + ".json")


@dataclass
class ModelCard:
    """An exported model's JSON, read back by :func:`slade.deploy.load` and
    :func:`slade.embed`.

    Attributes:
        format: ``"torchscript"``, ``"onnx"`` or ``"safetensors"``.
        file: the model file's name (beside this JSON).
        model: the network's :class:`slade.ModelConfig`.
        preprocessing: how an image file becomes the input.
        source: where the weights came from: ``checkpoint``, ``kind`` (teacher, student,
            ...), ``step``, ``stage`` and the run's ``config`` where known.
        slade_version: the version that exported it.
    """

    format: str
    file: str
    model: ModelConfig
    preprocessing: Preprocessing
    source: dict[str, Any] = field(default_factory=dict)
    slade_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        model = self.model.to_core()
        return {
            "format": self.format,
            "file": self.file,
            "model": model,
            "input": {
                "layout": "NCHW float32",
                "channels": self.preprocessing.channels,
                "size": self.preprocessing.input_size,
                "preprocessing": self.preprocessing.to_dict(),
            },
            "output": {"dim": model["dim"], "normalized": "L2", "distance": "euclidean"},
            "source": self.source,
            "slade_version": self.slade_version,
        }

    def write(self, path: str | os.PathLike) -> None:
        write_json(Path(path), self.to_dict())

    @classmethod
    def read(cls, path: str | os.PathLike) -> ModelCard:
        """Reads the JSON at ``path``; errors name the file."""
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"no model JSON {path} (written beside an exported model)")
        try:
            values = json.loads(path.read_text())
            return cls(
                format=_format(values["format"]),
                file=str(values["file"]),
                model=_model_config(values["model"]),
                preprocessing=Preprocessing.from_dict(
                    values["input"]["preprocessing"], f"{path}: input.preprocessing"
                ),
                source=dict(values.get("source", {})),
                slade_version=str(values.get("slade_version", "")),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{path} is not an exported model's JSON: {err}") from None


def _model_config(values: Any) -> ModelConfig:
    config = ModelConfig.from_core(values)
    config.check("model.")
    return config


def _format(value: Any) -> str:
    if value not in FORMATS:
        raise ConfigError(f"format must be one of {sorted(FORMATS)}, got {value!r}")
    return str(value)
