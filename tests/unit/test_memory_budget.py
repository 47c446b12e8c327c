"""Peak memory as a measured objective (issue 27): what a benchmark stores as the model's peak memory,
the memory predictor, the search's memory budget, the per-device budget from `device add` and the
inventory, and `fleet bench`'s memory promise.  Pure logic on real SQLite workspace files; the
on-device measurement itself is tested in tests/integration/test_memory_budget.py."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest

from edgenas import SearchSpace
from edgenas.core.errors import DeviceError, EdgeNASError
from edgenas.device import registry
from edgenas.device.answers import bench_answer
from edgenas.device.inventory import load_inventory
from edgenas.fleet.bench import memory_promise, over_memory
from edgenas.predictors import memory as mp
from edgenas.records import measurements
from edgenas.records.measurements import Measurement
from edgenas.records.memory import model_memory_kib
from edgenas.records.store import MIGRATIONS, open_store
from edgenas.search.problem import (
    Candidate,
    Constraints,
    DeviceModel,
    InfeasibleError,
    rerank_on_measured,
)
from edgenas.search.searcher import Searcher
from edgenas.search.strategies import evolve

SPACE = SearchSpace.load("mbv3-tiny")


# ------------------------------------------------------------------------------- what is stored


def test_the_models_peak_is_the_reset_high_water_mark_above_the_rss_before_it():
    runner = {"memory": {"peak_rss_kib": 1_163_172, "rss_before_kib": 41_728, "hwm_kib": 52_000,
                         "hwm_reset": True, "rss_after_kib": 50_508}}
    # ru_maxrss (peak_rss_kib) is the launching host process's 1.1 GB peak, carried across exec:
    # never used; the reset VmHWM above the RSS before the model loaded is the model's own peak
    assert model_memory_kib(runner) == 52_000 - 41_728
    assert model_memory_kib({"memory": {"hwm_kib": 10, "rss_before_kib": 20}}) == 0
    # benchmark_model measures the same growth itself
    binary = {"memory": {"peak_rss_kib": 12_800, "footprint_init_mib": 3.0,
                         "footprint_overall_mib": 10.25}}
    assert model_memory_kib(binary) == 10_496
    # an old runner (only ru_maxrss) or nonsense: nothing, rather than a wrong number
    for bad in ({"memory": {"peak_rss_kib": 51_234, "rss_before_kib": 40_000}},
                {"memory": {"hwm_kib": True, "rss_before_kib": 1}},
                {"memory": {"hwm_kib": -5, "rss_before_kib": 1}},
                {"memory": {"footprint_overall_mib": float("nan")}},
                {"memory": "lots"}, {}, []):
        assert model_memory_kib(bad) is None, bad


def test_a_device_lying_about_its_memory_is_refused_by_the_answer_check():
    good = {"median_ms": 1.0, "count": 3, "memory": {"hwm_kib": 5, "rss_before_kib": 1,
                                                      "hwm_reset": False}}
    assert bench_answer("pi", good)["memory"]["hwm_kib"] == 5
    for memory, field_ in (({"hwm_kib": "lots"}, "memory.hwm_kib"),
                           ({"hwm_reset": 1}, "memory.hwm_reset"),
                           ({"footprint_overall_mib": -1}, "memory.footprint_overall_mib")):
        with pytest.raises(EdgeNASError, match=field_.replace(".", r"\.")):
            bench_answer("pi", {**good, "memory": memory})


def row(arch: str, memory_kib: int | None, *, device: str = "pi", noisy: bool = False,
        result: dict | None = None, space: str = "mbv3-tiny") -> Measurement:
    return Measurement(device=device, arch=arch, space=space, precision="fp32", threads=1,
                       runtime="litert", runtime_version="2.3.0", model_sha256="b" * 64,
                       source_sha256="a" * 64, campaign=None, median_ms=1.0, noisy=noisy,
                       memory_kib=memory_kib, result_json=json.dumps(result or {}))


def test_rows_store_the_peak_and_old_workspaces_get_it_from_their_raw_answers(tmp_path: Path):
    ours = next(i for i, m in enumerate(MIGRATIONS) if "memory_kib" in m)
    with open_store(tmp_path, MIGRATIONS[:ours]) as store, store.transaction() as conn:
        for n, memory in enumerate(({"hwm_kib": 9000, "rss_before_kib": 1000},  # a new runner
                                    {"peak_rss_kib": 51_234})):  # an old one: stays unknown
            conn.execute("INSERT INTO measurements (device, arch, precision, threads, model_sha256, "
                         "median_ms, result_json, created_at) VALUES ('pi', ?, 'fp32', 1, 'b', 1.0, "
                         "?, 0)", (f"r32-{n}", json.dumps({"memory": memory})))
        conn.execute("INSERT INTO devices (name, kind, created_at, updated_at) "
                     "VALUES ('old', 'local', 0, 0)")
    with open_store(tmp_path) as store:
        assert [m.memory_kib for m in measurements.find(store)] == [8000, None]
        assert registry.get_device(store, "old").memory_budget_mb is None
        stored = measurements.insert(store, row("r32-x", 4096))
        assert measurements.find(store)[-1] == stored and stored.to_dict()["memory_kib"] == 4096
        with pytest.raises(measurements.MeasurementError, match="memory_kib"):
            measurements.insert(store, row("r32-y", -1))


# ------------------------------------------------------------------------------- the predictor


def synthetic(arch, noise: float = 0.0) -> float:
    """A device whose model costs 6 MiB, 12 bytes per 1×1 weight, 40 to 80 per depthwise weight and
    4 per live activation."""
    f = mp.features(SPACE, arch)
    jitter = 1 + noise * ((zlib.crc32(arch.to_string().encode()) % 200) / 100 - 1)
    weights = 12 * f["pw_params"] + 40 * f["dw3_params"] + 50 * f["dw5_params"] + 80 * f["dw7_params"]
    return (6.0 + (weights + 4 * f["peak_act_elems"]) / 2**20) * jitter


def test_the_predictor_learns_the_costs_and_reports_held_out_quality():
    archs = SPACE.sample_many(40, seed=3)
    y = np.asarray([synthetic(a) for a in archs])
    names, coef, scale, q = mp.fit_arrays(SPACE, archs, y)
    pred = mp.MemoryPredictor("cls", "fp32", 1, SPACE.name, names, list(coef), list(scale), 10, q)
    unseen = SPACE.sample_many(20, seed=99)
    got = pred.predict_many(SPACE, unseen)
    want = np.asarray([synthetic(a) for a in unseen])
    assert np.max(np.abs(got - want) / want) < 0.01
    assert q["samples"] == 40 and q["within_5"] == 1.0 and q["p90_rel_error"] < 0.01
    assert q["method"] == "k-fold cross-validation" and q["spearman"] > 0.99
    assert pred.describe(12.345).startswith("12.35 MiB ±")
    # the tensor arena is a maximum over layers, not a sum; weights are counted by kind
    f = mp.features(SPACE, SPACE.largest())
    assert f["peak_act_elems"] < f["act_elems"] and f["fixed"] == 1.0
    assert mp.feature_names(SPACE) == list(f) and f["dw5_params"] == 0 < f["dw7_params"]
    with pytest.raises(mp.MemoryPredictorError, match="at least 8"):
        mp.fit_arrays(SPACE, archs[:5], y[:5])
    with pytest.raises(mp.MemoryPredictorError, match="positive"):
        mp.fit_arrays(SPACE, archs, np.where(np.arange(40) == 3, 0.0, y))


def test_repeatability_is_the_noise_floor_of_the_same_subnets_measured_twice():
    noise = mp.repeatability([(10.0, 10.1), (20.0, 20.0), (30.0, 36.0)])
    assert noise["pairs"] == 3 and math.isclose(noise["within_5"], 2 / 3)
    assert math.isclose(noise["max_rel_error"], 1 / 6)
    assert mp.repeatability([]) is None


def test_saved_predictors_round_trip_and_bad_files_are_refused(tmp_path: Path):
    archs = SPACE.sample_many(12, seed=1)
    names, coef, scale, q = mp.fit_arrays(SPACE, archs, np.asarray([synthetic(a) for a in archs]))
    pred = mp.MemoryPredictor("cls", "int8", 2, SPACE.name, names, list(coef), list(scale), 10, q,
                              extra={"repeatability": {"pairs": 3, "within_5": 1.0}})
    path = pred.save(tmp_path)
    assert path == tmp_path / "predictors" / "memory-cls-int8-t2.json"
    back = mp.load_predictor(tmp_path, "cls", "int8", 2)
    assert back.predict(SPACE, archs[0]) == pytest.approx(pred.predict(SPACE, archs[0]))
    assert back.noise == {"pairs": 3, "within_5": 1.0}
    with pytest.raises(mp.MemoryPredictorError, match="predictor fit --device cls"):
        mp.load_predictor(tmp_path, "cls", "fp32", 2)
    data = json.loads(path.read_text())
    for broken, match in (({**data, "format": "x"}, "not an edgenas memory predictor"),
                          ({**data, "version": 99}, "newer"),
                          ({**data, "features": ["rm -rf"]}, "unknown features")):
        path.write_text(json.dumps(broken))
        with pytest.raises(mp.MemoryPredictorError, match=match):
            mp.load_predictor(tmp_path, "cls", "int8", 2)
    with pytest.raises(mp.MemoryPredictorError, match="fitted on mbv3-tiny"):
        back.predict_many(SearchSpace.load("mbv3-w1.0"), [SearchSpace.load("mbv3-w1.0").smallest()])


def test_training_rows_skip_rows_without_a_peak_and_prefer_clean_ones():
    rows = [row("r24-a", 2048), row("r24-a", 4096, noisy=True), row("r24-a", 3072),
            row("r24-b", None), row("r24-c", 1024, noisy=True), row("r24-d", 1024, space="other")]
    space, by_arch = mp.training_rows(rows)
    assert space == "mbv3-tiny"
    assert by_arch == {"r24-a": [2.0, 3.0], "r24-c": [1.0]}


def test_fit_from_the_store_with_its_noise_floor(tmp_path: Path):
    archs = SPACE.sample_many(10, seed=5)
    with open_store(tmp_path) as store:
        registry.add_device(store, registry.make_device("pi", "local", home=tmp_path))
        for a in archs:
            kib = int(synthetic(a, 0.02) * 1024)
            measurements.insert(store, row(a.to_string(), kib))
            measurements.insert(store, row(a.to_string(), kib + 8))  # measured twice: 8 KiB apart
        pred = mp.fit(store, "pi", "fp32", 1, save_to=tmp_path)
        with pytest.raises(mp.MemoryPredictorError, match="no measurements with a peak memory"):
            mp.fit(store, "pi", "int8", 1)
    assert pred.samples == 10 and pred.quality["within_10"] >= 0.9
    assert pred.noise["pairs"] == 10 and pred.noise["within_5"] == 1.0
    assert mp.load_predictor(tmp_path, pred.device, "fp32", 1).samples == 10


# ------------------------------------------------------------------------------- the search


def accuracy(archs):
    return [0.5 + 0.05 * math.log10(SPACE.macs(a, 10))
            + (zlib.crc32(a.to_string().encode()) % 1000) / 1e5 for a in archs]


def memory_device(name: str = "pi") -> DeviceModel:
    return DeviceModel(name, "fp32", lambda archs: [SPACE.macs(a, 10) * 1e-6 for a in archs], 0.05,
                       memory=lambda archs: [synthetic(a) for a in archs], memory_error=0.02)


def test_the_search_keeps_every_candidate_within_the_memory_budget():
    lo, hi = synthetic(SPACE.smallest()), synthetic(SPACE.largest())
    budget = lo + 0.3 * (hi - lo)
    searcher = Searcher(SPACE, accuracy, [memory_device()], Constraints(max_memory_mb=budget), 10,
                        seed=1)
    ranked = evolve(searcher, 20, 4)
    assert ranked and all(c.memory_mb is not None and c.memory_mb <= budget for c in ranked)
    assert all(synthetic(c.arch) == pytest.approx(c.memory_mb) for c in ranked[:5])
    assert ranked[0].to_json()["memory_mb"] == round(ranked[0].memory_mb, 3)
    # without the budget nothing asks the memory predictor (it costs a layer plan per arch)
    free = Searcher(SPACE, accuracy, [memory_device()], Constraints(), 10, seed=1)
    assert all(c.memory_mb is None and "memory_mb" not in c.to_json() for c in evolve(free, 8, 2))
    # the unconstrained winner needs more memory than the budget allows
    assert synthetic(evolve(free, 20, 4)[0].arch) > budget


def test_an_impossible_memory_budget_fails_at_once_with_the_tightest_peak():
    floor = synthetic(SPACE.smallest())
    searcher = Searcher(SPACE, accuracy, [memory_device()], Constraints(max_memory_mb=floor / 2), 10)
    with pytest.raises(InfeasibleError, match="peak memory") as err:
        searcher.check_feasible()
    assert err.value.tightest["memory_mb"] == pytest.approx(floor, rel=0.01)
    no_predictor = DeviceModel("pi", "fp32", lambda archs: [1.0] * len(archs))
    with pytest.raises(EdgeNASError, match="memory predictor"):
        Searcher(SPACE, accuracy, [no_predictor], Constraints(max_memory_mb=10), 10)
    for bad in (0, -3, float("nan")):
        with pytest.raises(EdgeNASError, match="max-memory-mb must be a positive number"):
            Constraints(max_memory_mb=bad)
    assert Constraints(latency_ms=2, max_memory_mb=8).describe() == "latency <= 2 ms, memory <= 8 MB"


def test_verified_candidates_are_held_to_their_measured_peak():
    a, b, c = SPACE.sample_many(3, seed=4)
    light = Candidate(a, 0.7, {"d": 1.0}, 10, 1, measured={"d": 1.0}, memory_mb=9.0,
                      measured_memory={"d": 9.5})
    heavy = Candidate(b, 0.9, {"d": 1.0}, 10, 1, measured={"d": 1.0}, memory_mb=9.0,
                      measured_memory={"d": 10.5})  # predicted within, measured over
    slow = Candidate(c, 0.8, {"d": 1.0}, 10, 1, measured={"d": 1.5}, memory_mb=9.0,
                     measured_memory={"d": 9.0})
    ranked = rerank_on_measured([heavy, slow, light], Constraints(latency_ms=1.2, max_memory_mb=10))
    assert [x.accuracy for x in ranked] == [0.7, 0.9, 0.8]  # 5 % over memory before 25 % over time
    assert light.to_json()["measured_memory_mb"] == {"d": 9.5}


def test_the_safety_margin_keeps_a_candidate_inside_the_memory_error_band():
    from edgenas.search.job import with_safety_margin

    archs = SPACE.sample_many(6, seed=1)
    ranked = [Candidate(a, 0.9 - i / 100, {"d": 1.0}, 10, 1, memory_mb=10.0 - i / 10)
              for i, a in enumerate(archs)]
    model = memory_device("d")
    model.memory_error = 0.05
    picks = with_safety_margin(ranked, [model], Constraints(max_memory_mb=10.0), 2)
    assert picks[0] is ranked[0] and picks[1].memory_mb * 1.05 <= 10.0


# ------------------------------------------------------------------------------- device budgets


def test_device_memory_budgets_from_device_add_and_the_inventory(tmp_path: Path):
    dev = registry.make_device("pi", "ssh", home=tmp_path, host="h", memory_budget_mb=384)
    assert dev.memory_budget_mb == 384.0
    for bad in (0, -1, True, float("inf"), "512"):
        with pytest.raises(DeviceError, match="memory budget"):
            registry.make_device("pi", "ssh", home=tmp_path, host="h", memory_budget_mb=bad)
    with open_store(tmp_path) as store:
        registry.add_device(store, dev)
        assert registry.get_device(store, "pi").memory_budget_mb == 384.0
    inv = tmp_path / "hosts.ini"
    inv.write_text("[zero2]\nz1 ansible_host=10.0.0.9\nz2 ansible_host=10.0.0.10 edgenas_memory_mb=96\n"
                   "[zero2:vars]\nedgenas_memory_mb=128\n")
    got = {d.name: d.memory_budget_mb for d in
           load_inventory(inv, home=tmp_path, ssh_config=Path("/nonexistent"))}
    assert got == {"z1": 128.0, "z2": 96.0}
    for value in ("-5", "lots", "true"):
        inv.write_text(f"[b]\nz1 ansible_host=10.0.0.9 edgenas_memory_mb={value}\n")
        with pytest.raises(DeviceError, match="host z1: edgenas_memory_mb"):
            load_inventory(inv, home=tmp_path, ssh_config=Path("/nonexistent"))


def test_fleet_bench_holds_a_device_to_its_budget_then_to_the_searchs_constraint(tmp_path: Path):
    pi = registry.make_device("pi", "ssh", home=tmp_path, host="h", memory_budget_mb=64)
    other = registry.make_device("pc", "ssh", home=tmp_path, host="h")
    manifest = {"search": {"constraints": {"latency_ms": 3, "max_memory_mb": 48}}}
    assert memory_promise(manifest, pi) == (64.0, "device budget")
    assert memory_promise(manifest, other) == (48.0, "search constraint")
    assert memory_promise({"provenance": {"search": manifest["search"]}}, other)[0] == 48.0
    assert memory_promise({"search": {"constraints": {"max_memory_mb": "x"}}}, other) == (None, None)
    assert over_memory(65 * 1024 + 1, 64.0) == (pytest.approx(65.0, abs=1e-3), True)
    assert over_memory(64 * 1024, 64.0) == (64.0, False)
    assert over_memory(None, 64.0) == (None, False)  # an old runner: nothing to flag
    assert over_memory(10 * 1024, None) == (10.0, False)


def test_specialize_keeps_finished_steps_of_classes_without_a_memory_budget(tmp_path: Path):
    from edgenas.fleet.specialize import ClassPlan, Plan, step_inputs

    cp = ClassPlan("cls", "derived", ["pi"], "pi", 5.0, ["fp32"])
    plan = Plan("g", tmp_path / "s.pt", "a" * 64, "mbv3-tiny", 1, "auto", "g", [cp], {}, True)
    before = step_inputs(plan, cp, "search")
    # the fingerprint of a class without a memory budget is what it was before budgets existed
    from edgenas.fleet.specialize import _fingerprint

    assert before == _fingerprint(plan.source_sha256, 5.0, "auto", 1, "cls", "search")
    cp.memory_mb = 128.0
    assert step_inputs(plan, cp, "search") != before
