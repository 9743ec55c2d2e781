"""SLADE's training steps on a ``torch.nn.Module`` of your own (a torchvision or timm model,
a ViT, a custom network): the step runs in Python (your module's forward, a ``torch.optim``
optimizer) around slade's objectives, computed in Rust (:mod:`slade.objectives`).

:class:`TorchTeacherTrainer`, :class:`TorchStudentTrainer` and :class:`TorchSwavTrainer`
offer what the pipeline uses from the Rust trainers (:mod:`slade.train`), so
``slade.train_teacher(data, config, model=...)``, ``train_student``, ``train_ssl`` and
``slade.run(config, model=...)`` train your module with the same batches, checkpoints,
resume, results and plots (README, "Your own model").

- The module maps ``(N, C, H, W)`` images to ``(N, dim)`` embeddings, ``dim`` =
  ``config.model.dim``; end it in an L2 normalisation as slade's networks do.
- Optimizer groups: parameters named ``embedding.*`` are ``"head"``, the module's other
  parameters ``"backbone"``, W_a ``"basis"``, SwAV's prototypes ``"head"``; rates, weight
  decay, schedule and clipping as :class:`slade.OptimizerConfig` says for the Rust trainers.
- On the built-in networks (their torch twins, :func:`slade.deploy.networks.embedding_network`)
  a Python step equals the Rust step (tests/trainers/test_torch_trainers.py).
"""

from .model import HEAD_PREFIX, TorchModel
from .trainers import (
    TorchStudentTrainer,
    TorchSwavTrainer,
    TorchTeacherTrainer,
    TorchTrainer,
    load_torch_trainer,
)

__all__ = [
    "HEAD_PREFIX",
    "TorchModel",
    "TorchTrainer",
    "TorchTeacherTrainer",
    "TorchStudentTrainer",
    "TorchSwavTrainer",
    "load_torch_trainer",
]
