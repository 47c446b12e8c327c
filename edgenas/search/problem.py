"""The search problem: what a candidate is, how it is encoded, what it costs, what "better" means.

Candidates live as rows of small integers (:class:`ArchCodec`: resolution, depth, kernel and
expand of every block slot), never as Python objects, until a result is reported.  Every cheap
quantity the search needs — MACs, parameters, a latency predictor, a linear accuracy predictor — is
a *sum of per-block terms* (a block's cost depends only on its stage, slot, kernel, expand and the
input resolution), so it is tabulated once per search (:class:`AdditiveTable`, built by probing the
real function with a few thousand one-block-changed archs and then checked against it on random
archs) and a batch of 10 000 candidates is evaluated with one gather-and-sum.  The Pareto helpers
(:func:`pareto_front`, :func:`rank_and_crowd`) rank candidates for NSGA-II and for reports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgenas.core.errors import EdgeNASError
from edgenas.space.plan import net_plan
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
    max_memory_mb: float | None = None  # the model's peak memory (MiB) on every device

    def __post_init__(self) -> None:
        # (an impossible latency budget is answered with the tightest value instead: see Searcher)
        value = self.max_memory_mb
        if value is not None and not (isinstance(value, (int, float)) and value > 0
                                      and np.isfinite(value)):
            raise EdgeNASError(f"max-memory-mb must be a positive number, not {value!r}")

    def describe(self) -> str:
        parts = []
        if self.latency_ms is not None:
            parts.append(f"latency <= {self.latency_ms:g} ms")
        if self.max_size_kb is not None:
            parts.append(f"size <= {self.max_size_kb:g} KB")
        if self.max_macs is not None:
            parts.append(f"MACs <= {self.max_macs:.3g}")
        if self.max_memory_mb is not None:
            parts.append(f"memory <= {self.max_memory_mb:g} MB")
        return ", ".join(parts) or "none"


@dataclass
class DeviceModel:
    """How the search sees one device: a latency predictor for the chosen precision, and a memory
    predictor where the search has a memory budget.

    ``additive``: the predictor is a sum of per-block costs (edgenas's NNLS predictors are), so the
    search may tabulate it; the table is checked against ``predict`` and dropped if it disagrees.
    ``memory``: the model's peak memory in MiB (:mod:`edgenas.predictors.memory`); not additive (the
    tensor arena is a maximum over layers), so it is called on decoded archs.
    """

    name: str
    precision: str
    predict: ArchFn
    error: float = 0.0  # relative error band of the predictor (e.g. 0.08 = ±8 %)
    additive: bool = True
    memory: ArchFn | None = None
    memory_error: float = 0.0


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
    memory_mb: float | None = None  # predicted peak memory, worst device (None: not predicted)
    measured_memory: dict[str, float] = field(default_factory=dict)  # MiB per device

    @property
    def worst_latency(self) -> float:
        return max(self.latency.values()) if self.latency else 0.0

    @property
    def worst_measured(self) -> float | None:
        return max(self.measured.values()) if self.measured else None

    @property
    def worst_measured_memory(self) -> float | None:
        return max(self.measured_memory.values()) if self.measured_memory else None

    def to_json(self) -> dict[str, object]:
        return {"arch": self.arch.to_string(), "accuracy": round(self.accuracy, 6),
                "latency_ms": {k: round(v, 4) for k, v in self.latency.items()},
                "measured_ms": {k: round(v, 4) for k, v in self.measured.items()},
                "size_kb": round(self.size_kb, 1), "macs": self.macs,
                **({} if self.memory_mb is None else {"memory_mb": round(self.memory_mb, 3)}),
                **({"measured_memory_mb": {k: round(v, 3) for k, v in self.measured_memory.items()}}
                   if self.measured_memory else {})}


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


def tournament(rng: np.random.Generator, rank: np.ndarray, crowd: np.ndarray,
                k: int) -> np.ndarray:
    """``k`` binary tournaments: lower rank wins, then larger crowding distance."""
    i, j = rng.integers(0, len(rank), k), rng.integers(0, len(rank), k)
    i_wins = (rank[i] < rank[j]) | ((rank[i] == rank[j]) & (crowd[i] >= crowd[j]))
    return np.where(i_wins, i, j)


def rerank_on_measured(candidates: Sequence[Candidate], constraints: Constraints
                       ) -> list[Candidate]:
    """Order measured candidates: those whose *measured* latency and peak memory meet the budgets
    first (by accuracy), then the rest by how far (relatively) they missed them."""
    def key(c: Candidate) -> tuple[int, float]:
        worst = c.worst_measured if c.worst_measured is not None else c.worst_latency
        over = 0.0
        if constraints.latency_ms is not None:
            over = max(over, worst / constraints.latency_ms - 1.0)
        memory = (c.worst_measured_memory if c.worst_measured_memory is not None
                  else c.memory_mb)
        if constraints.max_memory_mb is not None and memory is not None:
            over = max(over, memory / constraints.max_memory_mb - 1.0)
        return (0, -c.accuracy) if over <= 0 else (1, over)

    return sorted(candidates, key=key)


def spread(candidates: Sequence[Candidate], k: int) -> list[Candidate]:
    """``k`` candidates spread along a front (ends included), for on-device verification."""
    if len(candidates) <= k:
        return list(candidates)
    idx = np.unique(np.linspace(0, len(candidates) - 1, k).round().astype(int))
    return [candidates[i] for i in idx]
