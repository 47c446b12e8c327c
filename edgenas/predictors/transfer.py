"""Few-shot latency predictors: a new device profile fitted from a handful of measurements on top of
what the workspace already knows about other devices.

Why this shape.  The per-device predictor (:mod:`edgenas.predictors.latency`) learns one cost per
*kind* of work (1×1 MACs per stage, depthwise MACs per kernel size, activation elements, SE, ...) by
non-negative least squares.  With ~25 costs it needs 60-100 measured subnets before it holds ±10 %.
But devices differ in a structured way: a Pi's per-kind costs are not arbitrary, they look like a mix
of other CPUs' costs (int8 vs fp32, XNNPACK vs builtin kernels, 1 vs 2 threads, ARM vs x86 each move a
few kinds up or down together).  So, in two stages:

1. **Prior = a non-negative combination of the known profiles' costs, per group of kinds.**  Every
   other stored profile (device × precision × threads, same search space) gets a per-device
   predictor fitted on all of its measurements — their fastest runs, whose shape a busy host spoils
   least (:data:`SHAPE_STATISTIC`); its per-kind costs ``c_j`` are
   mapped into one common coordinate system (the per-stage feature set, a superset of the per-kind
   one).  The kinds fall into four groups whose costs move together between devices (:data:`GROUPS`:
   per-operator overhead, elementwise work, 1×1/dense MACs, depthwise MACs): a second thread halves
   the MAC costs but adds synchronisation to every operator; int8 changes depthwise far more than
   1×1 convolutions.  The new profile's costs start as ``c0 = Σ_j Σ_g w_jg c_j|g`` (``c_j|g``: profile
   j's costs of group g's kinds, zero elsewhere) with ``w ≥ 0`` fitted to the K measurements (relative
   error).  That is at most 4·J numbers instead of ~25 — NNLS leaves most of them at zero — and
   non-negativity keeps it a physically meaningful mix of devices instead of a difference of two
   large ones.  One weight per profile (no groups) was the first version: at K = 20 it held 78 % of
   the 1-thread host's held-out subnets within ±10 %, the groups 85-90 %
   (benchmarks/predictor_transfer.py).  Both stay candidates, cross-validated beside λ
   (:data:`MIXES`): one prior of the same kind of device is better mixed with one weight.
2. **Correction, shrunk toward the prior.**  The full per-kind costs ``c ≥ 0`` are then fitted to the
   K measurements with a ridge penalty ``λ Σ_k ((c_k - c0_k) s_k / ȳ)²`` (s_k: the kind's work in the
   largest subnet, ȳ: the typical latency — the penalty is in "share of a typical latency" units, like
   the relative-error loss).  λ is chosen by leave-one-out cross-validation on the K samples, from a
   grid that ends in λ = ∞ (the prior alone): with few or noisy samples the prior wins, with many the
   fit approaches the per-device one.  Where the known profiles come with their measurements (a
   workspace's profiles, not a saved predictor) a second kind of correction competes in the same
   cross-validation: the costs fitted to the K measurements *together with* the known profiles'
   own, each carried over to the new device by the mix (its latency × the mix's prediction / its
   profile's) and weighing a fraction of a new sample (:data:`POOL_WEIGHTS`).  Those rows shrink the
   fit only along what the known profile's data pins down, where the ridge pulls every cost on its
   own; so the per-stage costs that a known profile's own per-kind fit averaged away come back.
   The result is an ordinary per-kind cost vector, saved as a normal
   :class:`~edgenas.predictors.latency.LatencyPredictor` that everything downstream reads.

A low-rank device embedding (SVD of the known cost matrix, fit the K coordinates) was the
alternative; with ≤ 8 known profiles the non-negative combination *is* a low-dimensional embedding,
and its non-negativity is a better regulariser at K = 5 than a rank cut (benchmarks/predictor_transfer.py
prints both the prior alone and the corrected fit against today's per-device fit).

Quality is always held out: leave-one-out over the K samples with the λ choice nested inside each
fold (:func:`fit_transfer` ``estimate=True``), so the number printed at K = 10 is what the predictor
would score on subnets it has not seen — never its training error.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgenas.predictors import latency as lat
from edgenas.records.store import Store
from edgenas.space.spec import Arch, SearchSpace

log = logging.getLogger(__name__)

COMMON = "stages"  # the coordinate system every profile's costs are expressed in
MIN_SOURCE_SAMPLES = 20  # a known profile needs this many measured subnets to serve as a prior
LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, math.inf)
HUBER = 0.05  # relative error beyond which a sample's weight falls (robust fit)
ROBUST_PASSES = 2
COMPARE_FROM = 40  # below this many subnets `auto` does not let the per-device fit's estimate win
# A candidate beside the λ grid: no prior at all, the device's own per-kind fit (the per-kind set:
# 13 costs, not 24).  When the known profiles do not resemble the new one (XNNPACK off while every
# known profile has it on), shrinking toward their mix hurts; cross-validation then picks this.
OWN = -1.0
# What a known profile lends a new one is the *shape* of its costs — how the kinds of work compare —
# since the mix rescales each group of kinds anyway.  So the prior is fitted from each profile's
# fastest run per subnet, which interference only ever adds to: a profile measured on a busy host
# keeps its shape in its minima, not in its medians.  Issue 29's one prior (this host at 1 thread,
# measured at load 6-14: every row's CV above 5 %, medians up to 2.4× the minimum, unevenly by
# subnet) put the same host's idle medians of 128 subnets at 0.76-0.96× its median fit (p10-p90),
# 0.94-1.09× its minimum fit; 16-subnet campaigns replayed on those 128 held 86 % of unseen subnets
# within ±10 % from the medians, 90 % from the minima, and one real campaign's data 73 % vs 93 %
# of 15 (benchmarks/results/few_shot_wallclock-t1-after.json).
SHAPE_STATISTIC = "min"
LOO_MAX = 40  # above this many samples the held-out estimate uses 10 folds instead of leave-one-out
# How the prior may be mixed, chosen by cross-validation beside λ (:func:`_choose`): per group of
# kinds (True) or one weight per profile (False, kept on a tie).  A second thread or int8 moves the
# groups apart, and then four weights per profile pay; one prior of the same kind of device only
# lends them noise to fit.  Issue 29's second 1-thread profile, 40 replayed 16-subnet campaigns on
# 128 idly measured subnets (30 unseen each): groups alone 91.2 % within ±10 %, cross-validated
# 92.7 %; five pairs of stored profiles (1 <-> 2 threads, int8, no XNNPACK, a Pi): 75.5 % vs 75.6 %.
MIXES = (True, False)
# The pooled correction (:func:`_pooled`), a candidate beside the ridge's λ grid: the new device's
# samples fitted together with every known profile's own measurements, each carried over to the new
# device by the mix and weighing one of these (× the profile's share of the mix) of a new sample.
# The ridge shrinks each cost toward the prior on its own, so 16 samples cannot move the per-stage
# costs that the prior's per-kind fit averaged away (the loaded 1-thread prior's 60 noisy minima
# choose the per-kind set); the known profile's rows can, since together the rows pin down the
# per-stage costs that neither set of rows does alone.  Issue 29's one loaded prior, 16-subnet
# campaigns replayed on 128 idly measured subnets (3 × 40 splits, 30 unseen each): 92.9 % of unseen
# subnets within ±10 % before, 96.6 % pooled; a per-resolution factor instead, even one fitted to all
# 128, left it at 92.7 %.  Five pairs of stored profiles (1 <-> 2 threads, int8, no XNNPACK, a Pi):
# 77.0 % before, 79.1 % pooled.  Chosen like the mix: when its cross-validated error is the lower.
POOL_WEIGHTS = (0.25, 0.5, 1.0)


# ------------------------------------------------------------------------------------------- features


def common_names(space: SearchSpace) -> list[str]:
    return lat.feature_names(space, COMMON)


GROUPS = ("overhead", "elementwise", "pointwise", "depthwise")


def group_of(name: str) -> str:
    """Which of :data:`GROUPS` a common feature belongs to (see the module docstring)."""
    if name in ("invoke", "blocks", "se_blocks"):
        return "overhead"
    if name.endswith("_elems"):
        return "elementwise"
    if "dw" in name:
        return "depthwise"
    return "pointwise"  # 1×1 convolutions, the stem and the head


def split_by_group(space: SearchSpace, costs: np.ndarray) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Each row of ``costs`` (J profiles × common features) split into one row per group that has a
    non-zero cost: (parts, [(profile index, group) per part])."""
    groups = np.asarray([group_of(n) for n in common_names(space)])
    parts, index = [], []
    for j, row in enumerate(np.atleast_2d(costs)):
        for g in GROUPS:
            part = np.where(groups == g, row, 0.0)
            if part.any():
                parts.append(part)
                index.append((j, g))
    return (np.vstack(parts) if parts else np.zeros((0, len(groups)))), index


