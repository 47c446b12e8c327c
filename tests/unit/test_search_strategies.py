"""Vectorised search machinery and the strategies behind one interface.

Real predictor classes (a ridge accuracy predictor fitted to a synthetic ground truth, an NNLS
latency predictor with fixed per-kind costs) on the small mbv3-tiny space; the tables the search
builds from them are checked against the predictors themselves, and every strategy is run for a
small budget of accuracy evaluations.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest

from edgenas import SearchSpace
from edgenas.core.errors import EdgeNASError
from edgenas.predictors.accuracy import fit_accuracy_predictor
from edgenas.predictors.latency import LatencyPredictor, feature_names
from edgenas.search.problem import (
    AdditiveTable,
    ArchCodec,
    Constraints,
    DeviceModel,
    InfeasibleError,
    Score,
    model_size_kb,
    pareto_front,
    predictor_score,
)
from edgenas.search.searcher import Searcher
from edgenas.search.strategies import (
    STRATEGIES,
    default_budget,
    default_strategy,
    nsga2_front,
    run_strategy,
)

SPACE = SearchSpace.load("mbv3-tiny")
COSTS = {"invoke": 0.05, "blocks": 0.004, "stem_macs": 2e-8, "head_macs": 1.2e-8,
         "pw_macs": 1e-8, "dw3_macs": 2.5e-8, "dw5_macs": 2.2e-8, "dw7_macs": 2.0e-8,
         "hswish_elems": 3e-9, "relu_elems": 1e-9, "se_elems": 2e-9, "residual_elems": 1e-9}


@pytest.fixture(scope="module")
def predictors():
    truth = {}
    for a in SPACE.sample_many(60, seed=7):
        jitter = (zlib.crc32(a.to_string().encode()) % 1000) / 2e4
        truth[a.to_string()] = 0.05 * math.log10(SPACE.macs(a, 10)) + 0.4 + jitter
    acc = fit_accuracy_predictor(SPACE, truth, "synthetic", "synthetic")
    names = feature_names(SPACE, "ops")
    lat = LatencyPredictor("d", "fp32", 1, SPACE.name, "ops", names,
                           [COSTS.get(n, 0.0) for n in names], [1.0] * len(names), 10,
                           {"p90_rel_error": 0.05})
    return acc, lat


@pytest.fixture(scope="module")
def tiny_supernet():
    """A random-weight mbv3-tiny supernet and a few random images (the gradient strategy's input:
    what it learns is irrelevant here, that it answers the searches is the point)."""
    import torch

    from edgenas.supernets.mbv3 import build_supernet
    from edgenas.training.data import ImageData

    torch.manual_seed(0)
    net = build_supernet(SPACE, 10)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (32,), generator=g)
    data = ImageData("random", "random", [str(i) for i in range(10)], x, y, x[:8], y[:8],
                     normalization={"mean": [0.5] * 3, "std": [0.25] * 3})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: threads only wait on each other (10x on 2 cores)
    yield net, data
    torch.set_num_threads(threads)


def fast(tiny_supernet, **kw):
    """The gradient strategy's options for a unit test: a handful of steps on 4 images."""
    net, data = tiny_supernet
    return {"net": net, "data": data, "steps": 2, "rounds": 2, "batch_size": 4, "samples": 2,
            **kw}


def make(predictors, fraction: float = 0.3, seed: int = 0, budget: int | None = None,
         accuracy=None) -> Searcher:
    acc, lat = predictors
    device = DeviceModel("d", "fp32", lambda archs: lat.predict_many(SPACE, archs), 0.05)
    lo, hi = lat.predict(SPACE, SPACE.smallest()), lat.predict(SPACE, SPACE.largest())
    return Searcher(SPACE, accuracy or predictor_score(SPACE, acc), [device],
                    Constraints(latency_ms=lo + fraction * (hi - lo)), 10, seed=seed,
                    budget=budget)


def test_codec_round_trip_and_canonical_keys() -> None:
    codec = ArchCodec(SPACE)
    archs = SPACE.sample_many(200, seed=3)
    enc = codec.encode(archs)
    assert [a.to_string() for a in codec.decode(enc)] == [a.to_string() for a in archs]
    other = enc.copy()  # change only genes of slots the stages do not use
    unused = ~codec.active(enc).reshape(len(enc), -1)
    other[:, codec.k0:codec.e0][unused] = (other[:, codec.k0:codec.e0][unused] + 1) % 3
    assert codec.keys(other) == codec.keys(enc)
    assert len(set(codec.keys(enc))) == len({a.to_string() for a in archs})


