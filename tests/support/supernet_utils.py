"""Test helpers for supernet tests: make every weight and BN statistic non-trivial.

A freshly initialised supernet has identity kernel matrices and BN stats of 0/1, which would let
a wrong slice or transform go unnoticed; randomising them makes parity checks meaningful.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in module.state_dict().items():
        if not tensor.is_floating_point():
            continue
        noise = torch.randn(tensor.shape, generator=gen)
        if name.endswith("running_var"):
            tensor.copy_(noise.abs() * 0.5 + 0.5)
        elif "kernel_transforms" in name or name.endswith("_matrix"):
            tensor.add_(noise * 0.1)
        elif name.endswith(("bn.weight", "bn.1.weight")) or ".1.weight" in name:
            tensor.copy_(1.0 + 0.1 * noise)
        else:
            tensor.copy_(noise * 0.1)
    return module
