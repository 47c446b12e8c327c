"""Issue 24, findings 1 (only edgenas' own jobs are signalled), 4 (lock holders are installations, not
host names) and 6 (a wait for a busy device lock ends on Ctrl-C / SIGTERM).

Local devices: real lock folders, real ``/bin/sh`` running the lock scripts, real processes.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgenas.device.cancel import Cancel, Cancelled
from edgenas.device.lock import LOCK_DIR, DeviceBusyError, host_lock, installation_id
from edgenas.device.registry import add_device, make_device
from edgenas.device.session import DeviceSession
from edgenas.records.store import open_store

REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python")


def _device(home: Path, tmp_path: Path, name: str = "here"):
    workdir = tmp_path / name
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open_store(home) as store:
        return add_device(store, make_device(name, "local", home=home, workdir=str(workdir),
                                             python=PYTHON), replace_existing=True)


def _boot_up() -> tuple[str, int]:
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return boot, int(float(Path("/proc/uptime").read_text().split()[0]))


def _plant(lock_dir: Path, record: str, job_pid: int | None = None) -> None:
    lock_dir.mkdir(parents=True)
    (lock_dir / "owner").write_text(record + "\n")
    if job_pid is not None:
        (lock_dir / "job.pid").write_text(f"{job_pid} {_boot_up()[0]}\n")


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


# ------------------------------------------------------------------------------------------ finding 4


def test_installation_id_is_random_private_and_kept(tmp_path: Path):
    one, two = tmp_path / "ws1", tmp_path / "ws2"
    first = installation_id(one)
    assert len(first) == 32 and int(first, 16) >= 0
    assert installation_id(one) == first  # kept
    assert installation_id(two) != first  # another workspace is another installation
    path = one / "installation-id"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("garbage\n")
    assert installation_id(one) not in (first, "garbage")  # a damaged one is replaced


def test_a_live_holder_on_another_machine_with_the_same_host_name_is_never_broken(workspace: Path,
                                                                                 tmp_path: Path):
    """Two boards both called like this host, one of them holding the device: its pid means
    nothing here (a pid that is dead here may run there), so only its TTL or a reboot frees it."""
    boot, up = _boot_up()
    lock_dir = tmp_path / "here" / LOCK_DIR
    host = socket.gethostname()
    default_ws = hashlib.sha256(str(workspace.resolve()).encode()).hexdigest()[:12]
    other = "f" * 32
    records = [
        f"live {host} {_dead_pid()} 3600 {boot} {up}",  # an older edgenas on a same-named host
        f"live {host}/{default_ws} {_dead_pid()} 3600 {boot} {up}",  # ... with the same home path
        f"live {host}@{other} {_dead_pid()} 3600 {boot} {up}",  # this version, another installation
    ]
    device = _device(workspace, tmp_path)
    for record in records:
        _plant(lock_dir, record)
        with DeviceSession(workspace, device, lock_timeout=1.0) as session:
            with pytest.raises(DeviceBusyError, match=f"busy: an edgenas command from {host} "):
                with session.locked():
                    pass
        assert (lock_dir / "owner").read_text().strip() == record, "a live holder's lock was broken"
        (lock_dir / "owner").unlink()
        lock_dir.rmdir()
    # ... until its own limit passes by the device's uptime, or the device reboots
    _plant(lock_dir, f"late {host}@{other} 1 60 {boot} {up - 3600}")
    with DeviceSession(workspace, device, lock_timeout=5.0) as session, session.locked():
        assert (lock_dir / "owner").read_text().split()[0] != "late"
    _plant(lock_dir, f"old {host}@{other} 1 86400 not-this-boot {up}")
    with DeviceSession(workspace, device, lock_timeout=5.0) as session, session.locked():
        assert (lock_dir / "owner").read_text().split()[0] != "old"
    assert not lock_dir.exists()


def test_a_lock_this_installation_left_is_broken_at_once_and_records_name_it(workspace: Path,
                                                                              tmp_path: Path):
    boot, up = _boot_up()
    lock_dir = tmp_path / "here" / LOCK_DIR
    mine = installation_id(workspace)
    device = _device(workspace, tmp_path)
    _plant(lock_dir, f"left elsewhere@{mine} {os.getpid()} 3600 {boot} {up}")  # even with a live pid
    with DeviceSession(workspace, device, lock_timeout=1.0) as session, session.locked():
        fields = (lock_dir / "owner").read_text().split()
        assert fields[0] != "left"
        assert fields[1].endswith("@" + mine) and len(fields) == 6


# ------------------------------------------------------------------------------------------ finding 1


def test_breaking_or_releasing_a_lock_signals_only_a_job_edgenas_started(workspace: Path,
                                                                        tmp_path: Path):
    boot, up = _boot_up()
    lock_dir = tmp_path / "here" / LOCK_DIR
    device = _device(workspace, tmp_path)
    bystander = subprocess.Popen(["sleep", "300"])  # ours, this boot: a pid someone wrote in job.pid
    try:
        # an expired foreign holder whose job.pid names the bystander: the lock goes, it stays
        _plant(lock_dir, f"late host@{'e' * 32} 1 60 {boot} {up - 3600}", job_pid=bystander.pid)
        with DeviceSession(workspace, device, lock_timeout=5.0) as session:
            with session.locked():
                # our own lock, with job.pid swapped for the bystander's pid before release
                (lock_dir / "job.pid").write_text(f"{bystander.pid} {boot}\n")
            time.sleep(0.3)
            assert bystander.poll() is None, "a process edgenas did not start was killed"
            assert not lock_dir.exists()
            # the positive control: edgenas' own job is stopped by a cancel
            result: list[object] = []
            with session.locked():
                worker = threading.Thread(target=lambda: result.append(session.run(
                    [PYTHON, "-c", "import time; time.sleep(120)"], 180, job=True)), daemon=True)
                worker.start()
                deadline = time.monotonic() + 30
                while not (lock_dir / "job.pid").exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
                job = int((lock_dir / "job.pid").read_text().split()[0])
                assert _running(job)
                session.abort()
                worker.join(15)
                assert not worker.is_alive(), "the job kept running after the cancel"
            assert not _running(job)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


# ------------------------------------------------------------------------------------------ finding 6


def _in_thread(fn) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def test_waiting_for_a_busy_device_lock_ends_when_the_command_is_cancelled(workspace: Path,
                                                                          tmp_path: Path):
    boot, up = _boot_up()
    device = _device(workspace, tmp_path)
    _plant(tmp_path / "here" / LOCK_DIR, f"live host@{'c' * 32} 1 3600 {boot} {up}")
    cancel = Cancel()

    def wait_for_device() -> None:
        with DeviceSession(workspace, device, cancel=cancel, lock_timeout=600) as s, s.locked():
            pass

    thread, errors = _in_thread(wait_for_device)
    time.sleep(1.5)
    assert thread.is_alive(), errors  # still waiting for the live holder
    started = time.monotonic()
    cancel.cancel()
    thread.join(10)
    assert not thread.is_alive(), "the wait for the device lock ignored the cancel"
    assert time.monotonic() - started < 5
    assert len(errors) == 1 and isinstance(errors[0], Cancelled), errors
    assert "here: cancelled while waiting for the device lock" in str(errors[0])


def test_waiting_for_this_workspaces_host_lock_ends_when_the_command_is_cancelled(workspace: Path):
    cancel = Cancel()

    def wait_for_host_lock() -> None:
        with host_lock(workspace, "here", 600, cancel=cancel):
            pass

    with host_lock(workspace, "here", 5):
        thread, errors = _in_thread(wait_for_host_lock)
        time.sleep(1.0)
        assert thread.is_alive(), errors
        cancel.cancel()
        thread.join(10)
        assert not thread.is_alive(), "the wait for the host lock ignored the cancel"
    assert len(errors) == 1 and isinstance(errors[0], Cancelled), errors


def test_sigterm_ends_a_fleet_verb_waiting_for_a_busy_device(workspace: Path, tmp_path: Path):
    """The systemd unit's stop: SIGTERM while `fleet rollback` waits up to LOCK_WAIT_S (600 s)."""
    boot, up = _boot_up()
    _device(workspace, tmp_path)
    lock_dir = tmp_path / "here" / LOCK_DIR
    _plant(lock_dir, f"live host@{'d' * 32} 1 3600 {boot} {up}")
    proc = subprocess.Popen([sys.executable, "-c", "from edgenas.cli import main; main()",
                             "--home", str(workspace), "-v", "fleet", "rollback", "--device", "here"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    lines: list[str] = []
    waiting = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "waiting up to" in line:
                waiting.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        waiting.wait(60)  # without the message (older code) the signal still goes after 60 s
        assert proc.poll() is None, "".join(lines)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail("SIGTERM was ignored while the verb waited for the device lock")
        assert time.monotonic() - started < 10
    finally:
        proc.kill()
        proc.wait()
        reader.join(5)
    assert proc.returncode == 130, "".join(lines)
    assert (lock_dir / "owner").read_text().startswith("live "), "the live holder's lock was touched"
