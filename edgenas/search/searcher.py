"""The searcher: one search's state — cost tables, feasibility, the evaluated-candidate cache.

Every strategy (:mod:`edgenas.search.strategies`) drives a :class:`Searcher`: it proposes encoded
candidates, the searcher prices them from its additive tables (free), scores the feasible ones with
the accuracy function (the budgeted currency) and remembers every result, so strategies compare at
equal cost.  Before any search runs, :meth:`Searcher.check_feasible` bounds the work: if even the
cheapest subnets break a constraint the search stops at once and reports the tightest value
achievable.  Functions that are not additive (a zero-cost proxy, the supernet itself, a user's
lambda) are called on decoded archs, and only for candidates that already meet the constraints.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence

import numpy as np

from edgenas.core.errors import EdgeNASError
from edgenas.search.problem import (
    BYTES_PER_PARAM,
    AdditiveTable,
    ArchCodec,
    ArchFn,
    Candidate,
    Constraints,
    DeviceModel,
    InfeasibleError,
    Probes,
    Score,
    pareto_front,
)
from edgenas.space.plan import net_plan
from edgenas.space.spec import Arch, SearchSpace

log = logging.getLogger(__name__)


class Searcher:
    """Evaluates candidates (each distinct arch once) and runs the searches.

    ``evaluations`` counts accuracy evaluations; ``budget`` (when set) caps them, which is how
    strategies are compared at equal cost.  Costs (latency, size, MACs) are checked first and are
    not counted: with the predictors they cost microseconds, while the accuracy may be a proxy or
    a supernet evaluation.
    """

    def __init__(self, space: SearchSpace, accuracy: ArchFn | Score,
                 devices: Sequence[DeviceModel], constraints: Constraints, num_classes: int,
                 seed: int = 0, budget: int | None = None) -> None:
        if not devices and constraints.latency_ms is not None:
            raise EdgeNASError("a latency constraint needs at least one device")
        if constraints.max_memory_mb is not None and not any(d.memory for d in devices):
            raise EdgeNASError("a memory constraint needs a device with a memory predictor")
        self.space = space
        self.score = accuracy if isinstance(accuracy, Score) else Score(accuracy)
        self.accuracy = self.score.fn
        self.devices = list(devices)
        self.constraints = constraints
        self.num_classes = num_classes
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.size_precision = devices[0].precision if devices else "fp32"
        self.codec = ArchCodec(space)
        self.budget = budget
        self._keys: dict[bytes, int] = {}
        self._enc = np.zeros((0, self.codec.n_genes), dtype=np.int64)
        self._acc = np.zeros(0)
        # latency per device, size KB, MACs, worst predicted peak memory MiB (NaN: not predicted)
        self._cost = np.zeros((0, len(self.devices) + 3))
        self._memory = constraints.max_memory_mb is not None
        self._tables: dict[str, AdditiveTable | None] | None = None

    # ---- tables
    def _build_tables(self) -> dict[str, AdditiveTable | None]:
        if self._tables is not None:
            return self._tables
        probes: dict[str, Probes] = {}
        nc, bpp = self.num_classes, BYTES_PER_PARAM.get(self.size_precision, 4.0)

        def size_and_macs(archs: Sequence[Arch]) -> np.ndarray:

            plans = [net_plan(self.space, a) for a in archs]
            return np.array([[p.params(nc) * bpp / 1024.0, p.macs(nc)] for p in plans])

        tables: dict[str, AdditiveTable | None] = {
            "size_macs": AdditiveTable.build(self.codec, size_and_macs, "plan", probes)}
        for d in self.devices:
            tables[f"dev:{d.name}"] = (AdditiveTable.build(self.codec, d.predict, "plan", probes)
                                       if d.additive else None)
        tables["accuracy"] = (AdditiveTable.build(self.codec, self.score.fn, self.score.share,
                                                  probes) if self.score.additive else None)
        self._tables = tables
        return tables

    def costs(self, enc: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
        """(N, devices + 3): predicted latency per device, size KB, MACs and — under a memory
        budget — the worst device's predicted peak memory in MiB (NaN without one: a memory
        predictor costs a layer plan per arch, so it is only asked when the search needs it)."""
        tables = self._build_tables()
        index = self.codec.index(enc) if index is None else index
        cols = []
        archs: list[Arch] | None = None
        for d in self.devices:
            t = tables[f"dev:{d.name}"]
            if t is None:
                archs = archs if archs is not None else self.codec.decode(enc)
                cols.append(np.asarray(d.predict(archs), dtype=np.float64)[:, None])
            else:
                cols.append(t(index))
        t = tables["size_macs"]
        if t is None:  # pragma: no cover - the plan's counts are additive by construction
            raise EdgeNASError("internal: size/MAC table failed its check")
        cols.append(t(index))
        memory = np.full((len(enc), 1), np.nan)
        models = [d.memory for d in self.devices if d.memory is not None]
        if self._memory and models and len(enc):
            archs = archs if archs is not None else self.codec.decode(enc)
            memory[:, 0] = np.max([np.asarray(m(archs), dtype=np.float64) for m in models], axis=0)
        cols.append(memory)
        return np.concatenate(cols, axis=1)

    def feasible_mask(self, cost: np.ndarray) -> np.ndarray:
        k, n_dev = self.constraints, len(self.devices)
        ok = np.ones(len(cost), dtype=bool)
        if k.latency_ms is not None and n_dev:
            ok &= cost[:, :n_dev].max(axis=1) <= k.latency_ms
        if k.max_size_kb is not None:
            ok &= cost[:, n_dev] <= k.max_size_kb
        if k.max_macs is not None:
            ok &= cost[:, n_dev + 1] <= k.max_macs
        if k.max_memory_mb is not None:
            ok &= cost[:, n_dev + 2] <= k.max_memory_mb  # NaN (not predicted) never fits
        return ok

    def overshoot(self, cost: np.ndarray) -> np.ndarray:
        """(N,) how far past its constraints each row of ``cost`` is, relatively (0: feasible):
        the largest of worst latency / budget - 1, size / limit - 1, MACs / limit - 1, memory /
        limit - 1."""
        k, n_dev = self.constraints, len(self.devices)
        over = np.zeros(len(cost))
        if k.latency_ms is not None and n_dev:
            over = np.maximum(over, cost[:, :n_dev].max(axis=1) / k.latency_ms - 1.0)
        if k.max_size_kb is not None:
            over = np.maximum(over, cost[:, n_dev] / k.max_size_kb - 1.0)
        if k.max_macs is not None:
            over = np.maximum(over, cost[:, n_dev + 1] / k.max_macs - 1.0)
        if k.max_memory_mb is not None:
            over = np.maximum(over, np.nan_to_num(cost[:, n_dev + 2] / k.max_memory_mb - 1.0,
                                                  nan=1e6))  # never: asked when budgeted
        return over

    def _accuracy(self, enc: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
        table = self._build_tables()["accuracy"]
        if table is not None:
            acc = table(self.codec.index(enc) if index is None else index)[:, 0]
        else:
            acc = np.asarray(self.score.fn(self.codec.decode(enc)), dtype=np.float64)
        if self.score.clip is not None:
            acc = np.clip(acc, *self.score.clip)
        return acc

    # ---- evaluation
    @property
    def evaluations(self) -> int:
        return len(self._acc)

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else max(0, self.budget - self.evaluations)

    def score_rows(self, enc: np.ndarray, cost: np.ndarray | None = None) -> np.ndarray:
        """History rows of ``enc`` (accuracy evaluated for the new ones; -1 past the budget)."""
        keys = self.codec.keys(enc)
        rows = np.empty(len(enc), dtype=np.int64)
        new: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            row = self._keys.get(key)
            if row is None:
                row = new.setdefault(key, len(self._acc) + len(new))
            rows[i] = row
        if new:
            first = {}
            for i, key in enumerate(keys):
                if key in new and key not in first:
                    first[key] = i
            take = np.fromiter(first.values(), dtype=np.int64)
            left = self.remaining
            if left is not None and len(take) > left:
                dropped = rows >= len(self._acc) + left
                take = take[:left]
                rows[dropped] = -1
                new = {k: v for k, v in new.items() if v < len(self._acc) + left}
            if len(take):
                sub = enc[take]
                c = self.costs(sub) if cost is None else cost[take]
                acc = self._accuracy(sub)
                self._enc = np.concatenate([self._enc, sub])
                self._acc = np.concatenate([self._acc, acc])
                self._cost = np.concatenate([self._cost, c])
                self._keys.update(new)
        return rows

    def propose(self, enc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Constraint check first, then accuracy for the feasible rows: (history rows or -1,
        feasible mask)."""
        cost = self.costs(enc)
        ok = self.feasible_mask(cost)
        rows = np.full(len(enc), -1, dtype=np.int64)
        if ok.any():
            rows[ok] = self.score_rows(enc[ok], cost[ok])
        return rows, ok

    def candidates(self, rows: Sequence[int] | np.ndarray) -> list[Candidate]:
        rows = np.asarray(rows, dtype=np.int64)
        archs = self.codec.decode(self._enc[rows])
        n_dev = len(self.devices)
        out = []
        for arch, r in zip(archs, rows.tolist()):
            c = self._cost[r]
            memory = float(c[n_dev + 2])
            out.append(Candidate(arch, float(self._acc[r]),
                                 {d.name: float(c[i]) for i, d in enumerate(self.devices)},
                                 float(c[n_dev]), int(round(c[n_dev + 1])),
                                 memory_mb=None if np.isnan(memory) else memory))
        return out

    def evaluate(self, archs: Sequence[Arch]) -> list[Candidate]:
        """Candidates for ``archs`` (accuracy evaluated whether feasible or not)."""
        rows = self.score_rows(self.codec.encode(archs))
        if (rows < 0).any():
            raise EdgeNASError(f"the evaluation budget ({self.budget}) is spent")
        return self.candidates(rows)

    @property
    def cache(self) -> dict[str, Candidate]:
        """Every evaluated candidate by arch id (materialised on demand)."""
        return {c.arch.to_string(): c for c in self.candidates(np.arange(self.evaluations))}

    def feasible(self, c: Candidate) -> bool:
        k = self.constraints
        return ((k.latency_ms is None or c.worst_latency <= k.latency_ms)
                and (k.max_size_kb is None or c.size_kb <= k.max_size_kb)
                and (k.max_macs is None or c.macs <= k.max_macs)
                and (k.max_memory_mb is None
                     or (c.memory_mb is not None and c.memory_mb <= k.max_memory_mb)))

    def ranked(self, limit: int = 500) -> list[Candidate]:
        """Feasible evaluated candidates, most accurate first."""
        ok = np.flatnonzero(self.feasible_mask(self._cost))
        order = ok[np.argsort(-self._acc[ok], kind="stable")][:limit]
        return self.candidates(order)

    def best_accuracy(self) -> float:
        ok = self.feasible_mask(self._cost)
        return float(self._acc[ok].max()) if ok.any() else float("nan")

    def front(self, with_size: bool = False) -> list[Candidate]:
        """The feasible evaluated Pareto front (accuracy ↑, latency ↓[, size ↓]), by latency."""
        ok = np.flatnonzero(self.feasible_mask(self._cost))
        if not len(ok):
            return []
        idx = ok[pareto_front(self._objectives(ok, with_size))]
        front = self.candidates(idx)
        return sorted(front, key=lambda c: (c.worst_latency, -c.accuracy))

    # ---- feasibility
    def feasible_seeds(self, probes: int = 300) -> np.ndarray:
        """Feasible rows among the smallest arch at every resolution and ``probes`` random ones
        (accuracy not evaluated), or :class:`InfeasibleError` with the tightest values."""
        smallest = self.codec.encode([self.space.smallest()])
        seeds = np.repeat(smallest, len(self.codec.res), axis=0)
        seeds[:, 0] = np.arange(len(self.codec.res))
        enc = np.concatenate([seeds, self.codec.sample(probes, self.np_rng)])
        cost = self.costs(enc)
        ok = self.feasible_mask(cost)
        if ok.any():
            return enc[ok]
        n_dev = len(self.devices)
        tightest = {"latency_ms": float(cost[:, :n_dev].max(axis=1).min()) if n_dev else 0.0,
                    "size_kb": float(cost[:, n_dev].min()), "macs": float(cost[:, n_dev + 1].min())}
        if k_memory := self.constraints.max_memory_mb:
            tightest["memory_mb"] = float(np.nanmin(cost[:, n_dev + 2]))
        k = self.constraints
        broken = []
        if k.latency_ms is not None and tightest["latency_ms"] > k.latency_ms:
            broken.append(f"latency {tightest['latency_ms']:.3g} ms (asked {k.latency_ms:g} ms)")
        if k.max_size_kb is not None and tightest["size_kb"] > k.max_size_kb:
            broken.append(f"size {tightest['size_kb']:.0f} KB (asked {k.max_size_kb:g} KB)")
        if k.max_macs is not None and tightest["macs"] > k.max_macs:
            broken.append(f"MACs {tightest['macs']:.3g} (asked {k.max_macs:.3g})")
        if k_memory and tightest["memory_mb"] > k_memory:
            broken.append(f"peak memory {tightest['memory_mb']:.3g} MB (asked {k_memory:g} MB)")
        detail = "; ".join(broken) or "the constraints cannot hold together"
        raise InfeasibleError(f"no subnet meets {k.describe()}: the tightest achievable is "
                              f"{detail}", tightest)

    def check_feasible(self, probes: int = 300) -> list[Candidate]:
        """Feasible seeds as evaluated candidates (see :meth:`feasible_seeds`)."""
        rows = self.score_rows(self.feasible_seeds(probes))
        return self.candidates(rows[rows >= 0])

    def feasible_children(self, make: Callable[[int], np.ndarray], n: int,
                          attempts: int = 50) -> np.ndarray:
        """Up to ``n`` rows from ``make(k)`` that meet the constraints (costs only), drawn in
        batches; fewer when ``attempts`` batches in a row found none."""
        out, got, misses = [], 0, 0
        while got < n and misses < attempts:
            batch = make(max(2 * (n - got), 16))
            ok = self.feasible_mask(self.costs(batch))
            if ok.any():
                out.append(batch[ok])
                got += int(ok.sum())
                misses = 0
            else:
                misses += 1
        return np.concatenate(out)[:n] if out else np.zeros((0, self.codec.n_genes), np.int64)

    def _spent(self) -> bool:
        return self.remaining == 0

    # ---- single objective
    def objectives(self, c: Candidate, with_size: bool) -> tuple[float, ...]:
        base = (-c.accuracy, c.worst_latency if self.devices else float(c.macs))
        return base + ((c.size_kb,) if with_size else ())

    def _objectives(self, rows: np.ndarray, with_size: bool) -> np.ndarray:
        n_dev = len(self.devices)
        cost = self._cost[rows]
        second = cost[:, :n_dev].max(axis=1) if n_dev else cost[:, n_dev + 1]
        cols = [-self._acc[rows], second] + ([cost[:, n_dev]] if with_size else [])
        return np.stack(cols, axis=1)