def common_matrix(space: SearchSpace, archs: Sequence[Arch], num_classes: int = 10) -> np.ndarray:
    """Per-unit work of each kind per arch, in the common (per-stage) coordinates."""
    return lat._matrix(space, list(archs), common_names(space), COMMON, num_classes)


def _reference_scale(space: SearchSpace, num_classes: int) -> np.ndarray:
    """Each kind's work in the largest subnet: the unit in which costs are compared and shrunk."""
    s = common_matrix(space, [space.largest()], num_classes)[0]
    s[s == 0] = 1.0
    return s


def to_common(space: SearchSpace, feature_set: str, names: Sequence[str],
              costs: Sequence[float]) -> np.ndarray:
    """Per-unit costs of a predictor with ``feature_set`` mapped to the common coordinates.

    The per-kind set's ``pw_macs`` is every stage's 1×1 MACs, so its cost applies to each
    ``s<i>_pw_macs``; every other per-kind name exists in the per-stage set too."""
    out = np.zeros(len(common_names(space)))
    index = {n: i for i, n in enumerate(common_names(space))}
    for n, c in zip(names, costs):
        if feature_set == COMMON or n in index:
            if n in index:
                out[index[n]] += c
        elif n == "pw_macs":
            for m, i in index.items():
                if m.endswith("_pw_macs"):
                    out[i] += c
        else:
            raise lat.LatencyPredictorError(f"feature {n!r} has no per-stage counterpart")
    return out


