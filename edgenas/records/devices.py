"""The ``devices`` and ``device_groups`` tables: the stored device record (:class:`Device`) and all of
its SQL.  Validation of what a user hands in and the rules around a device (benchmark-binary pins,
``~/.ssh/config`` aliases) live in :mod:`edgenas.device.registry`, which is the API callers use."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from edgenas.core.errors import DeviceError
from edgenas.records.classes import adopt_on_probe, class_of, validate_class
from edgenas.records.store import Store

DEFAULT_TIMEOUT_S = 10.0
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
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
    "jump_json",
    "cpus",
    "memory_budget_mb",
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

    ``jump`` (SSH): the jump hosts on the way to the device, first one first (``ProxyJump``), each a
    mapping ``host``, ``port`` and optionally ``user``, ``key_path``, ``host_key`` (a pinned
    ``SHA256:…``); empty: reached directly.

    ``cpus``: the CPU set every benchmark of the device is pinned to (``4-7``: big.LITTLE's big
    cores); part of its class (:func:`edgenas.records.classes.class_of`).  None: not pinned.

    ``memory_budget_mb``: the peak memory (MiB) this device's model may use (``device add
    --memory-budget-mb``, inventory ``edgenas_memory_mb``): ``fleet specialize`` searches each class
    under the strictest budget of its devices and ``fleet bench`` flags a device whose measured peak
    is over it (:mod:`edgenas.records.memory` says what is measured).  None: none set.
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
    jump: list[dict[str, Any]] = field(default_factory=list)
    cpus: str | None = None
    memory_budget_mb: float | None = None
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
            via = f" via {self.jump_spec}" if self.jump else ""
            return f"{user}{host}{port}{via}"
        if self.kind == "adb":
            return self.serial or ""
        return "local"

    @property
    def jump_spec(self) -> str:
        """The jump hosts as ``ssh -J`` takes them: ``user@bastion,user@inner:2222``."""
        out = []
        for hop in self.jump:
            host = str(hop.get("host", ""))
            host = f"[{host}]" if ":" in host else host
            user = f"{hop['user']}@" if hop.get("user") else ""
            port = f":{hop['port']}" if hop.get("port") and int(hop["port"]) != 22 else ""
            out.append(f"{user}{host}{port}")
        return ",".join(out)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["address"] = self.address
        data["class"] = class_of(self)
        return data


def validate_group(group: str) -> str:
    if not NAME_RE.match(group or ""):
        raise DeviceError(f"invalid group name {group!r}")
    return group




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
                json.dumps(device.jump) if device.jump else None,
                device.cpus,
                device.memory_budget_mb,
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
        jump=json.loads(row["jump_json"]) if row["jump_json"] else [],
        cpus=row["cpus"],
        memory_budget_mb=row["memory_budget_mb"] if "memory_budget_mb" in row.keys() else None,
        probe=json.loads(row["probe_json"]) if row["probe_json"] else None,
        probed_at=row["probed_at"],
        groups=list(groups),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
