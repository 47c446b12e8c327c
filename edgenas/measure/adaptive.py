"""Adaptive measurement: which subnets to measure on a new device, in rounds, until its predictor is
good enough (``edgenas measure --device NEW --adaptive --samples 20``).

Which subnets. A fixed stratified list spends measurements on subnets that teach the predictor little.
What the few-shot predictor (:mod:`edgenas.predictors.transfer`) has to learn is (1) how to mix the
known profiles' costs and (2) a correction to the per-kind costs shrunk toward that mix — a Bayesian
linear model whose design vector for a subnet is ``g = [p / ŷ, x / ŷ]`` (the known profiles'
predictions, one per profile and group of kinds as the mix is fitted, and the per-kind work, relative
to the predicted latency ŷ because the loss is relative error). The selection is greedy sequential
D-optimal design on that model: each next subnet maximises the predictive variance ``gᵀ M⁻¹ g`` (M =
prior precision + Σ g gᵀ over subnets measured or already chosen) — equivalently, the largest gain in
log det M — so it is where the known devices *disagree* most, or where the kinds of work are least
covered yet. To cover the latency range, the predicted log-latency range is split into bins (one per
two samples) and each pick comes from a bin with the fewest picks so far; within it the most
informative subnet wins. (Taking the smallest and largest predicted subnets first was tried: on a
loaded host the largest is the noisiest measurement, and at K = 5 it cost 50 points of held-out
accuracy.) Candidates are a large sample of the space, sampled as ``edgenas measure`` samples (so every
size is on offer).

Rounds.  The first round measures enough subnets for a first held-out estimate; then, after each
round, the predictor is refitted, its held-out (leave-one-out) quality printed beside the device's
noise floor, and the campaign stops as soon as the estimate holds the target (default ≥ 90 % within
±10 % and p90 error ≤ 10 %, from at least ``min_samples`` subnets) — or ``samples`` are spent.  One
already-measured subnet is measured again in each later round: its agreement with the first
measurement is the device's own noise floor, which no predictor can beat.

Unseen subnets.  Leave-one-out over subnets the design chose is not what a user meets: the design
picks the subnets the fit learns most from, and then the fit is judged on them.  So ``holdout`` of the
``samples`` (default one in five) are subnets the design did *not* choose — drawn at random from the
space as ``edgenas arch sample`` draws, measured in the first round with the full protocol, never
fitted by the campaign — and each round prints its predictor's share of them within ±10 %.  The
campaign stops only when that share holds the target too (the more pessimistic of the two estimates
decides).  ``predictor fit`` afterwards learns from every measurement, these included.

Protocol.  What a user feels is the time to a good predictor, so a campaign may start with the
*trimmed* protocol (:data:`TRIMMED`: 20 runs, ≥ 0.25 s, 0.1 s warm-up — on a quiet host as repeatable
as the default and nearly twice as fast, benchmarks/measure.py) and keep it only while it reads what
the full protocol reads: each round re-measures one of its trimmed subnets *with the full protocol*
(the one ``bench``, ``fleet bench`` and the search's verification use, so the one the predictor is
judged by), and the first pair that differs by more than ±5 % (:data:`TRIM_TOLERANCE`) switches the
rest of the campaign to the full protocol; each round says which protocol it used.  The first round
already re-measures one of its own subnets, so the check starts at once.  (Measured on this 2-core
host, interleaved on the same 20 subnets at 2 threads, the trimmed protocol read 2 % *faster* than
the full one in the median, benchmarks/few_shot_wallclock.py: it was not what made a second device's
predictor read 13-27 % high in issue 29 — benchmarking beside the campaign's own exports was, see
:func:`edgenas.measure.campaign._export_cpus`.)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from edgenas.core.errors import EdgeNASError
from edgenas.measure.bench import BenchSettings
from edgenas.predictors import latency as lat
from edgenas.predictors import transfer
from edgenas.records.store import Store
from edgenas.space.spec import Arch, SearchSpace

if TYPE_CHECKING:
    from edgenas.measure.campaign import ExportWorkers

log = logging.getLogger(__name__)

CANDIDATES = 400
PRIOR_PRECISION_MIX = 1e-3  # the mixing weights: almost no prior (they are what is learnt first)
PRIOR_PRECISION_KIND = 1.0  # the per-kind correction: shrunk toward the mix (transfer's λ ≈ 1)
# The trimmed protocol (benchmarks/measure.py: 35 subnets/min at the default's noise floor on a quiet
# host) and how far a re-measured subnet may move before a campaign goes back to the full protocol.
TRIMMED = {"runs": 20, "min_secs": 0.25, "warmup_secs": 0.1}
TRIM_TOLERANCE = 0.05


def trimmed(settings: BenchSettings) -> BenchSettings:
    """``settings`` with the trimmed run counts (threads, XNNPACK, timeouts kept)."""
    return dataclasses.replace(settings, **TRIMMED)


# ------------------------------------------------------------------------------------------ selection


def _design(space: SearchSpace, archs: Sequence[Arch], sources: Sequence[transfer.SourceProfile],
            guess: np.ndarray | None, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray, int]:
    """(design vectors g, predicted latency ŷ, how many leading columns are the mixing part)."""
    scale = transfer._reference_scale(space, num_classes)
    x = transfer.common_matrix(space, archs, num_classes) / scale
    if sources:
        costs = np.vstack([s.costs * scale for s in sources])
        whole = x @ costs.T
        whole = whole / np.median(whole, axis=0)  # each profile in units of its own typical latency
        yhat = np.exp(np.mean(np.log(np.maximum(whole, 1e-12)), axis=1))
        parts, _ = transfer.split_by_group(space, costs)  # what the mix fits: (profile, group)
        p = x @ parts.T
        unit_p = np.median(p, axis=0)
        unit_p = np.where(unit_p > 0, unit_p, p.mean(axis=0))
        p = p / np.maximum(unit_p, 1e-12)
    else:
        p = np.zeros((len(archs), 0))
        yhat = x.sum(axis=1)
    if guess is not None:
        yhat = np.asarray(guess, float)
    yhat = np.maximum(yhat, 1e-12)
    # Each kind in units of its typical amount; a kind most subnets lack (a kernel size in one stage)
    # has median 0, so its mean is its unit there, or it would swamp the criterion.
    unit = np.median(x, axis=0)
    unit = np.where(unit > 0, unit, x.mean(axis=0))
    xs = x / np.maximum(unit, 1e-12)
    g = np.hstack([p, xs]) / yhat[:, None]
    return g, yhat, p.shape[1]


def select(space: SearchSpace, candidates: Sequence[Arch], sources: Sequence[transfer.SourceProfile],
           k: int, *, measured: Sequence[Arch] = (), total: int | None = None,
           guess: np.ndarray | None = None, seed: int = 0, num_classes: int = 10) -> list[int]:
    """Indices of ``k`` candidates to measure next (see the module docstring).

    ``measured``: subnets this device already has (they count as information and as bin picks);
    ``total``: the campaign's final number of samples (sets the bin count, default ``k``);
    ``guess``: the current predictor's latency for each candidate (default: the known profiles' mix).
    Deterministic for a given input; ``seed`` only breaks exact ties."""
    cands = list(candidates)
    if k <= 0 or not cands:
        return []
    measured = list(measured)
    g, yhat, n_mix = _design(space, cands + measured, sources, None if guess is None else
                             np.concatenate([guess, _guess_measured(space, measured, sources, guess,
                                                                    cands, num_classes)]),
                             num_classes)
    gc, gm = g[: len(cands)], g[len(cands):]
    dim = g.shape[1]
    prior = np.full(dim, PRIOR_PRECISION_KIND)
    prior[:n_mix] = PRIOR_PRECISION_MIX
    m = np.diag(prior) + gm.T @ gm
    m_inv = np.linalg.inv(m)
    logy = np.log(yhat)
    nbins = max(2, math.ceil((total or k + len(measured)) / 2))
    lo, hi = float(logy.min()), float(logy.max())
    width = (hi - lo) / nbins or 1.0
    bins = np.minimum(((logy - lo) / width).astype(int), nbins - 1)
    counts = np.bincount(bins[len(cands):], minlength=nbins).astype(float)
    cand_bins = bins[: len(cands)]
    tie = np.random.default_rng(seed).random(len(cands)) * 1e-9
    taken = np.zeros(len(cands), bool)
    seen_keys = {a.to_string() for a in measured}
    for i, a in enumerate(cands):  # never re-pick a subnet that is measured or listed twice
        key = a.to_string()
        if key in seen_keys:
            taken[i] = True
        seen_keys.add(key)
    chosen: list[int] = []
    while len(chosen) < k and not taken.all():
        open_bins = np.unique(cand_bins[~taken])
        fewest = open_bins[np.argmin(counts[open_bins])]
        pool = np.flatnonzero((~taken) & (cand_bins == fewest))
        var = np.einsum("ij,jk,ik->i", gc[pool], m_inv, gc[pool]) + tie[pool]
        best = int(pool[int(np.argmax(var))])
        chosen.append(best)
        taken[best] = True
        counts[fewest] += 1
        v = gc[best]
        mv = m_inv @ v  # Sherman-Morrison: M⁻¹ after adding v vᵀ
        m_inv -= np.outer(mv, mv) / (1.0 + v @ mv)
    return chosen


def _guess_measured(space: SearchSpace, measured: Sequence[Arch],
                    sources: Sequence[transfer.SourceProfile], guess: np.ndarray,
                    candidates: Sequence[Arch], num_classes: int) -> np.ndarray:
    """ŷ for already-measured subnets on the scale of ``guess`` (the current predictor's): the
    mix's prediction rescaled to match the candidates' guesses in the median."""
    if not measured:
        return np.zeros(0)
    _, base_c, _ = _design(space, candidates, sources, None, num_classes)
    _, base_m, _ = _design(space, measured, sources, None, num_classes)
    return base_m * float(np.median(np.asarray(guess) / base_c))


def log_det_information(space: SearchSpace, archs: Sequence[Arch],
                        sources: Sequence[transfer.SourceProfile], pool: Sequence[Arch] = (),
                        num_classes: int = 10) -> float:
    """log det M of a set of subnets (the D-optimality criterion ``select`` greedily maximises);
    ``pool``: the candidates the set was chosen from (they fix the design's units, as in select)."""
    ref = list(pool) + list(archs)
    g, _, n_mix = _design(space, ref, sources, None, num_classes)
    g = g[len(pool):]
    prior = np.full(g.shape[1], PRIOR_PRECISION_KIND)
    prior[:n_mix] = PRIOR_PRECISION_MIX
    return float(np.linalg.slogdet(np.diag(prior) + g.T @ g)[1])


# -------------------------------------------------------------------------------------------- rounds


class AdaptiveError(EdgeNASError):
    """An adaptive campaign cannot run (bad arguments) or a round failed."""


@dataclass
class RoundReport:
    """The state after one round: how many subnets, the held-out estimate, the noise floor."""

    k: int
    method: str
    estimate: dict[str, Any] | None
    noise_pairs: int
    noise_within_10: float | None
    median_cv: float | None
    seconds: float
    protocol: str = "full"
    unseen: dict[str, Any] | None = None  # the fit scored on held-out subnets the design did not pick

    def line(self) -> str:
        e = self.estimate
        q = ("held-out " + (f"±5 % {100 * e['within_5']:.0f} %, ±10 % {100 * e['within_10']:.0f} %, "
                            f"Spearman {e['spearman']:.3f}, p90 error {100 * e['p90_rel_error']:.1f} %")
             if e else "held-out: too few subnets yet")
        floor = (f"noise floor: re-measured within ±10 % {100 * self.noise_within_10:.0f} % "
                 f"({self.noise_pairs} pair(s))" if self.noise_pairs
                 else "noise floor: not measured yet")
        cv = f", median CV {100 * self.median_cv:.1f} %" if self.median_cv is not None else ""
        u = self.unseen
        unseen = (f" | unseen (not chosen by the design) ±10 % {100 * u['within_10']:.0f} % of "
                  f"{u['samples']}, p90 error {100 * u['p90_rel_error']:.1f} %" if u else "")
        return f"K={self.k} [{self.method}] {q}{unseen} | {floor}{cv} | protocol {self.protocol}"


@dataclass
class AdaptiveReport:
    device: str
    precision: str
    threads: int
    rounds: list[RoundReport] = field(default_factory=list)
    stopped: str = ""
    measured: list[str] = field(default_factory=list)
    seconds: float = 0.0
    complete: bool = True
    errors: list[str] = field(default_factory=list)
    export_worker_starts: int = 0  # export worker pools it started (1: shared by every round)

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "precision": self.precision, "threads": self.threads,
                "rounds": [vars(r) for r in self.rounds], "stopped": self.stopped,
                "measured": self.measured, "seconds": round(self.seconds, 1),
                "complete": self.complete, "errors": self.errors,
                "export_worker_starts": self.export_worker_starts}


def _profile_data(store: Store, device_class: str, precision: str, threads: int,
                  space: SearchSpace, statistic: str
                  ) -> tuple[list[Arch], np.ndarray, list[tuple[float, float]], float | None]:
    """(archs, latency per arch, (first, second) measurement pairs, median CV) of a class's profile."""
    column = lat.STATISTICS[statistic]
    from edgenas.records.measurements import profile_rows

    by: dict[str, list[float]] = {}
    cvs = []
    for arch, y_ms, _median, cv in profile_rows(store, device_class, precision, threads, space.name,
                                                column):
        by.setdefault(arch, []).append(y_ms)
        if cv is not None:
            cvs.append(cv)
    archs = [space.parse(a) for a in by]
    y = np.asarray([float(np.median(v)) for v in by.values()])
    pairs = [(v[0], v[1]) for v in by.values() if len(v) >= 2]
    return archs, y, pairs, (float(np.median(cvs)) if cvs else None)


def measure_adaptive(store: Store, home: Path, source_ckpt: Path | str, device: str, samples: int,
                     precision: str = "fp32", threads: int = 1, *, seed: int = 0, workers: int = 2,
                     settings: BenchSettings | None = None, statistic: str | None = None,
                     first_round: int | None = None, round_size: int = 4, min_samples: int = 10,
                     target_within_10: float = 0.9, target_p90: float = 0.10,
                     candidates: int = CANDIDATES, export_cache: Path | None = None,
                     progress: bool = True, stream: IO[str] | None = None,
                     trim: bool = False, trim_tolerance: float = TRIM_TOLERANCE,
                     export_workers: ExportWorkers | None = None,
                     holdout: int | None = None) -> AdaptiveReport:
    """Measure up to ``samples`` subnets of ``device`` in rounds, chosen by :func:`select`, and stop
    once the held-out estimate holds the target (see the module docstring).

    ``trim``: start with the trimmed protocol and fall back to ``settings`` (the full one) as soon as
    a trimmed subnet re-measured with the full protocol moves by more than ``trim_tolerance``.

    ``holdout``: how many of the ``samples`` are random subnets the design did not choose, measured
    with the full protocol and never fitted by the campaign: its estimate on unseen subnets (default
    :func:`holdout_size`; 0: none, the leave-one-out estimate alone decides).

    ``statistic``: the run time the predictor will predict (default: that of the device's saved
    predictor of this setting, else the median) — the stop decision is about that predictor.

    ``export_workers``: the caller's export workers (``fleet specialize`` shares one set across its
    classes and searches); by default the campaign starts its own, once for all its rounds."""
    from edgenas.device.registry import select_devices
    from edgenas.measure.campaign import ExportWorkers, measure, sample_archs
    from edgenas.records.classes import class_of
    from edgenas.supernets.checkpoint import load_checkpoint

    if samples < 2:
        raise AdaptiveError("--adaptive needs --samples 2 or more")
    devs = select_devices(store, [device])
    if len(devs) != 1:
        raise AdaptiveError("--adaptive measures one device at a time (give one --device)")
    device = devs[0].name
    klass = class_of(devs[0])  # its predictor and its measurements are its class's
    if statistic is None:
        try:
            statistic = lat.load_predictor(home, klass, precision, threads).statistic
        except lat.LatencyPredictorError:
            statistic = "median"
    out = stream or sys.stderr
    started = time.monotonic()
    space = SearchSpace.from_spec(load_checkpoint(Path(source_ckpt))["space"])
    sources = transfer.sources_from_store(store, space, (klass, precision, threads), statistic, home)
    pool = sample_archs(space, candidates, seed)
    n_held = holdout_size(samples) if holdout is None else max(0, min(holdout, samples - 2))
    held_out = holdout_archs(space, n_held, seed)
    held_keys = {a.to_string() for a in held_out}
    pool = [a for a in pool if a.to_string() not in held_keys]
    design_samples = samples - n_held
    report = AdaptiveReport(device, precision, threads)
    first = first_round or first_round_size(design_samples, min_samples, round_size)

    def say(text: str) -> None:
        if progress:
            out.write(f"[adaptive {device}] {text}\n")
            out.flush()

    def profile() -> tuple[list[Arch], np.ndarray, list[tuple[float, float]], float | None,
                           list[Arch], np.ndarray]:
        """The design's subnets (archs, y, pairs, cv) and the held-out ones (archs, y)."""
        archs, y, pairs, cv = _profile_data(store, klass, precision, threads, space, statistic)
        held = np.asarray([a.to_string() in held_keys for a in archs], bool)
        keep = [a for a, h in zip(archs, held) if not h]
        pairs = _pairs_of(store, klass, precision, threads, space, statistic, held_keys)
        return (keep, y[~held], pairs, cv, [a for a, h in zip(archs, held) if h], y[held])

    say(f"prior: {len(sources)} other profile(s)" + (f" ({', '.join(s.name for s in sources)})"
                                                     if sources else " — fitting per device")
        + (f"; {n_held} random subnet(s) the design does not choose held out" if n_held else ""))
    full = settings or BenchSettings(threads=threads)
    active = trimmed(full) if trim else full
    on_trimmed: set[str] = set()  # subnets measured with the trimmed protocol in this campaign
    current = None
    with nullcontext(export_workers) if export_workers is not None else ExportWorkers() as exporters:
        starts = exporters.starts  # one set of export workers for every round
        while True:
            archs, y, pairs, cv, held_archs, _ = profile()
            have = {a.to_string() for a in archs}
            budget = design_samples - len(archs)
            if budget <= 0:
                report.stopped = report.stopped or f"{samples} subnets measured"
                break
            n = min(budget, first if not archs else round_size)
            todo = [a.to_string() for a in next_round(space, pool, archs, sources, n, design_samples,
                                                      current, seed)]
            again = _remeasure_pick(archs, pairs) if archs else None
            protocol = "full" if active is full else "trimmed"
            t0 = time.monotonic()
            rep = measure(store, home, source_ckpt, [device], len(todo), [precision], threads, seed,
                          workers, progress=progress, export_cache=export_cache, settings=active,
                          archs=todo, stream=stream, export_workers=exporters)
            held_todo = [a.to_string() for a in held_out
                         if a.to_string() not in {h.to_string() for h in held_archs}]
            reps = [rep]
            if held_todo:  # the unseen subnets, with the protocol the predictor is judged by
                reps.append(measure(store, home, source_ckpt, [device], len(held_todo), [precision],
                                    threads, seed, workers, progress=False, export_cache=export_cache,
                                    settings=full, archs=held_todo, export_workers=exporters))
            if active is not full:
                on_trimmed.update(todo)
                if again is None:  # a trimmed protocol is checked from the first round on
                    done, _, done_pairs, _, _, _ = profile()
                    again = _remeasure_pick(done, done_pairs) if done else None
            if again is not None:  # the device's own noise floor: one earlier subnet, measured again
                name = again.to_string()
                # Always with the full protocol: a trimmed first measurement is checked against what
                # the predictor will be judged by, not against itself.  One full row completes the
                # pair of a trimmed subnet (repeats count per protocol); a full one needs a second.
                reps.append(measure(store, home, source_ckpt, [device], 1, [precision], threads, seed,
                                    workers, progress=False, export_cache=export_cache,
                                    settings=full, archs=[name],
                                    repeats=1 if name in on_trimmed else 2,
                                    export_workers=exporters))
            report.measured += todo + held_todo
            aborted = False
            for r in reps:
                if r.complete:
                    continue
                report.complete = False
                d = r.devices.get(device)
                report.errors += (d.errors if d else []) + list(r.export_failed.values())
                if d is not None and d.aborted:
                    report.stopped = f"device aborted: {d.aborted}"
                    aborted = True
            if aborted:
                break
            before = len(have)
            archs, y, pairs, cv, held_archs, held_y = profile()
            if len(archs) == before:  # every pick failed (exports or benchmarks): do not loop on them
                report.stopped = "nothing could be measured in the last round"
                break
            current, rr = _round(space, archs, y, pairs, cv, sources, time.monotonic() - t0, protocol,
                                 held_archs, held_y)
            report.rounds.append(rr)
            say(rr.line())
            moved = float(_moves(pairs).max(initial=0.0))
            if active is not full and moved > trim_tolerance:
                active = full
                say(f"a trimmed measurement moved {100 * moved:.1f} % from its full re-measurement "
                    f"(> {100 * trim_tolerance:.0f} %): the rest is measured with the full protocol")
            e, u = rr.estimate, rr.unseen
            if e and len(archs) >= min_samples and e["within_10"] >= target_within_10 \
                    and e["p90_rel_error"] <= target_p90 \
                    and (u is None or u["within_10"] >= target_within_10):
                report.stopped = (f"held-out estimate good enough at K={len(archs)} (±10 % "
                                  f"{100 * e['within_10']:.0f} %, p90 {100 * e['p90_rel_error']:.1f} %"
                                  + (f"; unseen ±10 % {100 * u['within_10']:.0f} % of "
                                     f"{u['samples']}" if u else "") + ")")
                break
        report.export_worker_starts = exporters.starts - starts
    report.seconds = time.monotonic() - started
    say(f"stopped: {report.stopped}; fit it with `edgenas predictor fit --device {device} "
        f"--precision {precision} --threads {threads}`")
    return report


def holdout_size(samples: int) -> int:
    """How many of a campaign's ``samples`` are held out by default: one in five, none below 10."""
    return samples // 5 if samples >= 10 else 0


def holdout_archs(space: SearchSpace, n: int, seed: int = 0) -> list[Arch]:
    """The ``n`` random subnets a campaign holds out (drawn as ``edgenas arch sample`` draws, from a
    seed of their own so they are not a user's ``--seed 0`` sample), distinct."""
    out: list[Arch] = []
    seen: set[str] = set()
    for a in space.sample_many(4 * n + 8, 7919 + seed):
        if len(out) >= n:
            break
        if a.to_string() not in seen:
            seen.add(a.to_string())
            out.append(a)
    return out


def _pairs_of(store: Store, device_class: str, precision: str, threads: int, space: SearchSpace,
              statistic: str, exclude: set[str]) -> list[tuple[float, float]]:
    """(first, second) measurements of the re-measured subnets outside ``exclude``, in the order of
    their first measurement (as :func:`_profile_data` lists them)."""
    from edgenas.records.measurements import profile_rows

    by: dict[str, list[float]] = {}
    for arch, y_ms, _median, _cv in profile_rows(store, device_class, precision, threads, space.name,
                                                 lat.STATISTICS[statistic]):
        if arch not in exclude:
            by.setdefault(arch, []).append(y_ms)
    return [(v[0], v[1]) for v in by.values() if len(v) >= 2]


def first_round_size(samples: int, min_samples: int = 10, round_size: int = 4) -> int:
    """How many subnets the first round measures: enough for a first held-out estimate."""
    return min(samples, max(min_samples - round_size, 5, samples // 2))


def next_round(space: SearchSpace, pool: Sequence[Arch], measured: Sequence[Arch],
               sources: Sequence[transfer.SourceProfile], n: int, total: int,
               current: transfer.TransferFit | None, seed: int = 0) -> list[Arch]:
    """The ``n`` subnets of ``pool`` a campaign measures next, given what it has measured and the
    predictor fitted after the last round (``None`` before the first): its predictions place the
    candidates on the latency range, the prior's mix is only the first round's guess."""
    have = {a.to_string() for a in measured}
    left = [a for a in pool if a.to_string() not in have]
    guess = current.predict_many(space, left) if current is not None else None
    return [left[i] for i in select(space, left, sources, n, measured=list(measured), total=total,
                                    guess=guess, seed=seed)]


def replay(space: SearchSpace, pool: Sequence[Arch], latency_ms: Sequence[float],
           sources: Sequence[transfer.SourceProfile], samples: int, *, round_size: int = 4,
           min_samples: int = 10, seed: int = 0) -> list[int]:
    """The indices into ``pool`` that an adaptive campaign of ``samples`` would measure, round by
    round, on a device whose latencies are already known (``latency_ms``, one per pool subnet): the
    benchmark's way to score the design exactly as ``measure --adaptive`` runs it, on stored data.
    No early stop: every round is played until ``samples`` are chosen."""
    index = {a.to_string(): i for i, a in enumerate(pool)}
    y = np.asarray(latency_ms, dtype=np.float64)
    chosen: list[int] = []
    current: transfer.TransferFit | None = None
    first = first_round_size(samples, min_samples, round_size)
    while len(chosen) < samples:
        n = min(samples - len(chosen), first if not chosen else round_size)
        picks = next_round(space, pool, [pool[i] for i in chosen], sources, n, samples, current,
                           seed)
        if not picks:
            break
        chosen += [index[a.to_string()] for a in picks]
        archs = [pool[i] for i in chosen]
        current = (transfer.fit_transfer(space, archs, y[chosen], sources, estimate=False)
                   if sources else transfer.fit_per_device(space, archs, y[chosen]))
    return chosen


def _remeasure_pick(archs: list[Arch], pairs: list[tuple[float, float]]) -> Arch | None:
    """The earliest subnet not measured twice yet (cycling through the list)."""
    return archs[len(pairs)] if len(pairs) < len(archs) else None


def _moves(pairs: list[tuple[float, float]]) -> np.ndarray:
    """Each re-measured subnet's relative difference between its first and second measurement."""
    a = np.asarray(pairs, dtype=np.float64).reshape(-1, 2)
    return np.abs(a[:, 1] - a[:, 0]) / a[:, 0]


def _round(space: SearchSpace, archs: list[Arch], y: np.ndarray, pairs: list[tuple[float, float]],
           cv: float | None, sources: Sequence[transfer.SourceProfile],
           seconds: float, protocol: str = "full", held_archs: Sequence[Arch] = (),
           held_y: np.ndarray | None = None) -> tuple[transfer.TransferFit | None, RoundReport]:
    fitted: transfer.TransferFit | None = None
    if len(archs) >= 2:
        try:
            fitted = (transfer.fit_transfer(space, archs, y, sources) if sources
                      else transfer.fit_per_device(space, archs, y, estimate=True))
        except lat.LatencyPredictorError as exc:
            log.warning("fit after this round failed: %s", exc)
    within = float(np.mean(_moves(pairs) <= 0.10)) if pairs else None
    unseen = None
    if fitted is not None and len(held_archs) and held_y is not None:
        unseen = transfer.quality(held_y, fitted.predict_many(space, list(held_archs)))
    return fitted, RoundReport(len(archs), fitted.method if fitted else "none",
                               fitted.estimate if fitted else None, len(pairs), within, cv, seconds,
                               protocol, unseen)


__all__ = ["TRIMMED", "TRIM_TOLERANCE", "AdaptiveError", "AdaptiveReport", "first_round_size",
           "holdout_archs", "holdout_size", "log_det_information", "measure_adaptive", "next_round",
           "replay", "select", "trimmed"]
