"""``edgenas fleet`` against local devices (no test fleet needed): the layout, idempotence, rollback,
drift, the failure limit, a full disk, and the errors users see for bad input."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from edgenas.device import registry
from edgenas.device.fanout import DeviceResult, fan_out
from edgenas.device.session import DeviceSession
from edgenas.export.package import ModelPackage
from edgenas.fleet.common import FleetError, validate_model_name
from edgenas.fleet.push import push_one
from edgenas.fleet.state import read_state
from edgenas.records.store import open_store
from tests.support import fleet_models
from tests.support.cli_runner import Cli

PYTHON = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "python")


@pytest.fixture(scope="module")
def models(request, tmp_path_factory) -> dict[str, Path]:
    cache = Path(request.config.cache.mkdir("runner_models"))
    return fleet_models.model_set(tmp_path_factory.mktemp("fleet-models"), cache, big_bytes=3 << 20)


@pytest.fixture
def cli(workspace: Path, tmp_path: Path) -> Cli:
    c = Cli(workspace)
    for name in ("here1", "here2"):
        c("device", "add", name, "--local", "--workdir", str(tmp_path / name), "--python", PYTHON,
          "--group", "bench")
    return c


def current(tmp_path: Path, dev: str) -> Path:
    return tmp_path / dev / "models" / "net" / "current"


def test_push_status_rollback_on_local_devices(cli, models, tmp_path):
    v1, v2 = ModelPackage.open(models["v1"]), ModelPackage.open(models["v2"])
    out = cli.json("fleet", "push", str(models["v1"]), "--group", "bench")
    assert [r["status"] for r in out["results"]] == ["ok", "ok"]
    assert out["version"] == v1.sha256[:12]
    for dev in ("here1", "here2"):
        link = current(tmp_path, dev)
        assert os.readlink(link) == v1.version and fleet_models.sha(link / "model.tflite") == v1.sha256
        assert (tmp_path / dev / "runner.pyz").is_file()

    again = cli.json("fleet", "push", str(models["v1"]), "--group", "bench")
    assert [(r["status"], r["bytes_sent"]) for r in again["results"]] == [("unchanged", 0)] * 2

    cli("fleet", "push", str(models["v2"]), "--device", "here1")
    rows = {r["device"]: r for r in cli.json("fleet", "status")}
    assert rows["here1"]["sha256"] == v2.sha256 and rows["here1"]["previous"] == v1.version
    assert rows["here2"]["sha256"] == v1.sha256 and not any(r["drift"] for r in rows.values())

    out = cli.json("fleet", "rollback", "--device", "here1")
    assert out["results"][0]["sha256"] == v1.sha256
    assert os.readlink(current(tmp_path, "here1")) == v1.version
    assert os.readlink(current(tmp_path, "here1").with_name("previous")) == v2.version
    table = cli("fleet", "status")
    assert "DRIFT" not in table and table.count(v1.version) >= 2

    history = cli.json("fleet", "history")
    assert [h["action"] for h in history][:1] == ["rollback"]
    assert {h["status"] for h in history} == {"ok", "unchanged"}


def test_status_flags_a_model_changed_on_the_device(cli, models, tmp_path):
    cli("fleet", "push", str(models["v1"]), "--group", "bench")
    target = current(tmp_path, "here2") / "model.tflite"
    target.write_bytes(target.read_bytes() + b"tampered")
    out = cli("fleet", "status", code=1)
    assert "DRIFT current model file was modified on the device" in out
    # A push repairs it: the damaged version folder is replaced by a checked upload.
    pushed = cli.json("fleet", "push", str(models["v1"]), "--device", "here2")
    assert pushed["results"][0]["status"] == "ok"
    assert "DRIFT" not in cli("fleet", "status")


def test_failure_limit_skips_devices_not_started(cli, models, workspace):
    for name in ("dead1", "dead2"):  # nothing listens on port 9: refused at once
        cli("device", "add", name, "--ssh", "nobody@127.0.0.1:9", "--group", "bench", "--timeout", "2")
    out = cli.json("fleet", "push", str(models["v1"]), "--group", "bench", "--parallel", "1",
                   "--max-fail-percent", "20", code=3)
    got = {r["device"]: r for r in out["results"]}
    assert got["dead1"]["status"] == "failed" and "connection refused" in got["dead1"]["reason"]
    assert {got[d]["status"] for d in ("dead2", "here1", "here2")} == {"skipped"}
    # Without a limit every device is tried; the run still exits non-zero and says which failed.
    out = cli("fleet", "push", str(models["v1"]), "--group", "bench", code=1)
    assert "dead2" in out and "push failed on 2 of 4 devices" in out and out.count(" ok ") == 2
    with open_store(workspace) as store:
        rows = store.query("SELECT device, status FROM deployments")
    assert ("dead1", "failed") in {(r["device"], r["status"]) for r in rows}


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_disk_keeps_the_previous_version(cli, models, tmp_path, workspace):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "edgenas-test", str(small)], check=True)
    try:
        cli("device", "add", "tiny", "--local", "--workdir", str(small / "wd"), "--python", PYTHON)
        cli("fleet", "push", str(models["v1"]), "--device", "tiny")
        out = cli("fleet", "push", str(models["big2"]), "--device", "tiny", code=1)
        assert "not enough space on the device" in out and "previous version stays current" in out
        # the staging folder the state read made for it is gone again
        assert not [p for p in os.listdir(small / "wd/models/net") if p.startswith(".incoming")]
        v1 = ModelPackage.open(models["v1"])
        assert os.readlink(small / "wd/models/net/current") == v1.version
        # Past the free-space check (another writer filled the disk meanwhile): ENOSPC mid-upload.
        with open_store(workspace) as store:
            dev = registry.get_device(store, "tiny")
        result = push_one(dev, workspace, ModelPackage.open(models["big2"]), "net", check_space=False)
        assert result.status == "failed" and "ran out of space" in result.reason, result.reason
        assert os.readlink(small / "wd/models/net/current") == v1.version
        assert not [p for p in os.listdir(small / "wd/models/net") if p.startswith(".incoming")]
        assert "DRIFT" not in cli("fleet", "status", "--device", "tiny")
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_state_read_makes_the_staging_folder_only_when_the_version_must_be_uploaded(
        cli, models, tmp_path, workspace):
    """A push's mkdir rides on its state read (one round trip less per device): the folder is made,
    and reported, only when the version is not already on the device with that sha256; leftovers
    of an earlier upload are removed."""
    v1 = ModelPackage.open(models["v1"])
    with open_store(workspace) as store:
        dev = registry.get_device(store, "here1")
    net = tmp_path / "here1" / "models" / "net"
    with DeviceSession(workspace, dev) as session, session.locked():
        state = read_state(session, "net", version=v1.version, create=True,
                           stage=(".incoming-aaaa", v1.sha256))
        assert state.staged == ".incoming-aaaa" and (net / ".incoming-aaaa").is_dir()
        state = read_state(session, "net", version=v1.version, create=True,
                           stage=(".incoming-bbbb", v1.sha256))
        assert state.staged == ".incoming-bbbb"
        assert sorted(p.name for p in net.iterdir()) == [".incoming-bbbb"]  # the old one dropped
    assert push_one(dev, workspace, v1, "net").status == "ok"
    with DeviceSession(workspace, dev) as session, session.locked():
        state = read_state(session, "net", version=v1.version, create=True,
                           stage=(".incoming-cccc", v1.sha256))
        assert state.staged is None and state.target_sha256 == v1.sha256
        state = read_state(session, "net", version=v1.version, create=True,  # damaged copy: upload
                           stage=(".incoming-dddd", "0" * 64))
        assert state.staged == ".incoming-dddd"
    assert not (net / ".incoming-cccc").exists()


def test_bad_model_folders_and_names_are_clear_errors(cli, models, tmp_path):
    out = cli("fleet", "push", str(tmp_path), "--group", "bench", code=1)
    assert "manifest.json: missing" in out
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.tflite").write_bytes((models["v1"] / "model.tflite").read_bytes() + b"x")
    (broken / "manifest.json").write_text((models["v1"] / "manifest.json").read_text())
    out = cli("fleet", "push", str(broken), "--group", "bench", code=1)
    assert "file changed or truncated" in out and "refusing to push" in out
    out = cli("fleet", "push", str(models["v1"]), code=2)
    assert "--group GROUP or --device NAME" in out
    out = cli("fleet", "push", str(models["v1"]), "--group", "nope", code=1)
    assert "no devices in group 'nope'" in out
    out = cli("fleet", "push", str(models["v1"]), "--group", "bench", "--name", "../x", code=1)
    assert "invalid model name" in out
    out = cli("fleet", "rollback", "--group", "bench", code=1)
    assert "the device holds 0 models" in out
    with pytest.raises(FleetError, match="reserved"):
        validate_model_name("cache")


def test_fan_out_bounds_parallelism_and_keeps_order():
    import threading
    import time

    from edgenas.device.registry import Device

    live, peak, lock = [0], [0], threading.Lock()

    def work(dev: Device, cancel: object) -> DeviceResult:
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.05)
        with lock:
            live[0] -= 1
        if dev.name == "d3":
            raise RuntimeError("boom")
        return DeviceResult(dev.name, "ok")

    devices = [Device(f"d{i}", "local") for i in range(8)]
    outcome = fan_out(devices, work, parallel=3, max_fail_percent=100)
    assert peak[0] == 3
    assert [r.device for r in outcome.results] == [d.name for d in devices]
    assert outcome.results[3].status == "failed" and "boom" in outcome.results[3].reason
    assert outcome.failures == 1 and not outcome.limit_reached


def test_promised_latency_and_drift_band():
    from edgenas.fleet.bench import DEFAULT_ERROR_BAND, compare, promised_latency

    manifest = {"search": {"latency_ms": {"pi": 20.0, "phone": 8.0}, "error": {"pi": 0.05}}}
    pi = promised_latency(manifest, "pi")
    assert pi is not None and (pi.ms, pi.error) == (20.0, 0.05)
    assert compare(20.9, pi) == (pytest.approx(0.045), False)
    assert compare(21.5, pi)[1] and compare(18.0, pi)[1]
    phone = promised_latency(manifest, "phone")
    assert phone is not None and phone.error == DEFAULT_ERROR_BAND and "default" in phone.source
    assert promised_latency(manifest, "other") is None
    nested = {"provenance": {"search": {"latency_ms": {"pi": 3.0}, "error": 0.2}}}
    assert promised_latency(nested, "pi").error == 0.2

    class Predictor:
        error = 0.07

        def predict(self, space, arch):
            return 12.5

    got = promised_latency({"arch": "a", "space": "s"}, "pi", Predictor())
    assert (got.ms, got.error, got.source) == (12.5, 0.07, "latency predictor")


def _validate(value, schema: dict, root: dict, where: str = "$") -> list[str]:
    """The JSON Schema subset deploy/manifest.schema.json uses (no dependency on jsonschema)."""
    import re

    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].split("/")[-1]]
    errors: list[str] = []
    if "oneOf" in schema:
        matches = [s for s in schema["oneOf"] if not _validate(value, s, root, where)]
        return [] if len(matches) == 1 else [f"{where}: matches {len(matches)} of oneOf"]
    types = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float),
             "boolean": bool, "null": type(None)}
    if "type" in schema:
        wanted = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(isinstance(value, types[t]) for t in wanted):
            return [f"{where}: not {wanted}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, dict):
        errors += [f"{where}: missing {k}" for k in schema.get("required", []) if k not in value]
        for key, sub in value.items():
            if key in schema.get("properties", {}):
                errors += _validate(sub, schema["properties"][key], root, f"{where}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += _validate(sub, schema["additionalProperties"], root, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += _validate(item, schema["items"], root, f"{where}[{i}]")
    return errors


def test_manifest_schema_accepts_shipped_manifests_and_rejects_broken_ones(models, tmp_path, cli):
    root = Path(__file__).resolve().parents[2]
    schema = json.loads((root / "deploy" / "manifest.schema.json").read_text())
    for key in ("v1", "big2"):
        manifest = json.loads((models[key] / "manifest.json").read_text())
        assert _validate(manifest, schema, schema) == []
    # A manifest after `fleet bench DIR` (measured latency) and with the search's promise still fits.
    manifest["latency"] = {"pi": {"median_ms": 3.2, "p90_ms": 3.4, "cv": 0.01, "noisy": 0,
                                  "threads": 1, "runtime": "litert", "runtime_version": "2.3.0",
                                  "peak_rss_kib": 51234, "created_at": 1.0}}
    manifest["search"] = {"latency_ms": {"pi": 3.0}, "error": {"pi": 0.08}}
    assert _validate(manifest, schema, schema) == []
    broken = dict(manifest, precision="int4", model={"file": "m.tflite", "sha256": "xyz"})
    del broken["labels"]
    errors = " ".join(_validate(broken, schema, schema))
    assert "missing labels" in errors and "int4" in errors and "sha256" in errors


def test_switch_works_without_mv_T_and_sha256sum(cli, models, tmp_path, monkeypatch):
    """Old busybox/toybox: no `mv -T`, no sha256sum.  The device's Python does the rename and hashing."""
    bin_dir = tmp_path / "oldbox"
    bin_dir.mkdir()
    (bin_dir / "mv").write_text('#!/bin/sh\nfor a; do [ "$a" = -T ] && { echo "mv: bad option -T" >&2; '
                                'exit 1; }; done\nexec /bin/mv "$@"\n')
    (bin_dir / "sha256sum").write_text('#!/bin/sh\necho "sha256sum: applet not found" >&2\nexit 127\n')
    for tool in ("mv", "sha256sum"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    v1, v2 = ModelPackage.open(models["v1"]), ModelPackage.open(models["v2"])
    cli("fleet", "push", str(models["v1"]), "--device", "here1")
    cli("fleet", "push", str(models["v2"]), "--device", "here1")
    link = current(tmp_path, "here1")
    assert os.readlink(link) == v2.version and os.readlink(link.with_name("previous")) == v1.version
    rows = cli.json("fleet", "status", "--device", "here1")
    assert rows[0]["sha256"] == v2.sha256 and rows[0]["previous_sha256"] == v1.sha256
    assert cli.json("fleet", "rollback", "--device", "here1")["results"][0]["sha256"] == v1.sha256
