"""The device registry: which devices exist, how to reach them, and what a probe found on them.

Devices are rows in the workspace database (:mod:`edgenas.records.store`), so every ``edgenas`` process
sees
the same fleet and two processes can add devices at once.  This module only records and looks up; it
never connects (that is :mod:`edgenas.device.transports`) and never probes (:mod:`edgenas.device.probe`).

``~/.ssh/config`` Host aliases are understood here because users already have them; Ansible
inventories (the usual way a Pi fleet is written down) are read by :mod:`edgenas.device.inventory`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import stat
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko

from edgenas.core.errors import DeviceError
from edgenas.device.transports.host_keys import parse_fingerprint
from edgenas.device.transports.ssh import Hop
from edgenas.records.classes import ClassError, class_of, parse_cpu_set, validate_class

# The table's record and its SQL live in records; the registry is the API callers use, so re-exported.
from edgenas.records.devices import (
    DEFAULT_TIMEOUT_S,
    NAME_RE,
    Device,
    add_device,
    get_device,
    list_devices,
    remove_device,
    save_probe,
    select_devices,
    set_device_class,
    set_groups,
    set_host_key_fingerprint,
    validate_group,
)
from edgenas.records.store import Store

KINDS = ("ssh", "adb", "local")
DEFAULT_ADB_WORKDIR = "/data/local/tmp/edgenas"
# Relative to the login directory on SSH devices (both SFTP and the shell start there).
DEFAULT_SSH_WORKDIR = "edgenas"


def validate_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise DeviceError(
            f"invalid device name {name!r}: use letters, digits, '.', '_' or '-' "
            "(at most 64, starting with a letter or digit)"
        )
    return name


def validate_benchmark_binary(path: str | os.PathLike[str]) -> str:
    """The absolute host path of a ``benchmark_model`` binary, which must be an existing regular file.

    Checked when the device is registered, so a typo fails at ``device add`` and not halfway through a
    measurement campaign.  The path is kept as given (made absolute, symlinks not resolved) for display;
    :func:`pin_benchmark_binary` records what it leads to, and a newer build behind the same path is
    refused until the device is registered again (:func:`verify_benchmark_binary`).
    """
    p = Path(os.path.expanduser(os.fspath(path))).absolute()
    if not p.exists():
        raise DeviceError(f"benchmark binary {p}: no such file")
    if not p.is_file():
        raise DeviceError(f"benchmark binary {p}: not a regular file")
    if not os.access(p, os.R_OK):
        raise DeviceError(f"benchmark binary {p}: not readable")
    return str(p)


def pin_benchmark_binary(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(real path, sha256) of the file ``path`` leads to now: every symlink resolved, the last
    component opened without following one more (a swap after resolving fails, not redirects), and the
    hash read from that open file, so the path and the hash describe the same bytes."""
    real = os.path.realpath(os.fspath(path))
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(real, flags)  # O_NONBLOCK: a FIFO put there does not hang the open
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{real} is not a regular file")
        digest = hashlib.sha256()
        with os.fdopen(fd, "rb", closefd=False) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    finally:
        os.close(fd)
    return real, digest.hexdigest()


