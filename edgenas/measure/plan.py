"""A measurement campaign's plan, apart from its run: which subnets, under which id, and what each
device still has to measure.  Pure functions of their arguments (no device, no database, no
export), so the rules are unit-tested directly: sampling covers the space evenly and repeats for a
seed; one device measures for its whole class; a device that cannot answer is reported, not
planned; what is already stored (``repeats`` times) is not measured again.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from edgenas.core.errors import EdgeNASError
from edgenas.space.spec import NUM_STAGES, Arch, SearchSpace

Job = tuple[str, str]  # (arch id, precision)


class MeasureError(EdgeNASError):
    """A campaign cannot start (bad option, no device) or cannot continue."""


def sample_archs(space: SearchSpace, n: int, seed: int = 0) -> list[Arch]:
    """``n`` distinct archs covering depth, kernel, expand and resolution evenly (see module doc)."""
    if n < 1:
        raise MeasureError("--samples must be at least 1")
    rng = random.Random(f"edgenas-measure-{space.name}-{seed}")
    out: list[Arch] = []
    seen: set[str] = set()

    def add(arch: Arch) -> None:
        key = arch.to_string()
        if key not in seen and len(out) < n:
            seen.add(key)
            out.append(arch)

    add(space.smallest())
    add(space.largest())
    res = list(space.resolutions)
    # Equal quota per resolution, then a stratified size level in [0, 1] per sample.
    total = max(0, n - len(out))
    res_seq = [res[i % len(res)] for i in range(total)]
    rng.shuffle(res_seq)
    levels = [(i + rng.random()) / max(1, total) for i in range(total)]
    rng.shuffle(levels)
    attempts = 0
    i = 0
    while len(out) < n:
        r = res_seq[i % total] if total else rng.choice(res)
        level = levels[i % total] if total else rng.random()
        add(_leveled(space, rng, r, level))
        i += 1
        attempts += 1
        if attempts > 100 * n:  # a tiny space has fewer distinct archs than asked for
            break
    return out


def _leveled(space: SearchSpace, rng: random.Random, resolution: int, level: float) -> Arch:
    """One arch whose choices lean toward index ``level * (len - 1)``; half of them stay random."""

    def pick(choices: Sequence[int]) -> int:
        if rng.random() < 0.5:
            return rng.choice(choices)
        idx = level * (len(choices) - 1) + rng.uniform(-0.5, 0.5)
        return choices[min(len(choices) - 1, max(0, round(idx)))]

    blocks = []
    for _ in range(NUM_STAGES):
        depth = pick(space.depth_choices)
        blocks.append(tuple((pick(space.kernel_choices), pick(space.expand_choices))
                            for _ in range(depth)))
    return space.validate(Arch(resolution, tuple(blocks)))


def campaign_id(source_sha: str, space: str, samples: int, seed: int, precisions: Sequence[str],
                threads: int, repeats: int = 1) -> str:
    key = f"{source_sha}|{space}|{samples}|{seed}|{','.join(precisions)}|{threads}"
    key += f"|x{repeats}" if repeats > 1 else ""  # ids of single-pass campaigns stay as they were
    return "c-" + hashlib.sha256(key.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class DeviceTarget:
    """A device as the planner sees it: its class, and its runtime ``(name, version)`` now or the
    one-line reason it cannot measure."""

    name: str
    device_class: str
    runtime: tuple[str, str | None] | str


@dataclass
class DevicePlan:
    """What one device will do: ``todo`` maps a job to the measurements still to take; a device that
    is ``aborted`` or ``served_by`` another device of its class has nothing to do."""

    device: str
    todo: dict[Job, int] = field(default_factory=dict)
    already: int = 0
    aborted: str | None = None
    served_by: str | None = None

    @property
    def left(self) -> int:
        return sum(self.todo.values())


def plan_devices(jobs: Sequence[Job], targets: Iterable[DeviceTarget], repeats: int,
                 done: Callable[[DeviceTarget], Mapping[Job, int]]) -> dict[str, DevicePlan]:
    """Each device's plan, in the order given: the first reachable device of a class measures for
    the class; ``done(target)`` is how often each job is already stored for it."""
    if repeats < 1:
        raise MeasureError("--repeats must be at least 1")
    plans: dict[str, DevicePlan] = {}
    serving: dict[str, str] = {}  # class -> the one device measuring for it
    for t in targets:
        if isinstance(t.runtime, str):
            plans[t.name] = DevicePlan(t.name, aborted=t.runtime)
            continue
        if t.device_class in serving:
            plans[t.name] = DevicePlan(t.name, served_by=serving[t.device_class])
            continue
        serving[t.device_class] = t.name
        have = done(t)
        todo = {j: repeats - have.get(j, 0) for j in jobs if have.get(j, 0) < repeats}
        plans[t.name] = DevicePlan(t.name, todo, already=len(jobs) - len(todo))
    return plans


def needed_jobs(jobs: Sequence[Job], plans: Mapping[str, DevicePlan]) -> list[Job]:
    """The jobs some device still has to measure, in job order: exactly what must be exported."""
    return [j for j in jobs if any(j in p.todo for p in plans.values())]


__all__ = ["DevicePlan", "DeviceTarget", "Job", "MeasureError", "campaign_id", "needed_jobs",
           "plan_devices", "sample_archs"]
