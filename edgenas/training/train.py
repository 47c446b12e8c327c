"""Train a supernet by progressive shrinking with knowledge distillation, resumably.

Design choices that matter for users:

* **Reproducible and resumable.**  Every random draw of a step (resolution, subnets, augmentation,
  dropout) is seeded from ``(seed, global step)``, and the epoch order from ``(seed, epoch)``, so a
  resumed run needs only the step counters and the weights/optimizer to continue *exactly* like an
  uninterrupted one.  The training state is written atomically at every epoch end, every
  ``save_seconds``, at phase boundaries, and on SIGINT/SIGTERM.
* **Budgeted.**  ``minutes`` is turned into a step plan by timing the largest and smallest subnets
  once; at every phase boundary the remaining phases are re-planned from the time actually spent,
  so a machine that gets busier (or quieter) mid-run still finishes on time.  (An ``epochs`` plan
  is fixed, which is what makes a resumed run identical to an uninterrupted one.)
* **Distillation.**  After the full-network phase its largest subnet is frozen as the teacher;
  every later subnet learns from its soft targets (ratio ``kd_ratio``) plus label-smoothed CE.
* **Multi-GPU.**  Under ``torchrun`` (``WORLD_SIZE`` > 1) the step runs through
  ``DistributedDataParallel``; a single process never touches ``torch.distributed``.
"""

from __future__ import annotations

import copy
import ctypes
import gc
import os
import random
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgenas.core.errors import CheckpointError, EdgeNASError
from edgenas.core.progress import (
    JsonLog,
    ProgressFn,
    ProgressRenderer,
    Reporter,
    fmt_seconds,
    reporter,
)
from edgenas.space.plan import net_plan
from edgenas.space.spec import Arch, SearchSpace
from edgenas.supernets.checkpoint import apply_state_dict, atomic_torch_save, read_torch_file
from edgenas.supernets.mbv3 import MobileNetV3Supernet, build_supernet
from edgenas.supernets.static import MobileNetV3, fold_batchnorm
from edgenas.training.adapt import adopt_init, load_init
from edgenas.training.data import CALIBRATION_IMAGES, AnyImageData, load_data
from edgenas.training.data.stream import BatchOrder, StepBatchSampler
from edgenas.training.evaluate import evaluate_archs
from edgenas.training.schedule import (
    ADAPT_SCHEDULE,
    DEFAULT_SCHEDULE,
    Phase,
    PhasePlan,
    lr_at,
    make_plan,
)

STATE_FORMAT = "edgenas-train-state"
STATE_VERSION = 1
CL = torch.channels_last
PROGRESS_SOURCE = "train"  # the source of training's edgenas.core.progress events
PLAIN_EVERY_S = 5.0  # when stderr is no terminal: a progress line at most this often, not every step


class TrainingInterrupted(EdgeNASError):
    """Training stopped on a signal after saving its state; rerun with ``--resume``."""


@dataclass
class TrainConfig:
    """Everything that determines a training run (stored in the state; a resume reuses it)."""

    out: str
    space: str = "mbv3-tiny"
    data: str = "digits"
    minutes: float | None = None
    epochs: float | None = None
    batch_size: int = 64
    seed: int = 0
    kd_ratio: float = 1.0
    label_smoothing: float = 0.1
    weight_decay: float = 3e-5
    limit: int | None = None
    data_mode: str = "auto"  # auto | memory | stream (see edgenas.training.data.load_data)
    workers: int | None = None  # decoding processes when streaming [default: spare cores]
    activation_checkpointing: bool = False  # recompute elastic blocks in backward (less memory)
    init: str | None = None  # start from this supernet (edgenas or OFA state dict), new head
    # training images that re-estimate BN before the final evaluation of the smallest and largest
    # subnets (once-for-all's protocol: 2000); it costs the wind-down that many forward passes each
    calib_images: int = CALIBRATION_IMAGES
    # None: progressive shrinking from scratch, or the shorter adaptation schedule with ``init``
    schedule: list[dict[str, Any]] | None = None

    def phases(self) -> list[Phase]:
        if self.schedule is not None:
            return [Phase(**p) for p in self.schedule]
        return list(ADAPT_SCHEDULE if self.init else DEFAULT_SCHEDULE)


@dataclass
class TrainResult:
    out: Path
    val_top1: dict[str, float]
    seconds: float
    steps: int
    images: int


