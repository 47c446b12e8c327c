"""The host itself as a device: the default device, and the baseline the others are compared with.

A local device's workdir is a folder of this host that edgenas writes programs to and runs them from
(the benchmark binary, models the runtime parses, the lock's job records).  Another user who can
write that folder, or rename one of its parents, can therefore run code as the edgenas user.  So
before every command, upload and download the workdir is checked the way OpenSSH's StrictModes
checks ``~/.ssh`` (:func:`edgenas.core.files.unsafe_path_reason`) and refused when it is loose: the check
is made at use time, not only when the device was registered, because modes and owners change.  A
missing workdir is created private (0700) by the transport itself, so it never inherits a loose umask.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from edgenas.core.errors import DeviceError, TransportError
from edgenas.core.files import sha256_file, unsafe_path_reason
from edgenas.core.malloc import untuned
from edgenas.device.transports.base import (
    DEFAULT_COMMAND_TIMEOUT_S,
    DEFAULT_MAX_GET_BYTES,
    DEFAULT_MAX_STDERR,
    DEFAULT_MAX_STDOUT,
    RunResult,
    Transport,
    decode,
    download_limit_error,
    output_limit_error,
    temp_name,
)

_CHUNK = 1024 * 1024
WORKDIR_MODE = 0o700


class UnsafeWorkdirError(DeviceError):
    """A local workdir (or a folder above it) that another user owns or may write: refused."""


class LocalTransport(Transport):
    """Runs commands as child processes; files are copied with the same temp-then-rename rule."""

    kind = "local"

    def check_workdir(self) -> None:
        """Refuse a workdir another user could change (see the module's docstring); create a missing
        one, private.  Called before every operation: cheap (a few ``lstat`` calls)."""
        if not self.workdir:
            return
        self._refuse_if_unsafe()
        workdir = Path(os.path.abspath(self.workdir))
        if workdir.is_dir():
            return
        missing = [p for p in (workdir, *workdir.parents) if not os.path.lexists(p)]
        for folder in reversed(missing):
            try:
                os.mkdir(folder, WORKDIR_MODE)
                os.chmod(folder, WORKDIR_MODE)  # whatever the umask
            except FileExistsError:
                pass  # someone else's: judged below
            except OSError as exc:
                raise DeviceError(f"{self.name}: cannot create the local workdir {self.workdir}: "
                                  f"{exc.strerror or exc}") from exc
        self._refuse_if_unsafe()  # a folder someone made between the check and the mkdir

    def _refuse_if_unsafe(self) -> None:
        assert self.workdir
        reason = unsafe_path_reason(self.workdir)
        if reason:
            raise UnsafeWorkdirError(
                f"{self.name}: refusing the local workdir {self.workdir}: {reason}.  Use a folder "
                "only you can write, e.g. the default one inside the workspace")

    def run(
        self,
        argv: Sequence[str],
        timeout: float | None = None,
        cwd: str | None = None,
        *,
        max_stdout: int = DEFAULT_MAX_STDOUT,
        max_stderr: int = DEFAULT_MAX_STDERR,
    ) -> RunResult:
        """The command runs in its own process group (session), so a timeout, an output limit or a
        Ctrl-C of edgenas stops it *and* its children: with ``subprocess.run`` a grandchild holding
        the pipes open made the timeout itself hang."""
        if not argv:
            raise TransportError(f"{self.name}: empty command")
        self.check_workdir()
        timeout = DEFAULT_COMMAND_TIMEOUT_S if timeout is None else float(timeout)
        deadline = time.monotonic() + timeout
        try:
            proc = subprocess.Popen(
                [str(a) for a in argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self.remote_path(cwd) if cwd else None,
                start_new_session=True,
                env=untuned(os.environ),  # the device's malloc, not edgenas' own tuning
            )
        except FileNotFoundError as exc:
            # Same meaning as on a remote shell: "command not found" is exit status 127.
            return RunResult(127, "", f"{exc}\n")
        except OSError as exc:
            raise TransportError(f"{self.name}: cannot run {argv[0]}: {exc}") from exc
        assert proc.stdout is not None and proc.stderr is not None
        bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
        limits = {proc.stdout: ("stdout", max_stdout), proc.stderr: ("stderr", max_stderr)}
        finished = False
        try:
            with selectors.DefaultSelector() as sel:
                for pipe in bufs:
                    sel.register(pipe, selectors.EVENT_READ)
                while sel.get_map():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise self._timeout(argv, timeout)
                    for key, _ in sel.select(left):
                        data = os.read(key.fd, 65536)
                        if not data:
                            sel.unregister(key.fileobj)
                            continue
                        buf = bufs[key.fileobj]  # type: ignore[index]
                        buf += data
                        stream, limit = limits[key.fileobj]  # type: ignore[index]
                        if len(buf) > limit:
                            raise output_limit_error(self.name, argv, stream, limit)
            try:
                rc = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise self._timeout(argv, timeout) from None
            finished = True
        finally:
            if not finished:
                _kill_group(proc)
            proc.stdout.close()
            proc.stderr.close()
        return RunResult(rc, decode(bytes(bufs[proc.stdout])), decode(bytes(bufs[proc.stderr])))

    def _timeout(self, argv: Sequence[str], timeout: float) -> TransportError:
        return TransportError(f"{self.name}: command timed out after {timeout:g} s: {argv[0]}")

    def put(self, local: Path | str, remote: str, timeout: float | None = None) -> None:
        self.check_workdir()
        self._copy(Path(local), Path(self.remote_path(remote)), timeout, None)

    def get(
        self,
        remote: str,
        local: Path | str,
        timeout: float | None = None,
        *,
        max_bytes: int = DEFAULT_MAX_GET_BYTES,
    ) -> None:
        self.check_workdir()
        self._copy(Path(self.remote_path(remote)), Path(local), timeout, max_bytes)

    def _copy(self, src: Path, dst: Path, timeout: float | None, max_bytes: int | None) -> None:
        del timeout  # a local copy cannot stall on a peer; the parameter is kept for the interface
        tmp = Path(temp_name(str(dst)))
        try:
            if max_bytes is None:
                shutil.copyfile(src, tmp)
            else:
                _bounded_copy(self.name, src, tmp, max_bytes)
            if sha256_file(tmp) != sha256_file(src):
                raise TransportError(
                    f"{self.name}: copy of {src} to {dst} is corrupt (sha256 differs); nothing was "
                    "written under the final name"
                )
            os.replace(tmp, dst)
        except OSError as exc:
            raise TransportError(f"{self.name}: cannot copy {src} to {dst}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def close(self) -> None:
        pass


def _bounded_copy(name: str, src: Path, dst: Path, max_bytes: int) -> None:
    """Copy at most ``max_bytes`` (checked up front and while copying: the file may grow)."""
    with open(src, "rb") as fin:
        if os.fstat(fin.fileno()).st_size > max_bytes:
            raise download_limit_error(name, str(src), max_bytes)
        with open(dst, "wb") as fout:
            copied = 0
            for chunk in iter(lambda: fin.read(_CHUNK), b""):
                copied += len(chunk)
                if copied > max_bytes:
                    raise download_limit_error(name, str(src), max_bytes)
                fout.write(chunk)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the command's whole process group and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
