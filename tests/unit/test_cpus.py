"""CPU sets (big.LITTLE core selection): parsing, the class they make, the probe's core listing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edgenas.core.errors import DeviceError
from edgenas.device import registry
from edgenas.device.inventory import load_inventory
from edgenas.device.probe import cpu_clusters
from edgenas.measure.bench import BenchSettings, _cpu_mask, for_device, pinned
from edgenas.records import classes
from edgenas.records.classes import class_of, cpu_list, parse_cpu_set, pinned_class
from edgenas.records.store import open_store

PROBE = {"arch": "aarch64", "cpu_model": "Cortex-A76", "cores": 8, "runtime": "litert",
         "runtimes": {"litert": {"version": "2.3.0"}}}


def test_cpu_sets_parse_as_taskset_writes_them():
    assert parse_cpu_set("4-7") == "4-7"
    assert parse_cpu_set("7,4,5,6") == "4-7"
    assert parse_cpu_set("0, 2-3,9") == "0,2-3,9"
    assert parse_cpu_set(3) == "3"
    assert cpu_list("0,2-3") == [0, 2, 3]
    assert _cpu_mask("4-7") == "f0" and _cpu_mask("0") == "1"
    for bad in ("", "a", "3-1", "1-", "-1", "4096", True, None, "1;2"):
        with pytest.raises(ValueError):
            parse_cpu_set(bad)


def test_a_pinned_device_is_another_class_derived_or_named(tmp_path):
    dev = registry.make_device("rk", "ssh", home=tmp_path, host="h")
    dev.probe = PROBE
    base = class_of(dev)
    big = replace(dev, cpus="4-7")
    assert class_of(big) == f"{base}-cpus4-7" and class_of(replace(dev, cpus="0,2")) == f"{base}-cpus0_2"
    assert class_of(replace(big, device_class="rk3588")) == "rk3588-cpus4-7"
    assert "on CPUs 4-7" in classes.how(big)
    long = pinned_class("x" * 64, "0-3,8-11")
    assert len(long) <= 64 and classes.validate_class(long) == long
    assert pinned_class("x" * 64, "0-3,8-11") != pinned_class("x" * 64, "0-3,8-12")


def test_settings_follow_the_devices_set_and_bench_cpus_overrides_it(tmp_path):
    dev = registry.make_device("pi", "ssh", home=tmp_path, host="h", cpus="5,4")
    assert dev.cpus == "4-5"
    s = for_device(dev, BenchSettings())
    assert s.cpus == "4-5" and s.argv()[-2:] == ["--cpu-affinity", "4-5"]
    assert for_device(pinned(dev, "0"), BenchSettings()).cpus == "0"
    assert "--cpu-affinity" not in for_device(replace(dev, cpus=None), BenchSettings()).argv()
    with pytest.raises(DeviceError, match="CPU set"):
        registry.make_device("pi", "ssh", home=tmp_path, host="h", cpus="x")
    with open_store(tmp_path) as store:
        registry.add_device(store, dev)
        assert registry.get_device(store, "pi").cpus == "4-5"


def test_inventory_edgenas_cpus(tmp_path):
    inv = tmp_path / "hosts.ini"
    inv.write_text("[boards]\nrock ansible_host=10.0.0.9 edgenas_cpus=4-7\n"
                   "bad ansible_host=10.0.0.8 edgenas_skip=true edgenas_cpus=x\n")
    (dev,) = load_inventory(inv, home=tmp_path, ssh_config=Path("/nonexistent"))
    assert dev.cpus == "4-7"
    inv.write_text("[boards]\nrock ansible_host=10.0.0.9 edgenas_cpus=7-4\n")
    with pytest.raises(DeviceError, match="host rock: edgenas_cpus"):
        load_inventory(inv, home=tmp_path, ssh_config=Path("/nonexistent"))


def test_probe_lists_core_clusters_from_untrusted_topology():
    topo = [{"cpu": i, "max_khz": 1800000 if i < 4 else 2400000, "capacity": 446 if i < 4 else 1024}
            for i in range(8)]
    assert cpu_clusters(topo) == "0-3 1800 MHz cap 446; 4-7 2400 MHz cap 1024"
    assert cpu_clusters([{"cpu": 0, "max_khz": None, "capacity": None}]) == "0"
    assert cpu_clusters("garbage") is None
    assert cpu_clusters([{"cpu": True}, {"cpu": 1, "max_khz": "fast", "capacity": -3}, 7]) == "1"
