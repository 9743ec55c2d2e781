"""slade's embedding networks as plain ``torch.nn.Module``s, with slade's parameter names:
``f = normalize(W h(x) + b)`` (DESIGN.md §2), h the pooled backbone features.

- :class:`ConvNetEmbedding`: four conv3x3(64)-BatchNorm-ReLU-maxpool2 blocks
  (``blocks.{i}.conv``, ``blocks.{i}.bn``), global average pooling.
- :class:`ResNetEmbedding`: torchvision's ResNet-18 / ResNet-50 (its names: ``conv1``,
  ``layer1.0.bn1``, ...) without the classifier ``fc``.

Both end in the head ``embedding`` (Linear) and the L2 normalisation, and need nothing but
torch and torchvision: :func:`to_torch` copies a slade model into one.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ..settings import ModelConfig

#: Pooled feature width of each backbone.
FEATURES = {"convnet": 64, "resnet18": 512, "resnet50": 2048}


class _ConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int = 64):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)


class ConvNetEmbedding(nn.Module):
    """The ConvNet backbone, the head and the L2 normalisation."""

    def __init__(self, in_channels: int = 1, dim: int = 128):
        super().__init__()
        self.blocks = nn.Sequential(*(_ConvBlock(in_channels if i == 0 else 64) for i in range(4)))
        self.embedding = nn.Linear(FEATURES["convnet"], dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = F.adaptive_avg_pool2d(self.blocks(x), 1).flatten(1)
        return F.normalize(self.embedding(features), dim=1)


class ResNetEmbedding(torchvision.models.ResNet):
    """torchvision's ResNet (``"resnet18"`` or ``"resnet50"``) with the head in place of
    ``fc`` and the L2 normalisation."""

    def __init__(self, backbone: str = "resnet50", in_channels: int = 3, dim: int = 512):
        block, layers = {
            "resnet18": (torchvision.models.resnet.BasicBlock, [2, 2, 2, 2]),
            "resnet50": (torchvision.models.resnet.Bottleneck, [3, 4, 6, 3]),
        }[backbone]
        super().__init__(block, layers)
        if in_channels != 3:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        del self.fc
        self.embedding = nn.Linear(FEATURES[backbone], dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        features = torch.flatten(self.avgpool(x), 1)
        return F.normalize(self.embedding(features), dim=1)


def embedding_network(config: ModelConfig) -> nn.Module:
    """The plain torch network of a model config, randomly initialised."""
    if config.backbone == "convnet":
        return ConvNetEmbedding(config.in_channels, config.dim)
    return ResNetEmbedding(config.backbone, config.in_channels, config.dim)


def to_torch(model: Any) -> nn.Module:
    """A plain torch copy (in evaluation mode, on the model's device) of a slade
    :class:`~slade.EmbeddingModel`, a trainer's model or a checkpoint path's: the same
    outputs, no slade needed to run it. The trainer's own parameters (feature basis,
    prototypes) are not part of it."""
    from ..nn import EmbeddingModel
    from ..pipeline.inputs import as_model

    model = as_model(model)
    state = model.model_state_dict()
    config = model.config if isinstance(model, EmbeddingModel) else model.model_config
    network = embedding_network(config)
    network.load_state_dict({name: tensor.detach().clone() for name, tensor in state.items()})
    return network.to(model.device).eval()
