"""The progressive-shrinking schedule, as data, and its conversion into a fixed step plan.

A :class:`Phase` says which part of the space is elastic (as "the largest N choices" of kernel,
depth and expand, so the same schedule fits every space), its share of the budget, learning rate
and subnets per step.  :func:`make_plan` turns the schedule into concrete step counts, either from
epochs scaled to the data set size or from a wall-clock budget; the plan is stored in the training
state so a resumed run follows exactly the same plan even if the machine got faster or slower.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from edgenas.space.spec import NUM_STAGES, Arch, SearchSpace


@dataclass(frozen=True)
class Phase:
    """One stage of progressive shrinking.

    ``kernels``/``depths``/``expands``: how many of the space's largest choices are active (1 =
    fixed at the maximum).  ``share``: fraction of the total budget (time or epochs).  ``subnets``:
    subnets sampled per step (their gradients add up).  ``reorder``: sort channels by importance
    before the phase (the expand phases).  ``include_min``: one of the step's subnets is always the
    smallest of the phase, which is what keeps the smallest subnet good on a short budget.
    """

    name: str
    kernels: int
    depths: int
    expands: int
    share: float
    lr: float
    subnets: int = 1
    kd: bool = True
    reorder: bool = False
    include_min: bool = False
    warmup: float = 0.0  # fraction of the phase's steps with linear lr warm-up

    def choices(self, space: SearchSpace) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        return (space.kernel_choices[-self.kernels:], space.depth_choices[-self.depths:],
                space.expand_choices[-self.expands:])

    def sample(self, space: SearchSpace, rng: random.Random, resolution: int) -> Arch:
        """A random subnet of this phase's sub-space at ``resolution``."""
        ks, ds, es = self.choices(space)
        blocks = []
        for _ in range(NUM_STAGES):
            d = rng.choice(ds)
            blocks.append(tuple((rng.choice(ks), rng.choice(es)) for _ in range(d)))
        return Arch(resolution, tuple(blocks))

    def smallest(self, space: SearchSpace, resolution: int) -> Arch:
        ks, ds, es = self.choices(space)
        stage = tuple((ks[0], es[0]) for _ in range(ds[0]))
        return Arch(resolution, tuple(stage for _ in range(NUM_STAGES)))

    def step_archs(self, space: SearchSpace, rng: random.Random, resolution: int) -> list[Arch]:
        archs = [self.sample(space, rng, resolution) for _ in range(self.subnets)]
        if self.include_min:
            archs[-1] = self.smallest(space, resolution)
        return archs


# Shares follow the once-for-all paper's epoch ratios, compressed: the full network gets the
# largest share because every later phase distils from it.  Learning rates are for batch 64
# (they scale linearly with the batch size).
DEFAULT_SCHEDULE: tuple[Phase, ...] = (
    Phase("full", 1, 1, 1, share=0.34, lr=0.1, subnets=1, kd=False, warmup=0.05),
    Phase("kernel", 3, 1, 1, share=0.12, lr=0.04, subnets=1),
    Phase("depth-1", 3, 2, 1, share=0.06, lr=0.03, subnets=2),
    Phase("depth-2", 3, 3, 1, share=0.14, lr=0.03, subnets=2),
    Phase("expand-1", 3, 3, 2, share=0.08, lr=0.03, subnets=2, reorder=True),
    Phase("expand-2", 3, 3, 3, share=0.26, lr=0.03, subnets=3, reorder=True, include_min=True),
)
# Adapting a supernet that already went through progressive shrinking (``train --init``): its
# body serves every subnet already, so repeating the staged shrinking would spend most of a short
# budget re-teaching sub-spaces it knows.  The full network first adapts to the new labels (a
# warm-up lets the new head settle before large updates reach the body), then becomes the teacher
# while subnets of the whole space -- the smallest always among them -- follow it.  The rate is
# the from-scratch one: on a short budget the body has to move to the new data, and a gentler rate
# adapted more slowly (benchmarks/adapt.py compares them).
ADAPT_SCHEDULE: tuple[Phase, ...] = (
    Phase("full", 1, 1, 1, share=0.3, lr=0.1, subnets=1, kd=False, warmup=0.1),
    Phase("elastic", 3, 3, 3, share=0.7, lr=0.1, subnets=3, include_min=True),
)
BASE_BATCH = 64
REFERENCE_EPOCHS = 40  # total epochs (all phases) for a data set of REFERENCE_IMAGES images
REFERENCE_IMAGES = 50_000


@dataclass(frozen=True)
class PhasePlan:
    """A phase with concrete step count and lr for this run (what the training state stores)."""

    phase: Phase
    steps: int
    lr: float
    est_step_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"phase": asdict(self.phase), "steps": self.steps, "lr": self.lr,
                "est_step_seconds": self.est_step_seconds}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PhasePlan:
        return cls(Phase(**data["phase"]), int(data["steps"]), float(data["lr"]),
                   data.get("est_step_seconds"))


def default_epochs(num_train: int) -> float:
    """Total epochs for a data set: small sets need more passes (capped), large ones fewer."""
    scale = math.sqrt(REFERENCE_IMAGES / max(num_train, 1))
    return REFERENCE_EPOCHS * min(max(scale, 0.5), 2.0)


def make_plan(schedule: Sequence[Phase], num_train: int, batch_size: int, *,
              epochs: float | None = None, seconds: float | None = None,
              step_seconds: Callable[[Phase], float] | None = None) -> list[PhasePlan]:
    """Concrete steps per phase.

    With ``seconds`` (a wall-clock budget) each phase gets ``share × seconds`` divided by its
    estimated step time (``step_seconds(phase)``); otherwise ``epochs`` (default: scaled to the data
    set size) are divided between phases by share.  Every phase gets at least one step.
    """
    total_share = sum(p.share for p in schedule)
    steps_per_epoch = max(1, num_train // batch_size)
    lr_scale = batch_size / BASE_BATCH
    plans = []
    for phase in schedule:
        fraction = phase.share / total_share
        est = step_seconds(phase) if step_seconds is not None else None
        if seconds is not None:
            if est is None:
                raise ValueError("a time budget needs step_seconds")
            steps = int(fraction * seconds / max(est, 1e-6))
        else:
            total = epochs if epochs is not None else default_epochs(num_train)
            steps = int(round(fraction * total * steps_per_epoch))
        plans.append(PhasePlan(phase, max(1, steps), phase.lr * lr_scale, est))
    return plans


def lr_at(plan: PhasePlan, step: int) -> float:
    """Linear warm-up then cosine decay to zero over the phase (a pure function of the step)."""
    warm = int(plan.phase.warmup * plan.steps)
    if step < warm:
        return plan.lr * (step + 1) / warm
    progress = (step - warm) / max(1, plan.steps - warm)
    return 0.5 * plan.lr * (1 + math.cos(math.pi * min(progress, 1.0)))
