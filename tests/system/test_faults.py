"""The fault matrix of issue 12, the rows no other test covers: each fault gives one clear error line,
leaves nothing half-written on the host or the device, and a re-run completes.

Rows covered elsewhere: device killed mid-push (test_fleet) and mid-benchmark, campaign SIGKILL, dead
lock holder, corrupt model (test_bench_measure); SIGTERM/SIGINT mid-bench, lying device, two
workspaces pushing (test_device_session); host key changed (test_host_keys); bad inventories
(test_inventory); crafted model folders (test_package, test_fleet_local); truncated checkpoint
(test_supernet); two `measure` runs on one workspace (test_bench_measure, campaign lock).

The module stands up its own three SSH devices (tests/fleet): ``fnet`` (blackholes, SIGTERM, a reboot
with a new boot id, a full disk), ``foom`` (a 128 MiB memory cgroup) and ``fclock`` (libfaketime:
its wall clock jumps by hours).  Measurement campaigns use a real tiny checkpoint whose export cache
is filled with small real TFLite models, so no TensorFlow export runs here.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgenas.device.lock import LOCK_DIR, DeviceBusyError
from edgenas.device.registry import get_device
from edgenas.device.session import DeviceSession
from edgenas.records.store import open_store
from tests.support import fleet_models, runner_models
from tests.support.cache import build_once
from tests.support.cli_runner import Cli
from tests.support.fleet import Fleet
from tests.support.fleet.disk import small_fs, sshd_pid
from tests.support.fleet.fleet import standing
from tests.support.fleet.system import pid_alive

pytestmark = [pytest.mark.fleet, pytest.mark.usefixtures("user_home")]

REPO = Path(__file__).resolve().parents[2]
LITERT = str(REPO / ".venv" / "bin" / "python")
TFLITE = str(REPO / ".venv-tflite" / "bin" / "python")
TIMEOUT = "3"  # the devices' connect timeout (s): a dead peer is noticed within ~4x this
BOUND_S = 60  # a fault must end a command within this (a correctness bound, not a speed goal)
MEMORY = 128 * 2**20  # foom's memory: the runner needs ~50 MB for a small model, ~220 MB for the big one
FAST = ("--runs", "5", "--min-secs", "0.05")


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def faults() -> Iterator[Fleet]:
    for python in (LITERT, TFLITE):
        if not Path(python).exists():
            pytest.fail(f"the fault devices need {python}: run `make setup` first", pytrace=False)

    def build(fleet: Fleet) -> None:
        fleet.add_ssh("fnet", LITERT, boot_id="0" * 32)
        fleet.add_ssh("foom", TFLITE, memory_bytes=MEMORY)
        fleet.add_ssh("fclock", TFLITE, fake_clock=True)

    with standing("the fault devices", build) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def models(request, tmp_path_factory) -> dict[str, Path]:
    cache = Path(request.config.cache.mkdir("runner_models"))
    out = fleet_models.model_set(tmp_path_factory.mktemp("fault-models"), cache)
    out["huge"] = _huge_model(tmp_path_factory.mktemp("huge"), Path(request.config.cache.mkdir("huge")))
    return out


HUGE_SOURCE = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
tf.keras.utils.set_random_seed(1)
inp = tf.keras.Input((512, 512, 3), batch_size=1)
x = tf.keras.layers.Conv2D(64, 3, padding="same")(inp)
x = tf.keras.layers.Conv2D(64, 3, padding="same")(x)
out = tf.keras.layers.Dense(5)(tf.keras.layers.GlobalAveragePooling2D()(x))
conv = tf.lite.TFLiteConverter.from_keras_model(tf.keras.Model(inp, out))
open(sys.argv[1], "wb").write(conv.convert())
"""