def verify_benchmark_binary(device: Device) -> Path:
    """The pinned benchmark binary of ``device``, checked again right before it is used (hashed and
    pushed to the device): its path must still lead to the file registered, and that file must still
    have the registered sha256.  Returns that file's real path, the one to read.

    Why: the path usually lies in an inventory's repository; a later ``git pull`` or an edit can
    re-point a symlink on it at any host file (``~/.ssh/id_ed25519``), which a push would copy to the
    device.  A change, even a legitimate newer build, is refused with how to register the device
    again, so what goes to a device is always what was checked when it was registered."""
    name, path = device.name, device.benchmark_binary
    if not path:
        raise DeviceError(f"device {name}: no benchmark binary is registered")
    how = (
        f"register the binary again: `edgenas device import INVENTORY` (a device from an inventory) "
        f"or `edgenas device add {name} ... --benchmark-binary PATH --replace`"
    )
    again = f"if the change is intended, {how}"
    if not device.benchmark_binary_sha256 or not device.benchmark_binary_real:
        raise DeviceError(
            f"device {name}: its benchmark binary {path} was registered by an older edgenas that did "
            f"not record what the path led to and its sha256, so it is not pushed (the path may lead "
            f"elsewhere by now); {how}"
        )
    try:
        real, sha = pin_benchmark_binary(path)
    except OSError as exc:
        raise DeviceError(
            f"device {name}: benchmark binary {path}: {exc.strerror or exc} (registered as "
            f"{device.benchmark_binary_real}); refusing to push it; {again}"
        ) from None
    if real != device.benchmark_binary_real:
        raise DeviceError(
            f"device {name}: benchmark binary {path} now leads to {real}, not to "
            f"{device.benchmark_binary_real} as when it was registered (a symlink changed); refusing "
            f"to push it; {again}"
        )
    if sha != device.benchmark_binary_sha256:
        raise DeviceError(
            f"device {name}: benchmark binary {real} changed since it was registered (sha256 "
            f"{sha[:16]}…, registered {device.benchmark_binary_sha256[:16]}…); refusing to push it; "
            f"{again}"
        )
    return Path(real)


