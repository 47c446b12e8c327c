"""Search: constrained evolution, NSGA-II, infeasible budgets, groups, re-ranking on measurements.

The predictors here are analytic stand-ins (accuracy grows with log MACs plus a per-arch
deterministic jitter, latency is proportional to MACs per device); the searches only see them
through the same callables the real predictors provide.
"""

from __future__ import annotations

import math
import time
import zlib

import pytest

from edgenas import SearchSpace
from edgenas.search.problem import (
    Candidate,
    Constraints,
    DeviceModel,
    InfeasibleError,
    pareto_front,
    rerank_on_measured,
)
from edgenas.search.searcher import Searcher
from edgenas.search.strategies import evolve, nsga2_front

SPACE = SearchSpace.load("mbv3-tiny")


def accuracy(archs):
    out = []
    for a in archs:
        jitter = (zlib.crc32(a.to_string().encode()) % 1000) / 1e5
        out.append(0.5 + 0.05 * math.log(SPACE.macs(a, 10)) / math.log(10) + jitter)
    return out


def device(name: str, ns_per_mac: float) -> DeviceModel:
    return DeviceModel(name, "fp32", lambda archs: [SPACE.macs(a, 10) * ns_per_mac * 1e-6
                                                    for a in archs], 0.05)


def test_evolution_respects_budget_and_beats_random() -> None:
    fast = device("fast", 1.0)
    lo = fast.predict([SPACE.smallest()])[0]
    hi = fast.predict([SPACE.largest()])[0]
    budget = lo + 0.3 * (hi - lo)
    searcher = Searcher(SPACE, accuracy, [fast], Constraints(latency_ms=budget), 10, seed=1)
    best = evolve(searcher, population=30, generations=5)
    assert best and all(c.worst_latency <= budget for c in best)
    randoms = [c for c in searcher.evaluate(SPACE.sample_many(200, seed=9))
               if searcher.feasible(c)]
    assert best[0].accuracy >= max(c.accuracy for c in randoms)
    assert best[0].worst_latency > 0.7 * budget  # uses the budget, not a tiny net


def test_group_constraint_holds_on_every_device() -> None:
    fast, slow = device("fast", 1.0), device("slow", 4.0)
    budget = slow.predict([SPACE.smallest()])[0] * 3
    searcher = Searcher(SPACE, accuracy, [fast, slow], Constraints(latency_ms=budget), 10)
    best = evolve(searcher, population=20, generations=3)
    assert all(c.latency["slow"] <= budget and c.latency["fast"] < c.latency["slow"]
               for c in best)


def test_infeasible_budget_answers_at_once_with_the_tightest_value() -> None:
    fast = device("fast", 1.0)
    floor = fast.predict([SPACE.smallest()])[0]
    searcher = Searcher(SPACE, accuracy, [fast], Constraints(latency_ms=floor / 2), 10)
    start = time.perf_counter()
    with pytest.raises(InfeasibleError) as err:
        evolve(searcher)
    assert time.perf_counter() - start < 30
    assert err.value.tightest["latency_ms"] == pytest.approx(floor)
    assert "tightest achievable" in str(err.value)
    with pytest.raises(InfeasibleError, match="size"):
        nsga2_front(Searcher(SPACE, accuracy, [fast], Constraints(max_size_kb=1), 10))


def test_size_and_mac_limits() -> None:
    limit = SPACE.macs(SPACE.sample(3), 10)
    searcher = Searcher(SPACE, accuracy, [device("d", 1.0)], Constraints(max_macs=limit,
                                                                          max_size_kb=2000), 10)
    best = evolve(searcher, population=20, generations=3)
    assert all(c.macs <= limit and c.size_kb <= 2000 for c in best)


def test_nsga2_returns_a_non_dominated_front_across_latencies() -> None:
    searcher = Searcher(SPACE, accuracy, [device("d", 1.0)], Constraints(), 10, seed=2)
    front = nsga2_front(searcher, population=30, generations=4)
    points = [(-c.accuracy, c.worst_latency) for c in front]
    assert sorted(pareto_front(points)) == list(range(len(front)))
    assert len(front) >= 5
    lat = [c.worst_latency for c in front]
    assert lat == sorted(lat) and lat[-1] > 2 * lat[0]
    accs = [c.accuracy for c in front]
    assert accs[-1] > accs[0]  # slower points buy accuracy


def test_rerank_prefers_candidates_whose_measured_latency_fits() -> None:
    a, b, c = SPACE.sample_many(3, seed=4)
    good = Candidate(a, 0.8, {"d": 1.0}, 10, 1, measured={"d": 1.1})
    better_but_slow = Candidate(b, 0.9, {"d": 1.0}, 10, 1, measured={"d": 1.6})
    ok = Candidate(c, 0.7, {"d": 0.5}, 10, 1, measured={"d": 0.6})
    ranked = rerank_on_measured([better_but_slow, ok, good], Constraints(latency_ms=1.2))
    assert [x.accuracy for x in ranked] == [0.8, 0.7, 0.9]


def test_verification_keeps_a_candidate_inside_the_predictors_error_band() -> None:
    from edgenas.search.job import with_safety_margin

    archs = SPACE.sample_many(6, seed=1)
    ranked = [Candidate(a, 0.9 - i / 100, {"d": 1.0 - i / 20}, 10, 1) for i, a in enumerate(archs)]
    noisy = DeviceModel("d", "fp32", lambda archs: [1.0] * len(archs), 0.2)
    picks = with_safety_margin(ranked, [noisy], Constraints(latency_ms=1.0), 3)
    assert picks[0] is ranked[0]  # the best prediction is always measured
    # with a ±20 % band only candidates predicted at <= 1/1.2 ms are safe: 0.95 and 0.9 are not
    assert [c.worst_latency for c in picks[1:]] == [0.8, 0.75]
    assert len({c.arch for c in picks}) == 3
