"""SSH devices (Raspberry Pis, Jetsons, any Linux board) through paramiko.

Facts this module is built on (measured on the test fleet, see design §5):

* paramiko does not set TCP_NODELAY, and without it every command round trip waits ~40 ms for delayed
  ACKs.  We open the socket ourselves and set it; one connection is then reused for every command.
* A blackholed peer blocks a socket forever, so connect, every command and every transfer has a deadline.
* Host keys are checked against ``<home>/known_hosts`` (and, read-only, the user's
  ``~/.ssh/known_hosts``) under ``RejectPolicy`` semantics.  An unknown key is accepted only when
  the caller asked for it (``device add --accept-new-host-key``); a changed key is always refused,
  before anything runs.
* Every argv element is ``shlex.quote``-d; the remote side runs a shell, so nothing is spliced unquoted.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import select
import shlex
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import paramiko

from edgenas.errors import HostKeyError, TransportError
from edgenas.transports.base import (
    DEFAULT_COMMAND_TIMEOUT_S,
    DEFAULT_TRANSFER_TIMEOUT_S,
    RunResult,
    Transport,
    decode,
    temp_name,
)

_CHUNK = 32768  # SFTP's largest write request
_NETWORK_ERRORS = (OSError, EOFError, paramiko.SSHException)


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:…`` fingerprint, the form ``ssh-keygen -lf`` and ssh's own prompts show."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return f"{key.get_name()} SHA256:{base64.b64encode(digest).decode().rstrip('=')}"


def known_hosts_name(host: str, port: int) -> str:
    """The name a known_hosts line uses: ``host`` on port 22, else ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


def shell_join(argv: Sequence[str], cwd: str | None = None) -> str:
    """One POSIX shell line running ``argv`` (in ``cwd``), every element quoted."""
    if not argv:
        raise TransportError("empty command")
    line = " ".join(shlex.quote(str(a)) for a in argv)
    return f"cd {shlex.quote(cwd)} && {line}" if cwd else line


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def add_known_host(known_hosts: Path, host: str, port: int, key: paramiko.PKey) -> None:
    """Append a key to the workspace known_hosts, atomically and under a lock (two ``device add`` may
    run at once)."""
    with _locked(known_hosts):
        keys = paramiko.HostKeys()
        if known_hosts.exists():
            keys.load(str(known_hosts))
        keys.add(known_hosts_name(host, port), key.get_name(), key)
        tmp = known_hosts.with_name(f".{known_hosts.name}.{os.getpid()}.tmp")
        keys.save(str(tmp))
        os.chmod(tmp, 0o600)
        os.replace(tmp, known_hosts)


def forget_known_host(known_hosts: Path, host: str, port: int) -> bool:
    """Remove every key recorded for ``host:port`` (plain or hashed entries); returns whether there was
    one.  Used when a device is removed, so re-adding a reinstalled device is possible."""
    if not known_hosts.exists():
        return False
    name = known_hosts_name(host, port)
    with _locked(known_hosts):
        keys = paramiko.HostKeys(str(known_hosts))
        kept = paramiko.HostKeys()
        # HostKeys has no public removal API; its entry list is the documented file model.
        kept._entries = [e for e in keys._entries if not _matches(name, e.hostnames)]
        if len(kept._entries) == len(keys._entries):
            return False
        tmp = known_hosts.with_name(f".{known_hosts.name}.{os.getpid()}.tmp")
        kept.save(str(tmp))
        os.chmod(tmp, 0o600)
        os.replace(tmp, known_hosts)
    return True


