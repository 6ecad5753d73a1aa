"""Networks that look like a mistake of ``mistakes.py`` but are right: cnncheck passes every one.

Each is the look-alike of one rule, written as real code writes it: a layer run only in train mode, the
same BatchNorm module in every step of a loop built one per step, and a frozen backbone.
"""

import torch
import torch.nn.functional as F
from torch import nn

import cnncheck

SHAPE = (4, 3, 16, 16)


@cnncheck.model(input_shape=SHAPE)
class AuxiliaryHead(nn.Module):
    """layer-not-used: the auxiliary head runs only in train mode (as in Inception), and the output
    layer reuses the embedding's weight (tied weights) instead of being called."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.aux = nn.Linear(8, 2)
        self.embed = nn.Linear(8, 8, bias=False)
        self.head = nn.Linear(8, 8, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        x = F.linear(self.embed(x), self.head.weight.t())
        if self.training:
            return x + self.aux(x).sum(dim=1, keepdim=True)
        return x


@cnncheck.model(input_shape=SHAPE)
class OneNormPerStep(nn.Module):
    """bn-reused: a loop over steps, but with one BatchNorm per step in a ModuleList."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.convs = nn.ModuleList(nn.Conv2d(8, 8, 3, padding=1, bias=False) for _ in range(3))
        self.bns = nn.ModuleList(nn.BatchNorm2d(8) for _ in range(3))
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for conv, bn in zip(self.convs, self.bns):
            x = x + F.relu(bn(conv(x)))
        return self.head(x.mean(dim=(2, 3)))


@cnncheck.model(input_shape=SHAPE)
def frozen_backbone() -> nn.Module:
    """parameter-without-gradient: the backbone is frozen with requires_grad_(False) and run under
    torch.no_grad(); only the head trains, and it gets its gradient."""
    return FrozenBackbone()


class FrozenBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.backbone.requires_grad_(False)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.backbone(x).mean(dim=(2, 3))
        return self.head(features)
