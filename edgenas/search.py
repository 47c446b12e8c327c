"""Constrained, multi-objective architecture search over a supernet's space.

Two searches over the same candidate evaluation:

* :meth:`Searcher.evolution` — maximise predicted accuracy subject to every constraint (latency on
  every device of a group, model size, MACs): the regularised evolution OFA uses (population,
  top parents, mutation and crossover), with infeasible children rejected.
* :meth:`Searcher.nsga2` — NSGA-II over (accuracy ↑, worst-device latency ↓, size ↓): a Pareto
  front instead of one answer, for users who want to see the trade-off.

Before either runs, :meth:`Searcher.check_feasible` bounds the work: if even the cheapest subnets
break a constraint the search stops at once and reports the tightest value achievable.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgenas.errors import EdgeNASError
from edgenas.space import Arch, SearchSpace

BYTES_PER_PARAM = {"fp32": 4.0, "fp16": 2.0, "dynamic": 1.0, "int8": 1.0}


class InfeasibleError(EdgeNASError):
    """No subnet can meet the constraints; ``tightest`` holds the best achievable values."""

    def __init__(self, message: str, tightest: dict[str, float]) -> None:
        super().__init__(message)
        self.tightest = tightest


@dataclass(frozen=True)
class Constraints:
    latency_ms: float | None = None
    max_size_kb: float | None = None
    max_macs: float | None = None

    def describe(self) -> str:
        parts = []
        if self.latency_ms is not None:
            parts.append(f"latency <= {self.latency_ms:g} ms")
        if self.max_size_kb is not None:
            parts.append(f"size <= {self.max_size_kb:g} KB")
        if self.max_macs is not None:
            parts.append(f"MACs <= {self.max_macs:.3g}")
        return ", ".join(parts) or "none"


@dataclass
class DeviceModel:
    """How the search sees one device: a latency predictor for the chosen precision."""

    name: str
    precision: str
    predict: Callable[[Sequence[Arch]], Sequence[float]]
    error: float = 0.0  # relative error band of the predictor (e.g. 0.08 = ±8 %)


@dataclass
class Candidate:
    arch: Arch
    accuracy: float
    latency: dict[str, float]
    size_kb: float
    macs: int
    measured: dict[str, float] = field(default_factory=dict)

    @property
    def worst_latency(self) -> float:
        return max(self.latency.values()) if self.latency else 0.0

    @property
    def worst_measured(self) -> float | None:
        return max(self.measured.values()) if self.measured else None

    def to_json(self) -> dict[str, object]:
        return {"arch": self.arch.to_string(), "accuracy": round(self.accuracy, 6),
                "latency_ms": {k: round(v, 4) for k, v in self.latency.items()},
                "measured_ms": {k: round(v, 4) for k, v in self.measured.items()},
                "size_kb": round(self.size_kb, 1), "macs": self.macs}


def model_size_kb(space: SearchSpace, arch: Arch, num_classes: int, precision: str) -> float:
    """Estimated model size: parameters × bytes per parameter for the precision."""
    return space.params(arch, num_classes) * BYTES_PER_PARAM.get(precision, 4.0) / 1024.0


class Searcher:
    """Evaluates candidates (cached by arch id) and runs the searches."""

    def __init__(self, space: SearchSpace, accuracy: Callable[[Sequence[Arch]], Sequence[float]],
                 devices: Sequence[DeviceModel], constraints: Constraints, num_classes: int,
                 seed: int = 0) -> None:
        if not devices and constraints.latency_ms is not None:
            raise EdgeNASError("a latency constraint needs at least one device")
        self.space = space
        self.accuracy = accuracy
        self.devices = list(devices)
        self.constraints = constraints
        self.num_classes = num_classes
        self.rng = random.Random(seed)
        self.cache: dict[str, Candidate] = {}
        self.size_precision = devices[0].precision if devices else "fp32"

    # ---- evaluation
    def evaluate(self, archs: Sequence[Arch]) -> list[Candidate]:
        todo = [a for a in dict.fromkeys(archs) if a.to_string() not in self.cache]
        if todo:
            acc = list(self.accuracy(todo))
            lat = {d.name: list(d.predict(todo)) for d in self.devices}
            for i, arch in enumerate(todo):
                self.cache[arch.to_string()] = Candidate(
                    arch, float(acc[i]), {name: float(v[i]) for name, v in lat.items()},
                    model_size_kb(self.space, arch, self.num_classes, self.size_precision),
                    self.space.macs(arch, self.num_classes))
        return [self.cache[a.to_string()] for a in archs]

    def feasible(self, c: Candidate) -> bool:
        k = self.constraints
        return ((k.latency_ms is None or c.worst_latency <= k.latency_ms)
                and (k.max_size_kb is None or c.size_kb <= k.max_size_kb)
                and (k.max_macs is None or c.macs <= k.max_macs))

    # ---- feasibility
    def check_feasible(self, probes: int = 300) -> list[Candidate]:
        """Feasible seeds for the search, or :class:`InfeasibleError` with the tightest values.

        Probes the smallest arch at every resolution plus ``probes`` random ones; bounded work,
        so an impossible budget answers at once instead of looping.
        """
        smallest = self.space.smallest()
        seeds = [Arch(r, smallest.blocks) for r in self.space.resolutions]
        seeds += [self.space.sample(self.rng) for _ in range(probes)]
        cands = self.evaluate(seeds)
        ok = [c for c in cands if self.feasible(c)]
        if ok:
            return ok
        tightest = {"latency_ms": min(c.worst_latency for c in cands),
                    "size_kb": min(c.size_kb for c in cands),
                    "macs": float(min(c.macs for c in cands))}
        k = self.constraints
        broken = []
        if k.latency_ms is not None and tightest["latency_ms"] > k.latency_ms:
            broken.append(f"latency {tightest['latency_ms']:.3g} ms (asked {k.latency_ms:g} ms)")
        if k.max_size_kb is not None and tightest["size_kb"] > k.max_size_kb:
            broken.append(f"size {tightest['size_kb']:.0f} KB (asked {k.max_size_kb:g} KB)")
        if k.max_macs is not None and tightest["macs"] > k.max_macs:
            broken.append(f"MACs {tightest['macs']:.3g} (asked {k.max_macs:.3g})")
        detail = "; ".join(broken) or "the constraints cannot hold together"
        raise InfeasibleError(f"no subnet meets {k.describe()}: the tightest achievable is "
                              f"{detail}", tightest)

    def _feasible_child(self, make: Callable[[], Arch], attempts: int = 50) -> Candidate | None:
        for _ in range(attempts):
            cand = self.evaluate([make()])[0]
            if self.feasible(cand):
                return cand
        return None

    # ---- single objective
    def evolution(self, population: int = 100, generations: int = 20, parent_ratio: float = 0.25,
                  mutation_ratio: float = 0.5, mutate_prob: float = 0.1) -> list[Candidate]:
        """Best feasible candidates by predicted accuracy, best first."""
        seeds = self.check_feasible()
        pop = sorted(seeds, key=lambda c: -c.accuracy)[:population]
        while len(pop) < population:
            child = self._feasible_child(lambda: self.space.mutate(self.rng.choice(pop).arch,
                                                                   self.rng, 0.3))
            if child is None:
                break
            pop.append(child)
        n_parents = max(2, int(population * parent_ratio))
        for _ in range(generations):
            parents = sorted(pop, key=lambda c: -c.accuracy)[:n_parents]
            children: list[Candidate] = []
            mutant = functools.partial(self._mutant, parents, mutate_prob)
            crossed = functools.partial(self._crossed, parents)
            for i in range(population - n_parents):
                mutate = i < int((population - n_parents) * mutation_ratio)
                child = self._feasible_child(mutant if mutate else crossed)
                if child is not None:
                    children.append(child)
            pop = parents + children
        ranked = sorted({c.arch.to_string(): c for c in self.cache.values()
                         if self.feasible(c)}.values(), key=lambda c: -c.accuracy)
        return ranked

    def _mutant(self, parents: Sequence[Candidate], prob: float) -> Arch:
        return self.space.mutate(self.rng.choice(parents).arch, self.rng, prob)

    def _crossed(self, parents: Sequence[Candidate]) -> Arch:
        return self.space.crossover(self.rng.choice(parents).arch, self.rng.choice(parents).arch,
                                    self.rng)

    # ---- multi objective
    def objectives(self, c: Candidate, with_size: bool) -> tuple[float, ...]:
        base = (-c.accuracy, c.worst_latency if self.devices else float(c.macs))
        return base + ((c.size_kb,) if with_size else ())

    def nsga2(self, population: int = 100, generations: int = 20,
              with_size: bool = False) -> list[Candidate]:
        """The feasible Pareto front (accuracy ↑, latency ↓[, size ↓]), by latency."""
        seeds = self.check_feasible()
        pop = self.rng.sample(seeds, min(len(seeds), population))
        while len(pop) < population:
            child = self._feasible_child(lambda: self.space.sample(self.rng))
            if child is None:
                break
            pop.append(child)
        for _ in range(generations):
            ranks, crowd = _rank_and_crowd([self.objectives(c, with_size) for c in pop])
            children = []
            for _ in range(population):
                a, b = (_tournament(self.rng, pop, ranks, crowd) for _ in range(2))
                child = self._feasible_child(lambda a=a, b=b: self.space.mutate(
                    self.space.crossover(a.arch, b.arch, self.rng), self.rng, 0.1))
                if child is not None:
                    children.append(child)
            merged = list({c.arch.to_string(): c for c in pop + children}.values())
            ranks, crowd = _rank_and_crowd([self.objectives(c, with_size) for c in merged])
            order = sorted(range(len(merged)), key=lambda i: (ranks[i], -crowd[i]))
            pop = [merged[i] for i in order[:population]]
        everything = [c for c in self.cache.values() if self.feasible(c)]
        fronts = _non_dominated([self.objectives(c, with_size) for c in everything])
        front = [everything[i] for i in fronts[0]] if fronts else []
        return sorted(front, key=lambda c: (c.worst_latency, -c.accuracy))


def pareto_front(points: Sequence[tuple[float, ...]]) -> list[int]:
    """Indices of the non-dominated points (all objectives minimised)."""
    fronts = _non_dominated(points)
    return fronts[0] if fronts else []


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def _non_dominated(points: Sequence[Sequence[float]]) -> list[list[int]]:
    """Fast non-dominated sorting (Deb et al.): fronts of indices, best first."""
    n = len(points)
    dominated_by: list[list[int]] = [[] for _ in range(n)]
    counts = [0] * n
    fronts: list[list[int]] = [[]]
    for i in range(n):
        for j in range(n):
            if i != j and _dominates(points[i], points[j]):
                dominated_by[i].append(j)
            elif i != j and _dominates(points[j], points[i]):
                counts[i] += 1
        if counts[i] == 0:
            fronts[0].append(i)
    while fronts[-1]:
        nxt = []
        for i in fronts[-1]:
            for j in dominated_by[i]:
                counts[j] -= 1
                if counts[j] == 0:
                    nxt.append(j)
        fronts.append(nxt)
    return fronts[:-1]


def _rank_and_crowd(points: Sequence[Sequence[float]]) -> tuple[list[int], list[float]]:
    ranks = [0] * len(points)
    crowd = [0.0] * len(points)
    for r, front in enumerate(_non_dominated(points)):
        for i in front:
            ranks[i] = r
        for m in range(len(points[0]) if points else 0):
            ordered = sorted(front, key=lambda i: points[i][m])
            lo, hi = points[ordered[0]][m], points[ordered[-1]][m]
            crowd[ordered[0]] = crowd[ordered[-1]] = math.inf
            span = (hi - lo) or 1.0
            for k in range(1, len(ordered) - 1):
                crowd[ordered[k]] += (points[ordered[k + 1]][m] - points[ordered[k - 1]][m]) / span
    return ranks, crowd


def _tournament(rng: random.Random, pop: Sequence[Candidate], ranks: Sequence[int],
                crowd: Sequence[float]) -> Candidate:
    i, j = rng.randrange(len(pop)), rng.randrange(len(pop))
    if ranks[i] != ranks[j]:
        return pop[i] if ranks[i] < ranks[j] else pop[j]
    return pop[i] if crowd[i] >= crowd[j] else pop[j]


def rerank_on_measured(candidates: Sequence[Candidate], constraints: Constraints
                       ) -> list[Candidate]:
    """Order measured candidates: those whose *measured* latency meets the budget first (by
    accuracy), then the rest by how far they missed it."""
    def key(c: Candidate) -> tuple[int, float]:
        worst = c.worst_measured if c.worst_measured is not None else c.worst_latency
        ok = constraints.latency_ms is None or worst <= constraints.latency_ms
        return (0, -c.accuracy) if ok else (1, worst)

    return sorted(candidates, key=key)


def spread(candidates: Sequence[Candidate], k: int) -> list[Candidate]:
    """``k`` candidates spread along a front (ends included), for on-device verification."""
    if len(candidates) <= k:
        return list(candidates)
    idx = np.unique(np.linspace(0, len(candidates) - 1, k).round().astype(int))
    return [candidates[i] for i in idx]
