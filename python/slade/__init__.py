"""slade: SLADE semi-supervised deep metric learning with a Rust core on LibTorch.

``import slade`` loads torch first, so the extension finds LibTorch already in the process.
"""

import torch  # noqa: F401  (must be imported before the extension)

from . import _core, config, diagnostics, errors, losses, miners, objectives, settings, torch_train
from .basis import FeatureBasis
from .cluster import KMeansResult, kmeans, nmi
from .config import Config
from .errors import *  # noqa: F403  (every error class: errors.__all__, re-exported below)
from .nn import EmbeddingModel, load_torchvision_weights
from .objectives import StudentLoss, SwavLoss, TeacherLoss
from .retrieval import knn, retrieval_metrics
from .settings import (
    BasisConfig,
    ModelConfig,
    OptimizerConfig,
    RankingConfig,
    StudentObjectiveConfig,
    SwavConfig,
)
from .sharded_kmeans import sharded_kmeans
from .torch_train import TorchStudentTrainer, TorchSwavTrainer, TorchTeacherTrainer
from .train import StudentTrainer, SwavTrainer, TeacherTrainer

__version__ = _core.__version__


# The pipeline (slade.pipeline) and slade.data import torchvision: loaded on first use.
_PIPELINE = (
    "load_data",
    "train_ssl",
    "train_teacher",
    "pseudo_label",
    "PseudoLabels",
    "train_student",
    "evaluate",
    "load_trainer",
    "run",
    "RunResult",
    "results_table",
    "diagnose",
)

# slade.deploy (export, embedding, the gallery index) imports torchvision too.
_DEPLOY = ("export", "embed", "Embeddings", "ModelCard", "Index")


def __getattr__(name: str):
    import importlib

    if name in ("data", "pipeline", "plots", "cli", "deploy"):
        return importlib.import_module(f".{name}", __name__)
    if name in _PIPELINE:
        return getattr(importlib.import_module(".pipeline", __name__), name)
    if name in _DEPLOY:
        return getattr(importlib.import_module(".deploy", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FeatureBasis",
    "diagnostics",
    "losses",
    "miners",
    "objectives",
    "StudentLoss",
    "TeacherLoss",
    "SwavLoss",
    "KMeansResult",
    "kmeans",
    "sharded_kmeans",
    "nmi",
    "config",
    "Config",
    *_PIPELINE,
    *_DEPLOY,
    "knn",
    "retrieval_metrics",
    "ModelConfig",
    "EmbeddingModel",
    "load_torchvision_weights",
    "OptimizerConfig",
    "SwavConfig",
    "RankingConfig",
    "BasisConfig",
    "StudentObjectiveConfig",
    "settings",
    "SwavTrainer",
    "TeacherTrainer",
    "StudentTrainer",
    "torch_train",
    "TorchTeacherTrainer",
    "TorchStudentTrainer",
    "TorchSwavTrainer",
    *errors.__all__,
]
