"""The static MobileNetV3 subnet: plain ``nn.Conv2d`` / ``nn.BatchNorm2d`` layers, no elastic logic.

This is what :meth:`MobileNetV3Supernet.extract` returns and what the exporter and fine-tuning use.
It is built from a :class:`~edgenas.space.plan.NetPlan`, so its shapes always match the analytic counts.
"""

from __future__ import annotations

import torch
from torch import nn

from edgenas.space.plan import BlockPlan, NetPlan
from edgenas.supernets.layers import BN_EPS, BN_MOMENTUM, HSwish, SqueezeExcite, activation


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=BN_EPS, momentum=BN_MOMENTUM)


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: str | None = None) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            _bn(cout),
        ]
        if act is not None:
            layers.append(activation(act))
        super().__init__(*layers)


class MBBlock(nn.Module):
    """Inverted residual: [1×1 expand] → k×k depthwise (stride) → [SE] → 1×1 project (+ skip)."""

    def __init__(self, plan: BlockPlan) -> None:
        super().__init__()
        self.plan = plan
        self.expand = (ConvBNAct(plan.in_ch, plan.mid_ch, 1, act=plan.act)
                       if plan.expand != 1 else None)
        self.depthwise = ConvBNAct(plan.mid_ch, plan.mid_ch, plan.kernel, plan.stride,
                                   groups=plan.mid_ch, act=plan.act)
        self.se = SqueezeExcite(plan.mid_ch, plan.se_ch) if plan.se_ch else None
        self.project = ConvBNAct(plan.mid_ch, plan.out_ch, 1)
        self.residual = plan.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.depthwise(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.residual else y


class MobileNetV3(nn.Module):
    """A fixed MobileNetV3 built from a plan; ``features`` then ``classifier``."""

    def __init__(self, plan: NetPlan, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.plan = plan
        self.stem = ConvBNAct(3, plan.stem_ch, plan.stem_kernel, plan.stem_stride, act="h_swish")
        self.blocks = nn.ModuleList(MBBlock(b) for b in plan.blocks)
        self.head_expand = ConvBNAct(plan.head_in, plan.head_expand, 1, act="h_swish")
        self.feature_mix = nn.Conv2d(plan.head_expand, plan.head_feature, 1, bias=False)
        self.feature_act = HSwish()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(plan.head_feature, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        x = self.head_expand(x)
        x = x.mean((2, 3), keepdim=True)
        return self.feature_act(self.feature_mix(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))


@torch.no_grad()
def fold_batchnorm(model: MobileNetV3) -> MobileNetV3:
    """An inference copy of ``model`` with every eval-mode BN folded into the conv before it.

    ``conv → BN`` becomes one conv with bias (``W·γ/σ``, ``β − μ·γ/σ``): the same function up to
    float rounding (about 1e-6 relative) and one full pass over every feature map fewer.  Used for
    the frozen distillation teacher, whose forward pass runs at every step of the later phases.
    The original ``model`` is untouched (its state dict is what checkpoints keep).
    """
    import copy

    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if not isinstance(module, ConvBNAct):
            continue
        conv, bn = module[0], module[1]
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                          conv.padding, groups=conv.groups, bias=True).to(conv.weight.device)
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        module[0] = fused.to(memory_format=torch.channels_last) \
            if conv.weight.is_contiguous(memory_format=torch.channels_last) else fused
        module[1] = nn.Identity()
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded
