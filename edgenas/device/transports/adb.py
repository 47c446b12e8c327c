"""Android devices (and anything else speaking ADB) through the adb server.

We talk to the adb server's socket protocol directly (as ``adbutils`` does) instead of spawning the
``adb`` client per command, for three reasons: the ``shell,v2`` protocol gives us the exit code and a
separate stderr *and* tells us whether the command really finished (an exit packet) or the device went
away (the stream ends without one); every socket operation gets our deadline; and a command costs one
server round trip rather than a process start.  The ``adb`` binary is still used to start the server.

A TCP device (``HOST:PORT``) that died and came back stays ``offline`` in the server until it is
disconnected and connected again (design §5), so a transport that finds its device offline or missing
does exactly that, once, before giving up with a clear error.

ADB over TCP authenticates the *host* to the device (adb's RSA keys), never the device to the host:
whoever answers at HOST:PORT gets the models.  The device's ``ro.serialno``, recorded at ``device
add``, is therefore compared once per connection (and after every reconnect), so a different phone that
took over the address (DHCP, a swapped board) is refused instead of measured.  It is an identity
check against mix-ups, not authentication: a hostile device can claim any serial (docs/devices.md).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from edgenas.core.errors import TransportError
from edgenas.device.transports.base import (
    DEFAULT_COMMAND_TIMEOUT_S,
    DEFAULT_MAX_GET_BYTES,
    DEFAULT_MAX_STDERR,
    DEFAULT_MAX_STDOUT,
    DEFAULT_TRANSFER_TIMEOUT_S,
    RunResult,
    Transport,
    decode,
    download_limit_error,
    move_into_place_argv,
    output_limit_error,
    temp_name,
    why,
)
from edgenas.device.transports.ssh import shell_join

_SYNC_CHUNK = 64 * 1024  # the sync protocol's largest DATA block
_SHELL_STDOUT, _SHELL_STDERR, _SHELL_EXIT, _SHELL_CLOSE_STDIN = 1, 2, 3, 4
_TCP_SERIAL = re.compile(r"^[^\s:]+:\d+$")
_SERIALNO = re.compile(r"^[\x21-\x7e]{0,128}$")  # what ro.serialno may hold: printable, no spaces


class DeviceIdentityError(TransportError):
    """The device answering at an ADB address is not the one registered there (another serial)."""


class AdbProtocolError(TransportError):
    """The server answered FAIL (``message`` is its reason) or the stream broke."""


def server_address() -> tuple[str, int]:
    """Where the adb server listens: ``$ANDROID_ADB_SERVER_ADDRESS``/``$ANDROID_ADB_SERVER_PORT`` as the
    ``adb`` client honours them, else 127.0.0.1:5037."""
    host = os.environ.get("ANDROID_ADB_SERVER_ADDRESS") or "127.0.0.1"
    port = int(os.environ.get("ANDROID_ADB_SERVER_PORT") or 5037)
    return host, port


class _Conn:
    """One socket to the adb server carrying one request (the server's protocol is one-shot)."""

    def __init__(self, address: tuple[str, int], deadline: float) -> None:
        self.deadline = deadline
        self.sock = socket.create_connection(address, timeout=self._left())
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left

    def send(self, data: bytes) -> None:
        self.sock.settimeout(self._left())
        self.sock.sendall(data)

    def recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            self.sock.settimeout(self._left())
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def request(self, service: str) -> None:
        """Send a service request and require OKAY."""
        data = service.encode()
        self.send(b"%04x" % len(data) + data)
        status = self.recv_exact(4)
        if status == b"OKAY":
            return
        if status == b"FAIL":
            raise AdbProtocolError(self.read_string())
        raise AdbProtocolError(f"unexpected reply {status!r} from the adb server")

    def read_string(self) -> str:
        length = int(self.recv_exact(4), 16)
        return decode(self.recv_exact(length))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class AdbTransport(Transport):
    """A device known to the adb server by ``serial`` (USB serial or ``HOST:PORT``)."""

    kind = "adb"

    def __init__(
        self,
        name: str,
        serial: str,
        *,
        workdir: str | None = None,
        connect_timeout: float = 10.0,
        server: tuple[str, int] | None = None,
        adb_binary: str | None = None,
        expected_serialno: str | None = None,
    ) -> None:
        """``expected_serialno``: the ``ro.serialno`` recorded at ``device add``; when set, a device
        answering with another one is refused (:class:`DeviceIdentityError`)."""
        super().__init__(name, workdir)
        self.serial = serial
        self.expected_serialno = expected_serialno
        self._identity_checked = False
        self.connect_timeout = float(connect_timeout)
        self.server = server or server_address()
        self.adb_binary = adb_binary
        self._features: set[str] | None = None

    # ------------------------------------------------------------------------------------ server

    def _server_conn(self, deadline: float) -> _Conn:
        try:
            return _Conn(self.server, deadline)
        except ConnectionRefusedError:
            self._start_server(deadline)
            try:
                return _Conn(self.server, deadline)
            except OSError as exc:
                raise TransportError(
                    f"{self.name}: the adb server at {self.server[0]}:{self.server[1]} "
                    f"does not answer: {exc}"
                ) from exc
        except (TimeoutError, OSError) as exc:
            raise TransportError(
                f"{self.name}: cannot reach the adb server at {self.server[0]}:{self.server[1]}: {exc}"
            ) from exc

    def _start_server(self, deadline: float) -> None:
        adb = self.adb_binary or shutil.which("adb")
        if not adb:
            raise TransportError(
                "the adb server is not running and no `adb` binary was found; install "
                "Android platform-tools (Debian/Ubuntu: apt install adb)"
            )
        env = dict(os.environ, ANDROID_ADB_SERVER_PORT=str(self.server[1]))
        try:
            subprocess.run(
                [adb, "start-server"],
                env=env,
                capture_output=True,
                timeout=max(1.0, deadline - time.monotonic()),
                check=True,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            raise TransportError(f"cannot start the adb server with {adb}: {exc}") from exc

    def _host_query(self, service: str, deadline: float) -> str:
        conn = self._server_conn(deadline)
        try:
            conn.request(service)
            return conn.read_string()
        except (TimeoutError, OSError, EOFError) as exc:
            raise TransportError(
                f"{self.name}: adb server request {service!r} failed: {why(exc)}"
            ) from exc
        finally:
            conn.close()

    def state(self, timeout: float = 5.0) -> str:
        """The server's view of the device: ``device``, ``offline``, ``unauthorized``… or ``missing``."""
        try:
            return self._host_query(f"host-serial:{self.serial}:get-state", time.monotonic() + timeout)
        except AdbProtocolError:
            return "missing"

    def reconnect(self, timeout: float | None = None) -> None:
        """Disconnect and connect again (TCP devices only) and wait until the device is usable."""
        if not _TCP_SERIAL.match(self.serial):
            raise TransportError(
                f"{self.name}: adb device {self.serial} is {self.state()}; reconnect the "
                "cable or restart adbd on the device"
            )
        deadline = time.monotonic() + (timeout or self.connect_timeout)
        try:
            self._host_query(f"host:disconnect:{self.serial}", deadline)
        except AdbProtocolError:
            pass  # not connected: nothing to disconnect
        self._features = None
        self._identity_checked = False  # a new connection: whoever answers now is checked again
        last = ""
        while time.monotonic() < deadline:
            try:
                reply = self._host_query(f"host:connect:{self.serial}", deadline)
            except AdbProtocolError as exc:
                reply = str(exc)
            if "connected to" in reply and "failed" not in reply and "cannot" not in reply:
                if self._wait_state("device", deadline):
                    return
            last = reply or last
            time.sleep(0.1)  # the device is not back yet; connect has no blocking form to wait on
        raise TransportError(
            f"{self.name}: adb device {self.serial} is unreachable "
            f"({last or self.state()}) after {timeout or self.connect_timeout:g} s"
        )

    def _wait_state(self, want: str, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if self.state(max(0.1, deadline - time.monotonic())) == want:
                return True
            time.sleep(0.05)
        return False

    def _device_conn(self, service: str, deadline: float) -> _Conn:
        """A stream to ``service`` on the device, reconnecting once when the server lost the device
        (safe: nothing has been sent to the device yet)."""
        for attempt in (0, 1):
            conn = self._server_conn(deadline)
            try:
                conn.request(f"host:transport:{self.serial}")
                conn.request(service)
                return conn
            except AdbProtocolError as exc:
                conn.close()
                if attempt or not _recoverable(str(exc)) or not _TCP_SERIAL.match(self.serial):
                    raise TransportError(f"{self.name}: adb device {self.serial}: {exc}") from exc
                self.reconnect(max(0.5, min(self.connect_timeout, deadline - time.monotonic())))
            except (TimeoutError, OSError, EOFError) as exc:
                conn.close()
                raise TransportError(
                    f"{self.name}: adb device {self.serial} did not answer: {why(exc)}"
                ) from exc
        raise AssertionError("unreachable")

    def features(self, deadline: float) -> set[str]:
        if self._features is None:
            try:
                reply = self._host_query(f"host-serial:{self.serial}:features", deadline)
            except AdbProtocolError as exc:
                if not _recoverable(str(exc)) or not _TCP_SERIAL.match(self.serial):
                    raise TransportError(f"{self.name}: adb device {self.serial}: {exc}") from exc
                self.reconnect(max(0.5, min(self.connect_timeout, deadline - time.monotonic())))
                reply = self._host_query(f"host-serial:{self.serial}:features", deadline)
            self._features = set(reply.split(","))
        return self._features

    # ---------------------------------------------------------------------------------- commands

    def read_serialno(self, timeout: float | None = None) -> str:
        """The device's ``ro.serialno`` (bounded and validated: it is the device's own claim)."""
        rc, out, err = self._run(
            ["getprop", "ro.serialno"], timeout or self.connect_timeout, None, 4096, 4096
        )
        value = out.strip()
        if rc != 0 or not _SERIALNO.match(value):
            raise TransportError(
                f"{self.name}: adb device {self.serial} gave no usable ro.serialno "
                f"(exit {rc}: {(value or err.strip())[:80]!r})"
            )
        return value

    def check_identity(self) -> None:
        """Refuse a device whose ``ro.serialno`` is not the recorded one; once per connection."""
        if self.expected_serialno is None or self._identity_checked:
            return
        got = self.read_serialno()
        if got != self.expected_serialno:
            raise DeviceIdentityError(
                f"{self.name}: the adb device at {self.serial} reports serial {got!r}, but "
                f"{self.name} was registered with serial {self.expected_serialno!r}; refusing to use "
                "it (another device has that address?). If the device was replaced on purpose, add "
                f"it again: `edgenas device add {self.name} --replace --adb {self.serial}`"
            )
        self._identity_checked = True

    def run(
        self,
        argv: Sequence[str],
        timeout: float | None = None,
        cwd: str | None = None,
        *,
        max_stdout: int = DEFAULT_MAX_STDOUT,
        max_stderr: int = DEFAULT_MAX_STDERR,
    ) -> RunResult:
        self.check_identity()
        return self._run(argv, timeout, cwd, max_stdout, max_stderr)

    def _run(
        self,
        argv: Sequence[str],
        timeout: float | None,
        cwd: str | None,
        max_stdout: int,
        max_stderr: int,
    ) -> RunResult:
        timeout = DEFAULT_COMMAND_TIMEOUT_S if timeout is None else float(timeout)
        deadline = time.monotonic() + timeout
        line = shell_join(argv, self.remote_path(cwd) if cwd else None)
        if "shell_v2" not in self.features(deadline):
            return self._run_v1(line, deadline, timeout, argv, max_stdout + max_stderr)
        conn = self._device_conn(f"shell,v2,raw:{line}", deadline)
        out, err = bytearray(), bytearray()
        try:
            conn.send(struct.pack("<BI", _SHELL_CLOSE_STDIN, 0))
            while True:
                kind, length = struct.unpack("<BI", conn.recv_exact(5))
                # Closing the stream (finally) makes adbd stop the command.
                if kind == _SHELL_STDOUT and len(out) + length > max_stdout:
                    raise output_limit_error(self.name, argv, "stdout", max_stdout)
                if kind == _SHELL_STDERR and len(err) + length > max_stderr:
                    raise output_limit_error(self.name, argv, "stderr", max_stderr)
                data = conn.recv_exact(length)
                if kind == _SHELL_STDOUT:
                    out += data
                elif kind == _SHELL_STDERR:
                    err += data
                elif kind == _SHELL_EXIT:
                    return RunResult(data[0], decode(out), decode(err))
        except TimeoutError as exc:
            raise TransportError(
                f"{self.name}: command timed out after {timeout:g} s on adb device "
                f"{self.serial}: {argv[0]}"
            ) from exc
        except (EOFError, OSError) as exc:
            raise TransportError(
                f"{self.name}: adb device {self.serial} went away while running "
                f"{argv[0]} (no exit status came back)"
            ) from exc
        finally:
            conn.close()

    def _run_v1(
        self, line: str, deadline: float, timeout: float, argv: Sequence[str], limit: int
    ) -> RunResult:
        """Devices without shell_v2 (Android < 7): stdout and stderr come merged (bounded by both
        limits together), and the exit code is printed after a unique marker, which also proves that
        the command finished."""
        marker = f"__edgenas_rc_{uuid.uuid4().hex}="
        conn = self._device_conn(f"shell:{line} 2>&1; echo {marker}$?", deadline)
        out = bytearray()
        try:
            while True:
                conn.sock.settimeout(conn._left())
                chunk = conn.sock.recv(65536)
                if not chunk:
                    break
                out += chunk
                if len(out) > limit + 128:  # + the exit-status line
                    raise output_limit_error(self.name, argv, "stdout", limit)
        except TimeoutError as exc:
            raise TransportError(
                f"{self.name}: command timed out after {timeout:g} s: {argv[0]}"
            ) from exc
        except OSError as exc:
            raise TransportError(f"{self.name}: adb device {self.serial} went away: {exc}") from exc
        finally:
            conn.close()
        text = decode(bytes(out)).replace("\r\n", "\n")
        head, sep, tail = text.rpartition(marker)
        if not sep:
            raise TransportError(
                f"{self.name}: adb device {self.serial} went away while running {argv[0]}"
            )
        return RunResult(
            int(tail.strip() or 255), head.rstrip("\n") + ("\n" if head.strip() else ""), ""
        )

    # ------------------------------------------------------------------------------------- files

    def put(self, local: Path | str, remote: str, timeout: float | None = None) -> None:
        """Send to a hidden temporary name (hashing while sending), check sha256 (or the size where
        the device has no sha256sum) and move into place.  A failure after the data landed removes
        the temporary file; a device that vanished mid-way leaves it under its hidden name only."""
        self.check_identity()
        timeout = DEFAULT_TRANSFER_TIMEOUT_S if timeout is None else float(timeout)
        deadline = time.monotonic() + timeout
        final = self.remote_path(remote)
        tmp = temp_name(final)
        try:
            fh = open(local, "rb")  # noqa: SIM115 - closed by the with below
            mode = os.fstat(fh.fileno()).st_mode & 0o777
        except OSError as exc:
            raise TransportError(f"{self.name}: cannot read {local}: {exc.strerror or exc}") from exc
        with fh:
            digest, size = self._send(fh, tmp, mode, final, deadline, timeout)
        try:
            left = max(1.0, deadline - time.monotonic())
            rc, out, _ = self.run(["sha256sum", "--", tmp], timeout=left, max_stdout=4096)
            if rc == 0 and out.split() and out.split()[0] != digest:
                raise TransportError(
                    f"{self.name}: upload to {final} is corrupt (sha256 differs); nothing was "
                    "written under the final name"
                )
            if rc != 0:
                rc, out, _ = self.run(["wc", "-c", tmp], timeout=left, max_stdout=4096)
                if rc != 0 or not out.split() or out.split()[0] != str(size):
                    raise TransportError(
                        f"{self.name}: upload to {final} is truncated; nothing was written under "
                        "the final name"
                    )
            rc, _, err = self.run(move_into_place_argv(tmp, final), timeout=left, max_stdout=4096)
            if rc != 0:
                raise TransportError(
                    f"{self.name}: cannot move the upload into place at {final}: {err.strip()[:200]}"
                )
        except TransportError:
            self._discard(tmp)
            raise

    def _send(
        self, fh: BinaryIO, tmp: str, mode: int, final: str, deadline: float, timeout: float
    ) -> tuple[str, int]:
        """One sync SEND of ``fh`` to ``tmp``; returns the sha256 and size of what was sent."""
        hasher, size = hashlib.sha256(), 0
        conn = self._device_conn("sync:", deadline)
        try:
            target = f"{tmp},{0o100000 | mode}".encode()
            conn.send(b"SEND" + struct.pack("<I", len(target)) + target)
            for chunk in iter(lambda: fh.read(_SYNC_CHUNK), b""):
                hasher.update(chunk)
                size += len(chunk)
                conn.send(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
            conn.send(b"DONE" + struct.pack("<I", int(time.time())))
            status, length = conn.recv_exact(4), struct.unpack("<I", conn.recv_exact(4))[0]
            if status != b"OKAY":
                msg = decode(conn.recv_exact(min(length, 4096))) if status == b"FAIL" else repr(status)
                self._discard(tmp)
                raise TransportError(f"{self.name}: adb device refused the upload to {final}: {msg}")
            conn.send(b"QUIT" + struct.pack("<I", 0))
        except TimeoutError as exc:
            raise TransportError(
                f"{self.name}: upload to {self.serial}:{final} timed out after "
                f"{timeout:g} s; nothing was written under the final name"
            ) from exc
        except (EOFError, OSError) as exc:
            raise TransportError(
                f"{self.name}: adb device {self.serial} went away during the upload to "
                f"{final}; nothing was written under the final name"
            ) from exc
        finally:
            conn.close()
        return hasher.hexdigest(), size

    def _discard(self, tmp: str) -> None:
        """Best effort: remove a temporary upload (ADB temp files once piled up after failures)."""
        try:
            self._run(["rm", "-f", "--", tmp], 3.0, None, 4096, 4096)
        except TransportError:
            pass

    def get(
        self,
        remote: str,
        local: Path | str,
        timeout: float | None = None,
        *,
        max_bytes: int = DEFAULT_MAX_GET_BYTES,
    ) -> None:
        self.check_identity()
        timeout = DEFAULT_TRANSFER_TIMEOUT_S if timeout is None else float(timeout)
        deadline = time.monotonic() + timeout
        src = self.remote_path(remote)
        local = Path(local)
        tmp = Path(temp_name(str(local)))
        conn = self._device_conn("sync:", deadline)
        try:
            path = src.encode()
            conn.send(b"RECV" + struct.pack("<I", len(path)) + path)
            got = 0
            with open(tmp, "wb") as fh:
                while True:
                    status, length = conn.recv_exact(4), struct.unpack("<I", conn.recv_exact(4))[0]
                    if status == b"DATA":
                        got += length
                        if got > max_bytes or length > _SYNC_CHUNK:
                            raise download_limit_error(self.name, src, max_bytes)
                        fh.write(conn.recv_exact(length))
                    elif status == b"DONE":
                        break
                    elif status == b"FAIL":
                        raise TransportError(
                            f"{self.name}: cannot read {self.serial}:{src}: "
                            f"{decode(conn.recv_exact(min(length, 4096)))}"
                        )
                    else:
                        raise TransportError(
                            f"{self.name}: bad sync reply {status!r} from {self.serial}"
                        )
            conn.send(b"QUIT" + struct.pack("<I", 0))
            os.replace(tmp, local)
        except TimeoutError as exc:
            raise TransportError(
                f"{self.name}: download of {src} timed out after {timeout:g} s"
            ) from exc
        except (EOFError, OSError) as exc:
            raise TransportError(
                f"{self.name}: adb device {self.serial} went away during the download of {src}"
            ) from exc
        finally:
            conn.close()
            tmp.unlink(missing_ok=True)

    def close(self) -> None:
        self._features = None  # every request uses its own server socket: nothing else is held
        self._identity_checked = False


def _recoverable(message: str) -> bool:
    """Server answers that a disconnect + connect can cure (a TCP device that died and came back)."""
    message = message.lower()
    return (
        "offline" in message or "not found" in message or "no devices" in message or "closed" in message
    )