def test_tables_equal_the_predictors_they_replace(predictors) -> None:
    acc, lat = predictors
    searcher = make(predictors)
    archs = SPACE.sample_many(300, seed=11)
    enc = searcher.codec.encode(archs)
    cost = searcher.costs(enc)
    assert all(t is not None for t in searcher._tables.values())
    np.testing.assert_allclose(cost[:, 0], lat.predict_many(SPACE, archs), rtol=1e-9)
    np.testing.assert_allclose(cost[:, 1], [model_size_kb(SPACE, a, 10, "fp32") for a in archs],
                               rtol=1e-9)
    assert cost[:, 2].tolist() == [float(SPACE.macs(a, 10)) for a in archs]
    np.testing.assert_allclose(searcher._accuracy(enc), acc.predict_many(SPACE, archs),
                               rtol=1e-9)


def test_a_function_that_is_not_additive_is_called_per_arch() -> None:
    codec = ArchCodec(SPACE)
    assert AdditiveTable.build(codec, lambda archs: [math.log(SPACE.macs(a)) for a in archs],
                               "slot") is None
    calls = []

    def acc(archs):
        calls.extend(archs)
        return [math.log(SPACE.macs(a, 10)) for a in archs]

    device = DeviceModel("d", "fp32", lambda archs: [SPACE.macs(a, 10) * 1e-6 for a in archs])
    budget = SPACE.macs(SPACE.sample(1), 10) * 1e-6
    searcher = Searcher(SPACE, Score(acc, additive=True), [device],
                        Constraints(latency_ms=budget), 10, budget=50)
    searcher.costs(searcher.codec.sample(1, searcher.np_rng))  # tries (and drops) the table
    assert searcher._tables["accuracy"] is None
    calls.clear()
    best = run_strategy(searcher, "random")
    assert searcher.evaluations == 50 == len(calls)
    # the accuracy is only ever computed for archs that meet the constraint
    assert all(SPACE.macs(a, 10) * 1e-6 <= budget for a in calls)
    assert best[0].accuracy == pytest.approx(max(math.log(SPACE.macs(a, 10)) for a in calls))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_spends_its_budget_on_feasible_candidates(predictors, tiny_supernet,
                                                                  name) -> None:
    budget = 25 if name == "tpe" else 150
    searcher = make(predictors, seed=1)
    options = fast(tiny_supernet) if name == "gradient" else {}
    ranked = run_strategy(searcher, name, budget=budget, **options)
    assert 0 < searcher.evaluations <= budget
    limit = searcher.constraints.latency_ms
    assert ranked and all(c.worst_latency <= limit for c in ranked)
    acc = [c.accuracy for c in ranked]
    assert acc == sorted(acc, reverse=True)
    # the result is the real predictor's value of the real arch, not a table artefact
    assert ranked[0].accuracy == pytest.approx(predictors[0].predict(SPACE, ranked[0].arch))


@pytest.mark.parametrize("name", ["reinforce", "evolution", "ofa-evolution"])
def test_a_tight_budget_is_still_searched_to_the_end(predictors, name) -> None:
    """Under a budget few subnets meet, a strategy still spends its evaluations (REINFORCE used to
    stall after a handful: a flat penalty for infeasible samples gave its policy no direction)."""
    searcher = make(predictors, fraction=0.04, seed=2)
    run_strategy(searcher, name, budget=50)
    assert searcher.evaluations == 50


def test_guided_strategies_beat_random_search_at_equal_budget(predictors) -> None:
    best = {}
    for name in ("random", "evolution", "ofa-evolution", "reinforce"):
        best[name] = np.mean([run_strategy(make(predictors, seed=s), name, budget=400)[0].accuracy
                              for s in range(2)])
    assert best["evolution"] > best["random"]
    assert best["ofa-evolution"] > best["random"]
    assert best["reinforce"] >= best["random"] - 0.002


def test_budget_and_names_are_checked(predictors) -> None:
    with pytest.raises(EdgeNASError, match="unknown search strategy 'anneal'"):
        run_strategy(make(predictors), "anneal", budget=10)
    with pytest.raises(EdgeNASError, match="at least 1"):
        run_strategy(make(predictors), "random", budget=0)
    searcher = make(predictors, budget=5)
    searcher.evaluate(SPACE.sample_many(5, seed=1))
    with pytest.raises(EdgeNASError, match="budget"):
        searcher.evaluate(SPACE.sample_many(3, seed=2))


