"""The parsed form every inventory format produces (groups, hosts, variables with their origin), the
limits that bound a hostile or broken inventory, and the shared file readers."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgenas.core.errors import DeviceError

log = logging.getLogger(__name__)

MAX_INVENTORY_BYTES = 8 << 20
MAX_VARS_FILE_BYTES = 4 << 20
MAX_VARS_FILES = 1000  # files under one group_vars/NAME/ folder
MAX_HOSTS_PER_PATTERN = 10_000
MAX_HOSTS = 10_000
MAX_EXPANDED_NAMES = 100_000  # all patterns together, repeats included
MAX_GROUPS = 10_000
MAX_GROUP_EDGES = 100_000
MAX_YAML_NODES = 200_000  # group mappings visited; bounds alias bombs and recursive anchors
MAX_NESTING = 100
MAX_ANSIBLE_JSON_BYTES = 64 << 20
MAX_BINARY_BYTES = 512 << 20
ANSIBLE_TIMEOUT_S = 300.0

_YAML_EXTS = (".yml", ".yaml", ".json")
_VARS_EXTS = ("", ".yml", ".yaml", ".json")  # Ansible's order; the first one present wins
_IMPLICIT_GROUPS = ("all", "ungrouped")
_SAFE_ENTITY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_PORT_RE = re.compile(r"^[0-9]{1,5}$")
_SECTION = re.compile(r"^\[([^:\]\s]+)(?::(\w+))?\]\s*(?:#.*)?$")
_GROUP_LINE = re.compile(r"^([^:\]\s]+)\s*(?:#.*)?$")
_BRACKETED_HOSTPORT = re.compile(r"^\[(.+)\]:([0-9]+)$")
_HOSTPORT = re.compile(r"^((?:[^:\[\]]|\[[^\]]*\])*):([0-9]+)$")
_HOST_VALUE = re.compile(r"^[A-Za-z0-9_.:\[\]%-]{1,255}$")
_USER_VALUE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@-]{0,63}$")
_SERIAL_VALUE = re.compile(r"^[A-Za-z0-9_.:\[\]-]{1,255}$")
_SSH_CONNECTIONS = frozenset(
    "ssh paramiko paramiko_ssh smart ansible.builtin.ssh ansible.builtin.paramiko_ssh".split()
)
_AUTO_INTERPRETERS = ("auto", "auto_silent", "auto_legacy", "auto_legacy_silent")
# Work folders edgenas must never get: it creates, replaces and deletes files inside the work folder.
_SYSTEM_TREES = tuple(
    "/bin /boot /dev /etc /lib /lib32 /lib64 /libx32 /proc /run /sbin /sys /usr /efi /system /vendor"
    " /apex /product /odm".split()
)
_SHARED_ROOTS = frozenset(
    "/ /home /root /var /var/lib /var/tmp /var/log /tmp /opt /srv /mnt /media /data /data/local"
    " /data/local/tmp /data/data /sdcard /storage /storage/emulated /storage/emulated/0 /Users"
    " /data/data/com.termux/files /data/data/com.termux/files/home"
    " /data/data/com.termux/files/usr".split()
)
# The only characters a work folder may hold: it is an argument of the device's scripts and commands,
# and their output is matched with it (GNU ``sha256sum`` prints ``\\HASH  NAME`` with the name escaped
# when it holds a backslash or newline).
_WORKDIR_CHAR = re.compile(r"[A-Za-z0-9/._+@,:=-]")
_HOME_DIRS = re.compile(r"^/(?:home|Users)/[^/]+$|^/data/data/[^/]+$")


class NeedsAnsible(DeviceError):
    """An inventory edgenas cannot read itself (script, plugin, vault, folder); ansible-inventory can."""


@dataclass
class _Var:
    value: Any
    origin: str  # the file (or command) that set it, for error messages


@dataclass
class _Group:
    name: str
    vars: dict[str, _Var] = field(default_factory=dict)
    children: dict[str, None] = field(default_factory=dict)  # ordered set
    parents: dict[str, None] = field(default_factory=dict)
    hosts: dict[str, None] = field(default_factory=dict)
    priority: int = 1


@dataclass
class _Parsed:
    """An inventory as Ansible models it: named groups (a DAG under ``all``), hosts with their vars."""

    source: Path
    groups: dict[str, _Group] = field(default_factory=dict)
    hostvars: dict[str, dict[str, _Var]] = field(default_factory=dict)
    expanded: int = 0
    from_ansible: bool = False  # read through ansible-inventory: group_vars/host_vars already applied
    merged: bool = False  # hostvars already hold the merged result (ansible-inventory --list)

    def group(self, name: str) -> _Group:
        if name not in self.groups:
            if len(self.groups) >= MAX_GROUPS:
                raise DeviceError(f"inventory {self.source}: more than {MAX_GROUPS} groups")
            self.groups[name] = _Group(name)
        return self.groups[name]

    def add_host(self, name: str, group: str, port: int | None, origin: str) -> dict[str, _Var]:
        if name not in self.hostvars:
            if len(self.hostvars) >= MAX_HOSTS:
                raise DeviceError(f"inventory {origin}: more than {MAX_HOSTS} hosts")
            self.hostvars[name] = {}
            if port is not None:  # Ansible: a pattern's :PORT counts only where the host first appears
                self.hostvars[name]["ansible_port"] = _Var(port, origin)
        self.group(group).hosts[name] = None
        return self.hostvars[name]

    def add_child(self, parent: str, child: str, origin: str) -> None:
        if child == "all":
            raise DeviceError(f"inventory {origin}: group 'all' cannot be a child of {parent!r}")
        self.group(parent).children[child] = None
        self.group(child).parents[parent] = None

    def set_group_var(self, group: str, key: Any, value: Any, origin: str) -> None:
        if not isinstance(key, str):
            raise DeviceError(
                f"inventory {origin}: group {group}: variable name {key!r} is not a string"
            )
        g = self.group(group)
        if key == "ansible_group_priority":
            try:
                g.priority = int(value)
            except (TypeError, ValueError):
                raise DeviceError(
                    f"inventory {origin}: group {group}: ansible_group_priority: expected an integer, "
                    f"got {value!r}"
                ) from None
            return
        g.vars[key] = _Var(value, origin)


# ------------------------------------------------------------------------------------------ parsing


def _read_text(path: Path, limit: int) -> str:
    try:
        size = path.stat().st_size
        if size > limit:
            raise DeviceError(
                f"inventory {path}: {size} bytes, larger than the {limit >> 20} MiB allowed"
            )
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise DeviceError(f"cannot read inventory {path}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise DeviceError(f"inventory {path}: larger than the {limit >> 20} MiB allowed")
    if data.lstrip().startswith(b"$ANSIBLE_VAULT;"):
        raise NeedsAnsible(f"inventory {path}: vault-encrypted")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DeviceError(
            f"inventory {path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc


def _load_yaml(text: str, path: Path) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        if "!vault" in str(exc):
            raise NeedsAnsible(f"inventory {path}: holds vault-encrypted values") from exc
        raise DeviceError(f"inventory {path}: {_one_line(exc)}") from exc
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        raise DeviceError(f"inventory {path}: not valid YAML: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if value is Ellipsis:
        return "..."
    if isinstance(value, complex):
        return str(value)
    return value
