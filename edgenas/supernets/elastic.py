"""The elastic MBConv block: one set of weights serving every (kernel, expand) choice.

* Elastic kernel: only the largest depthwise kernel is stored.  A smaller kernel is the centre of
  the next larger one passed through a learned ``k²×k²`` matrix (one per layer and size step, shared
  across channels, initialised to identity), applied step by step from the largest size down.
* Elastic expand: the active middle width is ``make_divisible(round(in × e), 8)``; a subnet uses the
  first channels.  :meth:`ElasticMBBlock.reorder_channels` sorts channels by importance first so the
  first channels are the ones that matter.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from edgenas.space.plan import BlockPlan, mid_channels, se_channels
from edgenas.supernets.layers import BN_EPS, BN_MOMENTUM, activate, h_sigmoid
from edgenas.supernets.static import MBBlock


class _Recompute:
    """Entered while activation checkpointing recomputes a block in the backward pass: batch norm
    then normalises with the batch's statistics as before but leaves the running statistics
    alone (they were updated in the forward pass; updating them twice would change training)."""

    depth = 0

    def __enter__(self) -> None:
        _Recompute.depth += 1

    def __exit__(self, *exc: object) -> None:
        _Recompute.depth -= 1


def recompute_contexts() -> tuple[contextlib.AbstractContextManager, _Recompute]:
    """``context_fn`` for :func:`torch.utils.checkpoint.checkpoint` (forward, recompute)."""
    return contextlib.nullcontext(), _Recompute()


def elastic_bn(x: torch.Tensor, bn: nn.BatchNorm2d, channels: int) -> torch.Tensor:
    """Batch norm over the first ``channels`` channels of ``bn`` (running stats update in place).

    ``momentum=None`` means a cumulative average, as in ``nn.BatchNorm2d``: the factor is
    ``1 / batches seen`` so BN recalibration through the supernet averages every batch.
    """
    if bn.training and _Recompute.depth:  # same computation; the update lands in throwaway copies
        return F.batch_norm(x, bn.running_mean[:channels].clone(),
                            bn.running_var[:channels].clone(), bn.weight[:channels],
                            bn.bias[:channels], True, bn.momentum or 0.0, bn.eps)
    factor = bn.momentum
    if bn.training and factor is None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked)
    return F.batch_norm(
        x,
        bn.running_mean[:channels],
        bn.running_var[:channels],
        bn.weight[:channels],
        bn.bias[:channels],
        bn.training,
        factor or 0.0,
        bn.eps,
    )


def transform_key(src: int, dst: int) -> str:
    return f"{src}to{dst}"


class ElasticMBBlock(nn.Module):
    """An MBConv block whose kernel size and expand ratio are chosen per forward pass."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, act: str, use_se: bool,
                 kernel_choices: tuple[int, ...], expand_choices: tuple[int, ...],
                 se_reduction: int = 4, divisor: int = 8) -> None:
        super().__init__()
        self.in_ch, self.out_ch, self.stride, self.act = in_ch, out_ch, stride, act
        self.kernel_choices = tuple(sorted(kernel_choices))
        self.expand_choices = tuple(sorted(expand_choices))
        self.se_reduction, self.divisor = se_reduction, divisor
        self.max_kernel = self.kernel_choices[-1]
        max_mid = mid_channels(in_ch, self.expand_choices[-1], divisor)
        self.max_mid = max_mid

        self.expand_conv = nn.Conv2d(in_ch, max_mid, 1, bias=False)
        self.expand_bn = nn.BatchNorm2d(max_mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.dw_conv = nn.Conv2d(max_mid, max_mid, self.max_kernel, stride,
                                 self.max_kernel // 2, groups=max_mid, bias=False)
        self.dw_bn = nn.BatchNorm2d(max_mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.kernel_transforms = nn.ParameterDict({
            transform_key(src, dst): nn.Parameter(torch.eye(dst * dst))
            for src, dst in zip(self.kernel_choices[1:], self.kernel_choices[:-1])
        })
        if use_se:
            max_se = se_channels(max_mid, se_reduction, divisor)
            self.se_reduce: nn.Conv2d | None = nn.Conv2d(max_mid, max_se, 1, bias=True)
            self.se_expand: nn.Conv2d | None = nn.Conv2d(max_se, max_mid, 1, bias=True)
        else:
            self.se_reduce = self.se_expand = None
        self.project_conv = nn.Conv2d(max_mid, out_ch, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(out_ch, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.active_kernel = self.max_kernel
        self.active_expand = self.expand_choices[-1]

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_ch == self.out_ch

    @property
    def active_mid(self) -> int:
        return mid_channels(self.in_ch, self.active_expand, self.divisor)

    def depthwise_weight(self, kernel: int, channels: int) -> torch.Tensor:
        """The ``kernel``×``kernel`` depthwise filter for the first ``channels`` channels."""
        weight = self.dw_conv.weight[:channels]
        size = self.max_kernel
        for smaller in reversed(self.kernel_choices):
            if smaller >= size:
                continue
            if size <= kernel:
                break
            start = (size - smaller) // 2
            centre = weight[:, :, start:start + smaller, start:start + smaller]
            matrix = self.kernel_transforms[transform_key(size, smaller)]
            flat = F.linear(centre.reshape(-1, smaller * smaller), matrix)
            weight = flat.reshape(channels, 1, smaller, smaller)
            size = smaller
        return weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel, mid = self.active_kernel, self.active_mid
        y = F.conv2d(x, self.expand_conv.weight[:mid])
        y = activate(elastic_bn(y, self.expand_bn, mid), self.act)
        y = F.conv2d(y, self.depthwise_weight(kernel, mid), None, self.stride, kernel // 2, 1, mid)
        y = activate(elastic_bn(y, self.dw_bn, mid), self.act)
        if self.se_reduce is not None and self.se_expand is not None:
            hidden = se_channels(mid, self.se_reduction, self.divisor)
            s = y.mean((2, 3), keepdim=True)
            s = F.relu(F.conv2d(s, self.se_reduce.weight[:hidden, :mid],
                                self.se_reduce.bias[:hidden]))
            s = h_sigmoid(F.conv2d(s, self.se_expand.weight[:mid, :hidden],
                                   self.se_expand.bias[:mid]))
            y = y * s
        y = F.conv2d(y, self.project_conv.weight[:, :mid])
        y = elastic_bn(y, self.project_bn, self.out_ch)
        return x + y if self.residual else y

    # ---- extraction
    def plan(self, kernel: int, expand: int, in_size: int) -> BlockPlan:
        mid = mid_channels(self.in_ch, expand, self.divisor)
        se = se_channels(mid, self.se_reduction, self.divisor) if self.se_reduce is not None else 0
        out_size = (in_size - 1) // self.stride + 1
        return BlockPlan(self.in_ch, mid, self.out_ch, kernel, expand, self.stride, self.act,
                         se, in_size, out_size)

    @torch.no_grad()
    def copy_into(self, block: MBBlock) -> None:
        """Write this block's weights for ``block.plan``'s choice into a static block."""
        p = block.plan
        mid = p.mid_ch
        assert block.expand is not None
        block.expand[0].weight.copy_(self.expand_conv.weight[:mid])
        _copy_bn(block.expand[1], self.expand_bn, mid)
        block.depthwise[0].weight.copy_(self.depthwise_weight(p.kernel, mid))
        _copy_bn(block.depthwise[1], self.dw_bn, mid)
        if block.se is not None:
            assert self.se_reduce is not None and self.se_expand is not None
            h = p.se_ch
            block.se.reduce.weight.copy_(self.se_reduce.weight[:h, :mid])
            block.se.reduce.bias.copy_(self.se_reduce.bias[:h])
            block.se.expand.weight.copy_(self.se_expand.weight[:mid, :h])
            block.se.expand.bias.copy_(self.se_expand.bias[:mid])
        block.project[0].weight.copy_(self.project_conv.weight[:, :mid])
        _copy_bn(block.project[1], self.project_bn, self.out_ch)

    # ---- channel importance
    @torch.no_grad()
    def reorder_channels(self) -> None:
        """Sort middle channels by the L1 norm of the projection weights, most important first.

        Applied to every tensor indexed by the middle channel, so the function the block
        computes at full width is unchanged; smaller expand ratios then keep the strongest channels.
        Optimizer state for these tensors becomes stale: reorder before building the optimizer.
        """
        order = torch.argsort(self.project_conv.weight.abs().sum((0, 2, 3)), descending=True)
        self.project_conv.weight.copy_(self.project_conv.weight[:, order])
        self.dw_conv.weight.copy_(self.dw_conv.weight[order])
        self.expand_conv.weight.copy_(self.expand_conv.weight[order])
        for bn in (self.expand_bn, self.dw_bn):
            _permute_bn(bn, order)
        if self.se_reduce is not None and self.se_expand is not None:
            self.se_reduce.weight.copy_(self.se_reduce.weight[:, order])
            self.se_expand.weight.copy_(self.se_expand.weight[order])
            self.se_expand.bias.copy_(self.se_expand.bias[order])
            hidden = torch.argsort(self.se_expand.weight.abs().sum((0, 2, 3)), descending=True)
            self.se_expand.weight.copy_(self.se_expand.weight[:, hidden])
            self.se_reduce.weight.copy_(self.se_reduce.weight[hidden])
            self.se_reduce.bias.copy_(self.se_reduce.bias[hidden])


def _copy_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, channels: int) -> None:
    dst.weight.copy_(src.weight[:channels])
    dst.bias.copy_(src.bias[:channels])
    dst.running_mean.copy_(src.running_mean[:channels])
    dst.running_var.copy_(src.running_var[:channels])
    dst.eps, dst.momentum = src.eps, src.momentum


def _permute_bn(bn: nn.BatchNorm2d, order: torch.Tensor) -> None:
    for tensor in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        tensor.copy_(tensor[order])
