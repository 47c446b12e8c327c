"""Constrained, multi-objective architecture search over a supernet's space, vectorised.

Candidates live as rows of small integers (:class:`ArchCodec`: resolution, depth, kernel and
expand of every block slot), never as Python objects, until a result is reported.  Every cheap
quantity the search needs — MACs, parameters, a latency predictor, a linear accuracy predictor — is
a *sum of per-block terms* (a block's cost depends only on its stage, slot, kernel, expand and the
input resolution), so it is tabulated once per search (:class:`AdditiveTable`, built by probing the
real function with a few thousand one-block-changed archs and then checked against it on random
archs) and a batch of 10 000 candidates is evaluated with one gather-and-sum.  Functions that are
not additive (a zero-cost proxy, the supernet itself, a user's lambda) are called on decoded archs
instead, and only for candidates that already meet the constraints, so the budget of *accuracy
evaluations* is spent on feasible candidates only.

Two searches are methods here (the others are in :mod:`edgenas.search.strategies`):

* :meth:`Searcher.evolution` — maximise accuracy subject to every constraint (latency on every
  device of a group, model size, MACs): OFA's evolution (population, top parents, mutation and
  crossover), with infeasible children rejected.
* :meth:`Searcher.nsga2` — NSGA-II over (accuracy ↑, worst-device latency ↓[, size ↓]): a Pareto
  front instead of one answer, for users who want to see the trade-off.

Before any search runs, :meth:`Searcher.check_feasible` bounds the work: if even the cheapest
subnets break a constraint the search stops at once and reports the tightest value achievable.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgenas.core.errors import EdgeNASError
from edgenas.space.spec import NUM_STAGES, Arch, SearchSpace

log = logging.getLogger(__name__)

BYTES_PER_PARAM = {"fp32": 4.0, "fp16": 2.0, "dynamic": 1.0, "int8": 1.0}
ArchFn = Callable[[Sequence[Arch]], Sequence[float]]


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
    """How the search sees one device: a latency predictor for the chosen precision.

    ``additive``: the predictor is a sum of per-block costs (edgenas's NNLS predictors are), so the
    search may tabulate it; the table is checked against ``predict`` and dropped if it disagrees.
    """

    name: str
    precision: str
    predict: ArchFn
    error: float = 0.0  # relative error band of the predictor (e.g. 0.08 = ±8 %)
    additive: bool = True


@dataclass
class Score:
    """An accuracy estimate as the search sees it.

    ``additive`` says ``fn`` is a sum of per-block terms (a linear predictor before clipping), so
    it may be tabulated (and verified); ``clip`` is applied afterwards.  Anything else (a proxy,
    the supernet) is called on decoded archs, feasible ones only.
    """

    fn: ArchFn
    additive: bool = False
    clip: tuple[float, float] | None = None
    name: str = "accuracy"
    share: str = "slot"  # see ArchCodec._share_key; checked, and dropped if wrong


def predictor_score(space: SearchSpace, predictor: Any) -> Score:
    """The accuracy predictor (:class:`~edgenas.predictors.accuracy.AccuracyPredictor`) as a
    search score: its ridge model is a sum of per-slot terms, so it is tabulated; if a prediction
    is clipped to [0, 1] (or the model changes) the table fails its check and the predictor is
    simply called per arch."""
    return Score(lambda archs: predictor.predict_many(space, archs), additive=True,
                 name="predictor", share="slot")


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


# ------------------------------------------------------------------------------------------ encoding


class ArchCodec:
    """Archs as integer rows: ``[res, depth × 5, kernel × 5·M, expand × 5·M]`` (choice indices).

    Slots beyond a stage's depth keep their genes (as OFA's genotype does) so that a mutation
    which deepens a stage brings back real choices; the canonical :meth:`keys` ignore them, so two
    rows that are the same network are one candidate.
    """

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.stages, self.slots = NUM_STAGES, space.max_depth
        self.res = np.asarray(space.resolutions)
        self.kernels = np.asarray(space.kernel_choices)
        self.expands = np.asarray(space.expand_choices)
        self.depths = np.asarray(space.depth_choices)
        sm = self.stages * self.slots
        self.k0, self.e0 = 1 + self.stages, 1 + self.stages + sm
        self.n_genes = 1 + self.stages + 2 * sm
        self.choices = np.array([len(self.res)] + [len(self.depths)] * self.stages
                                + [len(self.kernels)] * sm + [len(self.expands)] * sm)
        self._slot = np.arange(self.slots)
        self._in_sizes: list[list[int]] | None = None

    # ---- conversion
    def encode(self, archs: Sequence[Arch]) -> np.ndarray:
        space = self.space
        r_of = {r: i for i, r in enumerate(space.resolutions)}
        d_of = {d: i for i, d in enumerate(space.depth_choices)}
        k_of = {k: i for i, k in enumerate(space.kernel_choices)}
        e_of = {e: i for i, e in enumerate(space.expand_choices)}
        out = np.zeros((len(archs), self.n_genes), dtype=np.int64)
        for row, arch in enumerate(archs):
            try:
                out[row, 0] = r_of[arch.resolution]
                for s, stage in enumerate(arch.blocks):
                    out[row, 1 + s] = d_of[len(stage)]
                    padded = list(stage) + [stage[-1]] * (self.slots - len(stage))
                    for m, (k, e) in enumerate(padded):
                        out[row, self.k0 + s * self.slots + m] = k_of[k]
                        out[row, self.e0 + s * self.slots + m] = e_of[e]
            except KeyError:
                space.validate(arch)  # raises the ArchError that names the field
                raise
        return out

    def decode(self, enc: np.ndarray) -> list[Arch]:
        res, depth = self.res[enc[:, 0]].tolist(), self.depths[enc[:, 1:self.k0]].tolist()
        ks = self.kernels[enc[:, self.k0:self.e0]].tolist()
        es = self.expands[enc[:, self.e0:]].tolist()
        out = []
        for r, ds, k, e in zip(res, depth, ks, es):
            blocks = tuple(tuple((k[s * self.slots + m], e[s * self.slots + m]) for m in range(d))
                           for s, d in enumerate(ds))
            out.append(Arch(r, blocks))
        return out

    def active(self, enc: np.ndarray) -> np.ndarray:
        """(N, stages, slots) mask of the block slots each row uses."""
        depth = self.depths[enc[:, 1:self.k0]]
        return self._slot[None, None, :] < depth[:, :, None]

    def canonical(self, enc: np.ndarray) -> np.ndarray:
        """Rows with unused slots' genes blanked (-1): equal rows are equal networks."""
        out = enc.astype(np.int8)
        unused = ~self.active(enc).reshape(len(enc), -1)
        out[:, self.k0:self.e0][unused] = -1
        out[:, self.e0:][unused] = -1
        return out

    def keys(self, enc: np.ndarray) -> list[bytes]:
        canon = np.ascontiguousarray(self.canonical(enc))
        return [row.tobytes() for row in canon]

    # ---- variation
    def pad(self, enc: np.ndarray) -> np.ndarray:
        """Unused slots take the stage's last used block, as :meth:`SearchSpace.mutate` pads a
        stage: a mutation that deepens a stage then repeats its last block (measured better
        than bringing back stale genes: benchmarks/search.py)."""
        depth = self.depths[enc[:, 1:self.k0]]
        src = np.minimum(self._slot[None, None, :], depth[:, :, None] - 1)  # (N, S, M)
        src = (src + (np.arange(self.stages) * self.slots)[None, :, None]).reshape(len(enc), -1)
        out = enc.copy()
        out[:, self.k0:self.e0] = np.take_along_axis(enc[:, self.k0:self.e0], src, axis=1)
        out[:, self.e0:] = np.take_along_axis(enc[:, self.e0:], src, axis=1)
        return out

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Uniform archs (each choice independent, as :meth:`SearchSpace.sample`)."""
        return rng.integers(0, self.choices, size=(n, self.n_genes))

    def mutate(self, enc: np.ndarray, prob: float, rng: np.random.Generator) -> np.ndarray:
        """Re-draw each gene with probability ``prob`` (as :meth:`SearchSpace.mutate`)."""
        redraw = rng.random(enc.shape) < prob
        return self.pad(np.where(redraw, rng.integers(0, self.choices, size=enc.shape),
                                 self.pad(enc)))

    def crossover(self, a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Each gene from one parent or the other (as :meth:`SearchSpace.crossover`)."""
        return self.pad(np.where(rng.random(a.shape) < 0.5, self.pad(a), self.pad(b)))

    # ---- additive tables
    def n_entries(self) -> int:
        r, s, m = len(self.res), self.stages, self.slots
        return r + r * s * len(self.depths) + r * s * m * len(self.kernels) * len(self.expands)

    def index(self, enc: np.ndarray) -> np.ndarray:
        """(N, 1 + stages + stages·slots) rows of an :class:`AdditiveTable`; unused slots point at
        its final zero row."""
        n_r, n_d = len(self.res), len(self.depths)
        n_k, n_e = len(self.kernels), len(self.expands)
        s_idx = np.arange(self.stages)
        r = enc[:, 0]
        depth = n_r + (r[:, None] * self.stages + s_idx[None, :]) * n_d + enc[:, 1:self.k0]
        k = enc[:, self.k0:self.e0].reshape(-1, self.stages, self.slots)
        e = enc[:, self.e0:].reshape(-1, self.stages, self.slots)
        rs = r[:, None, None] * self.stages + s_idx[None, :, None]
        block = (n_r + n_r * self.stages * n_d
                 + (((rs * self.slots + self._slot[None, None, :]) * n_k + k) * n_e + e))
        block = np.where(self.active(enc), block, self.n_entries()).reshape(len(enc), -1)
        return np.concatenate([r[:, None], depth, block], axis=1)

    def block_entry(self, r: int, s: int, m: int, k: int, e: int) -> int:
        n_r, n_d = len(self.res), len(self.depths)
        return (n_r + n_r * self.stages * n_d
                + (((r * self.stages + s) * self.slots + m) * len(self.kernels) + k)
                * len(self.expands) + e)

    def _share_key(self, share: str, r: int, s: int, m: int) -> tuple[int, ...]:
        """Which (resolution, stage, slot) entries are assumed equal under ``share``:
        ``none`` — none; ``slot`` — the same slot at every resolution (an accuracy predictor's
        one-hots); ``plan`` — slots whose block has the same shape (channels, stride and feature
        map size: MACs, parameters, latency predictors)."""
        if share == "slot":
            return (s, m)
        if share == "plan":
            if self._in_sizes is None:
                from edgenas.space.plan import net_plan

                deepest = self.space.largest()
                self._in_sizes = [[b.in_size for b in net_plan(self.space, Arch(int(res),
                                   deepest.blocks)).blocks[1:]] for res in self.res]
            return (s, min(m, 1), self._in_sizes[r][s * self.slots + m])
        return (r, s, m)

    def probes(self, share: str = "none") -> Probes:
        """Archs that isolate every table entry: per resolution the reference arch (shallowest,
        first choices) and each stage at each depth; then each (kernel, expand) in each slot of a
        full-depth stage, at one resolution per ``share`` group (:meth:`_share_key`)."""
        n_r, n_d = len(self.res), len(self.depths)
        n_k, n_e = len(self.kernels), len(self.expands)
        rows, entry, rel = [], [], []
        deepest: dict[tuple[int, int], int] = {}
        for r in range(n_r):
            ref = np.zeros(self.n_genes, dtype=np.int64)
            ref[0] = r
            ref_i = len(rows)
            rows.append(ref)
            entry.append(r)
            rel.append(-1)
            for s in range(self.stages):
                for d in range(1, n_d):
                    p = ref.copy()
                    p[1 + s] = d
                    deepest[r, s] = len(rows)
                    rows.append(p)
                    entry.append(n_r + (r * self.stages + s) * n_d + d)
                    rel.append(ref_i)
        copies: list[tuple[int, int]] = []
        seen: dict[tuple[int, ...], int] = {}
        for r in range(n_r):
            for s in range(self.stages):
                for m in range(self.slots):
                    key = self._share_key(share, r, s, m)
                    src = seen.setdefault(key, r)
                    for k in range(n_k):
                        for e in range(n_e):
                            if k == 0 and e == 0:
                                continue
                            target = self.block_entry(r, s, m, k, e)
                            if src != r:
                                copies.append((target, self.block_entry(src, s, m, k, e)))
                                continue
                            p = rows[deepest[r, s]].copy()
                            p[self.k0 + s * self.slots + m] = k
                            p[self.e0 + s * self.slots + m] = e
                            rows.append(p)
                            entry.append(target)
                            rel.append(deepest[r, s])
        return Probes(np.asarray(rows), np.asarray(entry), np.asarray(rel),
                      np.asarray(copies, dtype=np.int64).reshape(-1, 2), share)


