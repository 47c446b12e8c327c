"""Activations and small pieces shared by the elastic supernet and the static subnet."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-5
BN_MOMENTUM = 0.1


def h_swish(x: torch.Tensor) -> torch.Tensor:
    """``x * relu6(x + 3) / 6`` as one fused kernel.

    Bit-identical forward to the written-out formula (checked in tests/integration/test_train_speed.py),
    but
    one pass over memory and one saved tensor instead of four: on a CPU, where these activations
    are memory-bound, that is a measurable part of a training step.  Exporters never see this
    function: they rebuild the network from its plan.
    """
    return F.hardswish(x)


def h_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """``relu6(x + 3) / 6`` as one fused kernel (bit-identical forward, see :func:`h_swish`)."""
    return F.hardsigmoid(x)


class HSwish(nn.Module):
    """x * relu6(x + 3) / 6 (see :func:`h_swish`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return h_swish(x)


class HSigmoid(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return h_sigmoid(x)


def activation(name: str) -> nn.Module:
    """The activation module; ReLU works in place (it always follows a BN, whose backward needs
    only the BN input, so overwriting the BN output saves one tensor per layer)."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "h_swish":
        return HSwish()
    raise ValueError(f"unknown activation {name!r}")


def activate(x: torch.Tensor, name: str) -> torch.Tensor:
    """Apply ``name`` to a fresh BN output (ReLU in place: see :func:`activation`)."""
    return F.relu(x, inplace=True) if name == "relu" else h_swish(x)


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
