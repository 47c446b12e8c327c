"""The concrete layer plan of one subnet: channels, kernels, strides and feature-map sizes.

Everything that needs to know the *shape* of a subnet reads it from here: the analytic MAC and
parameter counts, the static (extracted) network, and later the Keras exporter and the latency
predictor's per-block features.  One source of truth keeps them from drifting apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgenas.space.channels import make_divisible

if TYPE_CHECKING:  # types only: the spec imports this module to cost an arch
    from edgenas.space.spec import Arch, SearchSpace


def conv_out(size: int, stride: int) -> int:
    """Output size of a 'same'-padded (pad = k // 2, odd k) convolution."""
    return (size - 1) // stride + 1


def mid_channels(in_ch: int, expand: int, divisor: int = 8) -> int:
    """Width of an inverted-bottleneck's middle: OFA's rounding of ``in_ch * expand``."""
    return make_divisible(round(in_ch * expand), divisor)


def se_channels(mid: int, reduction: int, divisor: int = 8) -> int:
    """Hidden width of squeeze-excite for a block whose middle has ``mid`` channels."""
    return make_divisible(mid // reduction, divisor)


@dataclass(frozen=True)
class BlockPlan:
    """One MBConv block as it runs: ``expand`` 1 means no expansion conv (the first block)."""

    in_ch: int
    mid_ch: int
    out_ch: int
    kernel: int
    expand: int
    stride: int
    act: str
    se_ch: int  # 0: no squeeze-excite
    in_size: int
    out_size: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_ch == self.out_ch

    @property
    def macs(self) -> int:
        total = 0
        if self.expand != 1:
            total += self.in_size**2 * self.in_ch * self.mid_ch
        total += self.out_size**2 * self.mid_ch * self.kernel**2
        if self.se_ch:
            total += 2 * self.mid_ch * self.se_ch
        total += self.out_size**2 * self.mid_ch * self.out_ch
        return total

    @property
    def params(self) -> int:
        total = 0
        if self.expand != 1:
            total += self.in_ch * self.mid_ch + 2 * self.mid_ch
        total += self.mid_ch * self.kernel**2 + 2 * self.mid_ch
        if self.se_ch:
            total += 2 * self.mid_ch * self.se_ch + self.se_ch + self.mid_ch
        total += self.mid_ch * self.out_ch + 2 * self.out_ch
        return total


@dataclass(frozen=True)
class NetPlan:
    """The whole subnet: stem, MBConv blocks (first block included) and head."""

    resolution: int
    stem_ch: int
    stem_kernel: int
    stem_stride: int
    stem_size: int
    blocks: tuple[BlockPlan, ...]
    head_in: int
    head_expand: int
    head_feature: int
    head_size: int
    stage_of_block: tuple[int, ...]  # -1 for the fixed first block

    def macs(self, num_classes: int) -> int:
        stem = self.stem_size**2 * 3 * self.stem_ch * self.stem_kernel**2
        head = (self.head_size**2 * self.head_in * self.head_expand
                + self.head_expand * self.head_feature + self.head_feature * num_classes)
        return stem + sum(b.macs for b in self.blocks) + head

    def params(self, num_classes: int) -> int:
        stem = 3 * self.stem_ch * self.stem_kernel**2 + 2 * self.stem_ch
        head = (self.head_in * self.head_expand + 2 * self.head_expand
                + self.head_expand * self.head_feature
                + self.head_feature * num_classes + num_classes)
        return stem + sum(b.params for b in self.blocks) + head


def net_plan(space: SearchSpace, arch: Arch) -> NetPlan:
    """Lay out ``arch`` of ``space`` layer by layer."""
    space.validate(arch)
    size = conv_out(arch.resolution, space.stem_stride)
    stem_size = size
    blocks = [
        BlockPlan(space.stem_width, space.stem_width, space.first_block_width, 3, 1, 1,
                  space.first_block_act, 0, size, size)
    ]
    stage_of = [-1]
    in_ch = space.first_block_width
    for s, (stage, choices) in enumerate(zip(space.stages, arch.blocks)):
        for b, (kernel, expand) in enumerate(choices):
            stride = stage.stride if b == 0 else 1
            mid = mid_channels(in_ch, expand, space.divisor)
            se = se_channels(mid, space.se_reduction, space.divisor) if stage.se else 0
            out_size = conv_out(size, stride)
            blocks.append(BlockPlan(in_ch, mid, stage.width, kernel, expand, stride, stage.act,
                                    se, size, out_size))
            stage_of.append(s)
            in_ch, size = stage.width, out_size
    return NetPlan(arch.resolution, space.stem_width, 3, space.stem_stride, stem_size,
                   tuple(blocks), in_ch, space.head_expand, space.head_feature, size,
                   tuple(stage_of))


# ``LayerPlan`` is the public name for the per-block record used by predictors.
LayerPlan = BlockPlan


def layer_plan(space: SearchSpace, arch: Arch) -> list[BlockPlan]:
    return list(net_plan(space, arch).blocks)


def count_macs(space: SearchSpace, arch: Arch, num_classes: int = 1000) -> int:
    return net_plan(space, arch).macs(num_classes)


def count_params(space: SearchSpace, arch: Arch, num_classes: int = 1000) -> int:
    return net_plan(space, arch).params(num_classes)
