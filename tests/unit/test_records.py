"""edgenas.records: the typed records and the only SQL on ``measurements`` and ``deployments``, against
real SQLite workspace files (the migrations included)."""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from edgenas.device.fanout import DeviceResult
from edgenas.measure.bench import BenchSettings
from edgenas.records import deployments, measurements
from edgenas.records.measurements import Measurement, MeasurementError, Protocol, ResumeKey
from edgenas.records.store import MIGRATIONS, open_store

SETTINGS = {"threads": 1, "runs": 10, "min_secs": 0.2, "warmup_runs": 1, "warmup_secs": 0.05,
            "max_secs": 150.0, "cv_threshold": 0.05, "retries": 1, "xnnpack": True}
PROTOCOL = Protocol.of(SETTINGS)
SRC = "a" * 64


def row(**kw) -> Measurement:
    base = dict(device="pi", arch="r32-a", space="mbv3-tiny", precision="fp32", threads=1,
                runtime="litert", runtime_version="1.2.0", model_sha256="b" * 64, source_sha256=SRC,
                campaign="c-1", median_ms=1.5, p90_ms=1.7, cv=0.01, protocol=PROTOCOL,
                result_json=json.dumps({"median_ms": 1.5, "edgenas": {"settings": SETTINGS}}))
    base.update(kw)
    return Measurement(**base)


def key(**kw) -> ResumeKey:
    base = dict(device_class="pi", space="mbv3-tiny", threads=1, source_sha256=SRC, runtime="litert",
                runtime_version="1.2.0", protocol=PROTOCOL)
    base.update(kw)
    return ResumeKey(**base)


# ------------------------------------------------------------------------------------------ measurements


def test_insert_and_find_round_trip_typed_rows(tmp_path: Path):
    with open_store(tmp_path) as store:
        first = measurements.insert(store, row())
        second = measurements.insert(store, row(device="pc", precision="int8", noisy=True))
        assert first.id is not None and second.id == first.id + 1
        found = measurements.find(store)
        assert found == [first, second]  # every field, protocol and raw JSON included
        assert measurements.find(store, device="pc") == [second]
        assert measurements.find(store, precision="int8", threads=1) == [second]
        assert measurements.find(store, campaign="nope") == []
        flat = second.to_dict()
        assert tuple(flat) == measurements.FIELDS and flat["noisy"] == 1
        assert flat["protocol_runs"] == 10 and flat["xnnpack"] == 1
        assert first.result["edgenas"]["settings"]["runs"] == 10


def test_insert_refuses_a_median_that_is_not_a_latency(tmp_path: Path):
    with open_store(tmp_path) as store:
        for bad in (math.nan, math.inf, -1.0):
            with pytest.raises(MeasurementError, match="refusing to store median"):
                measurements.insert(store, row(median_ms=bad))
        assert measurements.find(store) == []


def test_done_counts_match_only_the_same_runtime_supernet_and_protocol(tmp_path: Path):
    """Each part of the resume key, changed alone, makes a stored row not count as done."""
    with open_store(tmp_path) as store:
        measurements.insert(store, row())
        measurements.insert(store, row())  # a second repeat of the same subnet
        measurements.insert(store, row(arch="r32-b", precision="int8"))
        assert measurements.done_counts(store, key()) == {("r32-a", "fp32"): 2, ("r32-b", "int8"): 1}
        changed = {
            "runtime upgrade": key(runtime_version="1.3.0"),
            "other runtime": key(runtime="tflite_runtime"),
            "other supernet": key(source_sha256="c" * 64),
            "more runs": key(protocol=replace(PROTOCOL, runs=50)),
            "longer minimum": key(protocol=replace(PROTOCOL, min_secs=1.0)),
            "other warm-up runs": key(protocol=replace(PROTOCOL, warmup_runs=3)),
            "other warm-up time": key(protocol=replace(PROTOCOL, warmup_secs=0.5)),
            "without XNNPACK": key(protocol=replace(PROTOCOL, xnnpack=False)),
            "other threads": key(threads=4),
            "other device class": key(device_class="pc"),
            "other space": key(space="mbv3-large"),
        }
        for why, k in changed.items():
            assert measurements.done_counts(store, k) == {}, why
        # The old rows stay: after an upgrade both generations are there, counted apart.
        measurements.insert(store, row(runtime_version="1.3.0"))
        assert measurements.done_counts(store, key(runtime_version="1.3.0")) == {("r32-a", "fp32"): 1}
        assert len(measurements.find(store)) == 4