@dataclass
class Probes:
    """Probe archs for :meth:`AdditiveTable.build` (see :meth:`ArchCodec.probes`)."""

    rows: np.ndarray
    entry: np.ndarray  # the table entry each probe measures
    rel: np.ndarray  # the probe it is measured relative to (-1: absolute)
    copies: np.ndarray  # (target entry, source entry) pairs assumed equal
    share: str
    archs: list[Arch] = field(default_factory=list)


class AdditiveTable:
    """A function of archs that is a sum of per-block terms, as a lookup table (one column per
    output): ``f(arch) = base[res] + Σ_stage depth[res, stage, d] + Σ_used slots block[res, stage,
    slot, k, e]``.  :meth:`build` probes the real function and verifies the table against it."""

    def __init__(self, codec: ArchCodec, values: np.ndarray) -> None:
        self.codec = codec
        self.values = values  # (n_entries + 1, T); the last row is zero (unused slots)

    def __call__(self, index: np.ndarray) -> np.ndarray:
        """(N, T) values for rows given by :meth:`ArchCodec.index`."""
        return self.values[index].sum(axis=1)

    @classmethod
    def build(cls, codec: ArchCodec, fn: Callable[[Sequence[Arch]], Any], share: str = "none",
              probes: dict[str, Probes] | None = None, verify: int = 48,
              seed: int = 12345) -> AdditiveTable | None:
        """Tabulate ``fn`` (values (N,) or (N, T)) assuming ``share`` (falling back to no sharing
        if the check fails); None when it is not additive at all.  ``probes`` caches probe sets
        by ``share`` across the tables of one search."""
        probes = {} if probes is None else probes
        check = codec.sample(verify, np.random.default_rng(seed))
        truth = np.asarray(fn(codec.decode(check)), dtype=np.float64).reshape(verify, -1)
        scale = np.abs(truth).max(axis=0, keepdims=True) + 1e-300
        for mode in dict.fromkeys((share, "none")):
            if mode not in probes:
                p = codec.probes(mode)
                p.archs = codec.decode(p.rows)
                probes[mode] = p
            p = probes[mode]
            y = np.asarray(fn(p.archs), dtype=np.float64).reshape(len(p.archs), -1)
            # base: the reference itself; a depth entry: relative to the reference; a slot entry:
            # relative to the same stage at full depth with first choices (which are then 0)
            delta = y - np.where(p.rel[:, None] >= 0, y[np.maximum(p.rel, 0)], 0.0)
            values = np.zeros((codec.n_entries() + 1, y.shape[1]))
            values[p.entry] = delta
            if len(p.copies):
                values[p.copies[:, 0]] = values[p.copies[:, 1]]
            table = cls(codec, values)
            got = table(codec.index(check))
            err = np.abs(got - truth)
            if np.all(err <= 1e-6 * np.abs(truth) + 1e-9 * scale):
                return table
            log.info("table (%s sharing) off by %.2g relative", mode, float(np.max(err / scale)))
        log.info("not additive: evaluated per arch instead")
        return None