def make_device(
    name: str,
    kind: str,
    *,
    home: Path,
    host: str | None = None,
    user: str | None = None,
    port: int | None = None,
    key_path: str | None = None,
    serial: str | None = None,
    ssh_alias: str | None = None,
    workdir: str | None = None,
    python: str | None = None,
    timeout_s: float | None = None,
    groups: Iterable[str] = (),
    benchmark_binary: str | os.PathLike[str] | None = None,
    host_key: str | None = None,
    adb_serialno: str | None = None,
    xnnpack: bool = True,
    cache_mib: int | None = None,
    device_class: str | None = None,
    latency_budget_ms: float | None = None,
    jump: Sequence[Hop] = (),
    cpus: str | None = None,
    memory_budget_mb: float | None = None,
) -> Device:
    """Build a validated :class:`Device`, filling the per-kind defaults (workdir, python, port).

    ``benchmark_binary`` (any kind) must be an existing regular file; its absolute path is kept and
    pinned (:func:`pin_benchmark_binary`): the real file it leads to now and that file's sha256.
    ``host_key`` (SSH only) is a ``SHA256:…`` fingerprint to pin.  ``jump`` (SSH only): the jump hosts
    (:func:`parse_jump_spec`, :func:`resolve_jump`), first one first."""
    validate_name(name)
    if jump and kind != "ssh":
        raise DeviceError(f"device {name}: jump hosts only apply to SSH devices")
    if len(jump) > MAX_HOPS:
        raise DeviceError(f"device {name}: more than {MAX_HOPS} jump hosts")
    if cpus is not None:
        try:
            cpus = parse_cpu_set(cpus)
        except ValueError as exc:
            raise DeviceError(f"device {name}: {exc}") from None
    if host_key is not None:
        if kind != "ssh":
            raise DeviceError(f"device {name}: a host key fingerprint only applies to SSH devices")

        try:
            host_key = parse_fingerprint(host_key)
        except ValueError as exc:
            raise DeviceError(f"device {name}: {exc}") from None
    if kind not in KINDS:
        raise DeviceError(f"unknown device kind {kind!r} (one of {', '.join(KINDS)})")
    if kind == "ssh":
        if not host:
            raise DeviceError(f"device {name}: an SSH device needs a host")
        port = int(port or 22)
        if not 0 < port < 65536:
            raise DeviceError(f"device {name}: port {port} out of range")
        workdir = workdir or DEFAULT_SSH_WORKDIR
        python = python or "python3"
        if key_path:
            key_path = str(Path(os.path.expanduser(key_path)).resolve())
    elif kind == "adb":
        if not serial:
            raise DeviceError(f"device {name}: an ADB device needs a serial or HOST:PORT")
        workdir = workdir or DEFAULT_ADB_WORKDIR
        python = python or "python3"
    else:
        workdir = workdir or str(Path(home).resolve() / "local-device" / name)
        python = python or sys.executable
    if timeout_s is not None and timeout_s <= 0:
        raise DeviceError(f"device {name}: timeout must be positive")
    if cache_mib is not None and not 0 <= int(cache_mib) <= 1 << 20:
        raise DeviceError(f"device {name}: --cache-mib must be within 0..1048576")
    group_list = sorted({validate_group(g) for g in groups})
    if device_class is not None:
        try:
            validate_class(device_class)
        except ClassError as exc:
            raise DeviceError(f"device {name}: {exc}") from None
    if latency_budget_ms is not None and not (isinstance(latency_budget_ms, (int, float))
                                              and 0 < float(latency_budget_ms) < 1e7):
        raise DeviceError(f"device {name}: the latency budget must be a positive number of ms")
    if memory_budget_mb is not None and not (isinstance(memory_budget_mb, (int, float))
                                             and not isinstance(memory_budget_mb, bool)
                                             and 0 < float(memory_budget_mb) < 1 << 20):
        raise DeviceError(f"device {name}: the memory budget must be a positive number of MiB "
                          f"(below 1048576), not {memory_budget_mb!r}")
    binary = validate_benchmark_binary(benchmark_binary) if benchmark_binary else None
    binary_real = binary_sha256 = None
    if binary is not None:
        try:
            binary_real, binary_sha256 = pin_benchmark_binary(binary)
        except OSError as exc:
            raise DeviceError(f"benchmark binary {binary}: {exc.strerror or exc}") from None
    return Device(
        name=name,
        kind=kind,
        host=host,
        user=user,
        port=port,
        key_path=key_path,
        serial=serial,
        ssh_alias=ssh_alias,
        workdir=workdir,
        python=python,
        timeout_s=float(timeout_s or DEFAULT_TIMEOUT_S),
        host_key_fingerprint=host_key,
        benchmark_binary=binary,
        benchmark_binary_real=binary_real,
        benchmark_binary_sha256=binary_sha256,
        adb_serialno=adb_serialno if kind == "adb" else None,
        xnnpack=bool(xnnpack),
        cache_mib=None if cache_mib is None else int(cache_mib),
        device_class=device_class,
        latency_budget_ms=None if latency_budget_ms is None else float(latency_budget_ms),
        jump=[hop.to_dict() for hop in jump],
        cpus=cpus,
        memory_budget_mb=None if memory_budget_mb is None else float(memory_budget_mb),
        groups=group_list,
    )


# ------------------------------------------------------------------------------------ ssh targets


@dataclass(frozen=True)
class SSHTarget:
    host: str
    user: str | None
    port: int
    key_path: str | None
    alias: str | None
    jump: tuple[Hop, ...] = field(default=())


MAX_HOPS = 8  # jump hosts on the way to one device (a loop in ~/.ssh/config stops here too)
_HOP_HOST = re.compile(r"^[A-Za-z0-9_.%:-]{1,253}$")


def default_ssh_config() -> Path:
    return Path(os.path.expanduser("~/.ssh/config"))


