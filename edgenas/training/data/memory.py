"""What each data path really costs in memory, and how much memory is left: ``--data-mode auto``.

The estimate is a sum of parts, each a tensor the path really allocates, with its size in bytes:

* ``data`` — the decoded set, ``uint8``, train and val, held once (in memory only);
* ``load`` — the largest transient while loading: the normalisation statistics' float64 chunk
  (and its square);
* ``batch`` — one augmented training batch: the gathered uint8 images, their float copy at
  storage size, the sampling grid, the crop at the step's resolution and its normalised copy;
* ``model`` — training itself at the chosen batch and the largest resolution: weights, gradients,
  momentum, the teacher and the timing probe, plus the activations one subnet keeps for its
  backward pass (subnets of a step run one after the other and free theirs in between);
* ``eval`` — the final BN recalibration: a batch of ``CALIBRATION_BATCH`` images at the largest
  resolution going through the largest subnet without gradients (a few feature maps alive at once);
* ``workers`` — streaming only: each DataLoader worker's private pages and its prefetched batches;
  ``cache`` — streaming only: the calibration images kept as uint8 per resolution.

The peak is ``baseline + data + max(load, batch + model, model + eval)``: the evaluation runs after
training, but training's memory is not all handed back to the system by then (measured), so it
counts on top of it.  The factors of the activation terms were fitted to measured peaks
(``benchmarks/train_memory.py``); the result is printed with its parts, so a user can see why a
path was chosen.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgenas.space.spec import SearchSpace

MB = 1 << 20
CALIBRATION_BATCH = 250  # edgenas.training.evaluate.recalibrate_bn's batch
# Saved-for-backward bytes per feature-map element of one subnet (float32: conv output, BN output,
# activation output, SE product ...), fitted on mbv3-w1.0 at 224 px, batch 8 and 16 (942 and
# 1542 MB measured, benchmarks/results/train_memory.json).
TRAIN_ACT_FACTOR = 1.7
# Live feature maps of the widest layer during a no-grad forward pass (input, output, BN/act temp);
# fitted: 250 images at 224 px through the largest w1.0 subnet took 2.64 GB.
EVAL_ACT_FACTOR = 2.0
WEIGHT_COPIES = 6  # weights, grads, momentum, teacher, timing probe, an extracted subnet
ALLOCATOR = 200 * MB  # allocator slack and autograd bookkeeping (fitted: batch 8 and 16 at 224 px)
WORKER_PRIVATE = 160 * MB  # a forked DataLoader worker's own pages (measured 150-280 MB RSS, shared)
USE_FRACTION = 0.9  # of the memory left; the rest is for the page cache and the system


@dataclass
class MemoryPlan:
    """The decision of ``--data-mode auto`` (or the estimate of a forced mode) and its reasons."""

    mode: str
    reason: str
    baseline: int
    left: int
    left_source: str
    memory_parts: dict[str, int] = field(default_factory=dict)
    stream_parts: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def peak(parts: dict[str, int]) -> int:
        fixed = parts.get("data", 0) + parts.get("workers", 0) + parts.get("cache", 0)
        model = parts.get("model", 0)
        # training's memory is not all handed back before the evaluation (measured: a w1.0 run at
        # batch 16 still held 1.7 GB of its 1.75 GB after training, malloc_trim included), so the
        # evaluation comes on top of it
        return fixed + max(parts.get("load", 0), parts.get("batch", 0) + model,
                           model + parts.get("eval", 0))

    @property
    def memory_growth(self) -> int:
        return self.peak(self.memory_parts)

    @property
    def stream_growth(self) -> int:
        return self.peak(self.stream_parts)

    @property
    def estimate(self) -> int:
        """The estimated peak RSS of the chosen path (baseline included)."""
        growth = self.memory_growth if self.mode == "memory" else self.stream_growth
        return self.baseline + growth

    def to_json(self) -> dict[str, object]:
        return {"mode": self.mode, "reason": self.reason,
                "estimate_mb": round(self.estimate / MB),
                "baseline_mb": round(self.baseline / MB),
                "left_mb": round(self.left / MB), "left_source": self.left_source,
                "memory_mb": {k: round(v / MB) for k, v in self.memory_parts.items()},
                "stream_mb": {k: round(v / MB) for k, v in self.stream_parts.items()}}

    def describe(self) -> str:
        parts = self.memory_parts if self.mode == "memory" else self.stream_parts
        shown = ", ".join(f"{k} {v / MB:.0f}" for k, v in parts.items() if v >= MB)
        return (f"data mode {self.mode}: {self.reason} (estimated peak "
                f"{self.estimate / 2**30:.2f} GB = {self.baseline / MB:.0f} MB now + "
                f"[{shown}] MB)")


# ------------------------------------------------------------------------------- memory left


def _status() -> dict[str, int]:
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmSize", "VmData"):
                out[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def process_rss() -> int:
    """This process's resident memory now (0 where /proc is not available)."""
    return _status().get("VmRSS", 0)


