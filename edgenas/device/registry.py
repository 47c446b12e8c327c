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
import json
import os
import re
import stat
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import paramiko

from edgenas.core.errors import DeviceError
from edgenas.records.classes import ClassError, adopt_on_probe, class_of, validate_class
from edgenas.records.store import Store

KINDS = ("ssh", "adb", "local")
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_ADB_WORKDIR = "/data/local/tmp/edgenas"
# Relative to the login directory on SSH devices (both SFTP and the shell start there).
DEFAULT_SSH_WORKDIR = "edgenas"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_COLUMNS = (
    "name",
    "kind",
    "host",
    "user",
    "port",
    "key_path",
    "serial",
    "ssh_alias",
    "workdir",
    "python",
    "timeout_s",
    "host_key_fingerprint",
    "benchmark_binary",
    "benchmark_binary_real",
    "benchmark_binary_sha256",
    "adb_serialno",
    "xnnpack",
    "cache_mib",
    "device_class",
    "latency_budget_ms",
    "probe_json",
    "probed_at",
    "created_at",
    "updated_at",
)


@dataclass
class Device:
    """One registered device.  ``workdir`` is where the runner and models go on the device.

    ``benchmark_binary``: the host path of LiteRT's ``benchmark_model`` for this device (a phone without
    Python); when set, benchmarks push and run that binary instead of the Python runner.
    ``benchmark_binary_real`` and ``benchmark_binary_sha256`` pin it: the file that path led to when the
    device was registered (symlinks resolved) and that file's sha256.  The path is followed again only
    through :func:`verify_benchmark_binary`, which refuses a change: a symlink re-pointed later (a ``git
    pull`` of the inventory's repository) must not send another host file, a private key, to a device.
    A record from before pinning has neither and is refused until it is registered again.

    ``host_key_fingerprint`` (SSH): the pinned ``SHA256:…`` (``device add --host-key``, or the key
    trusted on first use); a connection offering another key is refused.  ``adb_serialno`` (ADB): the
    device's ``ro.serialno`` seen at ``device add``; another serial at that address is refused.

    ``xnnpack``: False for a device profile whose runtime runs without XNNPACK (``device add
    --no-xnnpack``): every benchmark of the device then uses the builtin kernels only, and a latency
    predictor fitted with XNNPACK is refused for it (the costs differ, int8's most of all).

    ``cache_mib``: the bound of the device's model/input cache (``device add --cache-mib``; None: the
    default), trimmed least recently used first.

    ``device_class``: the class the user named (``device add --class``); None: derived from the probe
    (:func:`edgenas.records.classes.class_of` gives the class either way).

    ``latency_budget_ms``: the latency this device's model must keep (``fleet specialize`` gives each
    class the strictest budget of its devices); None: none set.
    """

    name: str
    kind: str
    host: str | None = None
    user: str | None = None
    port: int | None = None
    key_path: str | None = None
    serial: str | None = None
    ssh_alias: str | None = None
    workdir: str | None = None
    python: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    host_key_fingerprint: str | None = None
    benchmark_binary: str | None = None
    benchmark_binary_real: str | None = None
    benchmark_binary_sha256: str | None = None
    adb_serialno: str | None = None
    xnnpack: bool = True
    cache_mib: int | None = None
    device_class: str | None = None
    latency_budget_ms: float | None = None
    groups: list[str] = field(default_factory=list)
    probe: dict[str, Any] | None = None
    probed_at: float | None = None
    created_at: float | None = None
    updated_at: float | None = None

    @property
    def address(self) -> str:
        """How the device is reached, in the form a user would type it."""
        if self.kind == "ssh":
            user = f"{self.user}@" if self.user else ""
            host = f"[{self.host}]" if self.host and ":" in self.host else self.host
            port = f":{self.port}" if self.port and self.port != 22 else ""
            return f"{user}{host}{port}"
        if self.kind == "adb":
            return self.serial or ""
        return "local"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["address"] = self.address
        data["class"] = class_of(self)
        return data


def validate_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
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
) -> Device:
    """Build a validated :class:`Device`, filling the per-kind defaults (workdir, python, port).

    ``benchmark_binary`` (any kind) must be an existing regular file; its absolute path is kept and
    pinned (:func:`pin_benchmark_binary`): the real file it leads to now and that file's sha256.
    ``host_key`` (SSH only) is a ``SHA256:…`` fingerprint to pin."""
    validate_name(name)
    if host_key is not None:
        if kind != "ssh":
            raise DeviceError(f"device {name}: a host key fingerprint only applies to SSH devices")
        from edgenas.device.transports.host_keys import parse_fingerprint

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
        groups=group_list,
    )


