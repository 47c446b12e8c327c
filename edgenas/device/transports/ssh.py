"""SSH devices (Raspberry Pis, Jetsons, any Linux board) through paramiko.

Facts this module is built on:

* paramiko does not set TCP_NODELAY, and without it every command round trip waits for the peer's
  delayed ACK.  We open the socket ourselves and set it; one connection is then reused for every command.
* A blackholed peer blocks a socket forever, so connect, every command and every transfer has a deadline.
* Host keys are decided by :mod:`edgenas.device.transports.host_keys`: a pinned fingerprint, else the
  workspace's ``<home>/known_hosts``, else (read-only) ``~/.ssh/known_hosts``, with ``@cert-authority``
  host certificates and ``@revoked`` keys honoured.  An unknown key is accepted only when the caller
  asked for it (``device add --accept-new-host-key``); a changed key is always refused, before
  anything is authenticated or run.
* With a key given (``--key``) only that key is offered; without one, ssh-agent and the default
  ``~/.ssh/id_*`` keys, as ssh does.  Keys readable by group or others are refused, as ssh does.
* Every argv element is ``shlex.quote``-d; the remote side runs a shell, so nothing is spliced unquoted.
* An upload is one command with the file as its stdin, checked (sha256) and renamed by the device's
  ``sh`` (:meth:`SSHTransport.put_known`), not SFTP, and AES-GCM is preferred: SFTP waits for an
  answer to every 32 KiB write, and paramiko computes a CTR cipher's per-packet HMAC in Python, so
  either would make the host's CPU, not the link, bound a push (``benchmarks/fleet.py`` times it).
* Jump hosts (``ProxyJump``): the first hop is reached over TCP, every later hop and the device through
  a ``direct-tcpip`` channel of the hop before it, passed to paramiko as ``sock=`` (what ``ssh -J``
  does, without a second ssh process).  Every hop's host key is decided exactly as the device's
  (pinned, known_hosts, ``@cert-authority``).  Hop connections are shared, counted, by every transport
  of the process going through the same chain: a campaign or a fleet push over many devices behind one
  bastion keeps one connection per hop chain, not one per device or per command.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import logging
import os
import re
import select
import shlex
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import paramiko

from edgenas.core.errors import HostKeyError, TransportError
from edgenas.core.files import atomic_write_text
from edgenas.device.scripts import script
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
    output_limit_error,
    temp_name,
    why,
)
from edgenas.device.transports.host_keys import (
    Verdict,
    decide_file,
    host_matches,
    known_key_types,
    load_known_hosts,
    order_host_key_algorithms,
    parse_fingerprint,
    revoked,
    sha256_fingerprint,
)

log = logging.getLogger(__name__)

_CHUNK = 32768  # SFTP's largest read request
# An upload's reads from the local file: one SSH packet's worth (OpenSSH's session channels take
# 32 KiB packets).  Larger buffers cost more, not less: paramiko's sendall() re-slices (copies) the
# unsent rest of its buffer after every packet.
_SEND_CHUNK = 32768
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_PUT_CORRUPT = 4  # devices/scripts/put.sh's exit status for a sha256 mismatch
_NETWORK_ERRORS = (OSError, EOFError, paramiko.SSHException)
_EOF_GRACE_S = 2.0


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


@dataclass(frozen=True)
class Hop:
    """One jump host on the way to a device (``ProxyJump``), reached through the hops before it.

    ``key_path``: the key offered to this hop (else the device's key, ssh-agent and ``~/.ssh/id_*``);
    ``host_key``: a pinned ``SHA256:…`` fingerprint (else known_hosts decides, as for a device)."""

    host: str
    port: int = 22
    user: str | None = None
    key_path: str | None = None
    host_key: str | None = None

    @property
    def target(self) -> str:
        return f"{self.user + '@' if self.user else ''}{known_hosts_name(self.host, self.port)}"

    @property
    def spec(self) -> str:
        """The hop as ``ssh -J`` takes it: ``[user@]host[:port]`` (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port != 22 else ""
        return f"{self.user + '@' if self.user else ''}{host}{port}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"host": self.host, "port": self.port}
        for name in ("user", "key_path", "host_key"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Hop:
        return cls(host=str(data["host"]), port=int(data.get("port") or 22), user=data.get("user"),
                   key_path=data.get("key_path"), host_key=data.get("host_key"))


@dataclass(frozen=True)
class _Endpoint:
    """What one SSH handshake is with: the device itself or one of its jump hosts."""

    host: str
    port: int
    user: str | None
    key_path: str | None
    pin: str | None
    replace: bool  # record the accepted key in place of what the workspace known_hosts said
    what: str  # "" for the device; "jump host user@bastion:22 (1 of 2)" for a hop
    hop: int | None = None  # which jump host (0: the first); None for the device

    @property
    def target(self) -> str:
        return f"{self.user + '@' if self.user else ''}{known_hosts_name(self.host, self.port)}"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _rewrite_known_hosts(known_hosts: Path, lines: list[str]) -> None:
    """Atomically, private to its owner, fsynced (a crash leaves the old file or the new one)."""
    atomic_write_text(known_hosts, "".join(line + "\n" for line in lines))


def _without_host(lines: list[str], name: str) -> tuple[list[str], bool]:
    """``lines`` with ``name`` taken out of every plain (unmarked) entry; lines naming only it are
    dropped.  Wildcard patterns and ``@cert-authority``/``@revoked`` lines are kept: they are about
    more than this one host, and someone wrote them on purpose."""
    out, removed = [], False
    for line in lines:
        fields = line.split()
        if not fields or fields[0].startswith(("#", "@")):
            out.append(line)
            continue
        patterns = fields[0].split(",")
        kept = [p for p in patterns if not _names(p, name)]
        if len(kept) == len(patterns):
            out.append(line)
            continue
        removed = True
        if kept:
            out.append(" ".join([",".join(kept), *fields[1:]]))
    return out, removed


def _names(pattern: str, name: str) -> bool:
    """Whether a known_hosts host pattern is exactly ``name`` (plain or hashed), not a wildcard."""
    if "*" in pattern or "?" in pattern or pattern.startswith("!"):
        return False
    return host_matches([pattern], name)


def add_known_host(
    known_hosts: Path, host: str, port: int, key: paramiko.PKey, *, replace: bool = False
) -> None:
    """Append a key to the workspace known_hosts, atomically and under a lock (two ``device add`` may
    run at once).  ``replace`` first forgets what the file said about this host (a pinned key that
    replaces a stale one).  Other lines, ``@cert-authority`` ones included, are kept as written."""
    name = known_hosts_name(host, port)
    with _locked(known_hosts):
        lines = known_hosts.read_text().splitlines() if known_hosts.exists() else []
        if replace:
            lines, _ = _without_host(lines, name)
        lines.append(f"{name} {key.get_name()} {key.get_base64()}")
        _rewrite_known_hosts(known_hosts, lines)


def forget_known_host(known_hosts: Path, host: str, port: int) -> bool:
    """Remove every key recorded for ``host:port`` (plain or hashed entries); returns whether there was
    one.  Used when a device is removed, so re-adding a reinstalled device is possible."""
    if not known_hosts.exists():
        return False
    with _locked(known_hosts):
        name = known_hosts_name(host, port)
        lines, removed = _without_host(known_hosts.read_text().splitlines(), name)
        if removed:
            _rewrite_known_hosts(known_hosts, lines)
    return removed


def check_private_key(path: str | Path) -> None:
    """Refuse a private key file that group or others may access, as OpenSSH does ("UNPROTECTED
    PRIVATE KEY FILE"): another local user could have read it, so it must not be used silently."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TransportError(f"SSH key {path}: no such file") from None
    except OSError as exc:
        raise TransportError(f"SSH key {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise TransportError(f"SSH key {path}: not a regular file")
    if st.st_mode & 0o077:
        raise TransportError(
            f"SSH key {path} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"ssh refuses such keys too. Fix it with `chmod 600 {path}`"
        )


def default_identities() -> list[str]:
    """The ``~/.ssh/id_*`` keys ssh would offer; the ones with unsafe permissions are skipped with a
    warning, as ssh skips them."""
    out = []
    for base in ("id_ed25519", "id_ecdsa", "id_rsa"):
        path = Path.home() / ".ssh" / base
        if not path.is_file():
            continue
        try:
            check_private_key(path)
        except TransportError as exc:
            log.warning("%s; this key is not offered", exc)
            continue
        out.append(str(path))
    return out


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Makes the whole host-key decision (see :mod:`edgenas.device.transports.host_keys`).  paramiko is
    given
    no known keys at all, so it calls this for every connection, after the server proved it holds the
    key and before anything is authenticated or run."""

    def __init__(self, owner: SSHTransport, endpoint: _Endpoint) -> None:
        self.owner = owner
        self.endpoint = endpoint
        self.accepted: paramiko.PKey | None = None
        self.how = ""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        t, ep = self.owner, self.endpoint
        who = f"{t.name}: {ep.what}" if ep.what else t.name
        workspace = load_known_hosts(t.known_hosts)
        user = load_known_hosts(t.user_known_hosts)
        offered = fingerprint(key)
        where = revoked(workspace + user, key)
        if where:
            raise HostKeyError(
                f"{who}: the SSH host key of {hostname} ({offered}) or its CA is marked @revoked "
                f"in {where}; refusing to connect"
            )
        fix = (
            f"If the device was reinstalled, check its key on the device (ssh-keygen -lf "
            f"/etc/ssh/ssh_host_ed25519_key.pub) and pin it: `{t.readd_command(None, key)}`"
        ) if not ep.what else (
            f"If the jump host was reinstalled, check its key there (ssh-keygen -lf "
            f"/etc/ssh/ssh_host_ed25519_key.pub) and pin it: `{t.readd_command(ep.hop, key)}`"
        )
        if ep.pin:
            pin = parse_fingerprint(ep.pin)
            if sha256_fingerprint(key) != pin:
                raise HostKeyError(
                    f"{who}: the SSH host key of {hostname} does not match the pinned fingerprint: "
                    f"pinned {pin}, offered {offered}. Refusing to connect; nothing was run. {fix}"
                )
            self.how = "pinned fingerprint"
            if ep.replace:
                self.accepted = key
            return
        files = [("user", user)] if ep.replace else [("workspace", workspace), ("user", user)]
        for label, entries in files:
            decision = decide_file(entries, hostname, ep.host, key)
            if decision.verdict is Verdict.ACCEPT:
                self.how = decision.detail
                return
            if decision.verdict is Verdict.MISMATCH:
                note = " (your ~/.ssh/known_hosts, which edgenas never edits)" if label == "user" else ""
                raise HostKeyError(
                    f"{who}: the SSH host key of {hostname} has CHANGED or is not vouched for: "
                    f"{decision.detail}{note}; offered {offered}. Refusing to connect; nothing was "
                    f"run. {fix}"
                )
        if not t.accept_new_host_key:
            if ep.what:
                raise HostKeyError(
                    f"{who}: unknown SSH host key for {hostname} ({offered}); refusing to connect. "
                    f"Check the fingerprint on the jump host (ssh-keygen -lf "
                    f"/etc/ssh/ssh_host_*_key.pub), then add the device with --jump-host-key "
                    f"{sha256_fingerprint(key)} (or --accept-new-host-key), or put the key into "
                    f"{t.known_hosts}"
                )
            raise HostKeyError(
                f"unknown SSH host key for {hostname} ({offered}); refusing to connect. Check "
                f"the fingerprint on the device (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then add "
                f"the device with --host-key {sha256_fingerprint(key)} (or --accept-new-host-key), or "
                f"put the key into {t.known_hosts}"
            )
        self.how = "trusted on first use"
        self.accepted = key  # persisted by the transport only once the connection is fully up


def _bound_silence(sock: socket.socket, timeout: float) -> None:
    """Drop the connection once the device has acknowledged nothing for 3x the connect timeout.

    Why: a blackholed or powered-off device never closes its TCP connection, so a command waited for
    its own deadline (a benchmark's is minutes) and an upload for its channel timeout.  The kernel's
    TCP_USER_TIMEOUT fails a connection whose sent data stays unacknowledged that long; paramiko's
    keepalive (every ``timeout`` s, set after the handshake) keeps data in flight while a command is
    silent, so a dead peer is noticed within about 4x the connect timeout.  Linux only; elsewhere
    the commands' own deadlines remain the bound."""
    opt = getattr(socket, "TCP_USER_TIMEOUT", None)
    if opt is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, opt, int(max(3 * timeout, 5.0) * 1000))
    except OSError:
        pass


def _abort(client: paramiko.SSHClient, sock: socket.socket) -> None:
    """Stop a half-open connection: its paramiko thread first, so it does not log a bad socket."""
    try:
        client.close()
    finally:
        sock.close()


class _OrderedTransport(paramiko.Transport):
    """A paramiko Transport that asks for host-key algorithms in our order: certificates first when a
    CA is trusted for the host (paramiko lists them last), then the key types already known for it."""

    known_types: list[str] = []
    certs_first = False
    # AES-GCM first: an AEAD cipher authenticates each packet inside OpenSSL, where CTR + HMAC has
    # paramiko build an HMAC object and compare tags byte by byte in Python for every packet, which
    # costs host CPU per byte pushed.  CTR remains for servers without GCM; CBC and 3DES are
    # not offered (OpenSSH's client dropped them from its defaults in 7.x).
    _preferred_ciphers = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr",
                          "aes192-ctr", "aes256-ctr")

    @property
    def preferred_keys(self) -> tuple[str, ...]:
        return order_host_key_algorithms(super().preferred_keys, self.known_types, self.certs_first)


class _HopPool:
    """Jump-host connections shared by the transports of this process, counted: the first transport
    through a chain opens it, the last one to let go closes it.  A dead connection is replaced by the
    next transport that needs it (one lock per chain: parallel connects to other chains go on)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chain_locks: dict[tuple[Any, ...], threading.Lock] = {}
        self._entries: dict[tuple[Any, ...], list[Any]] = {}  # key -> [client, users]

    def acquire(self, key: tuple[Any, ...],
                opener: Callable[[], paramiko.SSHClient]) -> paramiko.SSHClient:
        with self._lock:
            chain_lock = self._chain_locks.setdefault(key, threading.Lock())
        with chain_lock:
            with self._lock:
                entry = self._entries.get(key)
            if entry is not None:
                transport = entry[0].get_transport() if entry[0] is not None else None
                if transport is not None and transport.is_active():
                    with self._lock:
                        entry[1] += 1
                    return entry[0]
            client = opener()
            with self._lock:
                entry = self._entries.setdefault(key, [None, 0])
                dead, entry[0] = entry[0], client
                entry[1] += 1
            if dead is not None:
                _close_quietly(dead)
            return client

    def release(self, key: tuple[Any, ...]) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del self._entries[key]
        if entry[0] is not None:
            _close_quietly(entry[0])

    def open_count(self) -> int:
        """How many hop connections are open (tests, diagnostics)."""
        with self._lock:
            return sum(1 for e in self._entries.values() if e[0] is not None)


def _close_quietly(client: paramiko.SSHClient) -> None:
    try:
        client.close()
    except Exception:  # noqa: BLE001 - closing a dead connection may raise anything
        pass


_HOPS = _HopPool()


class SSHTransport(Transport):
    """One reusable SSH connection (commands on fresh channels; an upload is one command with the
    file as its stdin; downloads over one SFTP session)."""

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
        host_key_pin: str | None = None,
        replace_known_host: bool = False,
        jump: Sequence[Hop] = (),
    ) -> None:
        """``host_key_pin`` (``SHA256:…``) is the only key accepted when set.  ``replace_known_host``
        (``device add --replace`` with a pin) ignores what the workspace known_hosts says about this
        host and records the key that was accepted instead.  ``jump``: the jump hosts, first one
        first (``ProxyJump``); ``host`` is then resolved and reached by the last of them."""
        super().__init__(name, workdir)
        self.host, self.port, self.user, self.key_path = host, int(port), user, key_path
        self.jump: tuple[Hop, ...] = tuple(jump)
        self.known_hosts = Path(known_hosts)
        self.user_known_hosts = (
            user_known_hosts
            if user_known_hosts is not None
            else Path(os.path.expanduser("~/.ssh/known_hosts"))
        )
        self.connect_timeout = float(connect_timeout)
        self.accept_new_host_key = accept_new_host_key
        self.host_key_pin = parse_fingerprint(host_key_pin) if host_key_pin else None
        self.replace_known_host = replace_known_host
        self.host_key_how = ""
        self.accepted_fingerprint: str | None = None
        self.host_fingerprint: str | None = None
        # Per hop, the fingerprint it offered and whether it was trusted on first use now.
        self.hop_fingerprints: list[str | None] = [None] * len(self.jump)
        self.hops_accepted: list[str] = []
        self._client: paramiko.SSHClient | None = None
        self._hop_keys: list[tuple[Any, ...]] = []  # the pooled hop connections this one holds
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.RLock()

    @property
    def target(self) -> str:
        direct = f"{self.user + '@' if self.user else ''}{known_hosts_name(self.host, self.port)}"
        if not self.jump:
            return direct
        return f"{direct} via {','.join(h.spec for h in self.jump)}"

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

    def _device_endpoint(self) -> _Endpoint:
        return _Endpoint(self.host, self.port, self.user, self.key_path, self.host_key_pin,
                         self.replace_known_host, "")

    def _hop_endpoint(self, i: int) -> _Endpoint:
        hop = self.jump[i]
        what = f"jump host {hop.target} ({i + 1} of {len(self.jump)})"
        return _Endpoint(hop.host, hop.port, hop.user, hop.key_path,
                         parse_fingerprint(hop.host_key) if hop.host_key else None, False, what, i)

    def readd_command(self, hop: int | None, new_key: paramiko.PKey) -> str:
        """The ``device add --replace`` that pins ``new_key`` for the device (``hop`` None) or for jump
        host ``hop``, keeping every other end's key as this connection knows it: its pin, else the
        key it proved on the way here; ``SHA256:<…>`` marks a key to look up (a hop not reached).
        One place builds it, so the advice after a changed device key and a changed hop key agree."""
        direct = Hop(self.host, self.port, self.user).spec  # --ssh takes [USER@]HOST[:PORT] too
        parts = [f"edgenas device add {self.name} --replace --ssh {direct}"]
        if self.jump:
            parts.append(f"--jump {','.join(h.spec for h in self.jump)}")
            for i, h in enumerate(self.jump):
                if i == hop:
                    fp = sha256_fingerprint(new_key)
                elif h.host_key:
                    fp = parse_fingerprint(h.host_key)
                elif self.hop_fingerprints[i]:
                    fp = parse_fingerprint(str(self.hop_fingerprints[i]))
                else:
                    fp = f"SHA256:<key of {h.spec}>"
                parts.append(f"--jump-host-key {fp}")
        if hop is None:
            parts.append(f"--host-key {sha256_fingerprint(new_key)}")
        elif self.host_key_pin:
            parts.append(f"--host-key {self.host_key_pin}")
        return " ".join(parts)

    def _hop_key(self, i: int) -> tuple[Any, ...]:
        """What makes two transports' hop ``i`` the same connection: the chain up to it and how its
        keys are decided (another known_hosts, or trust on first use, is another connection)."""
        return (self.jump[: i + 1], str(self.known_hosts), str(self.user_known_hosts),
                self.accept_new_host_key, self.key_path)

    def _open(self) -> paramiko.SSHClient:
        """The device's connection: straight over TCP, or through the jump hosts' connections."""
        via: paramiko.SSHClient | None = None
        try:
            for i in range(len(self.jump)):
                key = self._hop_key(i)
                ep = self._hop_endpoint(i)
                previous = via
                via = _HOPS.acquire(key, lambda ep=ep, previous=previous: self._handshake(
                    ep, self._socket(ep, previous)))
                self._hop_keys.append(key)
                hop_transport = via.get_transport()
                if hop_transport is not None:
                    self.hop_fingerprints[i] = fingerprint(hop_transport.get_remote_server_key())
            return self._handshake(self._device_endpoint(), self._socket(self._device_endpoint(), via))
        except BaseException:
            self._release_hops()
            raise

    def _release_hops(self) -> None:
        keys, self._hop_keys = self._hop_keys, []
        for key in reversed(keys):
            _HOPS.release(key)

    def _socket(self, ep: _Endpoint, via: paramiko.SSHClient | None) -> Any:
        """A TCP socket to ``ep`` (TCP_NODELAY, bounded silence), or a ``direct-tcpip`` channel to it
        through the jump host ``via`` (its name is resolved there, as ``ssh -J`` has it)."""
        t = self.connect_timeout
        who = f"{self.name}: {ep.what}" if ep.what else self.name
        if via is not None:
            hop_transport = via.get_transport()
            assert hop_transport is not None
            try:
                return hop_transport.open_channel(
                    "direct-tcpip", (ep.host, ep.port), ("127.0.0.1", 0), timeout=t
                )
            except paramiko.ChannelException as exc:
                reason = {1: "the jump host does not allow TCP forwarding (AllowTcpForwarding)",
                          2: "connection failed there (device off, unreachable from the jump host, "
                             "or no sshd on that port?)",
                          3: "unknown channel type", 4: "resource shortage"}.get(exc.code, exc.text)
                raise TransportError(
                    f"{who}: cannot reach {ep.target} through the jump host "
                    f"{self.jump[-1].target if not ep.what else 'before it'}: {reason}"
                ) from exc
            except _NETWORK_ERRORS as exc:
                raise TransportError(
                    f"{who}: cannot reach {ep.target} through its jump host: {why(exc)}"
                ) from exc
        try:
            sock = socket.create_connection((ep.host, ep.port), timeout=t)
            _bound_silence(sock, t)
        except TimeoutError as exc:
            raise TransportError(
                f"{who}: cannot connect to {ep.target}: no answer within {t:g} s "
                "(device off, unreachable or blackholed?)"
            ) from exc
        except ConnectionRefusedError as exc:
            raise TransportError(
                f"{who}: cannot connect to {ep.target}: connection refused "
                "(is sshd running on that port?)"
            ) from exc
        except OSError as exc:
            raise TransportError(
                f"{who}: cannot connect to {ep.target}: {exc.strerror or exc}"
            ) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _handshake(self, ep: _Endpoint, sock: Any) -> paramiko.SSHClient:
        """The SSH handshake with ``ep`` over ``sock``: host key decided by :class:`_HostKeyPolicy`,
        then authentication.  Closes ``sock`` on failure."""
        t = self.connect_timeout
        who = f"{self.name}: {ep.what}" if ep.what else self.name
        try:
            keys = self._identities(ep)
        except TransportError:
            sock.close()
            raise
        client = paramiko.SSHClient()  # given no known keys: _HostKeyPolicy decides every time
        policy = _HostKeyPolicy(self, ep)
        client.set_missing_host_key_policy(policy)
        name = known_hosts_name(ep.host, ep.port)
        known: list[str] = []
        certs_first = False
        for path in (self.known_hosts, self.user_known_hosts):
            types, has_ca = known_key_types(load_known_hosts(path), name)
            known += types
            certs_first = certs_first or has_ca

        def transport_factory(*args: Any, **kwargs: Any) -> paramiko.Transport:
            tr = _OrderedTransport(*args, **kwargs)
            tr.known_types, tr.certs_first = known, certs_first
            return tr

        try:
            client.connect(
                ep.host,
                port=ep.port,
                username=ep.user,
                sock=sock,
                timeout=t,
                banner_timeout=t,
                auth_timeout=t,
                channel_timeout=t,
                transport_factory=transport_factory,
                **keys,
            )
        except HostKeyError:
            _abort(client, sock)
            raise
        except paramiko.BadHostKeyException as exc:
            _abort(client, sock)
            raise HostKeyError(
                f"{who}: the SSH host key of {name} has "
                f"CHANGED: "
                f"known {fingerprint(exc.expected_key)}, offered {fingerprint(exc.key)}. Refusing to "
                f"connect; nothing was run. If the device was reinstalled, verify the new key, then "
                f"`edgenas device remove {self.name}` and add it again with --accept-new-host-key"
            ) from exc
        except paramiko.PasswordRequiredException as exc:
            _abort(client, sock)
            raise TransportError(
                f"{who}: the key {ep.key_path or self.key_path} is encrypted; give an unencrypted "
                "key or load it into ssh-agent"
            ) from exc
        except paramiko.SSHException as exc:
            _abort(client, sock)
            auth = isinstance(exc, paramiko.AuthenticationException) or "No authentication" in str(exc)
            if not auth:
                msg = f"{who}: SSH connection to {ep.target} failed: {exc}"
                raise TransportError(msg) from exc
            key = ep.key_path or self.key_path
            how = f"key {key}" if key else "ssh-agent and the ~/.ssh/id_* keys"
            raise TransportError(
                f"{who}: authentication to {ep.target} failed with {how}"
            ) from exc
        except TimeoutError as exc:
            _abort(client, sock)
            raise TransportError(
                f"{who}: {ep.target} did not complete the SSH handshake within {t:g} s"
            ) from exc
        except _NETWORK_ERRORS as exc:
            _abort(client, sock)
            raise TransportError(f"{who}: SSH connection to {ep.target} failed: {exc}") from exc
        transport = client.get_transport()
        assert transport is not None
        # With _bound_silence: a silent command still has keepalive data in flight to be acked.
        transport.set_keepalive(max(1, min(15, int(t))))
        server_key = transport.get_remote_server_key()
        if not ep.what:
            self.host_fingerprint = fingerprint(server_key)
            self.host_key_how = policy.how
        if policy.accepted is not None:
            add_known_host(self.known_hosts, ep.host, ep.port, policy.accepted, replace=ep.replace)
            if ep.what:
                self.hops_accepted.append(fingerprint(policy.accepted))
            else:
                self.accepted_fingerprint = fingerprint(policy.accepted)
        return client

    def _identities(self, ep: _Endpoint | None = None) -> dict[str, Any]:
        """What paramiko may offer: only the given key, or ssh-agent plus the default keys.  A jump
        host without a key of its own is offered the device's key too (after ssh-agent)."""
        if ep is not None and ep.what:
            if ep.key_path:
                check_private_key(ep.key_path)
                return {"key_filename": [ep.key_path], "look_for_keys": False, "allow_agent": False}
            extra = [self.key_path] if self.key_path else []
            for path in extra:
                check_private_key(path)
            return {"key_filename": (extra + default_identities()) or None, "look_for_keys": False,
                    "allow_agent": True}
        if self.key_path:
            check_private_key(self.key_path)
            return {"key_filename": [self.key_path], "look_for_keys": False, "allow_agent": False}
        defaults = default_identities() or None
        return {"key_filename": defaults, "look_for_keys": False, "allow_agent": True}

    def _drop(self) -> None:
        for thing in (self._sftp, self._client):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # noqa: BLE001 - closing a dead connection may raise anything
                    pass
        self._sftp = None
        self._client = None
        self._release_hops()

    def close(self) -> None:
        with self._lock:
            self._drop()

    # ----------------------------------------------------------------------------------- commands

    def run(
        self,
        argv: Sequence[str],
        timeout: float | None = None,
        cwd: str | None = None,
        *,
        max_stdout: int = DEFAULT_MAX_STDOUT,
        max_stderr: int = DEFAULT_MAX_STDERR,
    ) -> RunResult:
        timeout = DEFAULT_COMMAND_TIMEOUT_S if timeout is None else float(timeout)
        line = shell_join(argv, self.remote_path(cwd) if cwd else None)
        deadline = time.monotonic() + timeout
        chan = self._open_channel(deadline, timeout, str(argv[0]))
        try:
            chan.exec_command(line)
            chan.shutdown_write()  # the command reads EOF on stdin instead of waiting for input
            out, err = self._collect(chan, deadline, timeout, argv, (max_stdout, max_stderr))
            rc = chan.recv_exit_status()
        except TransportError:
            raise
        except _NETWORK_ERRORS as exc:
            self.close()
            raise TransportError(
                f"{self.name}: connection to {self.target} lost while running "
                f"{argv[0]}: {why(exc)}"
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
                        f"{why(exc)}"
                    ) from exc
        raise AssertionError("unreachable")

    def _collect(
        self,
        chan: paramiko.Channel,
        deadline: float,
        timeout: float,
        argv: Sequence[str],
        limits: tuple[int, int],
    ) -> tuple[bytes, bytes]:
        """Read both streams until the exit status.  Past a limit the channel is closed (run's
        finally): sshd then closes the command's pipes and a writing command dies of SIGPIPE."""
        out, err = bytearray(), bytearray()
        grace: float | None = None
        chan.fileno()  # creates the pipe select() waits on; paramiko wires only stdout to it, so
        try:  # stderr is wired too (else stderr-only output would be read once per wait below)
            chan.in_stderr_buffer.set_event(chan._pipe)
            wait = 1.0
        except AttributeError:  # paramiko internals changed: poll instead
            wait = 0.05
        while True:
            while chan.recv_ready():
                out += chan.recv(65536)
                if len(out) > limits[0]:
                    raise output_limit_error(self.name, argv, "stdout", limits[0])
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
                if len(err) > limits[1]:
                    raise output_limit_error(self.name, argv, "stderr", limits[1])
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                transport = chan.get_transport()
                if chan.exit_status == -1 and (transport is None or not transport.is_active()):
                    self.close()
                    raise TransportError(
                        f"{self.name}: connection to {self.target} lost while running "
                        f"{argv[0]} (device crashed or network down?)"
                    )
                # sshd may send the exit status before the last of stderr; the channel's EOF comes
                # after both streams are drained.  A command that left a background child holding
                # the pipes gets a short grace, not the whole deadline.
                if grace is None:
                    grace = time.monotonic() + _EOF_GRACE_S
                if chan.eof_received or time.monotonic() >= min(grace, deadline):
                    return bytes(out), bytes(err)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                # A frozen or blackholed device: this connection cannot be trusted any more.
                self.close()
                raise TransportError(
                    f"{self.name}: command timed out after {timeout:g} s on {self.target}: {argv[0]}"
                )
            if grace is not None:
                # Exit status in, EOF not yet: the channel's pipe may stay readable with nothing to
                # read, so select() would return at once and spin; EOF follows within milliseconds.
                time.sleep(min(remaining, 0.001))
            elif chan.eof_received:
                # EOF in, exit status not yet (sshd sends it once it has reaped the command): the
                # closed buffers keep the pipe readable, so select() would spin; nothing more can
                # arrive but the status, and a closed channel sets this event too.
                chan.status_event.wait(min(remaining, wait))
            else:
                select.select([chan], [], [], min(remaining, wait))

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
        self.put_known(local, remote, None, timeout)

    def put_known(self, local: Path | str, remote: str, sha256: str | None,
                  timeout: float | None = None) -> None:
        """One command per file (devices/scripts/put.sh): the bytes go to the device's ``sh`` as its
        stdin on a plain exec channel; it writes them to the hidden temp name, checks sha256 (or the
        size where there is no sha256sum), and renames; a failure removes the temp file there.
        Why not SFTP: its 32 KiB requests each get an answer the host must decrypt, authenticate
        and parse, which made the upload most of a push's host CPU, plus four more round trips
        (open, close, hash, rename)."""
        timeout = DEFAULT_TRANSFER_TIMEOUT_S if timeout is None else float(timeout)
        deadline = time.monotonic() + timeout
        final = self.remote_path(remote)
        tmp = temp_name(final)
        try:
            src = open(local, "rb")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise TransportError(f"{self.name}: cannot read {local}: {exc.strerror or exc}") from exc
        with src:
            size = os.fstat(src.fileno()).st_size
            if sha256 is None or not _SHA256_RE.fullmatch(sha256):
                hasher = hashlib.sha256()
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    hasher.update(chunk)
                sha256 = hasher.hexdigest()
                src.seek(0)
            argv = ["sh", "-c", script("put"), "put", tmp, final, sha256, str(size)]
            where = f"upload of {local} to {self.target}:{final}"
            chan = self._open_channel(deadline, timeout, "upload")
            try:
                chan.exec_command(shell_join(argv))
                try:
                    self._stream(chan, src, size, deadline)
                except TimeoutError as exc:
                    self.close()
                    raise TransportError(f"{self.name}: {where} timed out after {timeout:g} s; "
                                         "nothing was written under the final name") from exc
                except _NETWORK_ERRORS as exc:
                    self.close()
                    raise TransportError(f"{self.name}: {where} failed: {why(exc)}; nothing was "
                                         "written under the final name") from exc
                try:
                    _out, err = self._collect(chan, deadline, timeout, argv, (64 * 1024, 64 * 1024))
                    rc = chan.recv_exit_status()
                except (TransportError, *_NETWORK_ERRORS) as exc:
                    self.close()  # sent in full: the device may or may not have renamed it
                    raise TransportError(f"{self.name}: {where} did not finish: {why(exc)}; the final "
                                         "name holds the old file or the complete new one") from exc
            finally:
                chan.close()
        if rc == 0:
            return
        reason = "; ".join(decode(err).strip().splitlines()[-3:])[-300:] or f"exit {rc}"
        if rc == _PUT_CORRUPT:
            reason = f"the upload is corrupt on the device (sha256 differs): {reason}"
        raise TransportError(f"{self.name}: {where} failed: {reason}; nothing was written under the "
                             "final name")

    def _stream(self, chan: paramiko.Channel, src: BinaryIO, size: int, deadline: float) -> None:
        """Send ``size`` bytes of ``src`` as the command's stdin, then EOF; TimeoutError past the
        deadline (a blackholed device stops acknowledging, and the channel's window stays shut)."""
        sent = 0
        while True:
            chunk = src.read(_SEND_CHUNK)
            if not chunk:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            chan.settimeout(remaining)
            chan.sendall(chunk)
            sent += len(chunk)
        if sent != size:  # the local file changed while it was sent: the device refuses it anyway
            log.warning("%s: %d bytes sent, the file had %d when the upload started", self.name, sent,
                        size)
        chan.shutdown_write()
        chan.settimeout(None)

    def get(
        self,
        remote: str,
        local: Path | str,
        timeout: float | None = None,
        *,
        max_bytes: int = DEFAULT_MAX_GET_BYTES,
    ) -> None:
        timeout = DEFAULT_TRANSFER_TIMEOUT_S if timeout is None else float(timeout)
        deadline = time.monotonic() + timeout
        src_path = self.remote_path(remote)
        local = Path(local)
        tmp = Path(temp_name(str(local)))
        sftp = self._sftp_client(min(timeout, max(self.connect_timeout, 30.0)))
        try:
            size = sftp.stat(src_path).st_size or 0
            if size > max_bytes:
                raise download_limit_error(self.name, src_path, max_bytes)
            got = 0
            with sftp.open(src_path, "rb") as src, open(tmp, "wb") as dst:
                src.prefetch(size)
                for chunk in iter(lambda: src.read(_CHUNK * 8), b""):
                    if time.monotonic() > deadline:
                        raise TimeoutError
                    got += len(chunk)
                    if got > max_bytes:  # the file grew on the device while it was read
                        raise download_limit_error(self.name, src_path, max_bytes)
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