def test_pareto_front_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    for dims in (2, 3):
        pts = np.round(rng.random((300, dims)), 2)  # rounding makes ties and duplicates
        brute = [i for i in range(len(pts)) if not any(
            np.all(pts[j] <= pts[i]) and np.any(pts[j] < pts[i]) for j in range(len(pts)))]
        assert pareto_front(pts) == brute


def test_nsga2_front_spans_latencies_with_the_budget(predictors) -> None:
    searcher = make(predictors, fraction=1.0, seed=2, budget=600)
    front = nsga2_front(searcher, population=40, generations=None)
    assert searcher.evaluations == 600
    lat = [c.worst_latency for c in front]
    assert len(front) >= 5 and lat == sorted(lat) and lat[-1] > 1.5 * lat[0]
    points = [(-c.accuracy, c.worst_latency) for c in front]
    assert pareto_front(points) == list(range(len(front)))


def test_the_default_strategy_is_the_measured_winner() -> None:
    """docs/search.md and `edgenas search` promise the default is what won in
    benchmarks/search_strategies.py; a rerun with another winner must change the default too."""
    path = Path(__file__).resolve().parents[2] / "benchmarks/results/search_strategies.json"
    measured = json.loads(path.read_text())
    assert measured["winners"], "the benchmark result has no rows"
    for cell, winners in measured["winners"].items():
        evaluations = int(cell.split()[0])
        assert default_strategy(evaluations) in winners, (cell, winners)
    assert {default_strategy(n) for n in (1, 50, 100, 101, 1000)} <= set(STRATEGIES)
    assert default_strategy(100) == "ofa-evolution" and default_strategy(101) == "evolution"
    # the equal-wall-time comparison on a trained supernet (--supernet): gradient is the default
    # nowhere unless it won there
    won = any("gradient" in w for w in measured.get("supernet", {}).get("winners", {}).values())
    assert won or "gradient" not in {default_strategy(n) for n in (1, 50, 100, 101, 1000)}


# ------------------------------------------------------------------------------ gradient strategy


def test_the_relaxed_supernet_runs_exactly_the_subnet_of_one_hot_choices(tiny_supernet) -> None:
    """Straight-through choice weights are one-hot in value: the relaxed forward pass (mixed
    kernels, channel masks, mixed depth, batch statistics) must be that subnet's own output."""
    import copy

    import torch
    import torch.nn.functional as F

    from edgenas.search.gradient import RelaxedSupernet

    net = copy.deepcopy(tiny_supernet[0]).train()
    net.dropout.p = 0.0
    codec = ArchCodec(SPACE)
    relaxed = RelaxedSupernet(copy.deepcopy(net), codec)
    for arch in SPACE.sample_many(2, seed=5):
        enc = torch.as_tensor(codec.pad(codec.encode([arch]))[0])
        x = torch.randn(4, 3, arch.resolution, arch.resolution)
        with torch.no_grad():
            got = relaxed.forward(x, F.one_hot(enc[1:codec.k0], len(codec.depths)).float(),
                                  F.one_hot(enc[codec.k0:codec.e0], len(codec.kernels)).float(),
                                  F.one_hot(enc[codec.e0:], len(codec.expands)).float())
            want = net.set_active(arch)(x)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_the_expected_cost_of_a_certain_choice_is_the_table_cost(predictors) -> None:
    """With logits that pick one subnet for sure, the differentiable expected latency (and size)
    equals the searcher's table cost of that subnet, divided by the limits."""
    import torch

    from edgenas.search.gradient import CostModel, _Logits

    searcher = make(predictors)
    searcher.constraints = Constraints(latency_ms=1.0, max_size_kb=1000.0)
    model = CostModel(searcher)
    codec = searcher.codec
    enc = codec.pad(codec.encode(SPACE.sample_many(3, seed=8)))
    for row in enc:
        big = 60.0
        lg = _Logits(*(torch.nn.functional.one_hot(torch.as_tensor(g), n).float() * big
                       for g, n in ((row[1:codec.k0], len(codec.depths)),
                                    (row[codec.k0:codec.e0], len(codec.kernels)),
                                    (row[codec.e0:], len(codec.expands)),
                                    (row[0], len(codec.res)))))
        got = model.expected(lg).detach().numpy()
        want = searcher.costs(row[None])[0, :2]  # latency (limit 1 ms), size (limit 1000 KB)
        np.testing.assert_allclose(got, want / [1.0, 1000.0], rtol=1e-4)


