"""Honest subnet accuracy: BN recalibration on calibration images, then top-1 on validation.

The supernet's BN running statistics are a blend over every subnet it trained, which fits no
particular subnet; a subnet's accuracy without re-estimating them is meaningless.  Recalibration
runs on the *extracted* static subnet (plain ``nn.BatchNorm2d`` layers, where ``momentum=None``
gives an exact cumulative average), leaving the supernet untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from edgenas.space.spec import Arch
from edgenas.training.data import CALIBRATION_IMAGES, ImageData

if TYPE_CHECKING:
    from edgenas.supernets.mbv3 import MobileNetV3Supernet


@dataclass(frozen=True)
class EvalResult:
    arch: Arch
    top1: float
    images: int

    def to_json(self) -> dict[str, object]:
        return {"arch": self.arch.to_string(), "top1": round(self.top1, 6), "images": self.images}


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: torch.Tensor | Iterable[torch.Tensor],
                   batch_size: int = 250) -> None:
    """Re-estimate every BN layer's running mean/var as the average over ``images``.

    Stats are reset, then each batch gets momentum ``n / (seen + n)``: a cumulative average weighted
    by batch size (``momentum=None`` weights batches equally, so a short last batch would count as
    much as a full one).  The mean is then exactly the mean over all images, whatever the batch
    order.  Momenta are restored afterwards.  Runs in train mode without gradients.
    ``images`` is one tensor (cut into ``batch_size`` batches) or an iterable of batches (e.g.
    ``data.calibration_batches(...)``, which never holds the whole set as float).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    was_training = model.training
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.train()
    device = next(model.parameters()).device
    seen = 0
    batches = (images[i:i + batch_size] for i in range(0, images.shape[0], batch_size)) \
        if isinstance(images, torch.Tensor) else images
    for batch in batches:
        for m in bns:
            m.momentum = len(batch) / (seen + len(batch))
        model(_to(batch, device))
        seen += len(batch)
    for m, (momentum, training) in zip(bns, saved):
        m.momentum = momentum
        m.train(training)
    model.train(was_training)


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


@torch.no_grad()
def top1(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, int]:
    """Top-1 accuracy (fraction) and image count over ``batches``, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    for x, y in batches:
        pred = model(_to(x, device)).argmax(1).cpu()
        correct += int((pred == y).sum())
        total += int(y.numel())
    model.train(was_training)
    return (correct / total if total else 0.0), total


def evaluate_subnet(model: nn.Module, resolution: int, data: ImageData, *,
                    calibrate: bool = True, calib_images: int = CALIBRATION_IMAGES) -> float:
    """Top-1 of a static subnet at ``resolution`` (BN recalibrated first unless told not to)."""
    if calibrate:
        recalibrate_bn(model, data.calibration_batches(calib_images, resolution))
    return top1(model, data.val_batches(resolution))[0]


def evaluate_archs(net: MobileNetV3Supernet, archs: Sequence[Arch], data: ImageData, *,
                   calibrate: bool = True, calib_images: int = CALIBRATION_IMAGES,
                   device: str | torch.device = "cpu") -> list[EvalResult]:
    """Evaluate many subnets of ``net`` reusing the loaded data.

    Calibration and validation tensors are resized once per resolution and cached by ``data``;
    each arch costs one extraction, one calibration pass and one validation pass.
    """
    results = []
    for arch in archs:
        net.space.validate(arch)
        model = net.extract(arch).to(device).to(memory_format=torch.channels_last)
        acc = evaluate_subnet(model, arch.resolution, data, calibrate=calibrate,
                              calib_images=calib_images)
        results.append(EvalResult(arch, acc, data.num_val))
    return results
