"""The device session and its lock: staleness rules, cancellation (SIGTERM, Ctrl-C), a device that lies
about its state, the post-push health check with rollback, canaries, the bounded device cache, and two
workspaces pushing to one device.  Local devices (real files, real runner, real processes) unless the
rule needs a second machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgenas.device import layout
from edgenas.device.lock import LOCK_DIR, DeviceBusyError, DeviceLock, Owner, stale_reason
from edgenas.device.registry import get_device
from edgenas.device.scripts import script
from edgenas.device.session import DeviceSession
from edgenas.fleet.state import read_state
from edgenas.measure.bench import bench_model
from edgenas.records.store import open_store
from tests.support import fleet_models
from tests.support.cli_runner import Cli

REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python")
FAST = {"runs": 5, "min_secs": 0.05, "warmup_secs": 0.01}


@pytest.fixture(scope="module")
def models(request, tmp_path_factory) -> dict[str, Path]:
    cache = Path(request.config.cache.mkdir("runner_models"))
    return fleet_models.model_set(tmp_path_factory.mktemp("session-models"), cache)


@pytest.fixture
def cli(workspace: Path, tmp_path: Path) -> Cli:
    c = Cli(workspace)
    for name in ("here1", "here2"):
        c("device", "add", name, "--local", "--workdir", str(tmp_path / name), "--python", PYTHON,
          "--group", "pair")
    return c


def _owner(raw: str) -> Owner:
    owner = Owner.parse(raw)
    assert owner is not None
    return owner


# ------------------------------------------------------------------------------------------ staleness


def test_staleness_comes_from_boot_id_uptime_and_installation_never_the_wall_clock():
    mine = _owner(f"tok myhost@{'a' * 32} 4242 600 boot-a 1000")
    assert mine.installation == "a" * 32 and mine.hostname == "myhost"
    # same boot, inside its limit, another installation (whatever its host name or pid): held
    assert stale_reason(mine, "boot-a", 1500, installation="b" * 32) is None
    assert stale_reason(mine, "boot-a", 1500) is None
    # over its own limit by the device's uptime
    assert "longer than" in stale_reason(mine, "boot-a", 1601, installation="b" * 32)
    # the device rebooted: whatever the uptime says now
    assert "rebooted" in stale_reason(mine, "boot-b", 5)
    # left by this very installation, whose host lock the asker holds
    assert "this workspace" in stale_reason(mine, "boot-a", 1001, installation="a" * 32)
    # an older edgenas's record names no installation: judged by boot id and uptime only
    old = _owner("tok myhost/0123456789ab 4242 600 boot-a 1000")
    assert old.installation is None and old.hostname == "myhost"
    assert stale_reason(old, "boot-a", 1001, installation="a" * 32) is None
    # a device without /proc (unknown boot id and uptime): nothing frees another installation's lock
    bare = _owner("tok myhost 4242 600 - -")
    assert stale_reason(bare, "-", None, installation="a" * 32) is None
    assert stale_reason(None, "boot-a", 1) == "its owner record is unreadable"
    # records that are not records (untrusted device output)
    for raw in ("", "a b c", "tok host notapid 600 b 1", "tok host 1 600 b 1 extra", "x " * 300):
        assert Owner.parse(raw) is None
    # the lock scripts never read the device clock: an NTP jump cannot make a live lock stale
    for name in ("lock", "unlock", "job"):
        assert "date" not in script(name)


def _local(home: Path, tmp_path: Path, name: str = "here") -> DeviceSession:
    from edgenas.device.registry import add_device, make_device

    with open_store(home) as store:
        dev = add_device(store, make_device(name, "local", home=home, workdir=str(tmp_path / name),
                                            python=PYTHON), replace_existing=True)
    (tmp_path / name).mkdir(parents=True, exist_ok=True)
    return DeviceSession(home, dev, lock_timeout=1.0)


def _plant(lock_dir: Path, record: str) -> None:
    lock_dir.mkdir(parents=True)
    (lock_dir / "owner").write_text(record + "\n")


def _boot_up() -> tuple[str, int]:
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return boot, int(float(Path("/proc/uptime").read_text().split()[0]))


def test_device_lock_breaks_a_rebooted_or_expired_holder_and_waits_for_a_live_one(workspace, tmp_path):
    boot, up = _boot_up()
    lock_dir = tmp_path / "here" / LOCK_DIR
    with _local(workspace, tmp_path) as session:
        # a holder from before a reboot: broken at once, though its pid would be alive on its host
        _plant(lock_dir, f"old otherhost 1 86400 not-this-boot {up - 5}")
        with session.locked():
            assert (lock_dir / "owner").read_text().split()[0] != "old"
        assert not lock_dir.exists()
        # a holder on another host over its limit by this device's uptime: broken
        _plant(lock_dir, f"late otherhost 1 60 {boot} {up - 3600}")
        with session.locked():
            pass
        # a live holder on another host within its limit: busy, and the lock is left alone
        _plant(lock_dir, f"live otherhost 1 3600 {boot} {up}")
        with pytest.raises(DeviceBusyError, match="busy: an edgenas command from otherhost"):
            with session.locked():
                pass
        assert (lock_dir / "owner").read_text().startswith("live ")


def test_lock_is_reentrant_within_a_session_and_exclusive_across_sessions(workspace, tmp_path):
    with _local(workspace, tmp_path) as one:
        with one.locked(), one.locked():
            assert (tmp_path / "here" / LOCK_DIR).is_dir()
            other = DeviceLock(one.transport, "here", ttl_s=60, timeout_s=0.6)
            with pytest.raises(DeviceBusyError):
                other.acquire()
        assert not (tmp_path / "here" / LOCK_DIR).exists()


# ------------------------------------------------------------------------------------------ cancel


def _edgenas(home: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from edgenas.cli import main; main()",
                             "--home", str(home), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, f"edgenas exited early: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_cancelled_bench_stops_its_job_on_the_device_and_releases_the_lock(workspace, tmp_path, models,
                                                                            sig):
    with _local(workspace, tmp_path):
        pass
    proc = _edgenas(workspace, "bench", str(models["v1"]), "--device", "here", "--runs", "10000000",
                    "--min-secs", "100")
    job = tmp_path / "here" / LOCK_DIR / "job.pid"
    try:
        _wait_for(job, proc)
        pid = int(job.read_text().split()[0])  # "pid boot_id"
        time.sleep(0.5)
        os.kill(pid, 0)  # the runner is running on the device
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "cancelled" in err
    assert not (tmp_path / "here" / LOCK_DIR).exists(), "the device lock was left behind"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.05)
    assert not _running(pid), "the benchmark kept running on the device"
    with open_store(workspace) as store:
        assert store.query("SELECT COUNT(*) AS n FROM measurements")[0]["n"] == 0


def _running(pid: int) -> bool:
    """A live process (a zombie waiting for its parent to reap it runs nothing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# ------------------------------------------------------------------------------------------ lying device


def test_a_device_lying_about_its_state_never_steers_the_host(cli, models, tmp_path, workspace):
    cli("fleet", "push", str(models["v1"]), "--device", "here1")
    target = tmp_path / "victim-folder"
    model_dir = tmp_path / "here1" / "models" / "net"
    os.unlink(model_dir / "current")
    os.symlink("../../../../" + str(target).lstrip("/"), model_dir / "current")
    with open_store(workspace) as store:
        dev = get_device(store, "here1")
    with DeviceSession(workspace, dev) as session:
        state = read_state(session, "net")
    assert state.models["net"].current is None and not state.models["net"].intact
    out = cli("fleet", "bench", "--device", "here1", "--runs", "3", "--min-secs", "0.05", code=1)
    assert "missing or damaged" in out
    rows = cli.json("fleet", "status", "--device", "here1", code=1)
    assert rows[0]["drift"]
    assert not target.exists(), "a device-supplied path was written on the host"
    assert not (workspace / "fleet" / "cache").exists(), "fleet bench downloaded from the device"


# ------------------------------------------------------------------------------------------ health check


def _unloadable(models: dict[str, Path], out: Path) -> Path:
    """Passes every host-side check (TFL3 identifier, sha256, manifest) but no runtime can load it."""
    src = json.loads((models["v1"] / "manifest.json").read_text())
    blob = b"\x10\x00\x00\x00TFL3" + b"not a flatbuffer" * 64
    from edgenas.export.package import ModelPackage

    src.pop("model", None)
    src["model"] = {"file": "model.tflite"}
    ModelPackage.write(out, src, model=blob)
    return out


def test_a_model_that_fails_its_health_check_is_rolled_back(cli, models, tmp_path):
    cli("fleet", "push", str(models["v1"]), "--group", "pair")
    bad = _unloadable(models, tmp_path / "bad")
    out = cli.json("fleet", "push", str(bad), "--group", "pair", "--max-fail-percent", "100", code=1)
    assert [r["status"] for r in out["results"]] == ["rolled-back", "rolled-back"]
    assert all("health check failed" in r["reason"] and "rolled back to" in r["reason"]
               for r in out["results"])
    good = fleet_models.sha(models["v1"] / "model.tflite")
    for dev in ("here1", "here2"):
        link = tmp_path / dev / "models" / "net" / "current"
        assert fleet_models.sha(link / "model.tflite") == good
    rows = cli.json("fleet", "status", "--group", "pair")
    assert not any(r["drift"] for r in rows), rows


def test_canary_failure_leaves_the_rest_of_the_fleet_untouched(cli, models, tmp_path):
    bad = _unloadable(models, tmp_path / "bad")
    out = cli.json("fleet", "push", str(bad), "--group", "pair", "--canary", "1", code=3)
    assert [r["status"] for r in out["results"]] == ["rolled-back", "skipped"]
    assert "canary" in out["results"][1]["reason"]
    assert not (tmp_path / "here1" / "models" / "net" / "current").exists()  # first deploy: removed
    assert not (tmp_path / "here2" / "models").exists()


# ------------------------------------------------------------------------------------------ concurrency


def test_two_workspaces_pushing_to_one_device_serialise_on_the_device_lock(models, tmp_path):
    device_dir = tmp_path / "shared-board"
    homes = [tmp_path / "ws-a", tmp_path / "ws-b"]
    for home in homes:
        Cli(home)("device", "add", "board", "--local", "--workdir", str(device_dir), "--python", PYTHON)
    # two processes, as two operators would run them (click's test runner is not thread-safe)
    procs = [_edgenas(homes[i], "fleet", "push", str(models[("v1", "v2")[i]]), "--device", "board",
                      "--name", "net", "--json") for i in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    results = [json.JSONDecoder().raw_decode(out[out.index("{"):])[0] for out, _ in outs]
    assert [r["results"][0]["status"] for r in results] == ["ok", "ok"], results
    net = device_dir / "models" / "net"
    versions = {os.readlink(net / "current"), os.readlink(net / "previous")}
    assert versions == {results[0]["version"], results[1]["version"]}
    assert not list(net.glob(".incoming-*")) and not (device_dir / LOCK_DIR).exists()


# ------------------------------------------------------------------------------------------ cache


def test_the_device_model_cache_is_bounded_and_device_clean_empties_it(workspace, tmp_path, models):
    cli = Cli(workspace)
    cli("device", "add", "tight", "--local", "--workdir", str(tmp_path / "tight"), "--python", PYTHON,
        "--cache-mib", "0")  # keep only what is in use
    assert cli.json("device", "show", "tight")["cache_mib"] == 0
    cache = tmp_path / "tight" / layout.MODEL_CACHE
    for key in ("v1", "v2"):
        with open_store(workspace) as store:
            row = bench_model(store, workspace, "tight", models[key], **FAST)
        assert [p.name for p in cache.iterdir()] == [f"{row['model_sha256']}.tflite"]
    with _local(workspace, tmp_path):  # the default bound: both fit
        pass
    with open_store(workspace) as store:
        for key in ("v1", "v2"):
            bench_model(store, workspace, "here", models[key], **FAST)
    here = tmp_path / "here" / layout.MODEL_CACHE
    assert len(list(here.iterdir())) == 2
    out = cli("device", "clean", "here")
    assert "here" in out and not list(here.iterdir())
