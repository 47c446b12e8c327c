"""A campaign's plan (edgenas.measure.plan): pure rules, tested without a device or a database."""

from __future__ import annotations

import pytest

from edgenas.measure.plan import (
    DeviceTarget,
    MeasureError,
    campaign_id,
    needed_jobs,
    plan_devices,
    sample_archs,
)
from edgenas.space.spec import SearchSpace

JOBS = [("a1", "fp32"), ("a1", "int8"), ("a2", "fp32"), ("a2", "int8")]
RT = ("litert", "2.3.0")


def test_one_device_measures_for_its_class_and_an_unreachable_one_is_reported():
    targets = [DeviceTarget("dead", "pi4", "connection refused"), DeviceTarget("p1", "pi4", RT),
               DeviceTarget("p2", "pi4", RT), DeviceTarget("x", "host", RT)]
    plans = plan_devices(JOBS, targets, 1, lambda t: {})
    assert plans["dead"].aborted == "connection refused" and not plans["dead"].todo
    assert plans["p1"].left == 4 and plans["p2"].served_by == "p1" and not plans["p2"].todo
    assert plans["x"].left == 4


def test_stored_measurements_are_not_taken_again_and_repeats_top_up():
    done = {"p1": {("a1", "fp32"): 2, ("a2", "fp32"): 1}}
    plans = plan_devices(JOBS, [DeviceTarget("p1", "pi4", RT)], 2, lambda t: done[t.name])
    assert plans["p1"].todo == {("a1", "int8"): 2, ("a2", "fp32"): 1, ("a2", "int8"): 2}
    assert plans["p1"].already == 1 and plans["p1"].left == 5


def test_only_jobs_some_device_still_needs_are_exported():
    done = {"p1": {j: 1 for j in JOBS[:3]}, "x": {JOBS[0]: 1}}
    plans = plan_devices(JOBS, [DeviceTarget("p1", "pi4", RT), DeviceTarget("x", "host", RT)], 1,
                         lambda t: done[t.name])
    assert needed_jobs(JOBS, plans) == JOBS[1:]
    assert needed_jobs(JOBS, plan_devices(JOBS, [DeviceTarget("d", "c", "down")], 1, dict)) == []


def test_repeats_below_one_are_refused():
    with pytest.raises(MeasureError, match="at least 1"):
        plan_devices(JOBS, [], 0, lambda t: {})


def test_sampling_repeats_for_a_seed_covers_the_extremes_and_ids_differ_by_setting():
    space = SearchSpace.load("mbv3-tiny")
    first, again = sample_archs(space, 12, seed=3), sample_archs(space, 12, seed=3)
    assert [a.to_string() for a in first] == [a.to_string() for a in again]
    assert len({a.to_string() for a in first}) == 12
    assert first[0] == space.smallest() and first[1] == space.largest()
    assert {a.resolution for a in first} == set(space.resolutions)
    assert sample_archs(space, 12, seed=4) != first
    base = campaign_id("s" * 64, "mbv3-tiny", 12, 3, ["fp32"], 1)
    assert base != campaign_id("s" * 64, "mbv3-tiny", 12, 3, ["fp32"], 2)
    assert base != campaign_id("s" * 64, "mbv3-tiny", 12, 3, ["fp32"], 1, repeats=2)
