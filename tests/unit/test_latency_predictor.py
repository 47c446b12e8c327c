"""The latency predictor on synthetic measurements (a known per-layer cost model plus noise): fitting,
held-out quality, persistence and the CLI.  Real-device fitting is covered by test_bench_measure."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgenas.cli import main
from edgenas.measure.plan import sample_archs
from edgenas.predictors.latency import (
    LatencyPredictor,
    LatencyPredictorError,
    evaluate_baseline,
    features,
    load_predictor,
    measured_latency,
    predictor_path,
    training_set,
)
from edgenas.predictors.latency_fit import fit
from edgenas.records.store import open_store
from edgenas.space.spec import SearchSpace

SPACE = SearchSpace.load("mbv3-tiny")


def true_latency(arch) -> float:
    """A device whose layers cost differently per kind — what the predictor must recover."""
    f = features(SPACE, arch, "ops")
    return (0.03 + 1.5e-9 * f["pw_macs"] + 2e-9 * f.get("dw3_macs", 0) + 3e-9 * f.get("dw5_macs", 0)
            + 4e-9 * f.get("dw7_macs", 0) + 2e-8 * f["hswish_elems"] + 3e-9 * f.get("relu_elems", 0)
            + 0.005 * f["blocks"] + 1e-8 * f.get("se_elems", 0))


def fill(home: Path, archs, device: str = "dev", noise: float = 0.02, precision: str = "fp32",
         noisy_flag: int = 0, scale: float = 1.0) -> None:
    rng = random.Random(len(archs))
    with open_store(home) as store, store.transaction() as conn:
        for a in archs:
            y = true_latency(a) * scale * (1 + rng.gauss(0, noise))
            conn.execute(
                "INSERT INTO measurements (device, arch, space, precision, threads, model_sha256, "
                "median_ms, min_ms, noisy, runtime, runtime_version, result_json, created_at) "
                "VALUES (?, ?, ?, ?, 1, 'sha', ?, ?, ?, 'litert', '2.3.0', '{}', ?)",
                (device, a.to_string(), SPACE.name, precision, y, 0.8 * y, noisy_flag, time.time()))


def test_fit_recovers_a_per_layer_cost_model_with_honest_held_out_error(tmp_path):
    archs = sample_archs(SPACE, 60, seed=0)
    fill(tmp_path, archs)
    with open_store(tmp_path) as store:
        pred = fit(store, "dev", save_to=tmp_path)
        base = evaluate_baseline(store, "dev")
    q = pred.quality
    assert q["samples"] == 60 and q["folds"] == 5
    assert q["within_10"] >= 0.9 and q["spearman"] > 0.95, q
    assert q["within_10"] >= base["within_10"] and q["rmse_ms"] < base["rmse_ms"]
    assert 0 < pred.error < 0.1
    fresh = sample_archs(SPACE, 30, seed=99)
    rel = [abs(pred.predict(SPACE, a) - true_latency(a)) / true_latency(a) for a in fresh]
    assert np.mean(np.asarray(rel) <= 0.10) >= 0.9, rel
    assert all(c >= 0 for c in pred.coef)  # physical costs: nothing is negative
    assert pred.describe(1.2345).startswith("1.234 ms ±")


def test_predictor_is_plain_json_and_round_trips(tmp_path):
    fill(tmp_path, sample_archs(SPACE, 20, seed=1))
    with open_store(tmp_path) as store:
        pred = fit(store, "dev", save_to=tmp_path)
    path = predictor_path(tmp_path, "dev", "fp32", 1)
    data = json.loads(path.read_text())
    assert data["format"] == "edgenas-latency-predictor" and data["error"]["p90_rel"] == pred.error
    assert data["runtime"] == "litert 2.3.0" and data["samples"] == 20
    again = load_predictor(tmp_path, "dev")
    arch = SPACE.sample(5)
    assert again.predict(SPACE, arch) == pytest.approx(pred.predict(SPACE, arch))
    assert again.predict(SPACE, "max") == pytest.approx(pred.predict(SPACE, SPACE.largest()))
    with pytest.raises(LatencyPredictorError, match="mbv3-w1.0"):
        again.predict(SearchSpace.load("mbv3-w1.0"), SearchSpace.load("mbv3-w1.0").largest())
    path.write_text("{not json")
    with pytest.raises(LatencyPredictorError, match="corrupt"):
        load_predictor(tmp_path, "dev")
    with pytest.raises(LatencyPredictorError, match="predictor fit --device other"):
        load_predictor(tmp_path, "other")
    with pytest.raises(LatencyPredictorError, match="not an edgenas latency predictor"):
        LatencyPredictor.from_json({"format": "x"})


def test_too_few_or_no_measurements_say_what_to_run(tmp_path):
    with open_store(tmp_path) as store:
        with pytest.raises(LatencyPredictorError, match="edgenas measure"):
            fit(store, "dev")
    fill(tmp_path, sample_archs(SPACE, 5, seed=2))
    with open_store(tmp_path) as store, pytest.raises(LatencyPredictorError, match="at least 8"):
        fit(store, "dev")


def test_noisy_rows_are_used_only_when_nothing_else_was_measured(tmp_path):
    archs = sample_archs(SPACE, 10, seed=4)
    fill(tmp_path, archs)
    fill(tmp_path, archs[:3], noisy_flag=1, scale=3.0)  # repeats of three archs, noisy and way off
    fill(tmp_path, archs[:2], precision="int8")
    with open_store(tmp_path) as store:
        ts = training_set(store, "dev", "fp32", 1)
    assert len(ts.archs) == 10
    for a, y in zip(ts.archs, ts.latency_ms):
        assert y == pytest.approx(true_latency(a), rel=0.1)


def test_cli_fit_show_predict(tmp_path):
    fill(tmp_path, sample_archs(SPACE, 40, seed=6))
    fill(tmp_path, sample_archs(SPACE, 12, seed=7), device="pi")
    runner = CliRunner()

    def cli(*args: str, code: int = 0) -> str:
        res = runner.invoke(main, ["--home", str(tmp_path), "predictor", *args])
        assert res.exit_code == code, res.output + repr(res.exception)
        return res.output

    out = cli("fit", "--device", "dev")
    assert "within ±10 %" in out and "MACs only" in out and "latency-dev-fp32-t1.json" in out
    data = json.loads(cli("fit", "--device", "pi", "--json"))
    assert data["quality"]["samples"] == 12 and "macs_baseline" in data
    out = cli("show")
    assert "dev" in out and "pi" in out and "p90 error" in out
    assert [p["device"] for p in json.loads(cli("show", "--device", "pi", "--json"))] == ["pi"]
    out = cli("predict", "--device", "dev", "--arch", "min", "--arch", "max")
    assert out.count(" ms ±") == 2
    rows = json.loads(cli("predict", "--device", "dev", "--arch", "max", "--json"))
    assert rows[0]["latency_ms"] > 0 and rows[0]["p90_rel_error"] > 0
    assert "no latency predictor" in cli("predict", "--device", "nope", "--arch", "max", code=1)
    assert "no measurements" in cli("fit", "--device", "nope", code=1)


def test_the_predictor_records_its_statistic_and_protocol_and_is_compared_on_it(tmp_path):
    archs = sample_archs(SPACE, 20, seed=8)
    fill(tmp_path, archs)
    with open_store(tmp_path) as store, store.transaction() as conn:
        conn.execute("UPDATE measurements SET result_json = ?",
                     (json.dumps({"edgenas": {"settings": {"runs": 20, "min_secs": 0.3}}}),))
    with open_store(tmp_path) as store:
        med = fit(store, "dev")
        low = fit(store, "dev", save_to=tmp_path, statistic="min")
        with pytest.raises(LatencyPredictorError, match="unknown statistic"):
            fit(store, "dev", statistic="p99")
        row = store.query("SELECT * FROM measurements LIMIT 1")[0]
    assert low.statistic == "min" and med.statistic == "median"
    assert low.protocol == {"runs": 20, "min_secs": 0.3}
    assert low.measured(row) == pytest.approx(0.8 * row["median_ms"])  # the min column, not the median
    assert med.measured(row) == row["median_ms"]
    arch = SPACE.sample(3)
    assert low.predict(SPACE, arch) == pytest.approx(0.8 * med.predict(SPACE, arch), rel=0.02)
    # One predictor per device setting: the saved one is the min one, and asking for another fails.
    assert predictor_path(tmp_path, "dev", "fp32", 1).is_file()
    assert load_predictor(tmp_path, "dev").statistic == "min"
    with pytest.raises(LatencyPredictorError, match="predicts the min run time, not the median"):
        load_predictor(tmp_path, "dev", statistic="median")
    assert measured_latency({"median_ms": 2.0, "mean_ms": None}, "mean") == 2.0  # not reported
