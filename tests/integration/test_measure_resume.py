"""Resuming a campaign (issue 12, item 11): a stored measurement counts as done only when the device's
runtime and version, the supernet and the bench protocol match; two ``edgenas measure`` runs of one
campaign on one workspace never store a row twice.  Real local device, real runner, real TFLite
(LiteRT in .venv, tflite-runtime in .venv-tflite), real SQLite.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from edgenas.core.progress import Progress
from edgenas.device import registry
from edgenas.device.lock import host_lock
from edgenas.measure.bench import BenchSettings
from edgenas.measure.campaign import measure
from edgenas.records import measurements
from edgenas.records.store import open_store

REPO = Path(__file__).resolve().parents[2]
TFLITE_PYTHON = REPO / ".venv-tflite" / "bin" / "python"
FAST = {"runs": 10, "min_secs": 0.2, "warmup_secs": 0.05}
pytestmark = pytest.mark.usefixtures("user_home")


@pytest.fixture(scope="module")
def tiny(tiny_supernet) -> dict:
    """The run's tiny supernet and its shared export cache, holding the two subnets a 2-sample
    campaign measures (the smallest and the largest), so no campaign here exports anything."""
    space = tiny_supernet.space
    for arch in (space.smallest(), space.largest()):
        tiny_supernet.export(arch, "fp32")
    return {"ckpt": tiny_supernet.ckpt, "cache": tiny_supernet.cache, "sha": tiny_supernet.sha}


def _run(store, home: Path, tiny: dict, events: list[Progress] | None = None, **settings):
    return measure(store, home, tiny["ckpt"], ["here"], 2, ["fp32"], 1, 0, workers=0,
                   progress=events.append if events is not None else False,
                   export_cache=tiny["cache"], settings=BenchSettings(**{**FAST, **settings}))


def test_resume_honours_runtime_version_supernet_and_protocol(tmp_path: Path, tiny: dict):
    with open_store(tmp_path) as store:
        registry.add_device(store, registry.make_device("here", "local", home=tmp_path,
                                                        python=sys.executable))
        events: list[Progress] = []
        first = _run(store, tmp_path, tiny, events)
        assert first.complete and first.devices["here"].measured == 2
        counted = [e for e in events if e.source == "here" and e.total == 2]
        assert [e.done for e in counted] == [1, 2]  # progress as events, not text on stderr
        again = _run(store, tmp_path, tiny)
        assert (again.devices["here"].measured, again.devices["here"].skipped) == (0, 2)

        # Another protocol (more timed runs; XNNPACK off) is another measurement.
        assert _run(store, tmp_path, tiny, runs=12).devices["here"].measured == 2
        assert _run(store, tmp_path, tiny, runs=12).devices["here"].measured == 0
        assert _run(store, tmp_path, tiny, xnnpack=False).devices["here"].measured == 2

        # The device's runtime changes (LiteRT -> tflite-runtime 2.14): measured again, old rows kept.
        before = measurements.find(store, device="here")
        registry.add_device(store, registry.make_device("here", "local", home=tmp_path,
                                                        python=str(TFLITE_PYTHON)),
                            replace_existing=True)
        upgraded = _run(store, tmp_path, tiny)
        assert upgraded.complete and upgraded.devices["here"].measured == 2
        after = measurements.find(store, device="here")
        assert after[:len(before)] == before and len(after) == len(before) + 2
        runtimes = {(m.runtime, m.runtime_version) for m in after}
        assert len(runtimes) == 2, runtimes
        assert _run(store, tmp_path, tiny).devices["here"].measured == 0

        # Every row says how it was measured, and which supernet its model came from.
        assert {m.source_sha256 for m in after} == {tiny["sha"]}
        assert {(m.protocol.runs, m.protocol.xnnpack) for m in after} == \
            {(10, True), (12, True), (10, False)}


def test_an_unreachable_device_is_reported_before_anything_is_exported(tmp_path: Path, tiny: dict):
    with open_store(tmp_path) as store:
        registry.add_device(store, registry.make_device("here", "local", home=tmp_path,
                                                        python=str(tmp_path / "no-python")))
        report = _run(store, tmp_path, tiny)
        assert not report.complete and report.devices["here"].todo == 0
        assert "no Python" in (report.devices["here"].aborted or "")
        assert measurements.find(store) == []


def _measure_argv(home: Path, tiny: dict) -> list[str]:
    return [sys.executable, "-c", "from edgenas.cli import main; main()", "--home", str(home),
            "measure", str(tiny["ckpt"]), "--device", "here", "--samples", "2", "--runs", "10",
            "--min-secs", "0.2", "--workers", "0", "--export-cache", str(tiny["cache"])]


def _campaign_lock_held(home: Path) -> bool:
    for path in (home / "locks").glob("campaign-*.lock"):
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
    return False


def test_two_measure_runs_of_one_campaign_never_duplicate_rows(tmp_path: Path, tiny: dict):
    """The second run is refused with one clear line while the first holds the campaign; the first
    is held on the device lock (taken here) so the two overlap for certain, not by timing luck."""
    home = tmp_path / "ws"
    with open_store(home) as store:
        registry.add_device(store, registry.make_device("here", "local", home=home,
                                                        python=sys.executable))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with host_lock(home, "here", timeout=5):
        first = subprocess.Popen(_measure_argv(home, tiny), env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120  # liveness bound only; nothing timed is asserted
            while not _campaign_lock_held(home):
                assert first.poll() is None, first.communicate()[1][-2000:]
                assert time.monotonic() < deadline, "the first run never took the campaign lock"
                time.sleep(0.1)
            second = subprocess.run(_measure_argv(home, tiny), env=env, capture_output=True,
                                    text=True, timeout=300)
        except BaseException:
            first.kill()
            raise
    assert second.returncode != 0
    assert "already running in this workspace" in second.stderr
    assert "Traceback" not in second.stderr
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    with open_store(home) as store:
        rows = measurements.find(store)
    keys = Counter((m.device, m.arch, m.precision, m.campaign) for m in rows)
    assert len(rows) == 2 and max(keys.values()) == 1, keys
    rerun = subprocess.run(_measure_argv(home, tiny), env=env, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "0 to measure, 2 subnet(s) already measured" in rerun.stderr
