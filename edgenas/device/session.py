"""One way to reach a device: every command that touches a device goes through a :class:`DeviceSession`.

A session owns the transport (SSH, ADB or local), the device lock (:mod:`edgenas.device.lock`), the
on-device layout (:mod:`edgenas.device.layout`), and the one mapping from what the on-device runner
answers to typed results and errors.  Why one place: the runner used to be invoked, its JSON parsed and
its exit codes mapped in five places, pushed three ways, and models kept in five folders on the device.

* ``ensure(files)`` makes files be on the device by sha256 — one round trip says what is there and how
  much space is free; only what differs is uploaded (through the transport's atomic put), and nothing is
  uploaded when it would not fit.
* ``runner(verb, args)`` runs the on-device runner as the lock holder's *job* (its pid recorded on the
  device), so a cancelled command (Ctrl-C, SIGTERM: :mod:`edgenas.device.cancel`) stops it before it
  releases the lock.
* On a local device the runner is run from the workspace's own cache (private, checked with
  :func:`edgenas.core.files.unsafe_path_reason`), never from the copy in the workdir: a copy there is
  hashed in one command and started in another, and whoever could swap it in between would run code
  as this user.  The copy is still kept in the workdir, so the device's state reads the same on
  every kind of device.
* Waiting for a busy lock ends at once when the command is cancelled.
* Everything the device prints is untrusted: output is bounded by the transport, the runner's JSON is
  parsed from the last line only and checked for the keys the caller needs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgenas.core.errors import DeviceError, EdgeNASError, TransportError
from edgenas.core.files import sha256_file, unsafe_path_reason
from edgenas.device import answers, layout
from edgenas.device.app import build_runner_app
from edgenas.device.cancel import Cancel, Cancelled
from edgenas.device.connect import open_transport
from edgenas.device.errors import ModelFileError, NoRuntimeError, NoSpaceError, RunnerError
from edgenas.device.lock import DEFAULT_LOCK_TIMEOUT_S, DeviceLock, host_lock
from edgenas.device.registry import Device
from edgenas.device.scripts import script
from edgenas.device.transports import RunResult, Transport

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 60.0
TRANSFER_TIMEOUT_S = 600.0
SPACE_MARGIN_KIB = 256  # directory entries, temp copies, filesystem rounding
DEFAULT_TTL_S = 3600.0

# The runner's exit codes (docs/runner.md): 2 usage, 3 a file is unreadable or corrupt, 4 no runtime,
# 5 an optional dependency is missing; 127 is the shell's "command not found" (no Python there).
EXIT_USAGE, EXIT_FILE, EXIT_NO_RUNTIME, EXIT_DEPENDENCY, EXIT_NOT_FOUND = 2, 3, 4, 5, 127


@dataclass(frozen=True)
class LocalFile:
    """A host file to have on the device at ``remote`` (relative to the workdir), known by sha256."""

    path: Path
    remote: str
    sha256: str
    mode: str | None = None  # e.g. "755" for an executable

    @classmethod
    def of(cls, path: Path, remote: str, sha256: str | None = None,
           mode: str | None = None) -> LocalFile:
        return cls(Path(path), remote, sha256 or sha256_file(path), mode)


def runner_file(home: Path) -> LocalFile:
    """The on-device package as one zipapp (built once per source version, cached in the workspace),
    under its one remote name."""

    app = build_runner_app(Path(home) / "cache" / "runner")
    return LocalFile(app.path, layout.RUNNER, app.sha256)


class DeviceSession:
    """A connection to one device plus its lock; use as a context manager.

    The lock is taken with :meth:`locked` (re-entrant within the session), so a long-lived session (a
    measurement campaign's worker) can let other commands in between its benchmarks.
    """

    def __init__(self, home: Path, device: Device, *, cancel: Cancel | None = None,
                 lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
                 opener: Callable[[Device, Path], Transport] = open_transport,
                 transport: Transport | None = None) -> None:
        self.home = Path(home)
        self.device = device
        self.name = device.name
        self.cancel = cancel or Cancel()
        self.lock_timeout = lock_timeout
        self.transport = transport or opener(device, self.home)
        self.python = device.python or "python3"
        self.uploads: list[str] = []  # remote paths uploaded by this session (progress lines, tests)
        self._lock: DeviceLock | None = None
        self._depth = 0
        self._runner: LocalFile | None = None

    # -------------------------------------------------------------------------------------- lifetime

    def __enter__(self) -> DeviceSession:
        self.cancel.register(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            if self._lock is not None:
                self._lock.release()
        finally:
            self._lock = None
            self._depth = 0
            self.cancel.unregister(self)
            self.transport.close()

    def abort(self) -> None:
        """Called from another thread on cancel: stop our remote job and release the device lock."""
        lock = self._lock
        if lock is not None:
            lock.release()

    @contextmanager
    def locked(self, ttl_s: float = DEFAULT_TTL_S) -> Iterator[DeviceSession]:
        """Hold the host and device locks for the block (re-entrant).  ``ttl_s`` is how long this holder
        may keep the device before another command may consider it dead (device uptime)."""
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        self.cancel.check()
        with host_lock(self.home, self.name, self.lock_timeout, cancel=self.cancel):
            lock = DeviceLock(self.transport, self.name, ttl_s, self.lock_timeout,
                              workspace=self.home, cancel=self.cancel)
            lock.acquire()
            self._lock, self._depth = lock, 1
            try:
                yield self
            finally:
                self._lock, self._depth = None, 0
                lock.release()

    # -------------------------------------------------------------------------------------- commands

    def run(self, argv: Sequence[str], timeout: float = COMMAND_TIMEOUT_S, *, job: bool = False,
            cwd: str | None = ".") -> RunResult:
        """Run ``argv`` in the workdir.  ``job=True`` (under the lock) records its pid on the device so
        that a cancel stops it.  On a local device, ``PYTHON runner.pyz ...`` runs the workspace's own
        copy of the runner (:meth:`local_runner`), whoever builds the command line."""
        self.cancel.check()
        if self.transport.kind == "local" and len(argv) >= 2 and argv[1] == layout.RUNNER:
            argv = [argv[0], self.local_runner(), *argv[2:]]
        if job and self._lock is not None:
            argv = self._lock.job_argv(argv)
        try:
            res = self.transport.run(list(argv), timeout=timeout, cwd=cwd)
        except TransportError:
            self.cancel.check()
            raise
        self.cancel.check()
        return res

    def sh(self, name: str, args: Sequence[str], timeout: float = COMMAND_TIMEOUT_S) -> RunResult:
        """Run ``devices/scripts/<name>.sh`` with positional ``args`` (each quoted by the transport)."""
        return self.run(["sh", "-c", script(name), name, *args], timeout, cwd=None)

    def path(self, remote: str) -> str:
        return self.transport.remote_path(remote)

    # -------------------------------------------------------------------------------------- files

    def ensure(self, files: Sequence[LocalFile], *, timeout: float = TRANSFER_TIMEOUT_S) -> list[str]:
        """Make every file be on the device with its sha256; returns the remote paths uploaded.

        One command reads free space and the sha256 of what is there; files that differ are uploaded
        only if they all fit (:class:`NoSpaceError` otherwise, before anything is sent).
        """
        if not files:
            return []
        first_dir = files[0].remote.rsplit("/", 1)[0] if "/" in files[0].remote else "."
        res = self.sh("files", [self.path(first_dir), *(self.path(f.remote) for f in files)])
        if res.rc != 0:
            raise DeviceError(f"{self.name}: cannot inspect the workdir {self.path('.')}: "
                              f"{res.stderr.strip()[:300]}")
        free_kib, have = _parse_files(res.stdout)
        missing = [f for f in files if have.get(self.path(f.remote)) != f.sha256]
        if not missing:
            return []
        check_space(self.name, free_kib, [f.path.stat().st_size for f in missing], self.path("."),
                    f"nothing was uploaded (`edgenas device clean {self.name}` frees the cache)")
        uploaded = []
        for f in missing:
            self.cancel.check()
            parent = f.remote.rsplit("/", 1)[0] if "/" in f.remote else ""
            if parent:
                mk = self.run(["mkdir", "-p", "--", parent])
                if mk.rc != 0:
                    raise DeviceError(f"{self.name}: cannot create {self.path(parent)}: "
                                      f"{mk.stderr.strip()[:300]}")
            self.transport.put(f.path, f.remote, timeout=timeout)
            if f.mode:
                ch = self.run(["chmod", f.mode, "--", f.remote])
                if ch.rc != 0:
                    raise DeviceError(f"{self.name}: cannot chmod {self.path(f.remote)}: "
                                      f"{ch.stderr.strip()[:300]}")
            uploaded.append(f.remote)
        self.uploads.extend(uploaded)
        return uploaded

    def runner_file(self) -> LocalFile:
        """The runner zipapp this host ships (built once per session, from the workspace cache)."""
        if self._runner is None:
            self._runner = runner_file(self.home)
        return self._runner

    def local_runner(self) -> str:
        """The path a local device runs the runner from: the workspace cache's copy, after checking
        that no other user could replace it (its folder and every one above it are this user's)."""
        path = self.runner_file().path
        reason = unsafe_path_reason(path.parent)
        if reason:
            raise DeviceError(f"{self.name}: refusing to run the runner from {path}: {reason}.  "
                              "Keep the workspace in a folder only you can write")
        return str(path)

    # -------------------------------------------------------------------------------------- runner

    def runner(self, verb: str, args: Sequence[str], *, timeout: float = COMMAND_TIMEOUT_S,
               files: Sequence[LocalFile] = (), model: str | None = None) -> dict[str, Any]:
        """Run ``runner.pyz VERB ARGS`` (after making sure it and ``files`` are on the device) and return
        its JSON object, or raise the error its exit code means.  ``model`` names the model for messages.
        """
        with self.locked(ttl_s=timeout + 120):
            self.ensure([self.runner_file(), *files])
            res = self.run([self.python, layout.RUNNER, verb, *args], timeout, job=True)
        return runner_result(self.name, self.python, res, verb, model=model)


def check_space(device: str, free_kib: int | None, sizes: Sequence[int], where: str, kept: str) -> None:
    """The one free-space rule (``ensure``, ``fleet push``): refuse before sending anything when the
    files plus SPACE_MARGIN_KIB exceed what the device reported free (unknown: not refused)."""
    need = sum(math.ceil(n / 1024) for n in sizes) + SPACE_MARGIN_KIB
    if free_kib is not None and free_kib < need:
        raise NoSpaceError(f"{device}: not enough space on the device: {need / 1024:.1f} MiB needed, "
                           f"{free_kib / 1024:.1f} MiB free under {where}; {kept}")


def runner_result(device: str, python: str, res: RunResult, verb: str, *,
                  model: str | None = None) -> dict[str, Any]:
    """The runner's answer as a dict, or the typed error for its exit code (the one mapping)."""
    data = answers.parse_answer(device, res.stdout, verb)
    if data is None or not isinstance(data, dict):
        if res.rc == EXIT_NOT_FOUND:
            raise NoRuntimeError(
                f"{device}: no Python at {python!r} on the device (set it with `edgenas device add "
                f"{device} --python PATH --replace`; for a phone without Python register LiteRT's "
                "benchmark_model with --benchmark-binary)")
        last = (res.stderr.strip().splitlines() or ["no output"])[-1][:300]
        killed = " (killed: out of memory on the device?)" if res.rc in (137, -9) else ""
        raise RunnerError(f"{device}: the runner's {verb} printed no result (exit {res.rc}{killed}): "
                          f"{last}")
    if res.rc == 0 and "error" not in data:
        return data
    why = str(data.get("error") or f"exit {res.rc}")[:500]
    hint = data.get("hint")
    hint_s = f"; install one: {str(hint)[:200]}" if isinstance(hint, str) and hint else ""
    what = f" {model}" if model else ""
    if res.rc == EXIT_FILE:
        raise ModelFileError(f"{device}: the runner cannot load{what}: {why}")
    if res.rc == EXIT_NO_RUNTIME:
        raise NoRuntimeError(f"{device}: no usable TFLite runtime: {why}{hint_s}")
    if res.rc == EXIT_DEPENDENCY:
        raise NoRuntimeError(f"{device}: {why}{hint_s}")
    raise RunnerError(f"{device}: the runner's {verb} failed (exit {res.rc}): {why}")


def _parse_files(text: str) -> tuple[int | None, dict[str, str]]:
    """files.sh's answer: free KiB and path → sha256 (entries that are not a sha256 are dropped)."""
    free: int | None = None
    have: dict[str, str] = {}
    for line in text.splitlines()[:10_000]:
        head, _, rest = line.partition(" ")
        if head == "free":
            free = int(rest) if rest.strip().isdigit() else None
        elif layout.sha256(head):
            have[rest] = head
    return free, have


@contextmanager
def open_session(home: Path, device: Device, **kwargs: Any) -> Iterator[DeviceSession]:
    """``with open_session(home, device) as s:`` — the session closed (lock released) on any exit."""
    session = DeviceSession(home, device, **kwargs)
    with session:
        yield session


__all__ = ["Cancelled", "DeviceSession", "EdgeNASError", "LocalFile", "ModelFileError", "NoRuntimeError",
           "NoSpaceError", "RunnerError", "check_space", "open_session", "runner_file", "runner_result"]
