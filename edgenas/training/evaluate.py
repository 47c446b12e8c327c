"""Honest subnet accuracy: BN recalibration on calibration images, then top-1 on validation.

The supernet's BN running statistics are a blend over every subnet it trained, which fits no
particular subnet; a subnet's accuracy without re-estimating them is meaningless.  Recalibration
runs on the *extracted* static subnet (plain ``nn.BatchNorm2d`` layers, where ``momentum=None``
gives an exact cumulative average), leaving the supernet untouched.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from edgenas.core.threads import torch_threads
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
                   batch_size: int = 250, workers: int = 1) -> None:
    """Re-estimate every BN layer's running mean/var as the average over ``images``.

    Stats are reset, then each batch gets momentum ``n / (seen + n)``: a cumulative average weighted
    by batch size (``momentum=None`` weights batches equally, so a short last batch would count as
    much as a full one).  The mean is then exactly the mean over all images, whatever the batch
    order.  Momenta are restored afterwards.  Runs in train mode without gradients.
    ``images`` is one tensor (cut into ``batch_size`` batches) or an iterable of batches (e.g.
    ``data.calibration_batches(...)``, which never holds the whole set as float).

    ``workers`` > 1 runs that many batches at once, each through its own copy of the model on one
    torch thread, and merges the copies' averages weighted by the images each saw: the same
    weighted average of the same batches' statistics (float rounding aside), while torch's own
    threads scale poorly on a MobileNet's small per-layer ops.
    """
    batches = (images[i:i + batch_size] for i in range(0, images.shape[0], batch_size)) \
        if isinstance(images, torch.Tensor) else images
    was_training = model.training
    if workers <= 1:
        _Averager(model).run(batches)
        model.train(was_training)
        return
    copies = [_Averager(model)] + [_Averager(copy.deepcopy(model)) for _ in range(workers - 1)]
    source = iter(batches)
    lock = threading.Lock()

    def take() -> torch.Tensor | None:
        with lock:  # one reader of the (possibly lazy) batch source at a time
            return next(source, None)

    with torch_threads(1), ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(c.run, iter(take, None)) for c in copies]:
            future.result()
    _merge(copies)
    model.train(was_training)


class _Averager:
    """One model's BN layers turned into cumulative averages of the batches it is fed."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.seen = 0

    def run(self, batches: Iterable[torch.Tensor]) -> None:
        saved = [(m.momentum, m.training) for m in self.bns]
        self.model.eval()
        for m in self.bns:
            m.reset_running_stats()
            m.train()
        device = next(self.model.parameters()).device
        with torch.no_grad():
            for batch in batches:
                for m in self.bns:
                    m.momentum = len(batch) / (self.seen + len(batch))
                self.model(_to(batch, device))
                self.seen += len(batch)
        for m, (momentum, training) in zip(self.bns, saved):
            m.momentum = momentum
            m.train(training)


def _merge(copies: list[_Averager]) -> None:
    """The first copy's BN statistics become the image-weighted average of all copies'."""
    total = sum(c.seen for c in copies)
    if total == 0:
        return
    first = copies[0]
    for i, bn in enumerate(first.bns):
        mean = sum(c.bns[i].running_mean * (c.seen / total) for c in copies if c.seen)
        var = sum(c.bns[i].running_var * (c.seen / total) for c in copies if c.seen)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.num_batches_tracked.copy_(sum(c.bns[i].num_batches_tracked for c in copies))


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