def _matches(name: str, hostnames: list[str]) -> bool:
    for h in hostnames:
        if h == name:
            return True
        if h.startswith("|1|") and paramiko.HostKeys.hash_host(name, h.split("|")[2]) == h:
            return True
    return False


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Called by paramiko only for a key it has never seen: refuse, or (TOFU asked for) remember it."""

    def __init__(self, accept_new: bool, known_hosts: Path) -> None:
        self.accept_new = accept_new
        self.known_hosts = known_hosts
        self.accepted: paramiko.PKey | None = None

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if not self.accept_new:
            raise HostKeyError(
                f"unknown SSH host key for {hostname} ({fingerprint(key)}); refusing to connect. Check "
                f"the fingerprint on the device (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then add "
                f"the device with --accept-new-host-key, or put the key into {self.known_hosts}"
            )
        self.accepted = key  # persisted by the transport only once the connection is fully up


class SSHTransport(Transport):
    """One reusable SSH connection (commands on fresh channels, files over one SFTP session)."""

    kind = "ssh"

    def __init__(
        self,
        name: str,
        host: str,
        port: int = 22,
        user: str | None = None,
        key_path: str | None = None,
        *,
        known_hosts: Path,
        workdir: str | None = None,
        connect_timeout: float = 10.0,
        accept_new_host_key: bool = False,
        user_known_hosts: Path | None = None,
    ) -> None:
        super().__init__(name, workdir)
        self.host, self.port, self.user, self.key_path = host, int(port), user, key_path
        self.known_hosts = Path(known_hosts)
        self.user_known_hosts = (
            user_known_hosts
            if user_known_hosts is not None
            else Path(os.path.expanduser("~/.ssh/known_hosts"))
        )
        self.connect_timeout = float(connect_timeout)
        self.accept_new_host_key = accept_new_host_key
        self.accepted_fingerprint: str | None = None
        self.host_fingerprint: str | None = None
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.RLock()

    @property
    def target(self) -> str:
        return f"{self.user + '@' if self.user else ''}{known_hosts_name(self.host, self.port)}"

    # --------------------------------------------------------------------------------- connection

    def connect(self) -> paramiko.SSHClient:
        """Connect (or return the live connection).  Raises HostKeyError / TransportError."""
        with self._lock:
            if self._client is not None:
                transport = self._client.get_transport()
                if transport is not None and transport.is_active():
                    return self._client
                self._drop()
            self._client = self._open()
            return self._client

    def _open(self) -> paramiko.SSHClient:
        t = self.connect_timeout
        try:
            sock = socket.create_connection((self.host, self.port), timeout=t)
        except TimeoutError as exc:
            raise TransportError(
                f"{self.name}: cannot connect to {self.target}: no answer within {t:g} s "
                "(device off, unreachable or blackholed?)"
            ) from exc
        except ConnectionRefusedError as exc:
            raise TransportError(
                f"{self.name}: cannot connect to {self.target}: connection refused "
                "(is sshd running on that port?)"
            ) from exc
        except OSError as exc:
            raise TransportError(
                f"{self.name}: cannot connect to {self.target}: {exc.strerror or exc}"
            ) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = paramiko.SSHClient()
        if self.user_known_hosts.is_file():
            try:
                client.load_system_host_keys(str(self.user_known_hosts))
            except (OSError, paramiko.SSHException):
                pass  # an unreadable personal known_hosts only means fewer known keys
        if self.known_hosts.is_file():
            client.load_host_keys(str(self.known_hosts))
        policy = _HostKeyPolicy(self.accept_new_host_key, self.known_hosts)
        client.set_missing_host_key_policy(policy)
        keys = (
            {"key_filename": [self.key_path], "look_for_keys": False, "allow_agent": False}
            if self.key_path
            else {}
        )
        try:
            client.connect(
                self.host,
                port=self.port,
                username=self.user,
                sock=sock,
                timeout=t,
                banner_timeout=t,
                auth_timeout=t,
                channel_timeout=t,
                **keys,
            )
        except HostKeyError:
            sock.close()
            raise
        except paramiko.BadHostKeyException as exc:
            sock.close()
            raise HostKeyError(
                f"{self.name}: the SSH host key of {known_hosts_name(self.host, self.port)} has "
                f"CHANGED: "
                f"known {fingerprint(exc.expected_key)}, offered {fingerprint(exc.key)}. Refusing to "
                f"connect; nothing was run. If the device was reinstalled, verify the new key, then "
                f"`edgenas device remove {self.name}` and add it again with --accept-new-host-key"
            ) from exc
        except paramiko.PasswordRequiredException as exc:
            sock.close()
            raise TransportError(
                f"{self.name}: the key {self.key_path} is encrypted; give an unencrypted "
                "key or load it into ssh-agent"
            ) from exc
        except paramiko.AuthenticationException as exc:
            sock.close()
            how = f"key {self.key_path}" if self.key_path else "ssh-agent and ~/.ssh keys"
            raise TransportError(
                f"{self.name}: authentication to {self.target} failed with {how}"
            ) from exc
        except TimeoutError as exc:
            sock.close()
            raise TransportError(
                f"{self.name}: {self.target} did not complete the SSH handshake within {t:g} s"
            ) from exc
        except _NETWORK_ERRORS as exc:
            sock.close()
            raise TransportError(f"{self.name}: SSH connection to {self.target} failed: {exc}") from exc
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(15)
        server_key = transport.get_remote_server_key()
        self.host_fingerprint = fingerprint(server_key)
        if policy.accepted is not None:
            add_known_host(self.known_hosts, self.host, self.port, policy.accepted)
            self.accepted_fingerprint = fingerprint(policy.accepted)
        return client

    def _drop(self) -> None:
        for thing in (self._sftp, self._client):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # noqa: BLE001 - closing a dead connection may raise anything
                    pass
        self._sftp = None
        self._client = None

    def close(self) -> None:
        with self._lock:
            self._drop()

    # ----------------------------------------------------------------------------------- commands

    def run(
        self, argv: Sequence[str], timeout: float | None = None, cwd: str | None = None
    ) -> RunResult:
        timeout = DEFAULT_COMMAND_TIMEOUT_S if timeout is None else float(timeout)
        line = shell_join(argv, self.remote_path(cwd) if cwd else None)
        deadline = time.monotonic() + timeout
        chan = self._open_channel(deadline, timeout, str(argv[0]))
        try:
            chan.exec_command(line)
            chan.shutdown_write()  # the command reads EOF on stdin instead of waiting for input
            out, err = self._collect(chan, deadline, timeout, argv)
            rc = chan.recv_exit_status()
        except TransportError:
            raise
        except _NETWORK_ERRORS as exc:
            self.close()
            raise TransportError(
                f"{self.name}: connection to {self.target} lost while running "
                f"{argv[0]}: {exc or type(exc).__name__}"
            ) from exc
        finally:
            chan.close()
        return RunResult(rc, decode(out), decode(err))

    def _open_channel(self, deadline: float, timeout: float, what: str) -> paramiko.Channel:
        """A session channel on the shared connection.  A connection that died since its last use is
        replaced once: nothing has run yet, so the retry is safe.  A peer that does not answer at all
        (hung, blackholed) is not retried: that would only double the wait."""
        for attempt in (0, 1):
            client = self.connect()
            transport = client.get_transport()
            try:
                assert transport is not None
                return transport.open_session(timeout=max(0.1, deadline - time.monotonic()))
            except _NETWORK_ERRORS as exc:
                self.close()
                if time.monotonic() >= deadline or "Timeout" in str(exc):
                    raise TransportError(
                        f"{self.name}: command timed out after {timeout:g} s on "
                        f"{self.target}: {what} (no answer: device hung, unreachable "
                        "or blackholed?)"
                    ) from exc
                if attempt:
                    raise TransportError(
                        f"{self.name}: cannot open a session on {self.target}: "
                        f"{exc or type(exc).__name__}"
                    ) from exc
        raise AssertionError("unreachable")

    def _collect(
        self, chan: paramiko.Channel, deadline: float, timeout: float, argv: Sequence[str]
    ) -> tuple[bytes, bytes]:
        out, err = bytearray(), bytearray()
        while True:
            while chan.recv_ready():
                out += chan.recv(65536)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                transport = chan.get_transport()
                if chan.exit_status == -1 and (transport is None or not transport.is_active()):
                    self.close()
                    raise TransportError(
                        f"{self.name}: connection to {self.target} lost while running "
                        f"{argv[0]} (device crashed or network down?)"
                    )
                return bytes(out), bytes(err)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                # A frozen or blackholed device: this connection cannot be trusted any more.
                self.close()
                raise TransportError(
                    f"{self.name}: command timed out after {timeout:g} s on {self.target}: {argv[0]}"
                )
            select.select([chan], [], [], min(remaining, 1.0))

    # ------------------------------------------------------------------------------------- files

    def _sftp_client(self, timeout: float) -> paramiko.SFTPClient:
        with self._lock:
            client = self.connect()
            if self._sftp is None or self._sftp.sock.closed:
                try:
                    self._sftp = client.open_sftp()
                except _NETWORK_ERRORS as exc:
                    self.close()
                    raise TransportError(
                        f"{self.name}: cannot start SFTP on {self.target}: {exc}"
                    ) from exc
            self._sftp.get_channel().settimeout(max(0.1, timeout))
            return self._sftp

    def put(self, local: Path | str, remote: str, timeout: float | None = None) -> None:
        timeout = DEFAULT_TRANSFER_TIMEOUT_S if timeout is None else float(timeout)
        deadline = time.monotonic() + timeout
        final = self.remote_path(remote)
        tmp = temp_name(final)
        try:
            src = open(local, "rb")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise TransportError(f"{self.name}: cannot read {local}: {exc.strerror or exc}") from exc
        with src:
            sftp = self._sftp_client(min(timeout, max(self.connect_timeout, 30.0)))
            try:
                self._send(src, sftp, tmp, deadline)
                self._rename(sftp, tmp, final, deadline)
            except TransportError:
                self._discard(tmp)
                raise
            except TimeoutError as exc:
                self.close()
                raise TransportError(
                    f"{self.name}: upload of {local} to {self.target}:{final} timed out after "
                    f"{timeout:g} s; nothing was written under the final name"
                ) from exc
            except _NETWORK_ERRORS as exc:
                self.close()
                self._discard(tmp)
                raise TransportError(
                    f"{self.name}: upload of {local} to {self.target}:{final} failed: "
                    f"{exc or type(exc).__name__}; nothing was written under the final name"
                ) from exc

    def _send(self, src: BinaryIO, sftp: paramiko.SFTPClient, tmp: str, deadline: float) -> None:
        """Write ``src`` to ``tmp`` and check it there.  The file is hashed while it is sent: one
        read, and no hashing pass before the upload (a fleet push sends one model to many devices
        from one process at once)."""
        hasher, size = hashlib.sha256(), 0
        with sftp.open(tmp, "wb") as dst:
            dst.set_pipelined(True)
            for chunk in iter(lambda: src.read(_CHUNK * 8), b""):
                if time.monotonic() > deadline:
                    raise TimeoutError
                hasher.update(chunk)
                size += len(chunk)
                dst.write(chunk)
        self._verify(tmp, size, hasher.hexdigest(), deadline, sftp)

    def _verify(
        self, tmp: str, size: int, digest: str, deadline: float, sftp: paramiko.SFTPClient
    ) -> None:
        remaining = max(1.0, deadline - time.monotonic())
        rc, out, _ = self.run(["sha256sum", "--", tmp], timeout=remaining)
        if rc == 0 and out.split():
            if out.split()[0] != digest:
                raise TransportError(
                    f"{self.name}: upload to {self.target}:{tmp} is corrupt (sha256 "
                    "differs); nothing was written under the final name"
                )
            return
        remote_size = sftp.stat(tmp).st_size  # no sha256sum on the device: the size must do
        if remote_size != size:
            raise TransportError(
                f"{self.name}: upload to {self.target} is truncated ({remote_size} of "
                f"{size} bytes); nothing was written under the final name"
            )

    def _rename(self, sftp: paramiko.SFTPClient, tmp: str, final: str, deadline: float) -> None:
        try:
            sftp.posix_rename(tmp, final)  # atomic replace; an OpenSSH extension
        except OSError:
            rc, _, err = self.run(
                ["mv", "-f", "--", tmp, final], timeout=max(1.0, deadline - time.monotonic())
            )
            if rc != 0:
                raise TransportError(
                    f"{self.name}: cannot move the upload into place at {final}: {err.strip()}"
                ) from None

    def _discard(self, tmp: str) -> None:
        """Best effort: remove a partial upload (the device may be gone, which is fine)."""
        try:
            if self._client is not None and self._sftp is not None:
                self._sftp.get_channel().settimeout(2.0)
                self._sftp.remove(tmp)
        except Exception:  # noqa: BLE001 - cleanup must not mask the real error
            pass

    def get(self, remote: str, local: Path | str, timeout: float | None = None) -> None:
        timeout = DEFAULT_TRANSFER_TIMEOUT_S if timeout is None else float(timeout)
        deadline = time.monotonic() + timeout
        src_path = self.remote_path(remote)
        local = Path(local)
        tmp = Path(temp_name(str(local)))
        sftp = self._sftp_client(min(timeout, max(self.connect_timeout, 30.0)))
        try:
            size = sftp.stat(src_path).st_size
            with sftp.open(src_path, "rb") as src, open(tmp, "wb") as dst:
                src.prefetch(size)
                for chunk in iter(lambda: src.read(_CHUNK * 8), b""):
                    if time.monotonic() > deadline:
                        raise TimeoutError
                    dst.write(chunk)
            if tmp.stat().st_size != size:
                raise TransportError(f"{self.name}: download of {src_path} is truncated")
            os.replace(tmp, local)
        except FileNotFoundError as exc:
            raise TransportError(f"{self.name}: {self.target}:{src_path}: no such file") from exc
        except TransportError:
            raise
        except TimeoutError as exc:
            self.close()
            raise TransportError(
                f"{self.name}: download of {src_path} timed out after {timeout:g} s"
            ) from exc
        except _NETWORK_ERRORS as exc:
            self.close()
            raise TransportError(f"{self.name}: download of {src_path} failed: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