@pytest.mark.parametrize("fraction", [0.1, 0.5])
def test_gradient_meets_a_tight_and_a_loose_budget(predictors, tiny_supernet, fraction) -> None:
    searcher = make(predictors, fraction=fraction, seed=3)
    ranked = run_strategy(searcher, "gradient", budget=30, **fast(tiny_supernet, rounds=3))
    assert ranked and 0 < searcher.evaluations <= 30
    assert all(c.worst_latency <= searcher.constraints.latency_ms for c in ranked)
    # the loss pulls towards the budget: λ rises until the round's subnet fits it
    assert ranked[0].accuracy == pytest.approx(predictors[0].predict(SPACE, ranked[0].arch))


def test_gradient_answers_an_impossible_budget_with_the_tightest_value(predictors,
                                                                        tiny_supernet) -> None:
    searcher = make(predictors, fraction=-0.5)
    with pytest.raises(InfeasibleError, match="tightest achievable") as info:
        run_strategy(searcher, "gradient", budget=10, **fast(tiny_supernet))
    lo = predictors[1].predict(SPACE, SPACE.smallest())
    assert info.value.tightest["latency_ms"] == pytest.approx(lo, rel=1e-6)
    assert searcher.evaluations == 0


@pytest.mark.parametrize("group", ["smoothmax", "max"])
def test_gradient_meets_the_budget_on_every_device_of_a_group(predictors, tiny_supernet,
                                                              group) -> None:
    acc, lat = predictors
    fast_dev = DeviceModel("a", "fp32", lambda archs: lat.predict_many(SPACE, archs), 0.05)
    slow_dev = DeviceModel("b", "int8", lambda archs: [1.6 * v for v in
                                                       lat.predict_many(SPACE, archs)], 0.05)
    lo, hi = lat.predict(SPACE, SPACE.smallest()), lat.predict(SPACE, SPACE.largest())
    limit = 1.6 * (lo + 0.3 * (hi - lo))
    searcher = Searcher(SPACE, predictor_score(SPACE, acc), [fast_dev, slow_dev],
                        Constraints(latency_ms=limit), 10, seed=4)
    ranked = run_strategy(searcher, "gradient", budget=20, **fast(tiny_supernet, group=group))
    assert ranked and all(c.latency["b"] <= limit and c.latency["a"] <= limit for c in ranked)
    assert all(c.latency["b"] > c.latency["a"] for c in ranked)  # the slow device binds


def test_gradient_needs_the_supernet_and_leaves_it_untouched(predictors, tiny_supernet) -> None:
    import torch

    with pytest.raises(EdgeNASError, match="supernet and its training data"):
        run_strategy(make(predictors), "gradient", budget=5)
    net = tiny_supernet[0]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    events = []
    run_strategy(make(predictors, seed=5), "gradient", budget=10, progress=events.append,
                 **fast(tiny_supernet, train_weights=True, rounds=1))
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # DARTS-style steps on a copy
    assert any("round 1" in e.message for e in events)


def test_every_default_budget_is_quick_and_a_time_limit_stops_a_strategy(predictors) -> None:
    """tpe's cost per trial grows with the trials (1000 took minutes): its default is smaller; any
    strategy stops at ``seconds`` with what it found, and long work reports progress."""
    assert default_budget("predictor", "tpe") < default_budget("predictor") == 1000
    assert default_budget("supernet", "tpe") == default_budget("supernet") == 40
    searcher = make(predictors, seed=6)
    events = []
    ranked = run_strategy(searcher, "tpe", budget=10**6, seconds=0.5, progress=events.append)
    assert ranked and searcher.evaluations < 10**6


def test_progress_is_reported_on_long_work(predictors, monkeypatch) -> None:
    from edgenas.search import strategies

    monkeypatch.setattr(strategies._Ticker, "__init__", _quick_ticker(strategies._Ticker.__init__))
    events = []
    run_strategy(make(predictors, seed=7), "evolution", budget=300, progress=events.append)
    assert events and events[-1].source == "evolution"
    assert events[-1].done == 300 and "best" in events[-1].message


def _quick_ticker(init):
    def wrapped(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.every = 0.0  # report at every tick
    return wrapped
