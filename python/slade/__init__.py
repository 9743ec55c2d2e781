"""slade: SLADE semi-supervised deep metric learning with a Rust core on LibTorch.

``import slade`` loads torch first, so the extension finds LibTorch already in the process.
"""

import torch  # noqa: F401  (must be imported before the extension)

from . import _core, miners
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
from .basis import FeatureBasis
from .cluster import KMeansResult, kmeans, nmi, pseudo_label
from .retrieval import knn, retrieval_metrics

__version__ = _core.__version__

__all__ = [
    "FeatureBasis",
    "miners",
    "KMeansResult",
    "kmeans",
    "nmi",
    "pseudo_label",
    "knn",
    "retrieval_metrics",
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