def _huge_model(root: Path, cache: Path) -> Path:
    """A small file (150 KB) whose activations need ~170 MB: too big for foom.  Built once with
    TensorFlow in a child process and cached by the hash of its source."""
    import hashlib

    def convert(out: Path) -> None:
        subprocess.run([LITERT, "-c", HUGE_SOURCE, str(out / "model.tflite")], check=True,
                       capture_output=True, timeout=300)

    key = hashlib.sha256(HUGE_SOURCE.encode()).hexdigest()[:12]
    built = build_once(cache / f"huge-{key}", convert) / "model.tflite"
    folder = fleet_models.make_model_dir(root / "huge", built, name="huge", precision="fp32")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["input"]["size"] = 512
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def register(cli: Cli, dev, wd: str, name: str | None = None) -> Path:
    """Add an SSH fault device with workdir ``wd``; returns that workdir as the host sees it."""
    cli("device", "add", name or dev.name, "--ssh", dev.target, "--key", str(dev.client_key),
        "--python", dev.python, "--workdir", wd, "--accept-new-host-key", "--timeout", TIMEOUT)
    return dev.home / wd


def edgenas(home: Path, *args: str) -> subprocess.Popen:
    """The CLI as its own process (signals, and click's runner is not thread-safe)."""
    return subprocess.Popen([sys.executable, "-c", "from edgenas.cli import main; main()",
                             "--home", str(home), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))


def finish(proc: subprocess.Popen, bound: float = BOUND_S) -> tuple[str, str, float]:
    """Wait for ``proc`` at most ``bound`` s (else the test fails, the process killed)."""
    t0 = time.monotonic()
    try:
        out, err = proc.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"still running {bound} s after the fault: {err[-2000:]}")
    return out, err, time.monotonic() - t0


def wait_until(what: str, check, seconds: float = 60, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + seconds
    while True:
        got = check()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"edgenas exited before {what}: {proc.communicate()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds} s")
        time.sleep(0.05)


