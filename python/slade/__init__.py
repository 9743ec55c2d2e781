"""slade: SLADE semi-supervised deep metric learning with a Rust core on LibTorch.

``import slade`` loads torch first, so the extension finds LibTorch already in the process.
"""

import torch  # noqa: F401  (must be imported before the extension)

from . import _core, losses, miners
from .errors import (
    ConfigError,
    DeviceError,
    DtypeError,
    InternalError,
    InvalidArgumentError,
    MissingFileError,
    NonFiniteError,
    SladeError,
    SladeIOError,
    ShapeError,
    TorchError,
)
from .nn import EmbeddingModel, ModelConfig, load_torchvision_weights
from .basis import FeatureBasis
from .cluster import KMeansResult, kmeans, nmi, pseudo_label
from .retrieval import knn, retrieval_metrics
from .train import OptimizerConfig, StudentTrainer, SwavConfig, SwavTrainer, TeacherTrainer

__version__ = _core.__version__


def __getattr__(name: str):
    # slade.data imports torchvision; load it on first use rather than with slade.
    if name == "data":
        import importlib

        return importlib.import_module(".data", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FeatureBasis",
    "losses",
    "miners",
    "KMeansResult",
    "kmeans",
    "nmi",
    "pseudo_label",
    "knn",
    "retrieval_metrics",
    "ModelConfig",
    "EmbeddingModel",
    "load_torchvision_weights",
    "OptimizerConfig",
    "SwavConfig",
    "SwavTrainer",
    "TeacherTrainer",
    "StudentTrainer",
    "SladeError",
    "ShapeError",
    "DtypeError",
    "DeviceError",
    "NonFiniteError",
    "InvalidArgumentError",
    "ConfigError",
    "MissingFileError",
    "SladeIOError",
    "TorchError",
    "InternalError",
]
