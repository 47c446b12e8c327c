"""Device classes (edgenas.records.classes): derived from the probe, named by the user, stamped on every
measurement, shared by the predictors — against real SQLite workspace files and the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgenas.device import registry
from edgenas.records import classes, measurements
from edgenas.records.measurements import Measurement, Protocol
from edgenas.records.store import MIGRATIONS, open_store
from tests.support.cli_runner import Cli

SETTINGS = {"runs": 10, "min_secs": 0.2, "warmup_runs": 1, "warmup_secs": 0.05, "xnnpack": True}


def probe(cpu: str = "Cortex-A72", cores: int = 4, arch: str = "aarch64", runtime: str = "litert",
          version: str = "2.3.0") -> dict:
    return {"arch": arch, "cpu_model": cpu, "cores": cores, "runtime": runtime,
            "runtimes": {runtime: {"installed": True, "importable": True, "version": version}}}


def add(store, name: str, **kw) -> registry.Device:
    return registry.add_device(store, registry.make_device(name, "local", home=Path("/tmp"), **kw))


def row(device: str, arch: str = "r32-a", device_class: str | None = None) -> Measurement:
    return Measurement(device=device, device_class=device_class, arch=arch, space="mbv3-tiny",
                       precision="fp32", threads=1, runtime="litert", runtime_version="2.3.0",
                       model_sha256="b" * 64, source_sha256="a" * 64, campaign="c", median_ms=1.0,
                       protocol=Protocol.of(SETTINGS),
                       result_json=json.dumps({"edgenas": {"settings": SETTINGS}}))


def test_a_class_is_what_makes_latency_the_same():
    base = classes.facts_of(probe())
    key = classes.derived_key(base)
    assert key == "aarch64-cortex-a72-4c-litert-2.3.0"
    same_board_other_name = classes.derived_key(classes.facts_of(probe()))
    assert same_board_other_name == key
    differs = {
        "cpu": probe(cpu="Cortex-A76"), "cores": probe(cores=2), "arch": probe(arch="armv7l"),
        "runtime": probe(runtime="tflite_runtime"), "version": probe(version="2.4.0"),
    }
    for why, p in differs.items():
        assert classes.derived_key(classes.facts_of(p)) != key, why
    assert classes.derived_key(classes.facts_of(probe(), xnnpack=False)).endswith("-noxnnpack")
    # Marketing words go; a long name is shortened with a hash, still unique and safe.
    x86 = classes.derived_key(classes.facts_of(probe(
        cpu="Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz", arch="x86_64", cores=2)))
    assert x86 == "x86_64-intel-xeon-platinum-8480-2c-litert-2.3.0"
    long = classes.derived_key(classes.facts_of(probe(cpu="A" * 120)))
    assert len(long) <= classes.MAX_KEY and classes.validate_class(long)
    assert long != classes.derived_key(classes.facts_of(probe(cpu="A" * 119)))


def test_probe_values_of_the_wrong_type_count_as_unknown():
    lying = {"arch": ["x"] * 3, "cpu_model": "Cortex-A72", "cores": "4; rm -rf /",
             "runtime": {"a": 1}, "runtimes": "no"}
    facts = classes.facts_of(lying)
    assert facts == classes.ClassFacts(None, "Cortex-A72", None, None, None, True)
    assert classes.validate_class(classes.derived_key(facts))
    assert classes.facts_of(None) is None and classes.facts_of({"cores": 4}) is None
    for bad in ("../x", "a/b", "", "-x", "x" * 65, "a b"):
        with pytest.raises(classes.ClassError):
            classes.validate_class(bad)


def test_unprobed_devices_are_classes_of_their_own_and_the_user_can_name_one(tmp_path: Path):
    with open_store(tmp_path) as store:
        a, b = add(store, "a"), add(store, "b")
        assert classes.class_of(a) == "a" and classes.class_of(b) == "b"
        for name in ("a", "b"):
            registry.save_probe(store, name, probe())
        a, b = registry.get_device(store, "a"), registry.get_device(store, "b")
        assert classes.class_of(a) == classes.class_of(b) == "aarch64-cortex-a72-4c-litert-2.3.0"
        assert "Cortex-A72 ×4" in classes.how(a)
        registry.set_device_class(store, ["b"], "pi4-lab")
        b = registry.get_device(store, "b")
        assert classes.class_of(b) == "pi4-lab" and classes.how(b) == "set by the user"
        assert list(classes.by_class(registry.list_devices(store))) == [
            "aarch64-cortex-a72-4c-litert-2.3.0", "pi4-lab"]
        with pytest.raises(classes.ClassError):
            registry.set_device_class(store, ["b"], "../etc")


def test_first_probe_adopts_unprobed_rows_and_a_later_change_leaves_them(tmp_path: Path):
    with open_store(tmp_path) as store:
        add(store, "pi")
        measurements.insert(store, row("pi", "r32-a", device_class="pi"))  # measured unprobed
        registry.save_probe(store, "pi", probe())
        pi4 = classes.class_of(registry.get_device(store, "pi"))
        assert [m.device_class for m in measurements.find(store)] == [pi4]
        measurements.insert(store, row("pi", "r32-b", device_class=pi4))
        registry.save_probe(store, "pi", probe(version="2.4.0"))  # a runtime upgrade: a new class
        upgraded = classes.class_of(registry.get_device(store, "pi"))
        assert upgraded != pi4
        assert {m.arch: m.device_class for m in measurements.find(store)} == {"r32-a": pi4,
                                                                               "r32-b": pi4}


def test_rows_of_any_device_in_the_class_count_as_done(tmp_path: Path):
    with open_store(tmp_path) as store:
        for name in ("pi-1", "pi-2"):
            add(store, name)
            registry.save_probe(store, name, probe())
        klass = classes.class_of(registry.get_device(store, "pi-2"))
        measurements.insert(store, row("pi-1", device_class=klass))
        key = measurements.ResumeKey(klass, "mbv3-tiny", 1, "a" * 64, "litert", "2.3.0",
                                     Protocol.of(SETTINGS))
        assert measurements.done_counts(store, key) == {("r32-a", "fp32"): 1}
        assert [m.device for m in measurements.for_predictor(store, klass, "fp32", 1)] == ["pi-1"]
        # A row stored without a class (raw SQL, an old tool) is a class of its own device.
        with store.transaction() as conn:
            conn.execute("INSERT INTO measurements (device, arch, precision, threads, model_sha256, "
                         "median_ms, result_json, created_at) VALUES ('x', 'r32-a', 'fp32', 1, 'b', "
                         "1.0, '{}', 0)")
        assert [m.device_class for m in measurements.find(store, device="x")] == ["x"]


def test_the_migration_stamps_old_rows_with_the_class_of_their_probed_device(tmp_path: Path):
    ours = next(i for i, m in enumerate(MIGRATIONS) if "device_class" in m)
    with open_store(tmp_path, MIGRATIONS[:ours]) as store:
        with store.transaction() as conn:
            conn.execute("INSERT INTO devices (name, kind, created_at, updated_at, probe_json) "
                         "VALUES ('pi', 'local', 0, 0, ?), ('new', 'local', 0, 0, NULL)",
                         (json.dumps(probe()),))
            for device in ("pi", "new", "gone"):
                conn.execute("INSERT INTO measurements (device, arch, precision, threads, "
                             "model_sha256, median_ms, result_json, created_at) "
                             "VALUES (?, 'r32-a', 'fp32', 1, 'b', 1.0, '{}', 0)", (device,))
    with open_store(tmp_path) as store:
        got = {m.device: m.device_class for m in measurements.find(store)}
        assert got == {"pi": "aarch64-cortex-a72-4c-litert-2.3.0", "new": "new", "gone": "gone"}


def test_cli_shows_and_sets_classes(tmp_path: Path):
    cli = Cli(tmp_path / "ws")
    cli("device", "add", "a", "--local", "--class", "lab-x86")
    cli("device", "add", "b", "--local")
    listed = cli("device", "list")
    assert "class" in listed.splitlines()[0] and "lab-x86" in listed
    shown = json.loads(cli("device", "list", "--json"))
    assert {d["name"]: d["class"] for d in shown} == {"a": "lab-x86", "b": "b"}
    cli("device", "set-class", "b", "lab-x86")
    assert {d["name"]: d["class"] for d in json.loads(cli("device", "list", "--json"))} == {
        "a": "lab-x86", "b": "lab-x86"}
    cli("device", "set-class", "b", "--derived")
    assert "not probed yet" in cli("device", "show", "b")
    assert "invalid device class" in cli("device", "add", "c", "--local", "--class", "../x", code=2)