def one_error_line(err: str) -> str:
    """The command's error: exactly one ``error:`` line, no traceback."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def rows(home: Path) -> list[dict]:
    if not (home / "edgenas.db").exists():
        return []
    with open_store(home) as store:
        return [dict(r) for r in store.query("SELECT * FROM measurements ORDER BY id")]


def temps(root: Path) -> list[str]:
    """Half-written files anywhere under a device workdir: upload temps and staging folders."""
    return sorted(glob.glob(str(root / "**" / ".*edgenas-tmp-*"), recursive=True)
                  + glob.glob(str(root / "**" / ".incoming-*"), recursive=True))


def job_pid(workdir: Path) -> int | None:
    try:
        return int((workdir / LOCK_DIR / "job.pid").read_text().split()[0])  # "pid boot_id"
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------ network


def test_unreachable_device_is_one_line_and_a_rerun_completes(faults, models, workspace):
    dev = faults.ssh["fnet"]
    cli = Cli(workspace)
    wd = register(cli, dev, "f-unreach")
    with faults.blackhole(dev):  # nothing answers, not even a SYN: the connect timeout decides
        out = cli.json("fleet", "push", str(models["v1"]), "--device", "fnet", code=1)
        reason = out["results"][0]["reason"]
        assert out["results"][0]["status"] == "failed" and "\n" not in reason
        assert "no answer within 3 s" in reason, reason
        proc = edgenas(workspace, "bench", str(models["v1"]), "--device", "fnet", *FAST)
        _, err, _ = finish(proc)
        assert proc.returncode == 1 and "fnet" in one_error_line(err)
    assert rows(workspace) == [] and not (wd / "models").exists() and temps(wd) == []
    again = cli.json("fleet", "push", str(models["v1"]), "--device", "fnet")
    assert again["results"][0]["status"] == "ok"
    cli("bench", str(models["v1"]), "--device", "fnet", *FAST)
    assert len(rows(workspace)) == 1 and not (wd / LOCK_DIR).exists()


def test_blackhole_during_a_push_is_a_bounded_timeout_and_a_rerun_completes(faults, models, workspace):
    dev = faults.ssh["fnet"]
    cli = Cli(workspace)
    wd = register(cli, dev, "f-bh-push")
    v1, big = (fleet_models.sha(models[k] / "model.tflite") for k in ("v1", "big1"))
    cli("fleet", "push", str(models["v1"]), "--device", "fnet")
    partial = str(wd / "models/net/.incoming-*/.model.tflite.edgenas-tmp-*")
    with faults.bandwidth(dev, "8mbit"):  # 4 MB take ~4 s: the blackhole lands mid-upload
        proc = edgenas(workspace, "fleet", "push", str(models["big1"]), "--device", "fnet", "--json")
        wait_until("a partial upload", lambda: [p for p in glob.glob(partial)
                                                if os.path.getsize(p) > 256 * 1024], proc=proc)
        with faults.blackhole(dev):
            out, err, elapsed = finish(proc)
    assert proc.returncode == 1, err
    result = json.loads(out[out.index("{"):])["results"][0]
    assert result["status"] == "failed" and "\n" not in result["reason"], result
    assert "previous version stays current" in result["reason"], result
    assert "lost" in result["reason"] or "timed out" in result["reason"], result
    current = wd / "models/net/current"
    assert fleet_models.sha(current / "model.tflite") == v1  # never half a switch
    # Up again: the re-run drops the unfinished upload and completes.
    again = cli.json("fleet", "push", str(models["big1"]), "--device", "fnet")["results"][0]
    assert again["status"] == "ok", again
    assert fleet_models.sha(current / "model.tflite") == big
    assert temps(wd) == [] and not (wd / LOCK_DIR).exists()


def test_blackhole_during_a_benchmark_is_a_bounded_timeout_and_a_rerun_completes(faults, models,
                                                                                  workspace):
    dev = faults.ssh["fnet"]
    cli = Cli(workspace)
    wd = register(cli, dev, "f-bh-bench")
    proc = edgenas(workspace, "bench", str(models["v1"]), "--device", "fnet", "--runs", "10000000",
                   "--min-secs", "100")
    pid = wait_until("the benchmark running on the device", lambda: job_pid(wd), proc=proc)
    time.sleep(0.5)
    with faults.blackhole(dev):
        _, err, elapsed = finish(proc)
    line = one_error_line(err)
    assert proc.returncode == 1 and "fnet" in line, err
    assert "lost" in line or "timed out" in line, line
    assert rows(workspace) == []
    assert pid_alive(pid), "the device kept running: its benchmark should still be there"
    # Up again: the re-run breaks the lock its predecessor could not release, stops the orphaned
    # benchmark (two would overlap and contaminate the row), and completes.
    cli("bench", str(models["v1"]), "--device", "fnet", *FAST)
    assert len(rows(workspace)) == 1
    wait_until("the orphaned benchmark stopped", lambda: not pid_alive(pid), 5)
    assert not (wd / LOCK_DIR).exists() and temps(wd) == []


# ------------------------------------------------------------------------------------------ disk


def test_full_disk_during_a_bench_upload_sends_nothing_and_a_rerun_completes(faults, models,
                                                                             workspace):
    dev = faults.ssh["fnet"]
    cli = Cli(workspace)
    with small_fs(dev.home / "f-disk", "2m", owner=dev.user, mount_ns_pid=sshd_pid(dev)):
        wd = register(cli, dev, "f-disk")
        proc = edgenas(workspace, "bench", str(models["big1"]), "--device", "fnet", *FAST)
        _, err, _ = finish(proc)
        line = one_error_line(err)
        assert proc.returncode == 1 and "not enough space on the device" in line, err
        assert "nothing was uploaded" in line
        cached = [p.name for p in (wd / "cache" / "models").glob("*")] \
            if (wd / "cache" / "models").exists() else []
        assert cached == [] and temps(wd) == [] and not (wd / LOCK_DIR).exists()
        assert rows(workspace) == []
    # Space again (the small filesystem is gone): the same command completes.
    cli("bench", str(models["big1"]), "--device", "fnet", *FAST)
    assert [r["model_sha256"] for r in rows(workspace)] == \
        [fleet_models.sha(models["big1"] / "model.tflite")]


# ------------------------------------------------------------------------------------------ memory


def test_out_of_memory_on_the_device_is_a_clear_error_and_the_device_stays_usable(faults, models,
                                                                                 workspace):
    dev = faults.ssh["foom"]
    cli = Cli(workspace)
    wd = register(cli, dev, "f-oom")
    cli("bench", str(models["v1"]), "--device", "foom", *FAST)  # a small model fits
    proc = edgenas(workspace, "bench", str(models["huge"]), "--device", "foom", *FAST)
    _, err, _ = finish(proc, 120)
    line = one_error_line(err)
    assert proc.returncode == 1 and "foom" in line, err
    assert "memory" in line.lower() or "killed" in line.lower(), line
    assert "corrupt" not in line, f"an out-of-memory kill reported as a bad file: {line}"
    assert len(rows(workspace)) == 1 and not (wd / LOCK_DIR).exists()
    assert not [p for p in dev.pids() if _cmdline(p).find("runner.pyz") >= 0]
    cli("bench", str(models["v2"]), "--device", "foom", *FAST)  # the device is still usable
    assert len(rows(workspace)) == 2


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------ clock


def test_a_device_clock_jumping_by_hours_neither_expires_nor_sticks_the_lock(faults, models, tmp_path):
    dev = faults.ssh["fclock"]
    homes = [tmp_path / "ws-a", tmp_path / "ws-b"]
    for home in homes:
        register(Cli(home), dev, "f-clock")
    devices = []
    for home in homes:
        with open_store(home) as store:
            devices.append(get_device(store, "fclock"))
    try:
        with DeviceSession(homes[0], devices[0]) as holder, holder.locked(ttl_s=60):
            for offset, seconds in (("+6h", 6 * 3600), ("-6h", -6 * 3600), ("+30d", 30 * 86400)):
                dev.jump_clock(offset)  # NTP steps after boot, a Pi without RTC
                seen = int(holder.run(["date", "+%s"]).stdout)
                assert abs(seen - time.time() - seconds) < 600, "the device's clock did not move"
                with DeviceSession(homes[1], devices[1], lock_timeout=1.5) as other:
                    with pytest.raises(DeviceBusyError, match="busy"):
                        with other.locked():
                            pass
        # Released while the clock is off by a month: the other workspace gets it at once.
        with DeviceSession(homes[1], devices[1], lock_timeout=1.5) as other, other.locked():
            pass
        # And a benchmark taken with a jumped clock is a sane number (monotonic timing).
        dev.jump_clock("-3h")
        Cli(homes[1])("bench", str(models["v1"]), "--device", "fclock", *FAST)
        got = rows(homes[1])
        assert len(got) == 1 and 0 < got[0]["median_ms"] < 1000
    finally:
        dev.jump_clock("+0")
    assert not (dev.home / "f-clock" / LOCK_DIR).exists()


# ------------------------------------------------------------------------------------------ campaigns

SAMPLES = 3


@pytest.fixture(scope="module")
def campaign(tmp_path_factory, request) -> dict:
    """A real tiny checkpoint and its export cache, filled with real TFLite models (one per sampled
    arch, each ~600 KB and distinct, so three do not fit on a 2 MiB device disk)."""
    import torch

    from edgenas import build_supernet
    from edgenas.core.files import sha256_file
    from edgenas.measure.campaign import cached_export
    from edgenas.measure.plan import sample_archs

    root = tmp_path_factory.mktemp("campaign")
    torch.manual_seed(0)
    net = build_supernet("mbv3-tiny", 5, labels=runner_models.LABELS)
    ckpt = net.save(root / "tiny.pt", meta={"data": {"source": "test"}})
    sha, cache = sha256_file(ckpt), root / "exports"
    src = runner_models.cached_models(Path(request.config.cache.mkdir("runner_models")))["fp32"]
    for i, arch in enumerate(sample_archs(net.space, SAMPLES, 0)):
        fleet_models.make_model_dir(cached_export(cache, sha, arch.to_string(), "fp32"), src,
                                    name=f"sub{i}", precision="fp32", pad_bytes=600 * 1024, seed=i,
                                    extra={"arch": arch.to_string(), "space": net.space.name,
                                           "provenance": {"source_sha256": sha,
                                                          "purpose": "latency-measurement"}})
    return {"ckpt": ckpt, "cache": cache}


def measure_args(campaign: dict, *devices: str, min_secs: str = "0.05") -> list[str]:
    return ["measure", str(campaign["ckpt"]), *(a for d in devices for a in ("--device", d)),
            "--samples", str(SAMPLES), "--runs", "5", "--min-secs", min_secs, "--warmup-secs", "0",
            "--workers", "0", "--export-cache", str(campaign["cache"]), "--json"]


def add_here(cli: Cli, tmp_path: Path) -> Path:
    wd = tmp_path / "here"
    cli("device", "add", "here", "--local", "--workdir", str(wd), "--python", LITERT)
    return wd


def report(out: str) -> dict:
    return json.loads(out[out.index("{"):])


def consistent(home: Path, devices: int) -> list[dict]:
    """Stored rows: complete, each (device, arch, precision) once."""
    got = rows(home)
    keys = [(r["device"], r["arch"], r["precision"]) for r in got]
    assert len(keys) == len(set(keys)), keys
    assert all(r["median_ms"] > 0 and r["model_sha256"] for r in got)
    assert len(got) <= devices * SAMPLES
    return got


def test_sigterm_mid_measure_stops_every_remote_job_and_resume_completes(faults, campaign, workspace,
                                                                        tmp_path):
    dev = faults.ssh["fnet"]
    cli = Cli(workspace)
    wds = {"here": add_here(cli, tmp_path), "fnet": register(cli, dev, "f-term")}
    args = measure_args(campaign, "here", "fnet", min_secs="1.5")
    proc = edgenas(workspace, *args)
    pids = {n: wait_until(f"a benchmark running on {n}", lambda wd=wd: job_pid(wd), 90, proc)
            for n, wd in wds.items()}
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err, _ = finish(proc, 30)
    assert proc.returncode in (130, 128 + signal.SIGTERM), err
    assert "Traceback" not in err, err
    for name, wd in wds.items():
        wait_until(f"the benchmark on {name} stopped", lambda p=pids[name]: not pid_alive(p), 5)
        assert not (wd / LOCK_DIR).exists(), f"{name}: the device lock was left behind"
        assert temps(wd) == []
    before = consistent(workspace, 2)
    out, err, _ = finish(edgenas(workspace, *args), 120)
    done = report(out)
    assert done["complete"], err
    assert len(consistent(workspace, 2)) == 2 * SAMPLES
    assert sum(d["skipped"] for d in done["devices"].values()) == len(before)


def test_device_reboot_mid_campaign_is_reported_and_resume_completes(faults, campaign, workspace,
                                                                    tmp_path):
    dev = faults.ssh["fnet"]
    cli = Cli(workspace)
    wds = {"here": add_here(cli, tmp_path), "fnet": register(cli, dev, "f-reboot")}
    args = measure_args(campaign, "here", "fnet", min_secs="1")
    proc = edgenas(workspace, *args)
    wait_until("a benchmark running on fnet", lambda: job_pid(wds["fnet"]), 90, proc)
    boot = dev.boot_id
    dev.reboot()  # power cycle: every process gone, a new boot id; the workdir (a disk) stays
    assert dev.boot_id != boot
    out, err, _ = finish(proc, 90)
    got = report(out)
    assert proc.returncode == 1 and not got["complete"], err
    assert got["devices"]["here"]["measured"] == SAMPLES  # the campaign went on without it
    why = got["devices"]["fnet"]["aborted"]
    assert why and "\n" not in why and "fnet" in why and ("lost" in why or "timed out" in why), why
    consistent(workspace, 2)
    assert (wds["fnet"] / LOCK_DIR).is_dir()  # on its disk, naming the boot before
    out, err, _ = finish(edgenas(workspace, *args), 120)
    assert report(out)["complete"], err
    assert len(consistent(workspace, 2)) == 2 * SAMPLES
    assert not (wds["fnet"] / LOCK_DIR).exists() and temps(wds["fnet"]) == []


def test_after_a_reboot_breaking_the_stale_lock_kills_no_recycled_pid(faults, workspace):
    from edgenas.device.connect import open_transport
    from edgenas.device.lock import DeviceLock

    dev = faults.ssh["fnet"]
    cli = Cli(workspace)
    wd = register(cli, dev, "f-pid")
    with open_store(workspace) as store:
        device = get_device(store, "fnet")
    with open_transport(device, workspace) as t:
        t.run(["mkdir", "-p", t.remote_path(".")])
        held = DeviceLock(t, "fnet", ttl_s=600, workspace=str(workspace.resolve()))
        held.acquire()  # its holder then loses the device: never released
    dev.reboot()
    # After the boot the pid in job.pid belongs to some other process of the device's user.
    bystander = subprocess.Popen(["setpriv", f"--reuid={dev.user}", "--regid=nogroup", "--clear-groups",
                                  "sleep", "300"])
    (wd / LOCK_DIR / "job.pid").write_text(f"{bystander.pid}\n")
    try:
        with DeviceSession(workspace, device, lock_timeout=5) as session, session.locked():
            pass
        time.sleep(0.3)
        assert bystander.poll() is None, "a process of the rebooted device was killed by pid"
    finally:
        bystander.kill()
        bystander.wait()
    assert not (wd / LOCK_DIR).exists()


def test_full_disk_during_a_campaign_is_one_line_and_resume_completes(faults, campaign, workspace):
    dev = faults.ssh["fnet"]
    cli = Cli(workspace)
    with small_fs(dev.home / "f-cdisk", "2m", owner=dev.user, mount_ns_pid=sshd_pid(dev)):
        wd = register(cli, dev, "f-cdisk")
        out, err, _ = finish(edgenas(workspace, *measure_args(campaign, "fnet")), 90)
        got = report(out)
        why = got["devices"]["fnet"]["aborted"] or "; ".join(got["devices"]["fnet"]["errors"])
        assert not got["complete"] and "not enough space on the device" in why, (why, err)
        assert "\n" not in why and "nothing was uploaded" in why
        assert 1 <= len(consistent(workspace, 1)) < SAMPLES
        assert temps(wd) == [] and not (wd / LOCK_DIR).exists()
    out, err, _ = finish(edgenas(workspace, *measure_args(campaign, "fnet")), 90)
    assert report(out)["complete"], err
    assert len(consistent(workspace, 1)) == SAMPLES


# ------------------------------------------------------------------------------------------ training


def test_truncated_training_state_is_one_line_and_a_fresh_run_completes(tmp_path):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core host
    try:
        _truncated_state(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _truncated_state(tmp_path: Path) -> None:
    from dataclasses import asdict

    from edgenas.core.errors import EdgeNASError
    from edgenas.supernets.mbv3 import load_supernet
    from edgenas.training.data import load_data
    from edgenas.training.schedule import Phase
    from edgenas.training.train import TrainConfig, TrainingInterrupted, state_path, train_supernet

    data = load_data("digits", 32, limit=64)
    cfg = TrainConfig(out=str(tmp_path / "net.pt"), batch_size=32, epochs=1,
                      schedule=[asdict(Phase("full", 1, 1, 1, share=1.0, lr=0.1, kd=False))])

    def stop(trainer) -> None:
        trainer.stop_requested = True

    with pytest.raises(TrainingInterrupted):
        train_supernet(cfg, data=data, progress=False, on_step=stop)
    state = state_path(cfg.out)
    cut = state.read_bytes()[: state.stat().st_size // 2]
    state.write_bytes(cut)  # a disk that filled up, a copy cut short
    with pytest.raises(EdgeNASError) as info:
        train_supernet(cfg, data=data, progress=False, resume=True)
    msg = str(info.value)
    assert "\n" not in msg and str(state) in msg and "corrupt" in msg, msg
    assert not Path(cfg.out).exists() and state.read_bytes() == cut  # nothing written, nothing lost
    result = train_supernet(cfg, data=data, progress=False)  # started afresh, it completes
    assert load_supernet(result.out).meta["training"]["complete"] and not state.exists()
