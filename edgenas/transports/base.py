"""The one interface every way of reaching a device implements.

Callers (probe, setup, measurement, fleet push) only ever see :class:`Transport`, so a Pi over SSH, a
phone over ADB and the host itself are measured by the same code.  Every method takes a timeout because a
device that stops answering (unplugged, blackholed, frozen) must turn into a clear
:class:`~edgenas.errors.TransportError`, never a hang.

Remote paths that are not absolute are relative to the device's workdir (``Transport.workdir``).
"""

from __future__ import annotations

import posixpath
import secrets
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

DEFAULT_COMMAND_TIMEOUT_S = 120.0
DEFAULT_TRANSFER_TIMEOUT_S = 300.0


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
        self, argv: Sequence[str], timeout: float | None = None, cwd: str | None = None
    ) -> RunResult:
        """Run ``argv`` (no shell interpretation of its elements) on the device.

        ``cwd`` is a directory on the device (relative ones are under :attr:`workdir`); ``None`` runs
        in the login directory.  Raises TransportError when the device cannot be reached or the command
        does not finish within ``timeout`` seconds; a non-zero exit is *not* an error, it is ``rc``.
        """

    @abstractmethod
    def put(self, local: Path | str, remote: str, timeout: float | None = None) -> None:
        """Copy a local file to the device.  Written under a temporary name, checked (size and sha256)
        and renamed, so the final name holds either the old file or the complete new one."""

    @abstractmethod
    def get(self, remote: str, local: Path | str, timeout: float | None = None) -> None:
        """Copy a device file to ``local``, also through a temporary name."""

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



def decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")
