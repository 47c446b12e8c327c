"""The one interface every way of reaching a device implements.

Callers (probe, setup, measurement, fleet push) only ever see :class:`Transport`, so a Pi over SSH, a
phone over ADB and the host itself are measured by the same code.  Every method takes a timeout because a
device that stops answering (unplugged, blackholed, frozen) must turn into a clear
:class:`~edgenas.core.errors.TransportError`, never a hang.

Remote paths that are not absolute are relative to the device's workdir (``Transport.workdir``).
"""

from __future__ import annotations

import posixpath
import secrets
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from edgenas.core.errors import TransportError

DEFAULT_COMMAND_TIMEOUT_S = 120.0
DEFAULT_TRANSFER_TIMEOUT_S = 300.0
MIB = 1024 * 1024
# Device output is untrusted: a broken or hostile device could otherwise fill the host's memory.  The
# largest legitimate answers (probe JSON, runner results with per-image predictions) are well under.
DEFAULT_MAX_STDOUT = 8 * MIB
DEFAULT_MAX_STDERR = 1 * MIB
DEFAULT_MAX_GET_BYTES = 1024 * MIB


class OutputLimitError(TransportError):
    """A device sent more than the caller's limit (stdout, stderr or a downloaded file)."""


def _size(n: int) -> str:
    return f"{n / MIB:g} MiB" if n >= MIB and n % (MIB // 16) == 0 else f"{n} bytes"


def output_limit_error(name: str, argv: Sequence[str], stream: str, limit: int) -> OutputLimitError:
    return OutputLimitError(
        f"{name}: {argv[0]} wrote more than {_size(limit)} to {stream} (the limit, max_{stream}="
        f"{limit}); the command was stopped and its output dropped"
    )


def download_limit_error(name: str, path: str, limit: int) -> OutputLimitError:
    return OutputLimitError(
        f"{name}: {path} is larger than {_size(limit)} (the download limit, max_bytes={limit}); "
        "nothing was written"
    )


# Moving an upload into place with the shell (when the SFTP rename extension is missing, and on ADB):
# plain `mv` would move the file *into* a directory of the final name and report success.
_MOVE_SCRIPT = 'if [ -d "$2" ]; then echo "$2 is a directory" >&2; exit 1; fi; exec mv -f -- "$1" "$2"'


def move_into_place_argv(tmp: str, final: str) -> list[str]:
    """argv renaming ``tmp`` over ``final`` on a POSIX shell, refusing a directory at ``final``."""
    return ["sh", "-c", _MOVE_SCRIPT, "sh", tmp, final]


class RunResult(NamedTuple):
    """What a command did: unpacks as ``rc, stdout, stderr`` (text; invalid UTF-8 is replaced)."""

    rc: int
    stdout: str
    stderr: str


class Transport(ABC):
    """A connection to one device.  Reusable for many commands; :meth:`close` when done."""

    kind: str = ""

    def __init__(self, name: str, workdir: str | None = None) -> None:
        self.name = name
        self.workdir = workdir

    @abstractmethod
    def run(
        self,
        argv: Sequence[str],
        timeout: float | None = None,
        cwd: str | None = None,
        *,
        max_stdout: int = DEFAULT_MAX_STDOUT,
        max_stderr: int = DEFAULT_MAX_STDERR,
    ) -> RunResult:
        """Run ``argv`` (no shell interpretation of its elements) on the device.

        ``cwd`` is a directory on the device (relative ones are under :attr:`workdir`); ``None`` runs
        in the login directory.  Raises TransportError when the device cannot be reached or the command
        does not finish within ``timeout`` seconds; a non-zero exit is *not* an error, it is ``rc``.
        More than ``max_stdout``/``max_stderr`` bytes of output stop the command and raise
        :class:`OutputLimitError`: the device's output is never buffered without a bound.
        """

    @abstractmethod
    def put(self, local: Path | str, remote: str, timeout: float | None = None) -> None:
        """Copy a local file to the device.  Written under a temporary name, checked (size and sha256)
        and renamed, so the final name holds either the old file or the complete new one."""

    def put_known(self, local: Path | str, remote: str, sha256: str | None,
                  timeout: float | None = None) -> None:
        """:meth:`put` of a file whose sha256 the caller already knows (a model package records it):
        a transport that checks the upload against a digest given up front (SSH) needs no hashing
        pass on the host; the device checks the bytes it received against ``sha256`` and refuses a
        file that does not match.  The others ignore it and hash while sending, as put does."""
        self.put(local, remote, timeout)

    @abstractmethod
    def get(
        self,
        remote: str,
        local: Path | str,
        timeout: float | None = None,
        *,
        max_bytes: int = DEFAULT_MAX_GET_BYTES,
    ) -> None:
        """Copy a device file to ``local``, also through a temporary name.  A file larger than
        ``max_bytes`` is refused (:class:`OutputLimitError`) and nothing is written."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection; safe to call twice."""

    def remote_path(self, path: str) -> str:
        """Resolve a remote path against the device workdir."""
        if posixpath.isabs(path) or not self.workdir:
            return path
        return posixpath.join(self.workdir, path)

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def temp_name(final: str) -> str:
    """A sibling name for an upload in progress; hidden and random so it never clashes or is mistaken
    for the real file."""
    head, tail = posixpath.split(final)
    return posixpath.join(head, f".{tail}.edgenas-tmp-{secrets.token_hex(4)}")


def why(exc: BaseException) -> str:
    """An exception as an error's reason: a dead connection often raises one with an empty message
    (paramiko's EOFError, socket errors), which used to leave "failed: ;" in the one error line."""
    return str(exc).strip() or f"connection lost ({type(exc).__name__})"


def decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")
