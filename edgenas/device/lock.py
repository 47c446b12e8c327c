"""The one device lock: an advisory ``flock`` in the workspace plus a lock folder on the device.

Every verb that touches a device (bench, measure, fleet push/rollback/status/predict/bench, evaluate on
a device) takes this lock, so two of them never overlap on one board: overlapping benchmarks store
contaminated numbers, and overlapping pushes switch ``current`` to the wrong version.

* The **host lock** (``<home>/locks/device-<name>.lock`` under ``flock``) serialises the edgenas
  processes of one workspace without polling the device; the kernel drops it when its holder dies.
* The **device lock** (``<workdir>/.edgenas.lock/``, created by ``mkdir``, atomic everywhere) serialises
  different workspaces and different hosts.  Its owner record carries the device's boot id and uptime
  when it was taken.  A held lock is stale when the device rebooted since (boot id differs), when it
  has been held longer than its holder's own limit *by the device's uptime* (never the wall clock: a Pi
  has no RTC and NTP moves its clock by hours), or when its holder ran on this host and its process is
  gone.  Breaking a stale lock also stops the job its holder left running (unless the device rebooted).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgenas.device.scripts import script
from edgenas.errors import DeviceError, EdgeNASError
from edgenas.transports import Transport

LOCK_DIR = ".edgenas.lock"
DEFAULT_LOCK_TIMEOUT_S = 900.0
LOCK_COMMAND_TIMEOUT_S = 30.0
EMPTY_OWNER_GRACE_S = 10.0  # a lock folder whose owner record never appears: its creator died


class DeviceBusyError(DeviceError):
    """Another edgenas command holds the device for longer than this one was willing to wait."""


@dataclass(frozen=True)
class Owner:
    """A device-lock holder's record (``token host pid ttl_s boot_id uptime_s``) as stored."""

    token: str
    host: str
    pid: int
    ttl_s: int
    boot_id: str
    uptime_s: int | None
    raw: str

    @classmethod
    def parse(cls, raw: str) -> Owner | None:
        """The record as read from the device, or None when it is not one (untrusted input)."""
        parts = raw.split()
        if len(parts) != 6 or len(raw) > 400:
            return None
        token, host, pid, ttl, boot, up = parts
        if not (pid.isdigit() and ttl.isdigit() and (up.isdigit() or up == "-")):
            return None
        return cls(token, host, int(pid), int(ttl), boot, int(up) if up.isdigit() else None, raw)


def stale_reason(owner: Owner | None, boot_id: str, uptime_s: int | None, *, hostname: str,
                 alive: bool | None, holder: str | None = None) -> str | None:
    """Why a held lock may be broken, or None while its holder may still be working.

    ``alive`` is whether the holder's pid runs on this host (None when the holder is on another host).
    ``holder`` is the asker's own ``host/workspace`` name: the asker holds that workspace's host lock
    for the device, so a record with the same name was left by a holder that is gone or that could not
    reach the device to release it (even from this very process).  Pure function of its arguments so
    every rule has a test.
    """
    if owner is None:
        return "its owner record is unreadable"
    # A reboot first: the caller must then not stop the holder's job (its pid is another process now).
    if boot_id != "-" and owner.boot_id != "-" and boot_id != owner.boot_id:
        return "the device rebooted since it was taken"
    if holder is not None and owner.host == holder:
        return "it was left by this workspace, whose lock this command now holds"
    if uptime_s is not None and owner.uptime_s is not None and uptime_s - owner.uptime_s > owner.ttl_s:
        return (f"held for {uptime_s - owner.uptime_s} s of device uptime, longer than its holder's "
                f"limit of {owner.ttl_s} s")
    if owner.host == hostname and alive is False:
        return f"its holder (pid {owner.pid} on this host) is gone"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def host_lock(home: Path, device: str, timeout: float, *, why: str = "") -> Iterator[None]:
    """``<home>/locks/device-<name>.lock`` under ``flock``: this workspace's processes take turns."""
    locks = Path(home) / "locks"
    locks.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(locks / f"device-{device}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DeviceBusyError(
                        f"{device}: busy: another edgenas command of this workspace has held it for "
                        f"more than {timeout:g} s{why}") from None
                time.sleep(0.05)  # flock has no timed wait
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


