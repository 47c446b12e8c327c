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

    Each batch's own statistics are taken (one forward pass in train mode, no gradients) and the
    running mean/var become their average weighted by batch size: exactly the mean over all
    images, whatever the batch order (a short last batch counts by its size).  Momenta and the
    model's mode are restored afterwards.  ``images`` is one tensor (cut into ``batch_size``
    batches) or an iterable of batches (e.g. ``data.calibration_batches(...)``, which never holds
    the whole set as float).

    ``workers`` > 1 runs that many batches at once, each through its own copy of the model on one
    torch thread (torch's own threads scale poorly on a MobileNet's small per-layer ops).  Which
    copy takes which batch depends on scheduling, so per-batch statistics are kept by batch index
    and summed in that order, in float64: the result is the same bits however the batches were
    scheduled and for any ``workers`` above one (one torch thread each) -- an export's BN-folded
    weights, and so its model file, are reproducible.
    """
    batches = (images[i:i + batch_size] for i in range(0, images.shape[0], batch_size)) \
        if isinstance(images, torch.Tensor) else images
    was_training = model.training
    bns = _bn_layers(model)
    saved = [(m.momentum, m.training) for m in bns]
    copies = [model] + [copy.deepcopy(model) for _ in range(max(1, workers) - 1)]
    source = enumerate(batches)
    lock = threading.Lock()
    stats: dict[int, tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]] = {}

    def take() -> tuple[int, torch.Tensor] | None:
        with lock:  # one reader of the (possibly lazy) batch source at a time
            return next(source, None)

    def run(net: nn.Module) -> None:
        layers = _bn_layers(net)
        net.eval()
        for m in layers:
            m.train()
            m.momentum = 1.0  # running stats := this batch's statistics
        device = next(net.parameters()).device
        for index, batch in iter(take, None):
            net(_to(batch, device))
            stats[index] = (len(batch), [(m.running_mean.double(), m.running_var.double())
                                         for m in layers])

    if len(copies) == 1:
        run(model)  # on torch's own threads
    else:
        with torch_threads(1), ThreadPoolExecutor(len(copies)) as pool:
            for future in [pool.submit(run, net) for net in copies]:
                future.result()
    total = sum(n for n, _ in stats.values())
    for i, m in enumerate(bns):
        if total:
            mean = sum(stats[k][1][i][0] * stats[k][0] for k in sorted(stats)) / total
            var = sum(stats[k][1][i][1] * stats[k][0] for k in sorted(stats)) / total
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
        else:
            m.reset_running_stats()
        m.num_batches_tracked.fill_(len(stats))
        m.momentum, training = saved[i]
        m.train(training)
    model.train(was_training)


def _bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


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
