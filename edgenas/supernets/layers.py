"""Activations and small pieces shared by the elastic supernet and the static subnet."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-5
BN_MOMENTUM = 0.1


def h_swish(x: torch.Tensor) -> torch.Tensor:
    return x * F.relu6(x + 3.0) / 6.0


def h_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return F.relu6(x + 3.0) / 6.0


class HSwish(nn.Module):
    """x * relu6(x + 3) / 6, written out so every exporter sees the same arithmetic."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return h_swish(x)


class HSigmoid(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return h_sigmoid(x)


def activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "h_swish":
        return HSwish()
    raise ValueError(f"unknown activation {name!r}")


def activate(x: torch.Tensor, name: str) -> torch.Tensor:
    return F.relu(x) if name == "relu" else h_swish(x)


class SqueezeExcite(nn.Module):
    """Channel attention: pool → 1×1 reduce (bias) → ReLU → 1×1 expand (bias) → h-sigmoid → scale."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, hidden, 1, bias=True)
        self.expand = nn.Conv2d(hidden, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3), keepdim=True)
        y = h_sigmoid(self.expand(F.relu(self.reduce(y))))
        return x * y
