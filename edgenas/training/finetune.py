"""Fine-tune one extracted subnet, or train the same architecture from scratch.

Inherited weights are the point of a once-for-all supernet; fine-tuning them briefly usually adds a
little accuracy, and training from scratch for the same budget shows how much the supernet saved.
Both run the same loop (same augmentation, loss and schedule) so the comparison is fair.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from edgenas.core.progress import ProgressFn, ProgressRenderer, fmt_seconds, reporter
from edgenas.space.spec import Arch
from edgenas.supernets.mbv3 import MobileNetV3Supernet, build_supernet
from edgenas.supernets.static import MobileNetV3
from edgenas.training.data import ImageData
from edgenas.training.evaluate import evaluate_subnet, recalibrate_bn

CL = torch.channels_last


@dataclass
class FinetuneResult:
    model: MobileNetV3
    top1_before: float | None
    top1: float
    steps: int
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {"top1_before": self.top1_before, "top1": round(self.top1, 6), "steps": self.steps,
                "seconds": round(self.seconds, 1)}


def train_subnet(net: MobileNetV3Supernet, arch: Arch, data: ImageData, *, epochs: float = 10,
                 minutes: float | None = None, from_scratch: bool = False, batch_size: int = 64,
                 lr: float | None = None, seed: int = 0, weight_decay: float = 3e-5,
                 label_smoothing: float = 0.1, device: str = "cpu",
                 progress: bool | ProgressFn = True) -> FinetuneResult:
    """Train the static subnet ``arch`` at its own resolution; BN recalibrated before the last eval.

    ``lr`` defaults to 0.1 from scratch and 0.01 for inherited weights (per 64 images), since
    inherited weights are already near a good minimum and a large step would throw that away.
    """
    net.space.validate(arch)
    torch.manual_seed(seed)
    if from_scratch:
        fresh = build_supernet(net.space, net.num_classes, net.labels, net.normalization)
        model = fresh.extract(arch)
    else:
        model = net.extract(arch)
    dev = torch.device(device)
    model = model.to(dev).to(memory_format=CL)
    res = arch.resolution
    before = None if from_scratch else evaluate_subnet(model, res, data)
    lr = lr if lr is not None else (0.1 if from_scratch else 0.01) * batch_size / 64
    bs = min(batch_size, data.num_train)
    per_epoch = max(1, data.num_train // bs)
    gen = torch.Generator().manual_seed(seed)
    if minutes is not None:
        steps = max(1, int(minutes * 60 / _time_step(model, data, bs, res, dev)))
    else:
        steps = max(1, int(round(epochs * per_epoch)))
    decay = [p for p in model.parameters() if p.ndim > 1]
    plain = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": weight_decay},
                           {"params": plain, "weight_decay": 0.0}],
                          lr=lr, momentum=0.9, nesterov=True)
    # edgenas.core.progress, as training and measurement report: a bar on a terminal, a plain line every
    # few seconds otherwise, a callback's own sink, or DEBUG logging with progress=False.
    renderer = ProgressRenderer(every=PLAIN_EVERY_S) if progress is True else None
    say = reporter(renderer if renderer is not None else progress)
    what = "scratch" if from_scratch else "fine-tune"
    start = time.monotonic()
    perm = torch.randperm(data.num_train, generator=gen)
    pos = 0
    model.train()
    for step in range(steps):
        if pos + bs > data.num_train:
            perm, pos = torch.randperm(data.num_train, generator=gen), 0
        idx = perm[pos:pos + bs]
        pos += bs
        x, y = data.train_batch(idx, res, gen)
        for group in opt.param_groups:
            group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / steps))
        loss = F.cross_entropy(model(x.to(dev).contiguous(memory_format=CL)), y.to(dev),
                               label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        elapsed = time.monotonic() - start
        eta = elapsed / (step + 1) * (steps - step - 1)
        say(what, f"ep {step // per_epoch}  loss {loss.item():.3f}  "
                  f"{(step + 1) * bs / max(elapsed, 1e-6):5.0f} img/s  ETA {fmt_seconds(eta)}",
            done=step + 1, total=steps)
    if renderer is not None:
        renderer.close()
    top1 = evaluate_subnet(model, res, data)
    model.eval()
    return FinetuneResult(model.to("cpu").to(memory_format=torch.contiguous_format), before, top1,
                          steps, time.monotonic() - start)


PLAIN_EVERY_S = 5.0  # off a terminal: a progress line at most this often, not one per step


def _time_step(model: MobileNetV3, data: ImageData, bs: int, res: int, dev: torch.device) -> float:
    """Seconds per training step, timed on a copy of the BN state (restored by recalibration)."""
    x = data.sample_images(bs, res).to(dev).contiguous(memory_format=CL)
    y = data.train_y[:bs].to(dev)
    model.train()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        F.cross_entropy(model(x), y).backward()
        times.append(time.perf_counter() - t)
    model.zero_grad(set_to_none=True)
    recalibrate_bn(model, data.calibration_batches(resolution=res))
    return 1.15 * min(times[1:])