def test_unknown_runtime_version_matches_only_unknown(tmp_path: Path):
    with open_store(tmp_path) as store:
        measurements.insert(store, row(runtime="benchmark_model", runtime_version=None))
        assert measurements.done_counts(store, key(runtime="benchmark_model", runtime_version=None))
        assert not measurements.done_counts(store, key(runtime="benchmark_model"))


def test_protocol_from_bench_settings_and_stored_json():
    assert Protocol.of(BenchSettings(runs=10, min_secs=0.2, warmup_secs=0.05)) == PROTOCOL
    old = {k: v for k, v in SETTINGS.items() if k != "xnnpack"}  # stored before the XNNPACK switch
    assert Protocol.of(old).xnnpack is True
    assert Protocol.of(BenchSettings(xnnpack=False)).xnnpack is False
    for bad in ({}, {**SETTINGS, "runs": "ten"}, {**SETTINGS, "min_secs": math.nan},
                {**SETTINGS, "warmup_secs": -1}, {**SETTINGS, "xnnpack": "yes"}):
        with pytest.raises(MeasurementError, match="not a bench protocol"):
            Protocol.of(bad)


def test_ranking_queries_and_their_column_whitelist(tmp_path: Path):
    with open_store(tmp_path) as store:
        measurements.insert(store, row(median_ms=2.0, p90_ms=None))
        measurements.insert(store, row(median_ms=1.0, p90_ms=1.2))
        measurements.insert(store, row(precision="int8", median_ms=0.5, p90_ms=0.6,
                                       protocol=replace(PROTOCOL, xnnpack=False)))
        assert measurements.best_by_arch(store, "pi", "fp32", 1, "mbv3-tiny") == [("r32-a", 1.0)]
        assert sorted(measurements.best_by_arch_precision(store, "pi", 1, "mbv3-tiny", "p90_ms")) == \
            [("r32-a", "fp32", 1.2), ("r32-a", "int8", 0.6)]
        assert measurements.best_by_arch_precision(store, "pi", 1, "mbv3-tiny", xnnpack=False) == \
            [("r32-a", "int8", 0.5)]
        assert measurements.medians(store, "pi", "mbv3-tiny", 1) == \
            [("fp32", 2.0), ("fp32", 1.0), ("int8", 0.5)]
        measurements.insert(store, row(device="pc", arch="r32-b"))
        assert measurements.profiles(store, "mbv3-tiny") == \
            [("pc", "fp32", 1, 1), ("pi", "fp32", 1, 1), ("pi", "int8", 1, 1)]
        assert [m.precision for m in measurements.for_predictor(store, "pi", "fp32", 1,
                                                                 xnnpack=True)] == ["fp32", "fp32"]
        with pytest.raises(MeasurementError, match="unknown statistic column"):
            measurements.best_by_arch_precision(store, "pi", 1, "mbv3-tiny", "1); DROP TABLE x; --")


def test_migration_backfills_the_protocol_of_existing_rows(tmp_path: Path):
    """A workspace from before the protocol columns: its rows get them from their result_json, so a
    resumed campaign with the same protocol still skips them; rows without settings never count."""
    ours = next(i for i, m in enumerate(MIGRATIONS) if "protocol_runs" in m)
    old_cols = ("device, arch, space, precision, threads, runtime, runtime_version, model_sha256, "
                "source_sha256, median_ms, result_json, created_at")
    with open_store(tmp_path, MIGRATIONS[:ours]) as store:
        assert store.version == ours
        results = [
            json.dumps({"edgenas": {"settings": SETTINGS}}),
            json.dumps({"edgenas": {"settings": {k: v for k, v in SETTINGS.items() if k != "xnnpack"}}}),
            json.dumps({"edgenas": {"settings": {**SETTINGS, "xnnpack": False}}}),
            json.dumps({"median_ms": 1.0}),  # no settings recorded
            "not json",
        ]
        with store.transaction() as conn:
            for i, result in enumerate(results):
                conn.execute(f"INSERT INTO measurements ({old_cols}) VALUES "
                             "(?, ?, 'mbv3-tiny', 'fp32', 1, 'litert', '1.2.0', ?, ?, 1.0, ?, 0)",
                             ("pi", f"r32-{i}", "b" * 64, SRC, result))
    with open_store(tmp_path) as store:
        assert store.version == len(MIGRATIONS)
        got = {m.arch: m.protocol for m in measurements.find(store)}
        assert got == {"r32-0": PROTOCOL, "r32-1": PROTOCOL, "r32-2": replace(PROTOCOL, xnnpack=False),
                       "r32-3": None, "r32-4": None}
        assert set(measurements.done_counts(store, key())) == {("r32-0", "fp32"), ("r32-1", "fp32")}
        indexes = {r[1] for r in store.query("PRAGMA index_list(measurements)")}
        assert "measurements_resume" in indexes


