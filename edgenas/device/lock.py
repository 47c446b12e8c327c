"""The one device lock: an advisory ``flock`` in the workspace plus a lock folder on the device.

Every verb that touches a device (bench, measure, fleet push/rollback/status/predict/bench, evaluate on
a device) takes this lock, so two of them never overlap on one board: overlapping benchmarks store
contaminated numbers, and overlapping pushes switch ``current`` to the wrong version.

* The **host lock** (``<home>/locks/device-<name>.lock`` under ``flock``) serialises the edgenas
  processes of one workspace without polling the device; the kernel drops it when its holder dies.
* The **device lock** (``<workdir>/.edgenas.lock/``, created by ``mkdir``, atomic everywhere) serialises
  different workspaces and different hosts.  Its owner record names the holder's *installation* (a
  random id kept in the workspace, :func:`installation_id`) and carries the device's boot id and
  uptime when it was taken.  A held lock is stale when the device rebooted since (boot id differs),
  when it has been held longer than its holder's own limit *by the device's uptime* (never the wall
  clock: a Pi has no RTC and NTP moves its clock by hours), or when it was left by this very
  installation, whose host lock the asker holds.  Another installation's lock is never judged by
  anything else: host names repeat (boards keep ``raspberrypi``, containers share the host's name), so
  "same host name, pid gone" once broke a live holder on another machine and killed its job.
  Breaking a stale lock also stops the job its holder left running (unless the device rebooted);
  ``unlock.sh`` signals only a process that carries the holder's token (``job.sh``).
* Waiting for a busy lock (up to the caller's timeout, 10 minutes for fleet verbs) watches the
  command's :class:`~edgenas.device.cancel.Cancel`, so Ctrl-C and SIGTERM end the wait at once.

Owner record, as stored on the device: ``token holder pid ttl_s boot_id uptime_s`` where ``holder`` is
``hostname@installation``.  Records of older edgenas versions (``hostname`` or ``hostname/hash``) still
parse; they name no installation and are treated as another installation's.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import secrets
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgenas.core.errors import DeviceError, EdgeNASError
from edgenas.core.files import PRIVATE_FILE_MODE, fsync_dir
from edgenas.device.cancel import Cancel, Cancelled
from edgenas.device.scripts import script
from edgenas.device.transports import Transport

log = logging.getLogger(__name__)

LOCK_DIR = ".edgenas.lock"
DEFAULT_LOCK_TIMEOUT_S = 900.0
LOCK_COMMAND_TIMEOUT_S = 30.0
EMPTY_OWNER_GRACE_S = 10.0  # a lock folder whose owner record never appears: its creator died
DEVICE_POLL_S = 0.5  # between tries of a busy device lock (each is one command on the device)
HOST_POLL_S = 0.05  # between tries of a busy host lock (flock has no timed wait)
INSTALLATION_FILE = "installation-id"
_INSTALLATION = re.compile(r"[0-9a-f]{32}")


def installation_id(home: Path) -> str:
    """This workspace's installation id: 32 random hex digits, made once and kept in
    ``<home>/installation-id`` (0600).

    Why not the host name: two machines often share one (every Raspberry Pi OS image says
    ``raspberrypi``; containers take the host's), and a lock judged by host name was broken while its
    holder still ran.  Why in the workspace: the workspace is what the host lock serialises, so a
    record carrying this id was left by a command that no longer holds that lock.  Two processes
    making it at once agree: the file appears whole (linked into place, never overwritten), and the
    loser reads the winner's.
    """
    home = Path(home)
    path = home / INSTALLATION_FILE
    for _ in range(3):
        try:
            text = path.read_text(encoding="ascii", errors="replace").strip()
        except FileNotFoundError:
            text = None
        if text is not None and _INSTALLATION.fullmatch(text):
            return text
        home.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{INSTALLATION_FILE}.", suffix=".tmp", dir=home)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                os.fchmod(f.fileno(), PRIVATE_FILE_MODE)
                f.write(secrets.token_hex(16) + "\n")
                f.flush()
                os.fsync(f.fileno())
            if text is None:
                try:
                    os.link(tmp, path)  # never replaces one another process made meanwhile
                except FileExistsError:
                    continue
            else:
                log.warning("%s was not an installation id (%r); made a new one", path, text[:40])
                os.replace(tmp, path)
            fsync_dir(home)
        finally:
            Path(tmp).unlink(missing_ok=True)
    raise DeviceError(f"cannot make the installation id {path}: it keeps changing")


class DeviceBusyError(DeviceError):
    """Another edgenas command holds the device for longer than this one was willing to wait."""


@dataclass(frozen=True)
class Owner:
    """A device-lock holder's record (``token holder pid ttl_s boot_id uptime_s``) as stored;
    ``host`` is the holder field (``hostname@installation``, or an older edgenas's ``hostname`` or
    ``hostname/hash``)."""

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

    @property
    def installation(self) -> str | None:
        """The holder's installation id, or None for a record of an older edgenas (a foreign one)."""
        _, sep, inst = self.host.rpartition("@")
        return inst if sep and _INSTALLATION.fullmatch(inst) else None

    @property
    def hostname(self) -> str:
        """The holder's host name, for messages only (never to judge liveness)."""
        return self.host.rpartition("@")[0] or self.host.split("/")[0]


def stale_reason(owner: Owner | None, boot_id: str, uptime_s: int | None, *,
                 installation: str | None = None) -> str | None:
    """Why a held lock may be broken, or None while its holder may still be working.

    ``installation`` is the asker's own installation id, given when the asker holds that
    installation's host lock for the device: a record with the same id was then left by a holder that
    is gone or that could not reach the device to release it (even from this very process).  Any other
    holder (another installation, or an older edgenas's record) is judged only by the device's boot id
    and uptime.  Pure function of its arguments so every rule has a test.
    """
    if owner is None:
        return "its owner record is unreadable"
    # A reboot first: the caller must then not stop the holder's job (its pid is another process now).
    if boot_id != "-" and owner.boot_id != "-" and boot_id != owner.boot_id:
        return "the device rebooted since it was taken"
    if installation is not None and owner.installation == installation:
        return "it was left by this workspace, whose lock this command now holds"
    if uptime_s is not None and owner.uptime_s is not None and uptime_s - owner.uptime_s > owner.ttl_s:
        return (f"held for {uptime_s - owner.uptime_s} s of device uptime, longer than its holder's "
                f"limit of {owner.ttl_s} s")
    return None


@contextmanager
def host_lock(home: Path, device: str, timeout: float, *, why: str = "",
              cancel: Cancel | None = None) -> Iterator[None]:
    """``<home>/locks/device-<name>.lock`` under ``flock``: this workspace's processes take turns.
    The wait ends with :class:`Cancelled` as soon as ``cancel`` is cancelled."""
    cancel = cancel or Cancel()
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
                if cancel.wait(HOST_POLL_S):
                    raise Cancelled(f"{device}: cancelled while waiting for another edgenas "
                                    "command of this workspace to release the device") from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


class DeviceLock:
    """The lock folder on the device.  ``acquire`` waits (bounded); ``release`` stops our job and
    removes the folder.  Not thread-safe: one per session."""

    def __init__(self, transport: Transport, device: str, ttl_s: float,
                 timeout_s: float = DEFAULT_LOCK_TIMEOUT_S, workspace: str | Path | None = None,
                 cancel: Cancel | None = None) -> None:
        """``workspace``: the holder's workspace folder, given when the caller holds that workspace's
        host lock for the device (:func:`host_lock`); its installation id names the holder.  Without
        it the holder is a one-off installation that never counts as the asker's own.  ``cancel``
        ends a wait for a busy lock (:class:`Cancelled`)."""
        self.transport = transport
        self.workspace = workspace
        self.installation = (installation_id(Path(workspace)) if workspace is not None
                             else secrets.token_hex(16))
        self.device = device
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.cancel = cancel or Cancel()
        self.token = ""
        self.path = transport.remote_path(LOCK_DIR)

    def _sh(self, name: str, args: Sequence[str]) -> tuple[int, str, str]:
        """Run a lock script; short timeout: these commands only touch a few small files."""
        return self.transport.run(["sh", "-c", script(name), name, *args],
                                  timeout=LOCK_COMMAND_TIMEOUT_S)

    def acquire(self) -> None:
        """Take the lock, breaking a stale one; wait (bounded by ``timeout_s``, cancellable) while a
        live holder has it."""
        token = secrets.token_hex(8)
        hostname = "".join(c for c in socket.gethostname()[:64] if c.isalnum() or c in "-._") or "-"
        record = f"{token} {hostname}@{self.installation} {os.getpid()} {int(self.ttl_s)}"
        mine = self.installation if self.workspace is not None else None
        deadline = time.monotonic() + self.timeout_s
        empty_since: float | None = None
        told = False
        while True:
            self._check_cancel()
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
                reason = stale_reason(owner, boot, int(up) if up.isdigit() else None,
                                      installation=mine)
            if reason:
                log.info("%s: breaking the device lock %s: %s", self.device, self.path, reason)
                rebooted = owner is not None and reason.startswith("the device rebooted")
                self._sh("unlock", [self.path, "-", "0" if rebooted or owner is None else "1",
                                    raw if raw != "-" else ""])
                if raw == "-":  # unlock.sh breaks only a known record; an empty folder is removed here
                    self.transport.run(["sh", "-c", 'rmdir "$1" 2>/dev/null; exit 0', "rm", self.path],
                                       timeout=LOCK_COMMAND_TIMEOUT_S)
                    empty_since = None
                continue
            who = f"{owner.hostname} (pid {owner.pid})" if owner else "another host"
            if time.monotonic() > deadline:
                raise DeviceBusyError(f"{self.device}: busy: an edgenas command from {who} holds "
                                      f"{self.path}; waited {self.timeout_s:g} s")
            if not told:
                log.info("%s: waiting up to %g s for the device lock %s, held by %s", self.device,
                         self.timeout_s, self.path, who)
                told = True
            self.cancel.wait(DEVICE_POLL_S)

    def _check_cancel(self) -> None:
        if self.cancel.cancelled:
            raise Cancelled(f"{self.device}: cancelled while waiting for the device lock {self.path}")

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
        for attempt in (1, 2):  # a cancel may have broken the command in flight on this connection
            try:
                self._sh("unlock", [self.path, token, "1"])
                return
            except EdgeNASError as exc:
                if attempt == 2:
                    log.warning("%s: could not release the device lock (%s); the next command finds "
                                "it stale once its holder is gone", self.device, exc)


__all__ = ["DEFAULT_LOCK_TIMEOUT_S", "LOCK_DIR", "DeviceBusyError", "DeviceLock", "Owner", "host_lock",
           "installation_id", "stale_reason"]
