"""Small system helpers the fleet fixtures share: commands, port polling, run ids and stale purging.

Every resource a fleet creates (namespace, link, user, cgroup) carries the run id, and the run's state
directory records the owning pid.  A later run purges the resources of runs whose owner is dead, so a
killed pytest never leaves the machine dirty for long, and two pytest processes never purge each other.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

# Not under /tmp: sshd StrictModes rejects key files below a world-writable directory.
STATE_ROOT = Path(os.environ.get("EDGENAS_FLEET_ROOT", "/var/lib/edgenas-fleet"))
CGROUP_ROOT = Path("/sys/fs/cgroup")


class FleetError(RuntimeError):
    """The fleet cannot be stood up here; the message says why and what to do."""


def sh(
    argv: Sequence[str], *, check: bool = True, timeout: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a system command; failures raise FleetError with the command and its stderr."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=env)
    except FileNotFoundError as exc:
        raise FleetError(f"`{argv[0]}` is not installed (run `make system-packages` as root)") from exc
    except subprocess.TimeoutExpired as exc:
        raise FleetError(f"`{' '.join(argv)}` did not finish within {timeout} s") from exc
    if check and proc.returncode != 0:
        raise FleetError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def require_root_and_tools(tools: Sequence[str]) -> None:
    if os.geteuid() != 0:
        raise FleetError(
            "the test fleet needs root (network namespaces, users, cgroups, sshd); "
            "run the fleet tests as root, or deselect them with -m 'not fleet'"
        )
    missing = [t for t in tools if shutil.which(t) is None and not Path(t).exists()]
    if missing:
        raise FleetError(
            f"the test fleet needs {', '.join(missing)}: run `make system-packages` as root "
            "(Debian packages openssh-server, adb, iproute2, nftables)"
        )


def wait_port(
    host: str, port: int, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None
) -> None:
    """Poll until something accepts on host:port; a daemon that exits meanwhile fails at once."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            detail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise FleetError(
                f"daemon exited with {proc.returncode} before listening on {host}:{port}: "
                f"{detail.strip()}"
            )
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise FleetError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.02)


def wait_port_in_netns(
    netns: str, host: str, port: int, timeout: float, proc: subprocess.Popen | None = None,
    log: Path | None = None,
) -> None:
    """:func:`wait_port` as seen from inside network namespace ``netns`` (a device only a jump host
    reaches): a connect attempt is made there, by this same Python, until one succeeds."""
    import sys

    deadline = time.monotonic() + timeout
    probe = ("import socket,sys\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), 0.5)"
             "\nexcept OSError:\n sys.exit(1)")
    while True:
        if proc is not None and proc.poll() is not None:
            detail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise FleetError(
                f"daemon exited with {proc.returncode} before listening on {host}:{port}: "
                f"{detail.strip()}"
            )
        argv = ["ip", "netns", "exec", netns, sys.executable, "-c", probe, host, str(port)]
        if sh(argv, check=False).returncode == 0:
            return
        if time.monotonic() > deadline:
            raise FleetError(f"nothing listens on {host}:{port} (seen from {netns}) after {timeout} s")
        time.sleep(0.02)


def free_port(host: str = "127.0.0.1") -> int:
    """A kernel-chosen free TCP port (never in adb's emulator range 5555-5585: ephemeral ports are
    above 32768 on Linux)."""
    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    if 5555 <= port <= 5585:  # pragma: no cover - only with an unusual ip_local_port_range
        return free_port(host)
    return port


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def new_run(state_root: Path = STATE_ROOT) -> tuple[str, Path]:
    """A fresh run id (6 hex digits, short enough for interface names) and its state directory."""
    state_root.mkdir(parents=True, exist_ok=True)
    os.chmod(state_root, 0o755)
    while True:
        run_id = secrets.token_hex(3)
        run_dir = state_root / run_id
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        os.chmod(run_dir, 0o755)  # device users must reach their homes below it
        (run_dir / "owner.json").write_text(json.dumps({"pid": os.getpid(), "started": time.time()}))
        return run_id, run_dir


def record(run_dir: Path, kind: str, value: str) -> None:
    """Remember a created resource so a purge can remove it if this run dies without teardown."""
    with open(run_dir / "resources.jsonl", "a") as fh:
        fh.write(json.dumps({"kind": kind, "value": value}) + "\n")


def purge_stale(state_root: Path = STATE_ROOT) -> list[str]:
    """Remove everything left by fleet runs whose owning process is gone.  Returns the purged run ids."""
    purged = []
    if not state_root.is_dir():
        return purged
    for run_dir in sorted(p for p in state_root.iterdir() if p.is_dir()):
        try:
            owner = json.loads((run_dir / "owner.json").read_text())["pid"]
        except (OSError, ValueError, KeyError):
            owner = None
        if owner is not None and pid_alive(int(owner)):
            continue
        cleanup_resources(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        purged.append(run_dir.name)
    return purged


def cleanup_resources(run_dir: Path) -> None:
    """Undo recorded resources in teardown order: processes, veth, netns, bridges, users, cgroups."""
    entries: list[dict[str, str]] = []
    path = run_dir / "resources.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
    by_kind: dict[str, list[str]] = {}
    for e in entries:
        by_kind.setdefault(e["kind"], []).append(e["value"])
    for entry in by_kind.get("pid", []):
        pid, _, started = entry.partition(":")
        if started and process_start(int(pid)) == started:  # never a recycled pid
            kill_pid(int(pid))
    for ns in by_kind.get("netns", []):
        for pid in netns_pids(ns):
            kill_pid(pid)
    for cg in by_kind.get("cgroup", []):
        for pid in cgroup_pids(Path(cg)):
            kill_pid(pid)
    for link in by_kind.get("veth", []):
        sh(["ip", "link", "del", link], check=False)
    for ns in by_kind.get("netns", []):
        sh(["ip", "netns", "del", ns], check=False)
    for link in by_kind.get("bridge", []):
        sh(["ip", "link", "del", link], check=False)
    for user in by_kind.get("user", []):
        sh(["userdel", "-f", user], check=False)
    for cg in reversed(by_kind.get("cgroup", [])):
        remove_cgroup(Path(cg))


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22): with the pid,
    it identifies a process uniquely, so a purge never kills an unrelated process that reused a pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[19]


def record_process(run_dir: Path, pid: int) -> None:
    record(run_dir, "pid", f"{pid}:{process_start(pid)}")


def kill_pid(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def netns_pids(ns: str) -> list[int]:
    proc = sh(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def cgroup_pids(path: Path) -> list[int]:
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def remove_cgroup(path: Path, timeout: float = 5.0) -> None:
    """rmdir a cgroup once its (killed) processes have gone; the kernel needs a moment to reap them."""
    deadline = time.monotonic() + timeout
    while path.exists():
        for pid in cgroup_pids(path):
            kill_pid(pid)
        try:
            path.rmdir()
            return
        except OSError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
