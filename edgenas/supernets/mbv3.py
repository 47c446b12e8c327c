"""The once-for-all MobileNetV3 supernet: fixed stem, first block and head around 5 elastic stages."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from edgenas.core.errors import CheckpointError, SpecError
from edgenas.space.plan import BlockPlan, conv_out, net_plan
from edgenas.space.spec import Arch, SearchSpace
from edgenas.supernets.checkpoint import (
    apply_state_dict,
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
)
from edgenas.supernets.elastic import ElasticMBBlock, recompute_contexts
from edgenas.supernets.layers import HSwish
from edgenas.supernets.static import ConvBNAct, MBBlock, MobileNetV3

DEFAULT_NORMALIZATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


class MobileNetV3Supernet(nn.Module):
    """All subnets of a :class:`SearchSpace` in one set of weights.

    ``set_active(arch)`` selects a subnet; ``forward`` then runs it.  The input resolution is the
    caller's to choose (the network is fully convolutional up to the pooled head); ``arch.resolution``
    is recorded in :attr:`active` so data pipelines can resize to it.
    """

    def __init__(self, space: SearchSpace, num_classes: int,
                 labels: Sequence[str] | None = None,
                 normalization: dict[str, list[float]] | None = None) -> None:
        super().__init__()
        self.space = space
        self.num_classes = num_classes
        self.labels = list(labels) if labels is not None else [str(i) for i in range(num_classes)]
        if len(self.labels) != num_classes:
            raise ValueError(f"{len(self.labels)} labels for {num_classes} classes")
        self.normalization = dict(normalization or DEFAULT_NORMALIZATION)
        self.meta: dict[str, Any] = {}
        self.checkpointing = False  # recompute elastic blocks in backward (activation memory)

        self.stem = ConvBNAct(3, space.stem_width, 3, space.stem_stride, act="h_swish")
        self.first_block = MBBlock(BlockPlan(space.stem_width, space.stem_width,
                                             space.first_block_width, 3, 1, 1,
                                             space.first_block_act, 0, 0, 0))
        stages = []
        in_ch = space.first_block_width
        for stage in space.stages:
            blocks = []
            for b in range(space.max_depth):
                blocks.append(ElasticMBBlock(in_ch, stage.width, stage.stride if b == 0 else 1,
                                             stage.act, stage.se, space.kernel_choices,
                                             space.expand_choices, space.se_reduction,
                                             space.divisor))
                in_ch = stage.width
            stages.append(nn.ModuleList(blocks))
        self.stages = nn.ModuleList(stages)
        self.head_expand = ConvBNAct(in_ch, space.head_expand, 1, act="h_swish")
        self.feature_mix = nn.Conv2d(space.head_expand, space.head_feature, 1, bias=False)
        self.feature_act = HSwish()
        self.dropout = nn.Dropout(space.dropout)
        self.classifier = nn.Linear(space.head_feature, num_classes)
        self._init_weights()
        self.active: Arch = space.largest()
        self.set_active(self.active)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    # ---- selecting a subnet
    def set_active(self, arch: Arch) -> MobileNetV3Supernet:
        self.space.validate(arch)
        for stage, choices in zip(self.stages, arch.blocks):
            for block, (kernel, expand) in zip(stage, choices):
                block.active_kernel, block.active_expand = kernel, expand
        self.active = arch
        return self

    def active_blocks(self) -> list[ElasticMBBlock]:
        return [block for stage, d in zip(self.stages, self.active.depths) for block in stage[:d]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_block(self.stem(x))
        recompute = self.checkpointing and self.training and torch.is_grad_enabled()
        for block in self.active_blocks():
            if recompute:
                x = checkpoint(block, x, use_reentrant=False, context_fn=recompute_contexts)
            else:
                x = block(x)
        x = self.head_expand(x)
        x = x.mean((2, 3), keepdim=True)
        x = self.feature_act(self.feature_mix(x)).flatten(1)
        return self.classifier(self.dropout(x))

    # ---- extraction
    @torch.no_grad()
    def extract(self, arch: Arch | None = None) -> MobileNetV3:
        """A standalone static network for ``arch`` (default: the active one), with copied weights."""
        arch = arch or self.active
        plan = net_plan(self.space, arch)
        net = MobileNetV3(plan, self.num_classes, self.space.dropout)
        net.stem.load_state_dict(self.stem.state_dict())
        net.blocks[0].load_state_dict(self.first_block.state_dict())
        elastic = [block for stage, d in zip(self.stages, arch.depths) for block in stage[:d]]
        for source, target in zip(elastic, net.blocks[1:]):
            source.copy_into(target)
        net.head_expand.load_state_dict(self.head_expand.state_dict())
        net.feature_mix.load_state_dict(self.feature_mix.state_dict())
        net.classifier.load_state_dict(self.classifier.state_dict())
        net.train(self.training)
        return net

    def reorder_channels(self) -> None:
        """Sort every elastic block's middle channels by importance (before expand shrinking)."""
        for stage in self.stages:
            for block in stage:
                block.reorder_channels()

    # ---- persistence
    def checkpoint(self, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        return make_checkpoint(self, meta)

    def save(self, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
        return save_checkpoint(self.checkpoint(meta), path)

    def feature_size(self, resolution: int) -> int:
        """Spatial size of the last feature map for an input of ``resolution`` pixels."""
        size = conv_out(resolution, self.space.stem_stride)
        for stage in self.space.stages:
            size = conv_out(size, stage.stride)
        return size


def build_supernet(space: SearchSpace | str, num_classes: int,
                   labels: Sequence[str] | None = None,
                   normalization: dict[str, list[float]] | None = None) -> MobileNetV3Supernet:
    """A freshly initialised supernet for ``space`` (a :class:`SearchSpace` or a spec name/path)."""
    if not isinstance(space, SearchSpace):
        space = SearchSpace.load(space)
    return MobileNetV3Supernet(space, num_classes, labels, normalization)


def load_supernet(path: str | Path) -> MobileNetV3Supernet:
    """Rebuild a supernet from a checkpoint written by :meth:`MobileNetV3Supernet.save`."""
    data = load_checkpoint(path)
    try:
        space = SearchSpace.from_spec(data["space"])
    except SpecError as exc:
        raise CheckpointError(f"{path}: embedded search space is invalid: {exc}") from None
    net = MobileNetV3Supernet(space, int(data["num_classes"]), data["labels"],
                              data["normalization"])
    apply_state_dict(net, data["state_dict"], str(path))
    net.meta = dict(data.get("meta") or {})
    net.eval()
    return net