class DeviceLock:
    """The lock folder on the device.  ``acquire`` waits (bounded); ``release`` stops our job and
    removes the folder.  Not thread-safe: one per session."""

    def __init__(self, transport: Transport, device: str, ttl_s: float,
                 timeout_s: float = DEFAULT_LOCK_TIMEOUT_S, workspace: str | None = None) -> None:
        """``workspace``: the holder's workspace (its path), given when the caller holds that
        workspace's host lock for the device (:func:`host_lock`)."""
        self.transport = transport
        self.workspace = workspace
        self.device = device
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.token = ""
        self.path = transport.remote_path(LOCK_DIR)

    def _sh(self, name: str, args: Sequence[str]) -> tuple[int, str, str]:
        return self.transport.run(["sh", "-c", script(name), name, *args],
                                  timeout=LOCK_COMMAND_TIMEOUT_S)

    def acquire(self) -> None:
        token = secrets.token_hex(8)
        hostname = "".join(c for c in socket.gethostname()[:64] if c.isalnum() or c in "-._") or "-"
        holder = hostname
        if self.workspace is not None:
            holder += "/" + hashlib.sha256(self.workspace.encode()).hexdigest()[:12]
        record = f"{token} {holder} {os.getpid()} {int(self.ttl_s)}"
        deadline = time.monotonic() + self.timeout_s
        empty_since: float | None = None
        while True:
            rc, out, err = self._sh("lock", [self.path, record])
            words = out.strip().split(" ", 3)
            if rc == 0 and len(words) >= 3 and words[0] == "acquired":
                self.token = token
                return
            if rc != 0 or len(words) < 4 or words[0] != "held":
                raise DeviceError(f"{self.device}: cannot take the device lock {self.path}: "
                                  f"{(err.strip() or out.strip() or f'exit {rc}')[:300]}")
            boot, up, raw = words[1], words[2], words[3]
            owner = Owner.parse(raw) if raw != "-" else None
            if raw == "-":  # being created right now, or its creator died between mkdir and write
                empty_since = empty_since or time.monotonic()
                reason = ("its owner record never appeared"
                          if time.monotonic() - empty_since > EMPTY_OWNER_GRACE_S else None)
            else:
                here = owner is not None and owner.host.split("/")[0] == hostname
                alive = _alive(owner.pid) if owner and here else None
                reason = stale_reason(owner, boot, int(up) if up.isdigit() else None,
                                      hostname=owner.host if here and owner else hostname,
                                      alive=alive,
                                      holder=holder if self.workspace is not None else None)
            if reason:
                rebooted = owner is not None and reason.startswith("the device rebooted")
                self._sh("unlock", [self.path, "-", "0" if rebooted or owner is None else "1",
                                    raw if raw != "-" else ""])
                if raw == "-":  # unlock.sh breaks only a known record; an empty folder is removed here
                    self.transport.run(["sh", "-c", 'rmdir "$1" 2>/dev/null; exit 0', "rm", self.path],
                                       timeout=LOCK_COMMAND_TIMEOUT_S)
                    empty_since = None
                continue
            if time.monotonic() > deadline:
                who = f"{owner.host.split('/')[0]} (pid {owner.pid})" if owner else "another host"
                raise DeviceBusyError(f"{self.device}: busy: an edgenas command from {who} holds "
                                      f"{self.path}; waited {self.timeout_s:g} s")
            time.sleep(0.5)

    def job_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped so that its pid is recorded in the lock folder (devices/scripts/job.sh)."""
        if not self.token:
            raise DeviceError(f"{self.device}: internal: a job needs the device lock")
        # Jobs run in the workdir (where the lock folder is), so the lock is named relative to it.
        return ["sh", "-c", script("job"), "job", LOCK_DIR, self.token, *argv]

    def release(self) -> None:
        """Stop our job if one still runs, then remove the lock.  A device that went away keeps a lock
        that the next taker finds stale; that is reported by the caller, not raised here."""
        if not self.token:
            return
        token, self.token = self.token, ""
        try:
            self._sh("unlock", [self.path, token, "1"])
        except EdgeNASError:
            pass


__all__ = ["DEFAULT_LOCK_TIMEOUT_S", "LOCK_DIR", "DeviceBusyError", "DeviceLock", "Owner", "host_lock",
           "stale_reason"]
