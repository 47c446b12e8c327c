"""Core selection on this machine: a benchmark pinned to one core records the set it ran on, and its
rows form another device class than the same device's unpinned ones."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edgenas.records.store import open_store
from tests.support import fleet_models
from tests.support.cli_runner import Cli


@pytest.fixture(scope="module")
def model(request, tmp_path_factory) -> Path:
    cache = Path(request.config.cache.mkdir("runner_models"))
    return fleet_models.model_set(tmp_path_factory.mktemp("cpus-models"), cache, big_bytes=0)["v1"]


def test_a_bench_pinned_to_one_core_records_it_and_is_another_class(model, workspace):
    core = max(os.sched_getaffinity(0))  # a core this process may use, so the runner may too
    cli = Cli(workspace)
    cli("device", "add", "here", "--local")
    probe = cli.json("device", "probe", "here")["here"]
    assert probe["cpu_clusters"].startswith("0")  # every core listed, with what the kernel says
    args = ["bench", str(model), "--device", "here", "--runs", "5", "--min-secs", "0.05"]
    free = cli.json(*args)
    pinned = cli.json(*args, "--cpus", str(core))
    assert free["cpus"] is None and pinned["cpus"] == str(core)
    assert pinned["device_class"] == f"{free['device_class']}-cpus{core}"
    with open_store(workspace) as store:
        rows = store.query("SELECT cpus, device_class, result_json FROM measurements ORDER BY id")
    assert [r["cpus"] for r in rows] == [None, str(core)]
    assert json.loads(rows[1]["result_json"])["cpu_affinity"] == [core]  # what the runner ran on
    assert len(json.loads(rows[0]["result_json"])["cpu_affinity"]) == len(os.sched_getaffinity(0))

    # A device registered on that core measures there every time, in the pinned class.
    cli("device", "add", "here-pinned", "--local", "--cpus", str(core))
    again = cli.json("bench", str(model), "--device", "here-pinned", "--runs", "5", "--min-secs",
                     "0.05")
    assert again["cpus"] == str(core) and again["device_class"].endswith(f"-cpus{core}")
    assert "--cpus" in cli("bench", str(model), "--device", "here", "--cpus", "3-1", code=2)
