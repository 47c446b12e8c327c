"""Reading an inventory end to end (pick the format, resolve groups and variables, build devices) and
importing the devices into the workspace."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from edgenas.core.errors import DeviceError
from edgenas.device.inventory.ansible import find_ansible_inventory, run_ansible_inventory
from edgenas.device.inventory.ini_format import _parse_ini
from edgenas.device.inventory.model import (
    _IMPLICIT_GROUPS,
    _YAML_EXTS,
    MAX_INVENTORY_BYTES,
    NeedsAnsible,
    _load_yaml,
    _Parsed,
    _read_text,
    _Var,
)
from edgenas.device.inventory.values import _Ctx, _device, _truthy
from edgenas.device.inventory.variables import _finish, _merged_vars
from edgenas.device.inventory.yaml_format import _parse_yaml
from edgenas.device.registry import (
    Device,
    add_device,
    keep_hop_pins,
    list_devices,
)
from edgenas.records.store import Store


def _parse_file(path: Path) -> _Parsed:
    """An inventory file as Ansible's yaml, then ini plugin would read it (the first that accepts it)."""
    if os.access(path, os.X_OK) and path.suffix not in _YAML_EXTS + (".ini",):
        # Ansible's script plugin runs any executable file, "#!" or not (a compiled program is one
        # too); an executable .yml/.ini (a mode from a FAT drive) is read here as text, never run.
        raise NeedsAnsible(f"inventory {path}: an executable file (an inventory script)")
    text = _read_text(path, MAX_INVENTORY_BYTES)
    data: Any = None
    yaml_error: DeviceError | None = None
    try:
        data = _load_yaml(text, path)
    except NeedsAnsible:
        raise
    except DeviceError as exc:
        yaml_error = exc
    if isinstance(data, dict):
        if data.get("plugin"):
            raise NeedsAnsible(f"inventory {path}: an inventory plugin configuration ({data['plugin']})")
        parsed = _Parsed(path)
        _parse_yaml(parsed, data, str(path))
        return parsed
    if path.suffix in _YAML_EXTS:
        if yaml_error is not None:
            raise yaml_error
        if data is None:
            raise DeviceError(f"inventory {path}: empty")
        raise DeviceError(f"inventory {path}: expected a YAML mapping of groups (as `all:`)")
    parsed = _Parsed(path)
    _parse_ini(parsed, text, path)
    return parsed


def _read(path: Path, via_ansible: bool, exe: str | None) -> _Parsed:
    if via_ansible:
        return run_ansible_inventory(path, exe)
    if path.is_dir():
        raise NeedsAnsible(f"inventory {path}: a folder of inventory sources")
    return _parse_file(path)


def _resolve(
    path: Path, *, via_ansible: bool = False, ansible_inventory: str | None = None
) -> tuple[dict[str, dict[str, _Var]], dict[str, set[str]], _Parsed]:
    """(each host's merged vars, each host's groups, the parsed inventory) read by edgenas' own reader,
    or through ``ansible-inventory`` when asked to (``via_ansible``).

    Only when asked to: ``ansible-inventory`` executes an executable inventory file (whatever its name),
    runs inventory plugins (code chosen by the file) and asks for vault passwords, so an inventory that
    only Ansible can read (a script, a plugin configuration, vault-encrypted vars, a folder) is refused
    without ``--via-ansible``, whose use says the user trusts it as code.  An inventory cloned from a
    repository is otherwise data: importing it runs nothing."""
    try:
        parsed = _read(path, via_ansible, ansible_inventory)
        depth, member_of = _finish(parsed)
        merged = _merged_vars(parsed, depth, member_of, None if parsed.from_ansible else path.parent)
    except NeedsAnsible as exc:
        exe = ansible_inventory or find_ansible_inventory()
        if not exe or not os.path.exists(exe):
            raise DeviceError(
                f"{exc}: edgenas reads it through ansible-inventory, which is not installed "
                "(pip install ansible-core), and only with --via-ansible"
            ) from None
        raise DeviceError(
            f"{exc}: edgenas reads it only through ansible-inventory, which would run code from it "
            "(an executable file is run as a script, a plugin configuration runs that plugin) or ask "
            "for a vault password; if you trust this inventory as a program, import it with "
            "--via-ansible"
        ) from None
    return merged, member_of, parsed


