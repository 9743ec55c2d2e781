"""Plain PyTorch references for the tests of slade's networks and trainers, written from the
definitions (DESIGN.md §2.1, torchvision's ResNet, our ConvNet) rather than from our code."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int = 64):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)


class ConvNet(nn.Module):
    """Four conv3x3(64)-BN-ReLU-maxpool2 blocks, then global average pooling."""

    def __init__(self, in_channels: int = 1):
        super().__init__()
        self.blocks = nn.ModuleList([ConvBlock(in_channels if i == 0 else 64) for i in range(4)])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def torchvision_backbone(name: str, in_channels: int = 3) -> nn.Module:
    """torchvision's resnet18/resnet50 without its classifier (fc -> Identity)."""
    net = getattr(torchvision.models, name)()
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    net.fc = nn.Identity()
    return net


class Embedder(nn.Module):
    """backbone -> Linear -> L2 normalisation, with slade's parameter names."""

    def __init__(self, backbone: str, in_channels: int, dim: int):
        super().__init__()
        if backbone == "convnet":
            self.body = ConvNet(in_channels)
            features = 64
        else:
            self.body = torchvision_backbone(backbone, in_channels)
            features = 512 if backbone == "resnet18" else 2048
        self.embedding = nn.Linear(features, dim)

    def forward(self, x):
        return F.normalize(self.embedding(self.body(x)), dim=1)

    def load_slade_state(self, state: dict) -> None:
        """Loads a slade state_dict (backbone names at the top level, then embedding.*)."""
        mapped = {}
        for key, value in state.items():
            if key.startswith("embedding.") or key == "prototypes":
                mapped[key] = value
            else:
                mapped["body." + key] = value
        own = {k: v for k, v in mapped.items() if k != "prototypes"}
        self.load_state_dict(own, strict=True)

    def slade_names(self) -> dict:
        """slade name -> this module's parameter or buffer."""
        out = {}
        for key, value in list(self.named_parameters()) + list(self.named_buffers()):
            out[key[len("body."):] if key.startswith("body.") else key] = value
        return out


def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp as in the SwAV reference code (one process)."""
    with torch.no_grad():
        q = torch.exp(scores / epsilon).t()
        b, k = q.shape[1], q.shape[0]
        q /= torch.sum(q)
        for _ in range(iterations):
            q /= torch.sum(q, dim=1, keepdim=True)
            q /= k
            q /= torch.sum(q, dim=0, keepdim=True)
            q /= b
        q *= b
        return q.t()


def swav_loss(model: Embedder, prototypes: torch.Tensor, crops: list, temperature: float = 0.1):
    """SwAV's multi-crop forward (consecutive crops of one resolution in one pass) and
    swapped-prediction loss with codes from crops 0 and 1."""
    with torch.no_grad():
        prototypes.copy_(F.normalize(prototypes, dim=1))
    sizes = [c.shape[-1] for c in crops]
    counts = torch.unique_consecutive(torch.tensor(sizes), return_counts=True)[1]
    ends = torch.cumsum(counts, 0).tolist()
    start, outputs = 0, []
    for end in ends:
        outputs.append(model(torch.cat(crops[start:end])))
        start = end
    z = torch.cat(outputs)
    scores = z @ prototypes.t()
    bs = crops[0].shape[0]
    loss = 0
    for i in (0, 1):
        q = sinkhorn(scores[bs * i : bs * (i + 1)].detach())
        sub = 0
        for v in range(len(crops)):
            if v == i:
                continue
            x = scores[bs * v : bs * (v + 1)] / temperature
            sub -= torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
        loss += sub / (len(crops) - 1)
    return loss / 2