# ------------------------------------------------------------------------------------------ searcher


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
        self._cost = np.zeros((0, len(self.devices) + 2))  # latency per device, size KB, MACs
        self._tables: dict[str, AdditiveTable | None] | None = None

    # ---- tables
    def _build_tables(self) -> dict[str, AdditiveTable | None]:
        if self._tables is not None:
            return self._tables
        probes: dict[str, Probes] = {}
        nc, bpp = self.num_classes, BYTES_PER_PARAM.get(self.size_precision, 4.0)

        def size_and_macs(archs: Sequence[Arch]) -> np.ndarray:
            from edgenas.space.plan import net_plan

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
        """(N, devices + 2): predicted latency per device, size KB, MACs."""
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
        return np.concatenate(cols, axis=1) if cols else np.zeros((len(enc), 2))

    def feasible_mask(self, cost: np.ndarray) -> np.ndarray:
        k, n_dev = self.constraints, len(self.devices)
        ok = np.ones(len(cost), dtype=bool)
        if k.latency_ms is not None and n_dev:
            ok &= cost[:, :n_dev].max(axis=1) <= k.latency_ms
        if k.max_size_kb is not None:
            ok &= cost[:, n_dev] <= k.max_size_kb
        if k.max_macs is not None:
            ok &= cost[:, n_dev + 1] <= k.max_macs
        return ok

    def overshoot(self, cost: np.ndarray) -> np.ndarray:
        """(N,) how far past its constraints each row of ``cost`` is, relatively (0: feasible):
        the largest of worst latency / budget - 1, size / limit - 1, MACs / limit - 1."""
        k, n_dev = self.constraints, len(self.devices)
        over = np.zeros(len(cost))
        if k.latency_ms is not None and n_dev:
            over = np.maximum(over, cost[:, :n_dev].max(axis=1) / k.latency_ms - 1.0)
        if k.max_size_kb is not None:
            over = np.maximum(over, cost[:, n_dev] / k.max_size_kb - 1.0)
        if k.max_macs is not None:
            over = np.maximum(over, cost[:, n_dev + 1] / k.max_macs - 1.0)
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
            out.append(Candidate(arch, float(self._acc[r]),
                                 {d.name: float(c[i]) for i, d in enumerate(self.devices)},
                                 float(c[n_dev]), int(round(c[n_dev + 1]))))
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
                and (k.max_macs is None or c.macs <= k.max_macs))

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
    def evolution(self, population: int = 100, generations: int | None = 20,
                  parent_ratio: float = 0.25, mutation_ratio: float = 0.5,
                  mutate_prob: float = 0.1, limit: int = 500) -> list[Candidate]:
        """OFA's evolution: best feasible candidates by accuracy, best first.  With a ``budget``
        on the searcher, ``generations=None`` runs until it is spent."""
        rng = self.np_rng
        seeds = self.feasible_seeds()  # every feasible seed is scored; the best start
        if self.budget is not None:  # ... unless that would spend a small budget on seeds
            seeds = seeds[:max(population, min(len(seeds), (self.remaining or 0) // 10))]
        if len(seeds) < population:
            extra = self.feasible_children(
                lambda k: self.codec.mutate(seeds[rng.integers(0, len(seeds), k)], 0.3, rng),
                population - len(seeds))
            seeds = np.concatenate([seeds, extra])
        pop_rows = np.unique(self.score_rows(seeds))
        pop_rows = pop_rows[pop_rows >= 0]
        pop_rows = pop_rows[np.argsort(-self._acc[pop_rows], kind="stable")][:population]
        n_parents = max(2, int(population * parent_ratio))
        n_children = population - n_parents
        n_mut = int(n_children * mutation_ratio)
        gen = 0
        while (generations is None or gen < generations) and not self._spent() and len(pop_rows):
            gen += 1
            parents = pop_rows[np.argsort(-self._acc[pop_rows], kind="stable")][:n_parents]
            penc = self._enc[parents]
            mutants = self.feasible_children(
                lambda k, p=penc: self.codec.mutate(p[rng.integers(0, len(p), k)], mutate_prob,
                                                    rng), n_mut)
            crossed = self.feasible_children(
                lambda k, p=penc: self.codec.crossover(p[rng.integers(0, len(p), k)],
                                                       p[rng.integers(0, len(p), k)], rng),
                n_children - n_mut)
            children = self.score_rows(np.concatenate([mutants, crossed]))
            pop_rows = np.concatenate([parents, children[children >= 0]])
        return self.ranked(limit)

    # ---- multi objective
    def objectives(self, c: Candidate, with_size: bool) -> tuple[float, ...]:
        base = (-c.accuracy, c.worst_latency if self.devices else float(c.macs))
        return base + ((c.size_kb,) if with_size else ())

    def _objectives(self, rows: np.ndarray, with_size: bool) -> np.ndarray:
        n_dev = len(self.devices)
        cost = self._cost[rows]
        second = cost[:, :n_dev].max(axis=1) if n_dev else cost[:, n_dev + 1]
        cols = [-self._acc[rows], second] + ([cost[:, n_dev]] if with_size else [])
        return np.stack(cols, axis=1)

    def nsga2(self, population: int = 100, generations: int | None = 20,
              with_size: bool = False, mutate_prob: float = 0.1) -> list[Candidate]:
        """The feasible Pareto front (accuracy ↑, latency ↓[, size ↓]), by latency."""
        rng = self.np_rng
        seeds = self.feasible_seeds()
        pop = seeds[rng.permutation(len(seeds))[:population]]
        if len(pop) < population:
            pop = np.concatenate([pop, self.feasible_children(
                lambda k: self.codec.sample(k, rng), population - len(pop))])
        pop_rows = self.score_rows(pop)
        pop_rows = np.unique(pop_rows[pop_rows >= 0])
        gen = 0
        while (generations is None or gen < generations) and not self._spent() and len(pop_rows):
            gen += 1
            rank, crowd = rank_and_crowd(self._objectives(pop_rows, with_size))
            penc = self._enc[pop_rows]

            def make(k: int, rank: np.ndarray = rank, crowd: np.ndarray = crowd,
                     penc: np.ndarray = penc) -> np.ndarray:
                a = _tournament(rng, rank, crowd, k)
                b = _tournament(rng, rank, crowd, k)
                return self.codec.mutate(self.codec.crossover(penc[a], penc[b], rng),
                                         mutate_prob, rng)

            children = self.score_rows(self.feasible_children(make, population))
            merged = np.unique(np.concatenate([pop_rows, children[children >= 0]]))
            rank, crowd = rank_and_crowd(self._objectives(merged, with_size))
            order = np.lexsort((-crowd, rank))
            pop_rows = merged[order[:population]]
        return self.front(with_size)

    def run(self, strategy: str, **options: Any) -> list[Candidate]:
        """Any strategy of :mod:`edgenas.search.strategies` by name, best first."""
        from edgenas.search.strategies import run_strategy

        return run_strategy(self, strategy, **options)


# ------------------------------------------------------------------------------------------ Pareto


def _dominance(points: np.ndarray, others: np.ndarray) -> np.ndarray:
    """[i, j]: points[i] dominates others[j] (all objectives minimised)."""
    le = (points[:, None, :] <= others[None, :, :]).all(axis=2)
    lt = (points[:, None, :] < others[None, :, :]).any(axis=2)
    return le & lt


def pareto_front(points: Sequence[Sequence[float]] | np.ndarray) -> list[int]:
    """Indices of the non-dominated points (all objectives minimised)."""
    p = np.asarray(points, dtype=np.float64)
    if p.size == 0:
        return []
    if p.shape[1] == 2:  # sort by the first objective; a point is on the front if it beats
        order = np.lexsort((p[:, 1], p[:, 0]))  # every earlier point on the second
        second = p[order, 1]
        best_before = np.concatenate([[np.inf], np.minimum.accumulate(second)[:-1]])
        keep = second < best_before
        # equal first objective, equal second: duplicates of a front point stay on the front
        dup = np.zeros(len(p), dtype=bool)
        sp = p[order]
        same = np.all(sp[1:] == sp[:-1], axis=1)
        for i in np.flatnonzero(same) + 1:
            dup[i] = keep[i - 1] or dup[i - 1]
        return sorted(order[keep | dup].tolist())
    dominated = np.zeros(len(p), dtype=bool)
    for start in range(0, len(p), 512):
        dominated |= _dominance(p[start:start + 512], p).any(axis=0)
    return np.flatnonzero(~dominated).tolist()


def non_dominated_fronts(points: np.ndarray) -> list[np.ndarray]:
    """Fast non-dominated sorting (Deb et al.) on a dominance matrix: fronts, best first."""
    dom = _dominance(points, points)
    count = dom.sum(axis=0)
    left = np.ones(len(points), dtype=bool)
    fronts = []
    while left.any():
        front = np.flatnonzero(left & (count == 0))
        fronts.append(front)
        left[front] = False
        count = count - dom[front].sum(axis=0)
    return fronts


def rank_and_crowd(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NSGA-II's front rank and crowding distance of every point."""
    n, m = points.shape
    rank = np.zeros(n, dtype=np.int64)
    crowd = np.zeros(n)
    for r, front in enumerate(non_dominated_fronts(points)):
        rank[front] = r
        for j in range(m):
            vals = points[front, j]
            order = front[np.argsort(vals, kind="stable")]
            sv = points[order, j]
            span = (sv[-1] - sv[0]) or 1.0
            crowd[order[1:-1]] += (sv[2:] - sv[:-2]) / span
            crowd[order[0]] = crowd[order[-1]] = np.inf
    return rank, crowd


def _tournament(rng: np.random.Generator, rank: np.ndarray, crowd: np.ndarray,
                k: int) -> np.ndarray:
    """``k`` binary tournaments: lower rank wins, then larger crowding distance."""
    i, j = rng.integers(0, len(rank), k), rng.integers(0, len(rank), k)
    i_wins = (rank[i] < rank[j]) | ((rank[i] == rank[j]) & (crowd[i] >= crowd[j]))
    return np.where(i_wins, i, j)


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