def load_inventory(
    path: Path,
    *,
    home: Path,
    ssh_config: Path | None = None,
    via_ansible: bool = False,
    binary_dirs: Iterable[Path] = (),
    ansible_inventory: str | None = None,
    local_pythons: Iterable[Path] = (),
) -> list[Device]:
    """The devices an Ansible inventory describes, validated, sorted by name; nothing is written.

    Variables used: ``ansible_host``, ``ansible_user``, ``ansible_port``,
    ``ansible_ssh_private_key_file``, ``ansible_python_interpreter``, ``ansible_connection``
    (``local``), the jump hosts in ``ansible_ssh_args``/``ansible_ssh_common_args``/
    ``ansible_ssh_extra_args`` (``-J``, ``-o ProxyJump=…``: :mod:`.ssh_args`), and edgenas' own
    ``edgenas_kind`` (``ssh``/``adb``/``local``), ``edgenas_serial``, ``edgenas_python``,
    ``edgenas_workdir``, ``edgenas_timeout``, ``edgenas_benchmark_binary`` (relative to the
    inventory's folder), ``edgenas_latency_ms`` (the device's latency budget for ``fleet
    specialize``), ``edgenas_class`` (its device class, instead of the one derived from its probe),
    ``edgenas_cpus`` (the CPU set its benchmarks are pinned to), ``edgenas_memory_mb`` (the peak
    memory budget of its model, MiB) and ``edgenas_skip``.  Every group a
    host is in, except
    ``all`` and ``ungrouped``, becomes an edgenas group.

    Reading it runs nothing: an inventory only Ansible can read (a script, a plugin configuration,
    vault, a folder) needs ``via_ansible``.  A local device's interpreter must be this edgenas' own or
    one of ``local_pythons``; a benchmark binary must lie in the inventory's folder or ``binary_dirs``.
    """
    path = Path(path)
    merged, member_of, _ = _resolve(path, via_ansible=via_ansible, ansible_inventory=ansible_inventory)
    allowed = [Path(d) for d in binary_dirs]
    pythons = [Path(p) for p in local_pythons]
    devices = []
    for host in sorted(merged):
        ctx = _Ctx(host, merged[host], path)
        if _truthy(ctx.get("edgenas_skip")):
            continue
        groups = sorted(g for g in member_of[host] if g not in _IMPLICIT_GROUPS)
        devices.append(_device(ctx, groups, home, ssh_config, allowed, pythons))
    return devices


def inventory_view(
    path: Path, *, via_ansible: bool = False, ansible_inventory: str | None = None
) -> dict[str, Any]:
    """The inventory as ``ansible-inventory --list`` shows it (groups with direct hosts and children,
    ``_meta.hostvars`` merged): what the tests compare edgenas' reading with, and a debugging aid."""
    merged, _, parsed = _resolve(
        Path(path), via_ansible=via_ansible, ansible_inventory=ansible_inventory
    )
    out: dict[str, Any] = {
        "_meta": {"hostvars": {h: {k: v.value for k, v in hv.items()} for h, hv in merged.items() if hv}}
    }
    for name, g in parsed.groups.items():
        body: dict[str, Any] = {}
        if g.hosts and name != "all":  # Ansible lists them under ungrouped
            body["hosts"] = list(g.hosts)
        if g.children:
            body["children"] = list(g.children)
        out[name] = body
    return out


class _Joined:
    """The store as seen from inside one open transaction: registry writes join it instead of
    starting their own (``Store.transaction`` is not re-entrant: SQLite has one transaction per
    connection).  Everything else is the store's own."""

    def __init__(self, store: Store, conn: sqlite3.Connection) -> None:
        self._store, self._conn = store, conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        yield self._conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def import_inventory(store: Store, devices: Iterable[Device]) -> tuple[list[str], list[str]]:
    """Record inventory devices; the inventory is the source of truth, so existing names are updated
    (keeping their probe results, the device's and its jump hosts' pinned host-key fingerprints and,
    unless the inventory names one, the registered benchmark binary).  Returns (added, updated) names.

    Called only with devices :func:`load_inventory` has validated in full, so a bad inventory writes
    nothing; and all devices are written in one transaction, so a failure in the middle (the database
    refusing a row, a full disk, Ctrl-C) leaves the registry exactly as it was, never half an import."""
    added, updated = [], []
    try:
        with store.transaction() as conn:
            joined = cast(Store, _Joined(store, conn))
            existing = {d.name: d for d in list_devices(joined)}
            for device in devices:
                old = existing.get(device.name)
                if old is not None and (device.kind, device.host, device.port) == (
                        old.kind, old.host, old.port):
                    device = replace(device, host_key_fingerprint=old.host_key_fingerprint,
                                     jump=keep_hop_pins(device.jump, old.jump))
                if old is not None and device.benchmark_binary is None:
                    device = replace(  # its pin too: it is the same registration, kept
                        device,
                        benchmark_binary=old.benchmark_binary,
                        benchmark_binary_real=old.benchmark_binary_real,
                        benchmark_binary_sha256=old.benchmark_binary_sha256,
                    )
                add_device(joined, device, replace_existing=True)
                (updated if old is not None else added).append(device.name)
    except sqlite3.Error as exc:
        where = f" at device {device.name}" if "device" in locals() else ""
        raise DeviceError(f"importing the inventory failed{where}: {exc}; nothing was changed "
                             "(the registry is as it was)") from exc
    return added, updated