def _cgroup_left() -> int | None:
    """Bytes left under this process's cgroup (v2 or v1) memory limit, if it has one."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text == "max" or not text.isdigit() or int(text) >= 1 << 60:
            return None
        try:
            used = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            used = 0
        return max(0, int(text) - used)
    return None


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory_left() -> tuple[int, str]:
    """Bytes this process may still add, and which limit says so: the tightest of available RAM,
    the cgroup limit less its usage, and ``RLIMIT_AS``/``RLIMIT_DATA`` (``ulimit -v``/``-d``) less
    the address space / data segment already in use."""
    status = _status()
    candidates: list[tuple[int, str]] = []
    avail = _mem_available()
    if avail is not None:
        candidates.append((avail, "available RAM"))
    cg = _cgroup_left()
    if cg is not None:
        candidates.append((cg, "cgroup memory limit"))
    for which, used_key, name in ((resource.RLIMIT_AS, "VmSize", "RLIMIT_AS (ulimit -v)"),
                                  (resource.RLIMIT_DATA, "VmData", "RLIMIT_DATA (ulimit -d)")):
        soft, _ = resource.getrlimit(which)
        if soft != resource.RLIM_INFINITY:
            candidates.append((max(0, soft - status.get(used_key, 0)), name))
    if not candidates:
        return 1 << 62, "no limit found"
    return min(candidates)


# --------------------------------------------------------------------------------- estimates


def _feature_elements(space: SearchSpace) -> tuple[int, int]:
    """(sum, max) over the largest subnet's layers (at the largest resolution) of feature-map
    elements per image."""
    from edgenas.space.plan import net_plan

    plan = net_plan(space, space.largest())
    resolution = plan.resolution
    maps = [3 * resolution * resolution, plan.stem_ch * plan.stem_size ** 2]
    for b in plan.blocks:
        maps += [b.mid_ch * b.in_size ** 2, b.mid_ch * b.out_size ** 2,
                 b.out_ch * b.out_size ** 2]
        if b.se_ch:
            maps.append(b.mid_ch * b.out_size ** 2)
    maps.append(plan.head_expand * plan.head_size ** 2)
    return sum(maps), max(maps)


def _params(space: SearchSpace, num_classes: int) -> int:
    return space.params(space.largest(), num_classes)


def model_bytes(space: SearchSpace, batch: int, num_classes: int) -> int:
    """Training at ``batch`` and the largest resolution: weight copies plus one subnet's
    activations."""
    total, _ = _feature_elements(space)
    return (WEIGHT_COPIES * 4 * _params(space, num_classes) + ALLOCATOR
            + int(TRAIN_ACT_FACTOR * 4 * batch * total))


def eval_bytes(space: SearchSpace, num_classes: int, calib_images: int = 2000) -> int:
    """The final evaluation: a calibration batch (float input and its resized/normalised copies)
    through the largest subnet without gradients."""
    n = min(CALIBRATION_BATCH, calib_images)
    resolution = space.resolutions[-1]
    _, widest = _feature_elements(space)
    return (2 * 4 * _params(space, num_classes) + 3 * 4 * n * 3 * resolution ** 2
            + int(EVAL_ACT_FACTOR * 4 * n * widest))


def batch_bytes(batch: int, size: int, resolution: int) -> int:
    """One augmented in-memory batch: uint8 gather, float at storage size, grid, crop, normalised."""
    return batch * (3 * size * size * 5 + 3 * resolution ** 2 * 4 * 2 + 8 * resolution ** 2)


def load_bytes(size: int, chunk_elements: int = 1 << 24) -> int:
    """The normalisation's float64 chunk and its square (see ``compute_normalization``)."""
    return 2 * 8 * max(chunk_elements, 3 * size * size)


def plan_memory(images: int, size: int, *, space: SearchSpace | None, batch: int,
                num_classes: int, workers: int, requested: str = "auto",
                can_stream: bool = True) -> MemoryPlan:
    """Estimate both paths and pick one: memory when it fits the memory left, else streaming
    (when the source can stream), else the smaller of the two with a warning reason."""
    baseline = process_rss()
    left, source = memory_left()
    resolution = space.resolutions[-1] if space is not None else size
    model = model_bytes(space, batch, num_classes) if space is not None else 0
    ev = eval_bytes(space, num_classes, images) if space is not None else 0
    mem = {"data": images * 3 * size * size, "load": load_bytes(size),
           "batch": batch_bytes(batch, size, resolution), "model": model, "eval": ev}
    stream = {"workers": workers * (WORKER_PRIVATE + 2 * batch * 3 * resolution ** 2 * 5),
              "cache": min(images, 2000) * 3 * resolution ** 2 * 2,
              "batch": batch * 3 * resolution ** 2 * 4 * 2, "model": model, "eval": ev}
    plan = MemoryPlan("memory", "", baseline, left, source, mem, stream if can_stream else {})
    room = int(USE_FRACTION * left)
    gb = 2 ** 30
    if requested != "auto":
        plan.mode = requested
        plan.reason = f"--data-mode {requested} requested"
    elif plan.memory_growth <= room:
        plan.reason = (f"holding {images} images decoded needs about "
                       f"{plan.memory_growth / gb:.2f} GB more, within the "
                       f"{room / gb:.2f} GB left ({source})")
    elif can_stream:
        plan.mode = "stream"
        fits = "fits" if plan.stream_growth <= room else "does NOT fit either; lower --batch-size"
        plan.reason = (f"holding {images} images decoded would need about "
                       f"{plan.memory_growth / gb:.2f} GB more but only {room / gb:.2f} GB is "
                       f"left ({source}); streaming needs about {plan.stream_growth / gb:.2f} GB "
                       f"and {fits}")
    else:
        plan.reason = (f"this source cannot stream; it needs about {plan.memory_growth / gb:.2f} GB "
                       f"more and {room / gb:.2f} GB is left ({source})")
    return plan


__all__ = ["MemoryPlan", "batch_bytes", "eval_bytes", "load_bytes", "memory_left", "model_bytes",
           "plan_memory", "process_rss"]