# ---------------------------------------------------------------------------------------- the prior


@dataclass
class SourceProfile:
    """A known device profile: its per-unit costs in the common coordinates."""

    name: str
    costs: np.ndarray
    samples: int = 0
    feature_set: str = "ops"
    # The measurements it was fitted on (None for a saved predictor): what the pooled fit
    # (:data:`POOL_WEIGHTS`) carries over to the new device beside the costs.
    archs: tuple[Arch, ...] | None = field(default=None, repr=False, compare=False)
    latency_ms: np.ndarray | None = field(default=None, repr=False, compare=False)
    num_classes: int = 10

    @classmethod
    def fit(cls, name: str, space: SearchSpace, archs: Sequence[Arch], y: np.ndarray,
            num_classes: int = 10) -> SourceProfile:
        """The per-device predictor of a profile, fitted on all its measurements."""
        archs = list(archs)
        fs = lat._select(space, archs, y, num_classes, lat._candidates(len(archs)))
        names = lat.feature_names(space, fs)
        coef, scale = lat._nnls_fit(lat._matrix(space, archs, names, fs, num_classes), y)
        return cls(name, to_common(space, fs, names, coef / scale), len(archs), fs, tuple(archs),
                   np.asarray(y, dtype=np.float64), num_classes)

    @classmethod
    def from_predictor(cls, space: SearchSpace, pred: lat.LatencyPredictor) -> SourceProfile:
        per_unit = np.asarray(pred.coef) / np.asarray(pred.scale)
        return cls(f"{pred.device}/{pred.precision}/t{pred.threads}",
                   to_common(space, pred.feature_set, pred.names, per_unit), pred.samples,
                   pred.feature_set)

    def predict_many(self, space: SearchSpace, archs: Sequence[Arch], num_classes: int = 10
                     ) -> np.ndarray:
        return common_matrix(space, archs, num_classes) @ self.costs


# ------------------------------------------------------------------------------------------- fitting


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    return nnls(a, b, maxiter=50 * a.shape[1])[0]


