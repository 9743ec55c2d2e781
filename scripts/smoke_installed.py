"""What a user does first with an installed slade: import it, a retrieval call, one teacher
training step on random tensors. Run by scripts/check_install.sh (the wheel) and
scripts/check_sdist.sh (built from the sdist) inside their fresh virtualenvs."""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import torch

import slade

location = os.path.realpath(slade.__file__)
assert location.startswith(os.path.realpath(sys.prefix)), f"slade imported from {location}"

x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
metrics = slade.retrieval_metrics(x, np.arange(50) % 5, recall_at=(1,))
assert set(metrics) >= {"map_at_r", "r_precision", "precision_at_1"}, metrics

g = torch.Generator().manual_seed(0)
labels = torch.arange(4).repeat(4)
images = torch.randn(4, 1, 28, 28, generator=g)[labels] + 0.5 * torch.randn(16, 1, 28, 28, generator=g)
trainer = slade.TeacherTrainer(
    slade.ModelConfig("convnet", 1, 16), slade.OptimizerConfig(name="sgd", lr=0.05), seed=0
)
before = {name: value.clone() for name, value in trainer.state_dict().items()}
step = trainer.step(images, labels)
assert math.isfinite(step["loss"]) and trainer.step_count == 1, step
assert any(not torch.equal(before[k], v) for k, v in trainer.state_dict().items()), "no update"

print(
    f"installed slade {slade.__version__} ({location}) on torch {torch.__version__}: "
    f"MAP@R {metrics['map_at_r']:.3f}, one teacher step, loss {step['loss']:.4f}"
)