def validate_group(group: str) -> str:
    if not _NAME_RE.match(group or ""):
        raise DeviceError(f"invalid group name {group!r}")
    return group


# ---------------------------------------------------------------------------------------------- store


def add_device(store: Store, device: Device, *, replace_existing: bool = False) -> Device:
    """Record ``device``.  An existing name is an error unless ``replace_existing`` (probe data kept)."""
    now = time.time()
    with store.transaction() as conn:
        old = conn.execute(
            "SELECT created_at, probe_json, probed_at FROM devices WHERE name = ?", (device.name,)
        ).fetchone()
        if old is not None and not replace_existing:
            raise DeviceError(
                f"device {device.name} already exists (remove it first, or pick another name)"
            )
        created = old["created_at"] if old else now
        probe_json = (
            json.dumps(device.probe)
            if device.probe is not None
            else (old["probe_json"] if old else None)
        )
        probed_at = device.probed_at if device.probe is not None else (old["probed_at"] if old else None)
        conn.execute("DELETE FROM devices WHERE name = ?", (device.name,))
        conn.execute(
            f"INSERT INTO devices ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
            (
                device.name,
                device.kind,
                device.host,
                device.user,
                device.port,
                device.key_path,
                device.serial,
                device.ssh_alias,
                device.workdir,
                device.python,
                device.timeout_s,
                device.host_key_fingerprint,
                device.benchmark_binary,
                device.benchmark_binary_real,
                device.benchmark_binary_sha256,
                device.adb_serialno,
                int(device.xnnpack),
                device.cache_mib,
                device.device_class,
                device.latency_budget_ms,
                probe_json,
                probed_at,
                created,
                now,
            ),
        )
        conn.executemany(
            "INSERT INTO device_groups (device, grp) VALUES (?, ?)",
            [(device.name, g) for g in sorted(set(device.groups))],
        )
    return get_device(store, device.name)


def get_device(store: Store, name: str) -> Device:
    rows = store.query("SELECT * FROM devices WHERE name = ?", (name,))
    if not rows:
        raise DeviceError(f"no device named {name!r} (see `edgenas device list`)")
    return _from_row(rows[0], _groups(store, [name]).get(name, []))


def list_devices(store: Store, group: str | None = None) -> list[Device]:
    """All devices sorted by name, or only the members of ``group``."""
    if group is None:
        rows = store.query("SELECT * FROM devices ORDER BY name")
    else:
        rows = store.query(
            "SELECT d.* FROM devices d JOIN device_groups g ON g.device = d.name "
            "WHERE g.grp = ? ORDER BY d.name",
            (group,),
        )
    groups = _groups(store, [r["name"] for r in rows])
    return [_from_row(r, groups.get(r["name"], [])) for r in rows]


def select_devices(store: Store, names_or_groups: Iterable[str]) -> list[Device]:
    """Resolve command-line targets: each is a device name or a group name; nothing given = all."""
    targets = list(names_or_groups)
    if not targets:
        return list_devices(store)
    out: dict[str, Device] = {}
    for target in targets:
        members = list_devices(store, group=target)
        if members:
            out.update((d.name, d) for d in members)
        else:
            out[target] = get_device(store, target)
    return [out[k] for k in sorted(out)]


def remove_device(store: Store, name: str) -> None:
    with store.transaction() as conn:
        if conn.execute("DELETE FROM devices WHERE name = ?", (name,)).rowcount == 0:
            raise DeviceError(f"no device named {name!r} (see `edgenas device list`)")


def set_groups(store: Store, names: Iterable[str], group: str, member: bool) -> None:
    """Add the named devices to ``group`` (``member=True``) or take them out of it."""
    validate_group(group)
    names = list(names)
    with store.transaction() as conn:
        for name in names:
            if conn.execute("SELECT 1 FROM devices WHERE name = ?", (name,)).fetchone() is None:
                raise DeviceError(f"no device named {name!r} (see `edgenas device list`)")
            if member:
                conn.execute(
                    "INSERT OR IGNORE INTO device_groups (device, grp) VALUES (?, ?)", (name, group)
                )
            else:
                conn.execute("DELETE FROM device_groups WHERE device = ? AND grp = ?", (name, group))


