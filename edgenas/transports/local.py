"""The host itself as a device: the default device, and the baseline the others are compared with."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from edgenas.errors import TransportError
from edgenas.files import sha256_file
from edgenas.transports.base import (
    DEFAULT_COMMAND_TIMEOUT_S,
    RunResult,
    Transport,
    decode,
    temp_name,
)


class LocalTransport(Transport):
    """Runs commands as child processes; files are copied with the same temp-then-rename rule."""

    kind = "local"

    def run(
        self, argv: Sequence[str], timeout: float | None = None, cwd: str | None = None
    ) -> RunResult:
        if not argv:
            raise TransportError(f"{self.name}: empty command")
        timeout = DEFAULT_COMMAND_TIMEOUT_S if timeout is None else timeout
        try:
            proc = subprocess.run(
                [str(a) for a in argv],
                capture_output=True,
                timeout=timeout,
                cwd=self.remote_path(cwd) if cwd else None,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise TransportError(
                f"{self.name}: command timed out after {timeout:g} s: {argv[0]}"
            ) from exc
        except FileNotFoundError as exc:
            # Same meaning as on a remote shell: "command not found" is exit status 127.
            return RunResult(127, "", f"{exc}\n")
        except OSError as exc:
            raise TransportError(f"{self.name}: cannot run {argv[0]}: {exc}") from exc
        return RunResult(proc.returncode, decode(proc.stdout), decode(proc.stderr))

    def put(self, local: Path | str, remote: str, timeout: float | None = None) -> None:
        self._copy(Path(local), Path(self.remote_path(remote)), timeout)

    def get(self, remote: str, local: Path | str, timeout: float | None = None) -> None:
        self._copy(Path(self.remote_path(remote)), Path(local), timeout)

    def _copy(self, src: Path, dst: Path, timeout: float | None) -> None:
        del timeout  # a local copy cannot stall on a peer; the parameter is kept for the interface
        tmp = Path(temp_name(str(dst)))
        try:
            shutil.copyfile(src, tmp)
            if sha256_file(tmp) != sha256_file(src):
                raise TransportError(f"{self.name}: copy of {src} to {dst} is corrupt (sha256 differs)")
            os.replace(tmp, dst)
        except OSError as exc:
            raise TransportError(f"{self.name}: cannot copy {src} to {dst}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def close(self) -> None:
        pass