# ------------------------------------------------------------------------------------------ deployments


def outcome(device: str, status: str = "ok", version: str = "v1", sha: str = "1" * 64,
            model: str = "cls", reason: str | None = None) -> DeviceResult:
    return DeviceResult(device, status, model=model, version=version, sha256=sha, reason=reason)


def test_deployments_record_and_expected_state(tmp_path: Path):
    with open_store(tmp_path) as store:
        first = deployments.record_deployment(store, outcome("pi"), "push", '{"name": "cls"}')
        assert first.id is not None and first.action == "push" and first.model_name == "cls"
        deployments.record_deployment(store, outcome("pi", version="v2", sha="2" * 64), "push", None)
        deployments.record_deployment(store, outcome("pi", "failed", "v3", "3" * 64, reason="boom"),
                                      "push", None)
        want = deployments.expected_state(store, "pi", "cls")
        assert want is not None and (want.version, want.sha256) == ("v2", "2" * 64)  # not the failure
        deployments.record_deployment(store, outcome("pi", version="v1"), "rollback", None)
        assert deployments.expected_state(store, "pi", "cls").action == "rollback"
        assert deployments.expected_state(store, "pi", "other") is None
        assert deployments.expected_state(store, "pc", "cls") is None


def test_deployments_history_latest_names_and_manifest(tmp_path: Path):
    with open_store(tmp_path) as store:
        deployments.record_deployment(store, outcome("pi"), "push", json.dumps({"name": "cls"}))
        deployments.record_deployment(store, outcome("pc", sha="9" * 64), "push", "{broken")
        deployments.record_deployment(store, outcome("pi", model="det", sha="8" * 64), "push", None)
        deployments.record_deployment(store, outcome("pi", "rolled-back", "v2", "7" * 64), "push", None)
        hist = deployments.history(store)
        assert [d.id for d in hist] == sorted((d.id for d in hist), reverse=True)
        assert len(deployments.history(store, device="pi")) == 3
        assert [d.model_name for d in deployments.history(store, "pi", "det")] == ["det"]
        assert len(deployments.history(store, limit=2)) == 2
        assert "manifest_json" not in hist[0].to_dict(manifest=False)
        latest = {(d.device, d.model_name): d.status for d in deployments.latest_per_model(store)}
        assert latest == {("pc", "cls"): "ok", ("pi", "cls"): "rolled-back", ("pi", "det"): "ok"}
        assert deployments.deployed_names(store, "pi") == ["cls", "det"]
        assert deployments.deployed_manifest(store, "1" * 64) == {"name": "cls"}
        assert deployments.deployed_manifest(store, "9" * 64) == {}  # unreadable: nothing trusted
        assert deployments.deployed_manifest(store, "0" * 64) == {}


def test_deployments_refuse_unknown_action_or_status(tmp_path: Path):
    with open_store(tmp_path) as store:
        with pytest.raises(deployments.DeploymentError, match="cannot record"):
            deployments.record_deployment(store, outcome("pi", "skipped"), "push", None)
        with pytest.raises(deployments.DeploymentError):
            deployments.insert(store, deployments.Deployment("pi", "cls", "delete", "ok"))
        assert deployments.history(store) == []


PENDING: set[str] = set()  # nothing left outside the records modules


def test_no_sql_on_these_tables_outside_the_records_modules():
    """The records modules are the only owners: no other library file names the tables in SQL."""
    root = Path(__file__).resolve().parents[2] / "edgenas"
    offenders = []
    for path in root.rglob("*.py"):
        if path.parent.name == "records" or path.name == "store.py":
            continue
        text = path.read_text()
        for table in ("measurements", "deployments"):
            for verb in (f"FROM {table}", f"INTO {table}", f"UPDATE {table}", f"JOIN {table}"):
                if verb in text:
                    offenders.append(f"{path.relative_to(root)}: {verb}")
    assert set(offenders) <= PENDING, sorted(set(offenders) - PENDING)


def test_store_file_is_real_sqlite(tmp_path: Path):
    with open_store(tmp_path) as store:
        measurements.insert(store, row())
    conn = sqlite3.connect(tmp_path / "edgenas.db")
    assert conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0] == 1
    conn.close()