def save_probe(store: Store, name: str, probe: Mapping[str, Any]) -> None:
    """Store a device's probe.  Its first probe also takes the measurements it took unprobed into the
    class the probe derives (:func:`edgenas.records.classes.adopt_on_probe`)."""
    device = get_device(store, name)
    now = time.time()
    with store.transaction() as conn:
        cur = conn.execute(
            "UPDATE devices SET probe_json = ?, probed_at = ?, updated_at = ? WHERE name = ?",
            (json.dumps(dict(probe)), now, now, name),
        )
        if cur.rowcount == 0:
            raise DeviceError(f"no device named {name!r}")
        adopt_on_probe(conn, device, probe)


def set_device_class(store: Store, names: Iterable[str], device_class: str | None) -> None:
    """Name the class of the devices (None: derive it from the probe again).  Measurements already
    taken stay with the class they were taken in."""
    if device_class is not None:
        validate_class(device_class)
    with store.transaction() as conn:
        for name in names:
            cur = conn.execute("UPDATE devices SET device_class = ?, updated_at = ? WHERE name = ?",
                               (device_class, time.time(), name))
            if cur.rowcount == 0:
                raise DeviceError(f"no device named {name!r} (see `edgenas device list`)")


def set_host_key_fingerprint(store: Store, name: str, fingerprint: str | None) -> None:
    with store.transaction() as conn:
        conn.execute(
            "UPDATE devices SET host_key_fingerprint = ?, updated_at = ? WHERE name = ?",
            (fingerprint, time.time(), name),
        )


def _groups(store: Store, names: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if not names:
        return out
    marks = ", ".join("?" * len(names))
    for row in store.query(
        f"SELECT device, grp FROM device_groups WHERE device IN ({marks}) ORDER BY grp", tuple(names)
    ):
        out.setdefault(row["device"], []).append(row["grp"])
    return out


def _from_row(row: Any, groups: list[str]) -> Device:
    return Device(
        name=row["name"],
        kind=row["kind"],
        host=row["host"],
        user=row["user"],
        port=row["port"],
        key_path=row["key_path"],
        serial=row["serial"],
        ssh_alias=row["ssh_alias"],
        workdir=row["workdir"],
        python=row["python"],
        timeout_s=row["timeout_s"],
        host_key_fingerprint=row["host_key_fingerprint"],
        benchmark_binary=row["benchmark_binary"],
        benchmark_binary_real=row["benchmark_binary_real"],
        benchmark_binary_sha256=row["benchmark_binary_sha256"],
        adb_serialno=row["adb_serialno"],
        xnnpack=bool(row["xnnpack"]) if row["xnnpack"] is not None else True,
        cache_mib=row["cache_mib"],
        device_class=row["device_class"],
        latency_budget_ms=row["latency_budget_ms"],
        probe=json.loads(row["probe_json"]) if row["probe_json"] else None,
        probed_at=row["probed_at"],
        groups=list(groups),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


# ------------------------------------------------------------------------------------ ssh targets


@dataclass(frozen=True)
class SSHTarget:
    host: str
    user: str | None
    port: int
    key_path: str | None
    alias: str | None


def default_ssh_config() -> Path:
    return Path(os.path.expanduser("~/.ssh/config"))


def parse_ssh_target(spec: str, ssh_config: Path | None = None) -> SSHTarget:
    """``USER@HOST[:PORT]``, ``[V6ADDR]:PORT`` or a ``~/.ssh/config`` Host alias, resolved.

    Values written in ``spec`` win over the config file, as with ``ssh``; the config supplies HostName,
    User, Port and the first IdentityFile.
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
    if config_path.is_file():
        try:
            entry = paramiko.SSHConfig.from_path(str(config_path)).lookup(host)
        except (OSError, paramiko.SSHException, ValueError) as exc:
            raise DeviceError(f"cannot read ssh config {config_path}: {exc}") from exc
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
    return SSHTarget(host=host, user=user, port=port or 22, key_path=key_path, alias=alias)


def resolve_class(store: Store, name: str) -> str:
    """A command-line target for predictors: a device's name stands for its class; any other name
    is taken as a class name."""
    try:
        return class_of(get_device(store, name))
    except DeviceError:
        return validate_class(name)