def _split_user_host_port(spec: str, what: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` or ``[user@][v6addr]:port`` (``ssh -J``'s form); ``ssh://`` URIs too."""
    rest = spec.strip()
    if rest.startswith("ssh://"):
        rest = rest[len("ssh://"):].rstrip("/")
    user: str | None = None
    if "@" in rest:
        user, rest = rest.rsplit("@", 1)
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", rest)
    if m:
        host, port_s = m.group(1), m.group(2)
    elif rest.count(":") == 1:
        host, port_s = rest.split(":")
    else:
        host, port_s = rest, None
    port: int | None = None
    if port_s is not None:
        if not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise DeviceError(f"invalid port in {what} {spec!r}")
        port = int(port_s)
    if not host or (user is not None and not user):
        raise DeviceError(f"invalid {what} {spec!r}: expected [USER@]HOST[:PORT]")
    if not _HOP_HOST.match(host) or host.startswith("-") or (user is not None and (
            user.startswith("-") or not re.fullmatch(r"[A-Za-z0-9._@\\$-]{1,64}", user))):
        raise DeviceError(f"invalid {what} {spec!r}: expected [USER@]HOST[:PORT]")
    return user, host, port


def parse_jump_spec(spec: str | Sequence[str]) -> list[tuple[str | None, str, int | None]]:
    """The hops of ``ssh -J``/``ProxyJump``: comma-separated ``[user@]host[:port]`` (or ``ssh://`` URIs),
    first one first; several specs (a repeated ``--jump``) are joined in order.  ``none`` is no jump.
    Returns (user, host, port) triples, unresolved (see :func:`resolve_jump`)."""
    parts: list[str] = []
    for text in [spec] if isinstance(spec, str) else list(spec):
        if any(c.isspace() for c in text.strip()) or "\0" in text:
            raise DeviceError(f"invalid jump host list {text!r}: hosts are separated by commas only")
        parts += [p for p in text.strip().split(",")]
    if parts == ["none"]:
        return []
    if any(not p for p in parts):
        raise DeviceError(f"invalid jump host list {','.join(parts)!r}: an empty hop")
    if len(parts) > MAX_HOPS:
        raise DeviceError(f"more than {MAX_HOPS} jump hosts: {','.join(parts)}")
    return [_split_user_host_port(p, "jump host") for p in parts]


def proxy_command_error(command: str, where: str) -> DeviceError:
    """The refusal of a ``ProxyCommand`` (edgenas runs no local command to reach a device), with the
    ``ProxyJump`` it can be written as when it is the usual ``ssh -W %h:%p [user@]bastion``."""
    hint = "write the jump host as ProxyJump [USER@]HOST[:PORT] instead"
    try:
        argv = shlex.split(command)
    except ValueError:
        argv = []
    if argv and os.path.basename(argv[0]) == "ssh" and "-W" in argv:
        user = port = None
        dest = None
        i = 1
        while i < len(argv):
            a = argv[i]
            if a in ("-W", "-p", "-l", "-i", "-F", "-o", "-J"):
                if a == "-p" and i + 1 < len(argv):
                    port = argv[i + 1]
                if a == "-l" and i + 1 < len(argv):
                    user = argv[i + 1]
                i += 2
                continue
            if not a.startswith("-"):
                dest = a
            i += 1
        if dest:
            spec = (f"{user}@" if user and "@" not in dest else "") + dest + (f":{port}" if port else "")
            hint = (f"this one is ProxyJump {spec} (as an option: -o ProxyJump={spec}); write that "
                    "instead")
    return DeviceError(
        f"{where + ': ' if where else ''}ProxyCommand {command!r} is not supported (edgenas runs no "
        f"local command to reach a device); {hint}"
    )


def _config(config_path: Path) -> paramiko.SSHConfig | None:
    if not config_path.is_file():
        return None
    try:
        return paramiko.SSHConfig.from_path(str(config_path))
    except (OSError, paramiko.SSHException, ValueError) as exc:
        raise DeviceError(f"cannot read ssh config {config_path}: {exc}") from exc


def _lookup(config: paramiko.SSHConfig | None, host: str) -> dict[str, Any]:
    if config is None:
        return {}
    try:
        return dict(config.lookup(host))
    except (paramiko.SSHException, ValueError) as exc:
        raise DeviceError(f"ssh config: Host {host}: {exc}") from exc


def resolve_jump(
    spec: str | Sequence[str], ssh_config: Path | None = None, *, host_keys: Sequence[str] = (),
    _depth: int = 0,
) -> list[Hop]:
    """The jump hosts of ``spec`` (:func:`parse_jump_spec`) as OpenSSH resolves them: each hop's
    HostName, User, Port and first IdentityFile from the ssh config (what the spec says wins), and
    the first hop's own ``ProxyJump`` put before it (``ssh -J a,b`` runs ``ssh -W … a`` for the first
    hop, which reads its config).  A ``ProxyCommand`` on a hop is refused.  ``host_keys``: pinned
    fingerprints, one per hop in order (``--jump-host-key``)."""
    if _depth > MAX_HOPS:
        raise DeviceError(f"jump hosts in the ssh config lead more than {MAX_HOPS} deep (a loop?)")
    config_path = ssh_config or default_ssh_config()
    config = _config(config_path)
    hops: list[Hop] = []
    for i, (user, host, port) in enumerate(parse_jump_spec(spec)):
        entry = _lookup(config, host)
        if entry.get("proxycommand") and i == 0:
            raise proxy_command_error(str(entry["proxycommand"]),
                                      f"ssh config {config_path}: Host {host}")
        before: list[Hop] = []
        if i == 0 and entry.get("proxyjump") and entry["proxyjump"] != "none":
            before = resolve_jump(entry["proxyjump"], ssh_config, _depth=_depth + 1)
        files = entry.get("identityfile") or []
        hops += before
        hops.append(Hop(
            host=entry.get("hostname", host),
            port=port or int(entry.get("port") or 22),
            user=user or entry.get("user"),
            key_path=os.path.expanduser(files[0]) if files else None,
        ))
    if len(hops) > MAX_HOPS:
        raise DeviceError(f"more than {MAX_HOPS} jump hosts: {','.join(h.spec for h in hops)}")
    return pin_hops(hops, host_keys) if host_keys else hops


def pin_hops(hops: Sequence[Hop], host_keys: Sequence[str]) -> list[Hop]:
    """``hops`` with their host keys pinned: one ``SHA256:…`` per hop, in order (``--jump-host-key``)."""
    if len(host_keys) != len(hops):
        raise DeviceError(
            f"{len(host_keys)} jump host key(s) given for {len(hops)} jump host(s) "
            f"({','.join(h.spec for h in hops)}): give one --jump-host-key per hop, in order"
        )
    pinned = []
    for hop, fp in zip(hops, host_keys):
        try:
            pinned.append(Hop(hop.host, hop.port, hop.user, hop.key_path, parse_fingerprint(fp)))
        except ValueError as exc:
            raise DeviceError(f"jump host {hop.spec}: {exc}") from None
    return pinned


def pin_offered_hop_keys(jump: Sequence[dict[str, Any]],
                         offered: Sequence[str | None]) -> list[dict[str, Any]]:
    """The record's hops (``Device.jump``) with the key each hop just proved it holds pinned where none
    was: registration pins the hops exactly as it pins the device, so a bastion whose key changes
    later (reinstalled, or impersonated) is refused by name, whatever the known_hosts files say by
    then: an edited or shared known_hosts no longer decides for this device.  ``offered``:
    per hop, the fingerprint the registering connection verified (``None``: not reached).  A pin
    already there (``--jump-host-key``) is kept: the connection was checked against it."""
    if len(offered) != len(jump):
        raise ValueError(f"{len(offered)} fingerprints for {len(jump)} jump hosts")
    out = []
    for hop, fp in zip(jump, offered):
        hop = dict(hop)
        if fp and not hop.get("host_key"):
            hop["host_key"] = parse_fingerprint(fp)
        out.append(hop)
    return out


def keep_hop_pins(jump: Sequence[dict[str, Any]],
                  old: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``jump`` (an inventory's new record of the hops) keeping the pins of ``old`` (the stored
    record) for every hop still at the same place in the chain with the same host and port, as an
    import keeps the device's own pin: re-reading the inventory must not silently unpin a bastion.
    A pin ``jump`` already carries (trusted again during this import) wins."""
    out = []
    for i, hop in enumerate(jump):
        hop = dict(hop)
        before = old[i] if i < len(old) else None
        if (not hop.get("host_key") and before and before.get("host_key")
                and (before.get("host"), int(before.get("port") or 22))
                == (hop.get("host"), int(hop.get("port") or 22))
                and [(h.get("host"), h.get("port")) for h in old[:i]]
                == [(h.get("host"), h.get("port")) for h in jump[:i]]):
            hop["host_key"] = before["host_key"]
        out.append(hop)
    return out


def hops_of(device: Device) -> list[Hop]:
    """The device record's jump hosts as transport hops."""
    return [Hop.from_dict(h) for h in device.jump]


def parse_ssh_target(spec: str, ssh_config: Path | None = None) -> SSHTarget:
    """``USER@HOST[:PORT]``, ``[V6ADDR]:PORT`` or a ``~/.ssh/config`` Host alias, resolved.

    Values written in ``spec`` win over the config file, as with ``ssh``; the config supplies HostName,
    User, Port, the first IdentityFile and ProxyJump (its hops resolved by :func:`resolve_jump`).  A
    ProxyCommand is refused with the ProxyJump to write instead, never ignored.
    """
    user: str | None = None
    rest = spec.strip()
    if "@" in rest:
        user, rest = rest.rsplit("@", 1)
    port: int | None = None
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", rest)
    if m:
        host, port_s = m.group(1), m.group(2)
    elif rest.count(":") == 1:
        host, port_s = rest.split(":")
    else:
        host, port_s = rest, None
    if port_s is not None:
        if not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise DeviceError(f"invalid port in {spec!r}")
        port = int(port_s)
    if not host or (user is not None and not user):
        raise DeviceError(
            f"invalid SSH target {spec!r}: expected USER@HOST[:PORT] or a ~/.ssh/config alias"
        )
    config_path = ssh_config or default_ssh_config()
    alias: str | None = None
    key_path: str | None = None
    jump: tuple[Hop, ...] = ()
    config = _config(config_path)
    if config is not None:
        entry = _lookup(config, host)
        if entry.get("proxycommand"):
            raise proxy_command_error(str(entry["proxycommand"]),
                                      f"ssh config {config_path}: Host {host}")
        if entry.get("proxyjump") and entry["proxyjump"] != "none":
            jump = tuple(resolve_jump(entry["proxyjump"], config_path))
        resolved = entry.get("hostname", host)
        if resolved != host:
            alias = host
        host = resolved
        user = user or entry.get("user")
        if port is None and entry.get("port"):
            port = int(entry["port"])
        files = entry.get("identityfile") or []
        if files:
            key_path = os.path.expanduser(files[0])
    return SSHTarget(host=host, user=user, port=port or 22, key_path=key_path, alias=alias, jump=jump)


def resolve_class(store: Store, name: str) -> str:
    """A command-line target for predictors: a device's name stands for its class; any other name
    is taken as a class name."""
    try:
        return class_of(get_device(store, name))
    except DeviceError:
        return validate_class(name)


__all__ = [
    "DEFAULT_ADB_WORKDIR",
    "DEFAULT_SSH_WORKDIR",
    "DEFAULT_TIMEOUT_S",
    "Device",
    "KINDS",
    "MAX_HOPS",
    "NAME_RE",
    "Hop",
    "SSHTarget",
    "add_device",
    "default_ssh_config",
    "get_device",
    "hops_of",
    "keep_hop_pins",
    "list_devices",
    "make_device",
    "parse_jump_spec",
    "pin_hops",
    "pin_offered_hop_keys",
    "parse_ssh_target",
    "proxy_command_error",
    "pin_benchmark_binary",
    "remove_device",
    "resolve_class",
    "resolve_jump",
    "save_probe",
    "select_devices",
    "set_device_class",
    "set_groups",
    "set_host_key_fingerprint",
    "validate_benchmark_binary",
    "validate_group",
    "validate_name",
    "verify_benchmark_binary",
]