def state_path(out: str | Path) -> Path:
    return Path(str(out) + ".state")


def log_path(out: str | Path) -> Path:
    return Path(str(out) + ".log.jsonl")


# ------------------------------------------------------------------------------------ distributed


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    """Join a ``torchrun`` job when ``WORLD_SIZE`` > 1 (env:// rendezvous), else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = device.startswith("cuda")
    if want_cuda and not torch.cuda.is_available():
        raise EdgeNASError("--device cuda requested but no CUDA device is available")
    if world <= 1:
        return DistInfo(0, 1, torch.device(device))
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(),
                    torch.device(f"cuda:{local}") if want_cuda else torch.device("cpu"))


# ------------------------------------------------------------------------------------------ losses


class SubnetsLoss(nn.Module):
    """One training step's loss: the sum over the step's subnets of label-smoothed CE + KD.

    Running all subnets inside one ``forward`` gives one backward and one gradient all-reduce per
    step, which is what lets DistributedDataParallel wrap an elastic network unchanged.
    """

    def __init__(self, net: MobileNetV3Supernet, label_smoothing: float, kd_ratio: float) -> None:
        super().__init__()
        self.net = net
        self.label_smoothing = label_smoothing
        self.kd_ratio = kd_ratio

    def forward(self, x: torch.Tensor, y: torch.Tensor, arch_ids: list[str],
                soft: torch.Tensor | None) -> torch.Tensor:
        total = x.new_zeros((), dtype=torch.float32)
        for arch_id in arch_ids:
            self.net.set_active(Arch.from_string(arch_id))
            logits = self.net(x).float()
            loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
            if soft is not None and self.kd_ratio > 0:
                loss = loss + self.kd_ratio * -(soft * F.log_softmax(logits, 1)).sum(1).mean()
            total = total + loss
        return total


# ------------------------------------------------------------------------------- budget planning


def _time_step(net: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int = 2) -> float:
    cuda = x.device.type == "cuda"
    for i in range(repeats + 1):
        if i == 1:
            if cuda:  # kernels run asynchronously: time them, not their launch
                torch.cuda.synchronize(x.device)
            start = time.perf_counter()
        with torch.autocast(x.device.type, dtype=torch.float16, enabled=cuda):
            loss = F.cross_entropy(net(x).float(), y)
        loss.backward()
    if cuda:
        torch.cuda.synchronize(x.device)
    return (time.perf_counter() - start) / repeats


def estimate_step_seconds(net: MobileNetV3Supernet, data: AnyImageData, batch_size: int,
                          device: torch.device) -> Callable[[Phase], float]:
    """Time one training step of the largest and smallest subnets and interpolate by MACs.

    Runs on a copy so the real network's weights and BN statistics stay untouched.
    """
    space = net.space
    probe = copy.deepcopy(net).to(device).train()
    n = min(batch_size, data.num_train)
    y = data.train_y[:n].to(device)
    points = []
    for arch in (space.largest(), space.smallest()):
        probe.set_active(arch)
        x = data.sample_images(n, arch.resolution).to(device).contiguous(memory_format=CL)
        points.append((space.macs(arch, net.num_classes), _time_step(probe, x, y)))
    (m_hi, t_hi), (m_lo, t_lo) = points
    slope = (t_hi - t_lo) / max(m_hi - m_lo, 1)

    def cost(arch: Arch) -> float:
        return max(t_lo * 0.5, t_lo + slope * (space.macs(arch, net.num_classes) - m_lo))

    def step_seconds(phase: Phase) -> float:
        rng = random.Random(0)
        samples = [phase.sample(space, rng, rng.choice(space.resolutions)) for _ in range(24)]
        mean = sum(cost(a) for a in samples) / len(samples)
        teacher = t_hi / 3 if phase.kd else 0.0  # a forward pass is about a third of a step
        return 1.08 * (phase.subnets * mean + teacher)  # + augmentation and optimizer

    return step_seconds


# ------------------------------------------------------------------------------------------ trainer


def _param_groups(net: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on BN, biases and kernel-transform matrices (pulling those to 0 hurts)."""
    decay, plain = [], []
    for name, p in net.named_parameters():
        (plain if p.ndim <= 1 or "kernel_transforms" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def _step_seed(seed: int, step: int, salt: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + salt) % (2**63 - 1)


def step_resolution(seed: int, step: int, resolutions: list[int] | tuple[int, ...]) -> int:
    """The elastic resolution of step ``step``: the first draw of the step's seeded RNG, so a
    streaming sampler can decode each batch at its size before the step runs."""
    return random.Random(_step_seed(seed, step, 1)).choice(resolutions)


class Trainer:
    """Owns the network, optimizer, counters and teacher of one run; no module-level state."""

    def __init__(self, cfg: TrainConfig, data: AnyImageData, net: MobileNetV3Supernet,
                 plans: list[PhasePlan], dist: DistInfo, *, progress: Reporter | None = None,
                 log: JsonLog, save_seconds: float = 60.0, budget: float | None = None,
                 on_step: Callable[[Trainer], None] | None = None) -> None:
        self.cfg, self.data, self.net, self.plans, self.dist = cfg, data, net, plans, dist
        self.space = net.space
        # edgenas.core.progress: one counted event per step ("train" done/total steps); silent by default
        self.progress = progress or Reporter(_silent)
        self.log = log
        self.save_seconds = save_seconds
        self.budget = budget  # seconds for the training steps (a --minutes run), else None
        self.est_done = 0.0  # estimated seconds of the phases finished so far
        self.elapsed_at_phase_start = 0.0
        self.on_step = on_step
        self.device = dist.device
        self.amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None
        self.net.to(self.device).to(memory_format=CL)
        self.net.checkpointing = cfg.activation_checkpointing
        self.loss_module: nn.Module = SubnetsLoss(net, cfg.label_smoothing, cfg.kd_ratio)
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # size-1 dims (depthwise weights) make channels-last grads "mismatch" harmlessly
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")

            self.loss_module = DDP(self.loss_module, find_unused_parameters=True,
                                   device_ids=[self.device.index] if self.amp else None)
        self.optimizer: torch.optim.Optimizer | None = None
        self.teacher: MobileNetV3 | None = None  # BN folded: what the steps run
        self.teacher_state: dict[str, torch.Tensor] | None = None  # unfolded: what is saved
        # counters (all restored on resume)
        self.phase = 0
        self.phase_step = 0
        self.phase_started = False
        self.global_step = 0
        self.epoch = 0
        self.pos = 0
        self.images = 0
        self.elapsed = 0.0
        self.order = BatchOrder(data.num_train, self.global_batch, dist.world, dist.rank,
                                self._epoch_perm)
        self.perm = self._epoch_perm(0)
        self._stream: Any = None  # iterator over the streamed loader, made at the first step
        self._stream_start = (0, 0)
        self.last_indices = torch.zeros(0, dtype=torch.int64)
        self.stop_requested = False
        self._epoch_ended = False
        self._last_loss = float("nan")
        self.first_step_at: float | None = None  # monotonic times, for start-up / wind-down
        self.startup_marks: dict[str, float] = {}
        self.last_step_at: float | None = None

    # ---- data order
    @property
    def global_batch(self) -> int:
        return self.cfg.batch_size * self.dist.world

    def _epoch_perm(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(_step_seed(self.cfg.seed, epoch, 17))
        return torch.randperm(self.data.num_train, generator=g)

    def _next_indices(self) -> tuple[torch.Tensor, bool]:
        """This rank's share of the next global batch; the flag says an epoch just ended."""
        idx, self.epoch, self.pos, self.perm, ended = self.order.next(self.epoch, self.pos,
                                                                      self.perm)
        return idx, ended

    def _streamed_batch(self, idx: torch.Tensor, resolution: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch from the worker processes (started at the current position)."""
        if self._stream is None:
            # the sampler starts where the counters were *before* this step's _next_indices
            epoch, pos = self._stream_start
            sampler = StepBatchSampler(
                self.order, epoch, pos, self.global_step,
                lambda step: step_resolution(self.cfg.seed, step, self.space.resolutions),
                _step_seed(self.cfg.seed, 0, 3))
            self._stream = iter(self.data.train_loader(sampler, pin_memory=self.amp))
        x, y, got, res = next(self._stream)
        if res != resolution or not torch.equal(got, idx):
            raise RuntimeError("streamed batch out of step with the trainer's order")
        if self.amp:  # normalise on the GPU: a uint8 batch is 4x less to copy
            x = x.to(self.device, non_blocking=True)
            mean, std = self.data._stats()
            x = (x.float().div_(255.0) - mean.to(self.device).view(1, -1, 1, 1)) \
                / std.to(self.device).view(1, -1, 1, 1)
            return x, y
        return self.data.normalize(x), y

    def close(self) -> None:
        """Stop the decoding workers (they restart at the right position when needed)."""
        self._stream = None

    # ---- phases
    def _start_phase(self) -> None:
        plan = self.plans[self.phase]
        if plan.phase.kd and self.teacher is None:
            self._make_teacher()
        if plan.phase.reorder:
            self.net.reorder_channels()
        self.optimizer = torch.optim.SGD(_param_groups(self.net, self.cfg.weight_decay),
                                         lr=plan.lr, momentum=0.9, nesterov=True)
        self.phase_started = True
        self.log.write("phase", phase=plan.phase.name, index=self.phase, steps=plan.steps,
                       lr=plan.lr)

    def _make_teacher(self, state: dict[str, torch.Tensor] | None = None) -> None:
        """The full network as it is now (or as saved), frozen: the distillation target.

        The step runs a BN-folded copy (a third faster, same function up to float rounding);
        the unfolded weights are kept for the training state, so a resume rebuilds the very same
        folded teacher.
        """
        if state is None:
            teacher = self.net.extract(self.space.largest())
        else:
            teacher = MobileNetV3(net_plan(self.space, self.space.largest()), self.net.num_classes,
                                  self.space.dropout)
            teacher.load_state_dict(state)
        teacher.eval()
        self.teacher_state = {k: v.detach().cpu().clone() for k, v in teacher.state_dict().items()}
        self.teacher = fold_batchnorm(teacher.to(self.device).to(memory_format=CL))

    # ---- one step
    def _step(self) -> None:
        plan = self.plans[self.phase]
        seed = self.cfg.seed
        rng = random.Random(_step_seed(seed, self.global_step, 1))
        gen = torch.Generator().manual_seed(_step_seed(seed, self.global_step, 2 + self.dist.rank))
        torch.manual_seed(_step_seed(seed, self.global_step, 1000 + self.dist.rank))  # dropout
        resolution = rng.choice(self.space.resolutions)  # == step_resolution(seed, step, ...)
        archs = plan.phase.step_archs(self.space, rng, resolution)
        self._stream_start = (self.epoch, self.pos)
        idx, ended = self._next_indices()
        self.last_indices = idx  # this rank's images of this step (for tests and hooks)
        if self.data.streamed:
            x, y = self._streamed_batch(idx, resolution)
        else:
            x, y = self.data.train_batch(idx, resolution, gen)
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=CL)
        y = y.to(self.device, non_blocking=True)
        lr = lr_at(plan, self.phase_step)
        assert self.optimizer is not None
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.net.train()
        soft = None
        if plan.phase.kd and self.teacher is not None:
            with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16,
                                                        enabled=self.amp):
                soft = F.softmax(self.teacher(x).float(), 1)
            soft = soft.clone()  # an ordinary tensor: inference tensors cannot be saved for backward
        self.optimizer.zero_grad(set_to_none=True)
        ids = [a.to_string() for a in archs]
        # One backward per subnet frees its activations before the next subnet runs (a step holds
        # one subnet's activations, not all of them; the summed gradients are the same).  Under
        # DDP the subnets share one graph: one backward, one gradient all-reduce per step.
        groups = [ids] if self.dist.world > 1 else [[i] for i in ids]
        total = 0.0
        for group in groups:
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                loss = self.loss_module(x, y, group, soft)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
            total += float(loss.detach())
            del loss
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self._last_loss = total / len(archs)
        self.phase_step += 1
        self.global_step += 1
        self.images += len(idx) * self.dist.world
        self._epoch_ended = ended

    # ---- the loop
    def run(self) -> None:
        try:
            self._run()
        finally:
            self.close()

    def _run(self) -> None:
        last_save = time.monotonic()
        window_start, window_images = time.monotonic(), 0
        rate = 0.0
        while self.phase < len(self.plans):
            plan = self.plans[self.phase]
            if not self.phase_started:
                self._start_phase()
            phase_t0 = time.monotonic()
            while self.phase_step < plan.steps:
                if self._should_stop():
                    self.save()
                    self.log.write("interrupted", step=self.global_step)
                    raise TrainingInterrupted(
                        f"interrupted at step {self.global_step}; state saved to "
                        f"{state_path(self.cfg.out)}; continue with --resume")
                t0 = time.monotonic()
                before = self.images
                self._step()
                window_images += self.images - before
                now = time.monotonic()
                if now - window_start >= 2.0:
                    rate = window_images / (now - window_start)
                    window_start, window_images = now, 0
                self._report(plan, rate)
                if self.on_step is not None:
                    self.on_step(self)
                if self._epoch_ended or now - last_save >= self.save_seconds:
                    self.save()
                    last_save = time.monotonic()
                self.elapsed += time.monotonic() - t0
                self.last_step_at = time.monotonic()
                if self.first_step_at is None:
                    self.first_step_at = self.last_step_at
            self.log.write("phase_end", phase=plan.phase.name, step=self.global_step,
                           loss=self._last_loss, elapsed=round(self.elapsed, 2),
                           phase_seconds=round(time.monotonic() - phase_t0, 2))
            self.phase += 1
            self.phase_step = 0
            self.phase_started = False
            self.est_done += (plan.est_step_seconds or 0.0) * plan.steps
            self.elapsed_at_phase_start = self.elapsed
            self._replan()
            self.save()
            last_save = time.monotonic()

    def _replan(self) -> None:
        """Fit the remaining phases into the remaining budget, correcting the step-time estimate
        by how far off it was so far (clamped: one noisy phase must not wreck the plan)."""
        if self.budget is None or self.phase >= len(self.plans) or self.est_done <= 0:
            return
        ratio = min(max(self.elapsed / self.est_done, 0.25), 4.0)
        remaining = max(0.0, self.budget - self.elapsed)
        rest = self.plans[self.phase:]
        shares = sum(p.phase.share for p in rest)
        for i, p in enumerate(rest, start=self.phase):
            est = (p.est_step_seconds or 1.0) * ratio
            steps = max(1, int(p.phase.share / shares * remaining / est))
            self.plans[i] = replace(p, steps=steps)
        self.log.write("replan", phase=self.phase, ratio=round(ratio, 3),
                       remaining=round(remaining, 1), steps=[p.steps for p in self.plans])

    def _should_stop(self) -> bool:
        if self.dist.world > 1:  # every rank must stop at the same step or DDP deadlocks
            import torch.distributed as dist

            flag = torch.tensor([1.0 if self.stop_requested else 0.0], device=self.device)
            dist.all_reduce(flag)
            return bool(flag.item() > 0)
        return self.stop_requested

    def _eta(self, plan: PhasePlan, rate: float) -> float:
        """Seconds left: planned steps × estimated step time, corrected by how far off it was."""
        per_step = self.elapsed / max(self.global_step, 1)
        ratio = self.elapsed_at_phase_start / self.est_done if self.est_done > 0 else 1.0
        left = 0.0
        for i in range(self.phase, len(self.plans)):
            p = self.plans[i]
            steps = p.steps - (self.phase_step if i == self.phase else 0)
            left += steps * (p.est_step_seconds * ratio if p.est_step_seconds else per_step)
        return left

    def _report(self, plan: PhasePlan, rate: float) -> None:
        if not self.dist.main:
            return
        eta = self._eta(plan, rate)
        text = (f"phase {self.phase + 1}/{len(self.plans)} {plan.phase.name:<8} "
                f"ep {self.epoch:>3}  step {self.phase_step}/{plan.steps}  "
                f"loss {self._last_loss:.3f}  {rate:6.0f} img/s  ETA {fmt_seconds(eta)}")
        self.progress(PROGRESS_SOURCE, text, done=self.global_step,
                      total=sum(p.steps for p in self.plans))
        if self.global_step % 10 == 0 or self.phase_step == plan.steps:
            self.log.write("step", phase=plan.phase.name, epoch=self.epoch,
                           step=self.global_step, phase_step=self.phase_step,
                           loss=round(self._last_loss, 5), lr=lr_at(plan, self.phase_step - 1),
                           img_s=round(rate, 1), elapsed=round(self.elapsed, 2),
                           eta=round(eta, 1))

    # ---- state
    def state(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "config": asdict(self.cfg),
            "plans": [p.to_json() for p in self.plans],
            "supernet": self.net.checkpoint({"data": self.data.source, "complete": False,
                                             **({"init": self.net.meta["init"]}
                                                if "init" in self.net.meta else {})}),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "teacher": self.teacher_state,
            "counters": {"phase": self.phase, "phase_step": self.phase_step,
                         "phase_started": self.phase_started, "global_step": self.global_step,
                         "epoch": self.epoch, "pos": self.pos, "images": self.images,
                         "elapsed": self.elapsed, "budget": self.budget,
                         "est_done": self.est_done},
            "rng": {"torch": torch.get_rng_state()},
        }

    def save(self) -> None:
        if not self.dist.main:
            return
        atomic_torch_save(self.state(), state_path(self.cfg.out))
        self.log.write("checkpoint", step=self.global_step, phase=self.phase, epoch=self.epoch)

    def restore(self, state: dict[str, Any]) -> None:
        c = state["counters"]
        self.phase, self.phase_step = int(c["phase"]), int(c["phase_step"])
        self.phase_started = bool(c["phase_started"])
        self.global_step, self.epoch, self.pos = int(c["global_step"]), int(c["epoch"]), int(c["pos"])
        self.images, self.elapsed = int(c["images"]), float(c["elapsed"])
        self.budget = None if c.get("budget") is None else float(c["budget"])
        self.est_done = float(c.get("est_done", 0.0))
        self.elapsed_at_phase_start = self.elapsed
        self.perm = self._epoch_perm(self.epoch)
        if state.get("teacher") is not None:
            self._make_teacher(state["teacher"])
        if self.phase_started and self.phase < len(self.plans):
            self.optimizer = torch.optim.SGD(
                _param_groups(self.net, self.cfg.weight_decay), lr=self.plans[self.phase].lr,
                momentum=0.9, nesterov=True)
            if state.get("optimizer") is not None:
                self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if "rng" in state:
            torch.set_rng_state(state["rng"]["torch"])


# --------------------------------------------------------------------------------------- entry


def load_state(path: Path) -> dict[str, Any]:
    state = read_torch_file(path)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not an edgenas training state")
    if int(state.get("version", 0)) > STATE_VERSION:
        raise CheckpointError(f"{path}: training state version {state.get('version')} is newer "
                              "than this edgenas understands")
    return state


def _silent(event: object) -> None:
    """The progress sink of ranks other than the main one (and of a Trainer given none)."""


def train_supernet(cfg: TrainConfig, *, device: str = "cpu", resume: bool = False,
                   data: AnyImageData | None = None, progress: bool | ProgressFn | None = True,
                   save_seconds: float = 60.0, handle_signals: bool = True,
                   threads: int | None = None,
                   on_step: Callable[[Trainer], None] | None = None) -> TrainResult:
    """Train (or resume training) a supernet and write the final checkpoint to ``cfg.out``.

    On resume the stored config and step plan win over ``cfg`` (except ``out``): they determine
    the result, and the point of resuming is to get the result the first run would have given.

    ``progress`` (:mod:`edgenas.core.progress`, as ``measure`` takes it): True renders on stderr (a bar
    on a terminal, a plain line every PLAIN_EVERY_S seconds otherwise), a callback receives the
    events (one counted "train" event per step, uncounted ones for the run's start, resume and end),
    False logs them at DEBUG, None at INFO.  Only the main rank reports.
    """
    started = time.monotonic()
    if threads is not None:
        torch.set_num_threads(threads)
    out = Path(cfg.out)
    dist = init_distributed(device)
    renderer = ProgressRenderer(every=PLAIN_EVERY_S) if progress is True and dist.main else None
    say = Reporter(renderer) if renderer is not None else \
        reporter(progress) if dist.main else Reporter(_silent)
    try:
        return _train(cfg, out, dist, say, started, resume=resume, data=data,
                      save_seconds=save_seconds, handle_signals=handle_signals, on_step=on_step)
    finally:
        if renderer is not None:
            renderer.close()  # end the bar line: what follows (an error, the shell) starts afresh


def _train(cfg: TrainConfig, out: Path, dist: DistInfo, say: Reporter, started: float, *,
           resume: bool, data: AnyImageData | None, save_seconds: float, handle_signals: bool,
           on_step: Callable[[Trainer], None] | None) -> TrainResult:
    log = JsonLog(log_path(out) if dist.main else None)
    state = None
    if resume:
        spath = state_path(out)
        if not spath.exists():
            raise CheckpointError(f"nothing to resume: {spath} does not exist "
                                  "(run without --resume to start, or the run already finished)")
        state = load_state(spath)
        cfg = replace(TrainConfig(**state["config"]), out=str(out))
    elif dist.main and state_path(out).exists():
        say(PROGRESS_SOURCE, f"note: starting afresh; overwriting the earlier state "
            f"{state_path(out)}", level="warning")
    marks: dict[str, float] = {"imports": started - process_started()}
    mark = [time.monotonic()]

    def lap(name: str) -> None:
        now = time.monotonic()
        marks[name] = round(now - mark[0], 2)
        mark[0] = now

    init = None
    if state is None and cfg.init:
        init = load_init(cfg.init, cfg.space)
    space = init.space if init is not None else SearchSpace.load(cfg.space) if state is None else \
        SearchSpace.from_spec(state["supernet"]["space"])
    if data is None:
        data = load_data(cfg.data, space.resolutions[-1], limit=cfg.limit, mode=cfg.data_mode,
                         workers=cfg.workers, space=space, batch_size=cfg.batch_size)
    elif cfg.limit is not None and data.num_train > cfg.limit:
        raise ValueError("pass limit either in the config or by slicing the data, not both")
    lap("data")
    torch.manual_seed(cfg.seed)
    net = build_supernet(space, data.num_classes, data.labels, data.normalization)
    if init is not None:
        say(PROGRESS_SOURCE, adopt_init(net, init, cfg.init or ""))
        data.normalization = dict(net.normalization)  # the body learned on inputs normalised so
        data._cache.clear()
    if state is not None:
        apply_state_dict(net, state["supernet"]["state_dict"], str(state_path(out)))
        if (state["supernet"].get("meta") or {}).get("init"):
            net.meta["init"] = state["supernet"]["meta"]["init"]
            net.normalization = dict(state["supernet"]["normalization"])
            data.normalization = dict(net.normalization)
        plans = [PhasePlan.from_json(p) for p in state["plans"]]
        budget = None
    else:
        lap("model")
        plans, budget = _plan(cfg, net, data, dist, started)
    trainer = Trainer(cfg, data, net, plans, dist, progress=say, log=log,
                      save_seconds=save_seconds, budget=budget, on_step=on_step)
    lap("plan")
    trainer.startup_marks = marks
    if state is not None:
        trainer.restore(state)
        log.write("resume", step=trainer.global_step, phase=trainer.phase)
        say(PROGRESS_SOURCE, f"resuming at step {trainer.global_step} "
            f"(phase {min(trainer.phase + 1, len(plans))}/{len(plans)}) with the stored "
            "configuration and plan")
    else:
        log.write("start", config=asdict(cfg), data=data.describe(),
                  plan=[p.to_json() for p in plans], world=dist.world, device=str(dist.device))
        total = sum(p.steps for p in plans)
        say(PROGRESS_SOURCE, f"training {space.name} on {data.name} ({data.num_train} train / "
            f"{data.num_val} val images, {data.num_classes} classes): {total} steps in "
            f"{len(plans)} phases, batch {trainer.global_batch}, device {dist.device}")
        if getattr(data, "memory_plan", None) is not None:
            say(PROGRESS_SOURCE, data.memory_plan.describe())
    with _signals(trainer, handle_signals):
        trainer.run()
    return _finish(trainer, cfg, data, out, log, say, dist)


def _plan(cfg: TrainConfig, net: MobileNetV3Supernet, data: AnyImageData, dist: DistInfo,
          started: float) -> tuple[list[PhasePlan], float | None]:
    """The step plan, and the seconds it may take (``None`` for an epoch plan)."""
    gb = cfg.batch_size * dist.world
    if cfg.minutes is None:
        return make_plan(cfg.phases(), data.num_train, gb, epochs=cfg.epochs), None
    step_seconds = estimate_step_seconds(net, data, cfg.batch_size, dist.device)
    spent = time.monotonic() - started
    # keep time for the final evaluation of min and max (calibration + validation passes)
    reserve = 2 + 0.02 * min(data.num_train, cfg.calib_images) / 50 + 0.01 * data.num_val / 50
    seconds = max(10.0, cfg.minutes * 60 - spent - reserve)
    return (make_plan(cfg.phases(), data.num_train, gb, seconds=seconds,
                      step_seconds=step_seconds), seconds)


def process_started() -> float:
    """``time.monotonic()`` at the moment this process started (the command, imports included)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.monotonic() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return _IMPORTED


_IMPORTED = time.monotonic()


def _say_timing(trainer: Trainer, say: Reporter, log: JsonLog, eval_s: float) -> None:
    """Start-up (command → first step) and wind-down (last step → checkpoint saved)."""
    if trainer.first_step_at is None or trainer.last_step_at is None:
        return
    now = time.monotonic()
    start = trainer.first_step_at - process_started()
    marks = dict(trainer.startup_marks)
    if marks:
        marks["first step"] = round(start - sum(marks.values()), 2)
    parts = ", ".join(f"{k} {v:.1f}" for k, v in marks.items())
    wind = now - trainer.last_step_at
    log.write("timing", startup=round(start, 2), startup_parts=marks, winddown=round(wind, 2),
              evaluation=round(eval_s, 2))
    say(PROGRESS_SOURCE, f"start-up {start:.1f} s (command to first step"
        + (f": {parts} s" if parts else "") + f"); wind-down {wind:.1f} s (last step to saved "
        f"checkpoint: evaluation {eval_s:.1f} s, save {wind - eval_s:.1f} s)")


def release_memory(trainer: Trainer | None = None) -> None:
    """Drop the optimizer state and the teacher, and hand freed heap pages back to the system
    (glibc keeps freed blocks otherwise, so evaluation's memory would come on top of training's
    instead of reusing it; the auto data mode's estimate counts on this)."""
    if trainer is not None:
        trainer.optimizer = None
        trainer.teacher = None
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _finish(trainer: Trainer, cfg: TrainConfig, data: AnyImageData, out: Path, log: JsonLog,
            say: Reporter, dist: DistInfo) -> TrainResult:
    net = trainer.net
    space = net.space
    val: dict[str, float] = {}
    if dist.main:
        # subnets are extracted, recalibrated and evaluated on the training device
        wind_t0 = time.monotonic()
        release_memory(trainer)
        results = evaluate_archs(net, [space.smallest(), space.largest()], data,
                                 calib_images=cfg.calib_images, device=dist.device)
        net.to("cpu").to(memory_format=torch.contiguous_format)
        val = {"min": results[0].top1, "max": results[1].top1}
        meta = {
            "data": data.source,
            "dataset": {k: v for k, v in data.describe().items() if k != "normalization"},
            **({"init": net.meta["init"]} if "init" in net.meta else {}),
            "val_top1": {k: round(v, 5) for k, v in val.items()},
            "val_calib_images": min(cfg.calib_images, data.num_train),
            "val_archs": {"min": space.smallest().to_string(), "max": space.largest().to_string()},
            "training": {
                "complete": True, "seed": cfg.seed, "batch_size": trainer.global_batch,
                "kd_ratio": cfg.kd_ratio, "minutes_budget": cfg.minutes, "epochs": trainer.epoch,
                "steps": trainer.global_step, "images": trainer.images,
                "seconds": round(trainer.elapsed, 1), "world_size": dist.world,
                "device": str(dist.device), "limit": cfg.limit,
                "phases": [{"name": p.phase.name, "steps": p.steps, "lr": p.lr}
                           for p in trainer.plans],
            },
        }
        eval_s = time.monotonic() - wind_t0
        net.save(out, meta)
        _say_timing(trainer, say, log, eval_s)
        state_path(out).unlink(missing_ok=True)
        log.write("done", out=str(out), val_top1=val, steps=trainer.global_step,
                  seconds=round(trainer.elapsed, 1))
        say(PROGRESS_SOURCE, f"done in {fmt_seconds(trainer.elapsed)}: val top-1 min "
            f"{val['min']:.2%}, max {val['max']:.2%} (BN recalibrated) -> {out}")
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()
        tdist.destroy_process_group()
    return TrainResult(out, val, trainer.elapsed, trainer.global_step, trainer.images)


class _signals:
    """Turn SIGINT/SIGTERM into a polite stop request (state saved after the current step)."""

    def __init__(self, trainer: Trainer, enabled: bool) -> None:
        self.trainer = trainer
        self.enabled = enabled
        self.previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.trainer.stop_requested:  # second signal: give up at once
            raise KeyboardInterrupt
        self.trainer.stop_requested = True

    def __enter__(self) -> _signals:
        if self.enabled:
            try:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self.previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: leave signals alone
                self.previous.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


__all__ = ["TrainConfig", "TrainResult", "Trainer", "TrainingInterrupted",
           "estimate_step_seconds", "init_distributed", "load_state", "log_path", "state_path",
           "train_supernet"]