def _combine(x: np.ndarray, y: np.ndarray, sources: np.ndarray, rw: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """Stage 1: ``w ≥ 0`` with ``Σ w_p · part_p`` closest to ``y`` in relative error.

    ``x``: scaled per-kind work (n × F); ``sources``: scaled cost parts (P × F, one per known profile
    and group, :func:`split_by_group`); ``rw``: robustness weights per sample.  Returns (w, c0
    scaled)."""
    p = x @ sources.T  # each source's prediction of each sample
    norm = np.abs(p).max(axis=0)
    norm[norm == 0] = 1.0
    w = _nnls((p / norm) * (rw / y)[:, None], rw) / norm
    return w, sources.T @ w


def _correct(x: np.ndarray, y: np.ndarray, c0: np.ndarray, lam: float, rw: np.ndarray) -> np.ndarray:
    """Stage 2: ``c ≥ 0`` minimising relative error + ``lam`` · ‖(c - c0) / ȳ‖² (scaled units)."""
    if math.isinf(lam):
        return c0
    ybar = float(np.median(y))
    k = x.shape[1]
    a = np.vstack([x * (rw / y)[:, None], math.sqrt(lam) / ybar * np.eye(k)])
    b = np.concatenate([rw, math.sqrt(lam) / ybar * c0])
    return _nnls(a, b)


@dataclass(frozen=True)
class _Pool:
    """The known profiles' own measurements, for the pooled fit (:data:`POOL_WEIGHTS`): ``x`` their
    scaled common work (n × F), ``y`` their latencies, ``own`` each row as its own profile's costs
    predict it, ``source`` the profile (index into the sources) each row belongs to."""

    x: np.ndarray
    y: np.ndarray
    own: np.ndarray
    source: np.ndarray

    @classmethod
    def of(cls, space: SearchSpace, sources: Sequence[SourceProfile], scale: np.ndarray
           ) -> _Pool | None:
        xs, ys, owns, index = [], [], [], []
        for j, s in enumerate(sources):
            if not s.archs or s.latency_ms is None:
                continue  # a saved predictor: its costs only
            x = common_matrix(space, s.archs, s.num_classes) / scale
            xs.append(x)
            ys.append(np.asarray(s.latency_ms, dtype=np.float64))
            owns.append(x @ (s.costs * scale))
            index.append(np.full(len(x), j))
        if not xs:
            return None
        y, own = np.concatenate(ys), np.concatenate(owns)
        keep = (y > 0) & (own > 0)
        return cls(np.vstack(xs)[keep], y[keep], own[keep], np.concatenate(index)[keep])


def _shares(x: np.ndarray, parts: np.ndarray, index: Sequence[tuple[int, str]], w: np.ndarray,
            sources: int) -> np.ndarray:
    """Each known profile's share of the mix's predictions of the new device's samples: how much
    its own measurements count in the pooled fit (a profile the mix leaves out lends none)."""
    pred = (x @ parts.T).sum(axis=0) * w  # each weighted part's total over the samples
    share = np.zeros(sources)
    for (j, _), p in zip(index, pred):
        share[j] += p
    total = share.sum()
    return share / total if total > 0 else share


def _pooled(x: np.ndarray, y: np.ndarray, c0: np.ndarray, rw: np.ndarray, pool: _Pool,
            weight: np.ndarray, rwp: np.ndarray) -> np.ndarray:
    """Stage 2, pooled: ``c ≥ 0`` fitted to the new device's samples and, beside them, the known
    profiles' own measurements carried over to the new device by the mix (each row times the mix's
    prediction over its profile's own), each of those weighing ``weight`` (per row) of a sample."""
    yp = pool.y * (pool.x @ c0) / pool.own
    ok = yp > 0
    wp = np.sqrt(weight * rwp)[ok]
    a = np.vstack([x * (rw / y)[:, None], pool.x[ok] * (wp / yp[ok])[:, None]])
    return _nnls(a, np.concatenate([rw, wp]))


def _fit_scaled(x: np.ndarray, y: np.ndarray, sources: np.ndarray, lam: float,
                own: np.ndarray | None = None, pool: _Pool | None = None, pooled: float = 0.0,
                index: Sequence[tuple[int, str]] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Both stages, twice reweighted (Huber, δ = HUBER relative error): a measurement spoiled by
    a busy device (30 % slow, say) pulls the few-shot fit far less than under plain least squares,
    which matters when K is 10 and one of them is an outlier.  With ``pooled`` > 0 the correction is
    the pooled fit (:func:`_pooled`), the known profiles' rows reweighted the same way."""
    if lam == OWN:  # the device's own per-kind fit, no prior (see OWN)
        assert own is not None
        coef, sc = lat._nnls_fit(x @ own, y)
        return own @ (coef / sc), np.zeros(len(sources))
    rw = np.ones_like(y)
    rwp = np.ones(len(pool.y)) if pool is not None else np.ones(0)
    for _ in range(1 + ROBUST_PASSES):
        w, c0 = _combine(x, y, sources, rw)
        if pooled and pool is not None:
            n = 1 + max(int(pool.source.max()), *(j for j, _ in index))
            c = _pooled(x, y, c0, rw, pool, pooled * _shares(x, sources, index, w, n)[pool.source],
                        rwp)
            yp = pool.y * (pool.x @ c0) / pool.own
            relp = np.abs(pool.x @ c - yp) / np.maximum(yp, 1e-12)
            rwp = np.sqrt(np.minimum(1.0, HUBER / np.maximum(relp, 1e-12)))
        else:
            c = _correct(x, y, c0, lam, rw)
        rel = np.abs(x @ c - y) / y
        rw = np.sqrt(np.minimum(1.0, HUBER / np.maximum(rel, 1e-12)))
    return c, w


@dataclass(frozen=True)
class _Option:
    """One candidate model of the cross-validated choice: how the prior is mixed and how far the
    correction may leave it.  ``parts``: the rows the mix weighs (one per profile and group of
    kinds, or one per profile), ``index``: (profile, group) of each row."""

    lam: float
    grouped: bool
    parts: np.ndarray = field(compare=False)
    index: tuple[tuple[int, str], ...] = field(compare=False)
    pooled: float = 0.0  # > 0: the pooled correction, the known profiles' rows at this weight
    pool: _Pool | None = field(default=None, compare=False)

    def fit(self, x: np.ndarray, y: np.ndarray, own: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        return _fit_scaled(x, y, self.parts, self.lam, own, self.pool, self.pooled, self.index)

    @property
    def simplicity(self) -> tuple[float, bool]:
        """Larger is simpler: the prior trusted more (λ), then one weight per profile."""
        return (self.lam, not self.grouped)


def _folds(n: int) -> list[np.ndarray]:
    if n <= LOO_MAX:
        return [np.asarray([i]) for i in range(n)]
    return lat._folds(n, 10, seed=2)


def _cv_errors(x: np.ndarray, y: np.ndarray, option: _Option, own: np.ndarray | None) -> np.ndarray:
    """Cross-validated absolute relative error of each sample for one candidate model."""
    err = np.empty_like(y)
    for test in _folds(len(y)):
        train = np.setdiff1d(np.arange(len(y)), test)
        c, _ = option.fit(x[train], y[train], own)
        err[test] = np.abs(x[test] @ c - y[test]) / y[test]
    return err


def _choose(x: np.ndarray, y: np.ndarray, options: Sequence[_Option],
            own: np.ndarray | None = None) -> _Option:
    """λ: the strongest shrinkage whose cross-validated error is within one standard error of the
    best (the one-standard-error rule: with 10 noisy samples the plain minimum overfits the
    correction).  The mix at that λ: whichever cross-validates better, one weight per profile on a
    tie.  (The one-standard-error rule on the mix too favoured one weight where a second thread
    moves the groups apart: 3 points fewer host subnets within ±10 % from 1 to 2 threads and back,
    replayed 16-subnet campaigns.)  Then the pooled fit (:data:`POOL_WEIGHTS`) replaces that choice
    where it cross-validates better, the same way: a paired one-standard-error margin on it lost
    2 of the 4 points it gains on issue 29's replays (94.6 % vs 96.8 %)."""
    plain = [o for o in options if not o.pooled]
    simplest = max(plain, key=lambda o: o.simplicity)
    if len(options) == 1 or len(y) < 4:
        return simplest  # too few samples to cross-validate: trust the prior, mixed as one
    errs = [_cv_errors(x, y, o, own) for o in options]
    means = np.asarray([e.mean() for e in errs])
    cand = [i for i, o in enumerate(options) if not o.pooled]
    best = min(cand, key=lambda i: means[i])
    limit = means[best] + errs[best].std(ddof=1) / math.sqrt(len(y))
    lam = max(options[i].lam for i in cand if means[i] <= limit and options[i].lam >= options[best].lam)
    at = [i for i in cand if options[i].lam == lam]
    chosen = min(at, key=lambda i: (means[i], options[i].grouped))
    pooled = [i for i, o in enumerate(options) if o.pooled]
    if pooled:
        best_pooled = min(pooled, key=lambda i: (means[i], -options[i].pooled))
        if means[best_pooled] < means[chosen]:
            return options[best_pooled]
    return options[chosen]


def _options(space: SearchSpace, costs: np.ndarray, lambdas: Sequence[float],
             mixes: Sequence[bool], pool: _Pool | None = None,
             pool_weights: Sequence[float] = ()) -> list[_Option]:
    """Every (λ, mix) candidate, and every (pooled weight, mix) one where the known profiles brought
    their measurements; ``costs``: the known profiles' scaled costs (J × common)."""
    grouped, index = split_by_group(space, costs)
    whole = np.atleast_2d(costs)
    parts = {True: (grouped, tuple(index)),
             False: (whole, tuple((j, "all") for j in range(len(whole))))}
    out = []
    for lam in lambdas:
        for g in ((True,) if lam == OWN else mixes):  # the own fit has no prior to mix
            out.append(_Option(lam, g, *parts[g]))
    if pool is not None:
        for weight in pool_weights:
            for g in mixes:
                out.append(_Option(0.0, g, *parts[g], weight, pool))
    return out


@dataclass
class TransferFit:
    """A fitted few-shot predictor: per-unit costs in the common coordinates and how they came about."""

    method: str  # "transfer" or "per-device"
    costs: np.ndarray
    weights: dict[str, float] = field(default_factory=dict)  # each profile's overall multiplier
    lam: float | None = None
    samples: int = 0
    estimate: dict[str, Any] | None = None  # held-out quality over the K samples (None: not asked)
    num_classes: int = 10
    group_weights: dict[str, dict[str, float]] = field(default_factory=dict)  # profile -> group -> w
    grouped: bool = True  # the mix weighs each group of kinds (False: one weight per profile)
    pooled: float = 0.0  # > 0: corrected by the pooled fit, each known profile's row at this weight
    pooled_rows: int = 0  # how many of the known profiles' measurements that fit pooled

    def predict_many(self, space: SearchSpace, archs: Sequence[Arch]) -> np.ndarray:
        return common_matrix(space, archs, self.num_classes) @ self.costs

    def describe(self) -> str:
        if self.method != "transfer":
            return "per-device fit (no other device profiles to transfer from)"
        top = sorted(self.weights.items(), key=lambda kv: -kv[1])
        mix = ", ".join(f"{k} ×{v:.2f}" for k, v in top if v > 0) or "none"
        if self.lam == OWN:
            return ("per-device fit: cross-validation found the other profiles' mix no help here "
                    f"({len(self.weights)} profile(s) tried)")
        if self.pooled:
            shrink = (f"pooled with their {self.pooled_rows} measurements (×{self.pooled:g} "
                      "weight each)")
        elif self.lam is None or math.isinf(self.lam):
            shrink = "prior only"
        else:
            shrink = f"λ = {self.lam:g}"
        how = "per group of kinds" if self.grouped else "one weight per profile"
        return f"transfer from {len(self.weights)} profile(s): {mix} ({how}); correction {shrink}"


def fit_transfer(space: SearchSpace, archs: Sequence[Arch], y: np.ndarray,
                 sources: Sequence[SourceProfile], *, correction: bool = True, estimate: bool = True,
                 num_classes: int = 10, lambdas: Sequence[float] = LAMBDAS,
                 own_fit: bool = True, mixes: Sequence[bool] = MIXES,
                 pool_weights: Sequence[float] | None = None) -> TransferFit:
    """Fit the new profile's costs from ``archs``/``y`` (ms) on top of ``sources`` (see module doc).

    ``mixes``: how the prior may be mixed — per group of kinds (True), one weight per profile
    (False), or both, cross-validated (:data:`MIXES`).
    ``estimate``: also compute the held-out quality (leave-one-out, λ and mix chosen inside each
    fold)."""
    if not sources:
        raise lat.LatencyPredictorError("no other device profiles to transfer from")
    y = np.asarray(y, dtype=np.float64)
    if len(y) < 2 or np.any(y <= 0):
        raise lat.LatencyPredictorError("a transfer fit needs at least 2 positive latencies")
    scale = _reference_scale(space, num_classes)
    x = common_matrix(space, archs, num_classes) / scale
    grid = ((OWN, *lambdas) if own_fit else tuple(lambdas)) if correction else (math.inf,)
    pool = _Pool.of(space, sources, scale) if correction else None
    options = _options(space, np.vstack([s.costs * scale for s in sources]), grid, mixes, pool,
                       POOL_WEIGHTS if pool_weights is None else pool_weights)
    own = _ops_map(space, scale) if own_fit else None
    chosen = _choose(x, y, options, own)
    c, w = chosen.fit(x, y, own)
    q = None
    if estimate and len(y) >= 4:
        held = np.empty_like(y)
        for test in _folds(len(y)):
            train = np.setdiff1d(np.arange(len(y)), test)
            inner = _choose(x[train], y[train], options, own)
            held[test] = x[test] @ inner.fit(x[train], y[train], own)[0]
        q = quality(y, held)
        q["method"] = "leave-one-out" if len(y) <= LOO_MAX else "10-fold cross-validation"
    groups: dict[str, dict[str, float]] = {s.name: {} for s in sources}
    present = split_by_group(space, np.vstack([s.costs for s in sources]))[1]
    by_part = dict(zip(chosen.index, w))
    for j, g in present:  # one weight per profile: every group of it carries that weight
        groups[sources[j].name][g] = float(by_part.get((j, g), by_part.get((j, "all"), 0.0)))
    lam = chosen.lam
    return TransferFit("transfer", c / scale, _overall(x, chosen.parts, list(chosen.index), w, sources),
                       None if math.isinf(lam) or chosen.pooled else float(lam), len(y), q,
                       num_classes, groups, chosen.grouped, chosen.pooled,
                       len(pool.y) if pool is not None and chosen.pooled else 0)


def _overall(x: np.ndarray, parts: np.ndarray, index: list[tuple[int, str]], w: np.ndarray,
             sources: Sequence[SourceProfile]) -> dict[str, float]:
    """Each profile's multiplier on its own predictions of these samples (its group weights
    averaged by how much of its predicted latency each group is): what ``describe`` prints."""
    pred = (x @ parts.T).sum(axis=0)  # each part's predicted total over the samples
    num = np.zeros(len(sources))
    den = np.zeros(len(sources))
    for (j, _), wp, total in zip(index, w, pred):
        num[j] += wp * total
        den[j] += total
    return {s.name: float(n / d) if d > 0 else 0.0 for s, n, d in zip(sources, num, den)}


def _ops_map(space: SearchSpace, scale: np.ndarray) -> np.ndarray:
    """(common × per-kind) matrix M with ``x_scaled @ M`` = the per-kind features: the per-kind fit
    expressed in the common coordinates (``M @ per-kind costs`` = scaled common costs)."""
    common = common_names(space)
    ops = lat.feature_names(space, "ops")
    m = np.zeros((len(common), len(ops)))
    for j, name in enumerate(ops):
        for i, cname in enumerate(common):
            if cname == name or (name == "pw_macs" and cname.endswith("_pw_macs")):
                m[i, j] = 1.0
    return m * scale[:, None]


def fit_per_device(space: SearchSpace, archs: Sequence[Arch], y: np.ndarray, *,
                   estimate: bool = False, num_classes: int = 10) -> TransferFit:
    """Today's per-device NNLS fit (per-kind features; per-stage competing from 40 samples on), in
    the same form as :func:`fit_transfer` so the two compare directly."""
    archs = list(archs)
    y = np.asarray(y, dtype=np.float64)
    fs = lat._select(space, archs, y, num_classes, lat._candidates(len(archs)))
    names = lat.feature_names(space, fs)
    coef, scale = lat._nnls_fit(lat._matrix(space, archs, names, fs, num_classes), y)
    q = None
    if estimate and len(y) >= 4:
        held = np.empty_like(y)
        for test in _folds(len(y)):
            train = np.setdiff1d(np.arange(len(y)), test)
            tr = [archs[i] for i in train]
            fs_f = lat._select(space, tr, y[train], num_classes, lat._candidates(len(tr)))
            names_f = lat.feature_names(space, fs_f)
            cf, sf = lat._nnls_fit(lat._matrix(space, tr, names_f, fs_f, num_classes), y[train])
            held[test] = lat._nnls_predict(
                lat._matrix(space, [archs[i] for i in test], names_f, fs_f, num_classes), cf, sf)
        q = quality(y, held)
        q["method"] = "leave-one-out" if len(y) <= LOO_MAX else "10-fold cross-validation"
    return TransferFit("per-device", to_common(space, fs, names, coef / scale), {}, None, len(y), q,
                       num_classes)


def quality(y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """:func:`edgenas.predictors.latency.quality` (share within ±5/±10 %, RMSE, Spearman, p90)."""
    return lat.quality(np.asarray(y, float), np.asarray(pred, float))


# -------------------------------------------------------------------------------- from a workspace


def _rank(q: dict[str, Any]) -> tuple[float, float]:
    return (float(q["within_10"]), -float(q["p90_rel_error"]))


def sources_from_store(store: Store, space: SearchSpace, exclude: tuple[str, str, int],
                       statistic: str = "median", home: Path | None = None,
                       min_samples: int = MIN_SOURCE_SAMPLES,
                       shape_statistic: str = SHAPE_STATISTIC) -> list[SourceProfile]:
    """Every other profile of the workspace with ≥ ``min_samples`` measured subnets of ``space``
    (fitted on all of them, from their ``shape_statistic``: see :data:`SHAPE_STATISTIC`), plus saved
    predictors of profiles with no measurements here (of ``statistic``)."""
    from edgenas.records.measurements import profiles

    out: list[SourceProfile] = []
    seen: set[tuple[str, str, int]] = set()
    for klass, precision, threads, n in profiles(store, space.name):  # one profile per device class
        key = (klass, precision, threads)
        seen.add(key)
        if key == tuple(exclude) or n < min_samples:
            continue
        try:
            ts = lat.training_set(store, *key, space=space.name, statistic=shape_statistic)
        except lat.LatencyPredictorError:
            continue
        out.append(SourceProfile.fit(f"{key[0]}/{key[1]}/t{key[2]}", ts.space, ts.archs,
                                     ts.latency_ms, ts.num_classes))
    if home is not None:
        for _, pred in lat.list_predictors(home):
            key = (pred.device, pred.precision, pred.threads)
            if key in seen or key == tuple(exclude) or pred.space != space.name:
                continue
            if pred.statistic != statistic or pred.extra.get("method") == "transfer":
                continue  # another statistic; or itself derived from this workspace's profiles
            try:
                out.append(SourceProfile.from_predictor(space, pred))
            except lat.LatencyPredictorError:
                continue
    return out


def fit_from_store(store: Store, device: str, precision: str, threads: int, *,
                   space: str | None = None, statistic: str = "median", home: Path | None = None,
                   method: str = "auto", xnnpack: bool | None = None
                   ) -> tuple[lat.LatencyPredictor | None, dict[str, Any]] | None:
    """The transfer predictor of one profile from the workspace, or None when there is nothing to
    transfer from (``method="auto"``) — then the caller fits per device.

    With ``auto`` both the transfer fit and the per-device fit are cross-validated on the profile's
    own measurements; from ``COMPARE_FROM`` subnets on the better one (share within ±10 %, then p90
    error) is kept, so transfer never makes a well-measured device worse.  Below that the transfer is
    kept: a leave-one-out estimate over 10-20 subnets that happen to be alike flatters the per-device
    fit (it extrapolates badly to the sizes it has not seen; benchmarks/predictor_transfer.py).
    Returns (predictor, comparison); the predictor is None
    when the per-device fit won (the caller fits it)."""
    ts = lat.training_set(store, device, precision, threads, space, statistic, xnnpack)
    sources = sources_from_store(store, ts.space, (device, precision, threads), statistic, home)
    if not sources:
        if method == "transfer":
            raise lat.LatencyPredictorError(
                f"no other device profile with ≥ {MIN_SOURCE_SAMPLES} measured {ts.space.name} "
                "subnets to transfer from")
        return None
    tf = fit_transfer(ts.space, ts.archs, ts.latency_ms, sources, num_classes=ts.num_classes)
    compared: dict[str, Any] = {"transfer": tf.estimate}
    if method == "auto":
        own = fit_per_device(ts.space, ts.archs, ts.latency_ms, estimate=True,
                             num_classes=ts.num_classes)
        compared["per-device"] = own.estimate
        if len(ts.archs) >= COMPARE_FROM and own.estimate and tf.estimate \
                and _rank(own.estimate) > _rank(tf.estimate):
            return None, compared
    assert tf.estimate is not None
    scale = _reference_scale(ts.space, ts.num_classes)
    names = common_names(ts.space)
    q = dict(tf.estimate)
    pred = lat.LatencyPredictor(
        device, precision, threads, ts.space.name, COMMON, names,
        [float(c) for c in tf.costs * scale], [float(s) for s in scale], ts.num_classes, q,
        ts.runtime, len(ts.archs), time.time(),
        {"statistic": statistic, "protocol": ts.protocol, "xnnpack": ts.xnnpack, "method": "transfer",
         "model": f"transfer-{COMMON}", "prior": tf.weights, "prior_groups": tf.group_weights,
         "prior_mix": "per group" if tf.grouped else "per profile", "lambda": tf.lam,
         "pooled": tf.pooled,
         "compared": compared, "describe": tf.describe(),
         "latency_range_ms": [float(ts.latency_ms.min()), float(ts.latency_ms.max())]})
    log.info("%s/%s/t%d: %s", device, precision, threads, tf.describe())
    return pred, compared


__all__ = ["GROUPS", "SourceProfile", "TransferFit", "fit_from_store", "fit_per_device",
           "fit_transfer", "group_of", "sources_from_store", "split_by_group", "to_common"]
