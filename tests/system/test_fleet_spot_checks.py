"""``fleet bench --per-class N``: spot checks of a fleet grouped into device classes, on local devices.

The fleet: ``fast1``, ``fast2`` and ``slow`` are all registered as class ``pi4`` (``--class``), but
``slow``'s Python runs under ``qemu-x86_64``, a CPU emulator: the same model on the same host, really
executed two orders of magnitude slower, as a board in the wrong class or one that throttles would
be.  ``other`` is class ``pi5`` on its own.  The model is a tiny real TFLite model
(tests/fleet_models.py) pushed for real; every benchmark is a real measurement.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from edgenas.device import registry
from edgenas.fleet.bench import (
    _class_predictors,
    class_summary,
    promised_latency,
    sample_per_class,
)
from edgenas.predictors.latency import LatencyPredictor, feature_names
from edgenas.records.store import open_store
from edgenas.space.spec import SearchSpace
from tests.support import fleet_models, runner_models
from tests.support.cli_runner import Cli

PYTHON = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "python")
QEMU = shutil.which("qemu-x86_64")
FAST = ("--runs", "20", "--min-secs", "0.2", "--warmup-secs", "0.05")
SPACE = "mbv3-tiny"


@pytest.fixture
def fleet(workspace: Path, tmp_path: Path) -> Cli:
    if QEMU is None:
        pytest.fail("qemu-x86_64 is missing: run `make system-packages` as root (Debian qemu-user)")
    slow_python = tmp_path / "slow-python"
    slow_python.write_text(f"#!/bin/sh\n# a slower CPU: the same Python, emulated\n"
                           f"exec {QEMU} {PYTHON} \"$@\"\n")
    slow_python.chmod(0o755)
    cli = Cli(workspace)
    for name, python, cls in (("fast1", PYTHON, "pi4"), ("fast2", PYTHON, "pi4"),
                              ("slow", str(slow_python), "pi4"), ("other", PYTHON, "pi5")):
        cli("device", "add", name, "--local", "--workdir", str(tmp_path / name), "--python", python,
            "--group", "g", "--class", cls)
    return cli


@pytest.fixture
def model_dir(request, tmp_path: Path) -> Path:
    src = runner_models.cached_models(Path(request.config.cache.mkdir("runner_models")))
    space = SearchSpace.load(SPACE)
    # A subnet of a built-in space as the manifest's arch: the class's latency predictor can read it.
    arch = space.sample(random.Random(0)).to_string()
    return fleet_models.make_model_dir(tmp_path / "net", src["fp32"], name="net", precision="fp32",
                                       extra={"space": SPACE, "arch": arch})


def save_class_predictor(home: Path, key: str, ms: float, error: float) -> LatencyPredictor:
    """A latency predictor for class ``key`` that predicts ``ms`` for every subnet (a fitted one whose
    only non-zero cost is the per-invoke constant), saved where ``predictor fit`` saves it."""
    space = SearchSpace.load(SPACE)
    names = feature_names(space, "ops")
    pred = LatencyPredictor(key, "fp32", 1, SPACE, "ops", names,
                            [ms if n == "invoke" else 0.0 for n in names], [1.0] * len(names), 10,
                            {"p90_rel_error": error})
    pred.save(home)
    return pred


def test_sample_per_class_is_per_class_and_repeatable(fleet, workspace):
    with open_store(workspace) as store:
        devices = registry.list_devices(store)
    picks = [[d.name for d in sample_per_class(devices, 1, seed)] for seed in range(12)]
    for pick in picks:
        assert len(pick) == 2 and "other" in pick  # one of pi4's three, and pi5's only device
    assert picks == [[d.name for d in sample_per_class(devices, 1, seed)] for seed in range(12)]
    assert len({p[0] if p[0] != "other" else p[1] for p in picks}) > 1  # the draw does vary
    assert [d.name for d in sample_per_class(devices, 5, 0)] == ["fast1", "fast2", "other", "slow"]
    assert len(sample_per_class(devices, 2, 3)) == 3


def test_promise_lookup_order_name_then_class_then_class_predictor(workspace):
    manifest = {"space": SPACE, "arch": SearchSpace.load(SPACE).smallest().to_string(),
                "search": {"latency_ms": {"pi4": 2.0, "fast1": 1.0}, "error": {"pi4": 0.3}}}
    assert promised_latency(manifest, "fast1", None, "pi4").ms == 1.0  # the device's own promise
    by_class = promised_latency(manifest, "fast2", None, "pi4")
    assert (by_class.ms, by_class.error, by_class.source) == (2.0, 0.3, "manifest")
    assert promised_latency(manifest, "x", None, "pi5") is None
    save_class_predictor(workspace, "pi5", 4.5, 0.2)
    get = _class_predictors(workspace, threads=1)
    assert get("pi5", "int8") is None and get("pi4", "fp32") is None
    got = promised_latency(manifest, "x", get("pi5", "fp32"), "pi5")
    assert got is not None and (got.ms, got.error, got.source) == (pytest.approx(4.5), 0.2,
                                                                  "latency predictor")


def test_spot_check_samples_classes_and_flags_the_slow_device_of_a_class(fleet, workspace, model_dir):
    # What the class runs at: measured on one device of pi4 (this also writes the model's latency).
    first = fleet.json("fleet", "bench", str(model_dir), "--device", "fast1", *FAST)
    fast_ms = first["rows"][0]["median_ms"]
    assert first["rows"][0]["class"] == "pi4" and fast_ms > 0
    # The promise as `fleet specialize` writes it: keyed by class, not by device.  Class pi5 has no
    # promise in the manifest: its saved latency predictor promises 1000x the real latency.
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["search"] = {"latency_ms": {"pi4": fast_ms}, "error": {"pi4": 1.0}}
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    save_class_predictor(workspace, "pi5", fast_ms * 1000, 0.25)
    pushed = fleet.json("fleet", "push", str(model_dir), "--group", "g")
    assert sorted(r["status"] for r in pushed["results"]) == ["ok"] * 4

    out = fleet("fleet", "bench", "--group", "g", "--name", "net", "--per-class", "1", "--seed", "7",
                *FAST)
    assert "seed 7" in out
    assert "class pi4: 1/3 devices measured" in out and "class pi5: 1/1 devices measured" in out

    spot = fleet.json("fleet", "bench", "--group", "g", "--name", "net", "--per-class", "3", *FAST)
    rows = {r["device"]: r for r in spot["rows"]}
    assert sorted(rows) == ["fast1", "fast2", "other", "slow"]
    assert {d: r["class"] for d, r in rows.items()} == {
        "fast1": "pi4", "fast2": "pi4", "slow": "pi4", "other": "pi5"}
    for dev in ("fast1", "fast2", "slow"):  # held to the promise keyed by their class
        assert rows[dev]["predicted_ms"] == fast_ms and rows[dev]["prediction_source"] == "manifest"
    slow, fast = rows["slow"], [rows["fast1"], rows["fast2"]]
    assert slow["median_ms"] > 5 * max(r["median_ms"] for r in fast)  # emulated: really slower
    assert slow["class_drift"] and slow["drift"] and slow["class_delta"] > 1.0
    assert slow["class_median_ms"] == max(r["median_ms"] for r in fast)  # the middle of three
    for r in fast:
        assert not r["class_drift"] and abs(r["class_delta"]) <= 1.0
    assert rows["other"]["prediction_source"] == "latency predictor"
    assert rows["other"]["predicted_ms"] == pytest.approx(fast_ms * 1000)
    assert rows["other"]["promise_drift"] and rows["other"]["drift"]  # 1000x faster than promised
    assert rows["other"]["class_median_ms"] is None  # a class of one has no median to be off from
    summary = {c["class"]: c for c in spot["classes"]}
    assert (summary["pi4"]["measured"], summary["pi4"]["total"]) == (3, 3)
    assert "slow" in summary["pi4"]["drift"] and summary["pi4"]["worst_class_delta"] > 1.0
    assert summary["pi5"]["drift"] == ["other"] and summary["pi5"]["worst_delta"] < -0.9
    with open_store(workspace) as store:  # the measurements belong to the devices' classes
        stamped = dict(tuple(r) for r in store.query(
            "SELECT device, device_class FROM measurements WHERE campaign = ?", (spot["rows"][0]
                                                                                 ["campaign"],)))
    assert stamped == {"fast1": "pi4", "fast2": "pi4", "slow": "pi4", "other": "pi5"}
    assert class_summary(spot["rows"])[0]["class"] == "pi4"
