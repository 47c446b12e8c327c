"""Ansible inventories read as Ansible reads them, turned into edgenas devices.

A Pi fleet is usually already written down as an Ansible inventory, so ``edgenas device import`` takes
the same files: INI (Ansible's default format) or YAML, with ``group_vars/`` and ``host_vars/`` beside
them, merged with Ansible's variable precedence.  Anything else Ansible can read (inventory scripts,
plugin configurations, vault-encrypted files, inventory folders) is read through ``ansible-inventory
--list``, only when the user asks for it (``--via-ansible``: Ansible runs such inventories as code);
its JSON is treated as untrusted input like any other.

An inventory is user input that decides what edgenas later runs and deletes on devices, so every value
edgenas uses is validated before anything is written to the database: one line names the file, the host
and the variable.  Host ranges are counted before they are expanded; a device's work folder may not be
``/``, a home folder itself or a system folder (edgenas deletes inside it); a benchmark binary (uploaded
and executed later) must be an ELF executable inside the inventory's folder or a folder the user allows,
and is pinned by its real path and sha256; an interpreter is one program, never a command line, and a
local device's may only be this edgenas' own or one the user allows; a work folder holds only plain
characters.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import posixpath
import re
import shlex
import shutil
import sqlite3
import stat
import string
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn, cast

import yaml

from edgenas.core.errors import DeviceError
from edgenas.device.registry import (
    Device,
    add_device,
    list_devices,
    make_device,
    parse_ssh_target,
    validate_group,
    validate_name,
)
from edgenas.records.store import Store

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


# ------------------------------------------------------------------------------------- host patterns


def _range_values(spec: str, pattern: str) -> tuple[int, Any]:
    """One ``[begin:end(:step)]`` of a host pattern: (how many values, a function yielding them).

    Counting first lets the caller refuse ``pi[0:99999999]`` without building a list of its names."""
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise DeviceError(f"host pattern {pattern!r}: a range is [begin:end] or [begin:end:step]")
    begin, end = parts[0] or "0", parts[1]
    if not end:
        raise DeviceError(f"host pattern {pattern!r}: the range has no end")
    step_s = parts[2] if len(parts) == 3 else "1"
    if not step_s.isdigit() or int(step_s) < 1:
        raise DeviceError(f"host pattern {pattern!r}: the step must be a positive integer")
    step = int(step_s)
    letters = string.ascii_letters
    if len(begin) == 1 and len(end) == 1 and begin in letters and end in letters:
        lo, hi = letters.index(begin), letters.index(end)
        if lo > hi:
            raise DeviceError(f"host pattern {pattern!r}: the range must have begin <= end")
        values = letters[lo : hi + 1 : step]
        return len(values), lambda: iter(values)
    if not (begin.isdigit() and end.isdigit()):
        raise DeviceError(f"host pattern {pattern!r}: a range is numbers ([1:4]) or letters ([a:d])")
    width = len(begin) if begin.startswith("0") and len(begin) > 1 else 0
    if width and len(end) != width:
        raise DeviceError(
            f"host pattern {pattern!r}: a zero-padded range needs begin and end of equal length"
        )
    lo_i, hi_i = int(begin), int(end)
    count = max(0, (hi_i - lo_i) // step + 1)
    return count, lambda: (str(i).zfill(width) for i in range(lo_i, hi_i + 1, step))


def split_host_port(pattern: str) -> tuple[str, int | None]:
    """``host:PORT``, ``[v6addr]:PORT``, ``pi[01:04]:PORT`` → (host pattern, port), as Ansible splits."""
    for regex in (_BRACKETED_HOSTPORT, _HOSTPORT):
        m = regex.match(pattern)
        if m:
            return m.group(1), int(m.group(2))
    return pattern, None


def expand_host_pattern(
    pattern: str, limit: int = MAX_HOSTS_PER_PATTERN
) -> tuple[list[str], int | None]:
    """Ansible's host pattern → (names, port): ``pi[01:04]``, ``node[a:f]``, ``pi[01:10:2]``, several
    ranges in one name (``r[1:2]-n[1:3]``), an optional ``:PORT``.

    The number of names is the product of the ranges' lengths, computed before anything is expanded:
    more than ``limit`` is an error (a typo such as ``pi[0:99999999]`` would otherwise eat the memory).
    """
    if not isinstance(pattern, str) or not pattern.strip():
        raise DeviceError(f"host pattern {pattern!r}: expected a non-empty name")
    host, port = split_host_port(pattern)
    if pattern.strip().endswith(":") and port is None:
        raise DeviceError(f"host pattern {pattern!r}: a trailing ':' must be followed by a port")
    if port is not None and not 0 < port < 65536:
        raise DeviceError(f"host pattern {pattern!r}: port {port} out of range")
    # Ansible takes the first '[' with the first ']' after it, then expands what follows recursively.
    pieces: list[str | tuple[int, Any]] = []
    rest = host
    total = 1
    while "[" in rest:
        start = rest.index("[")
        stop = rest.find("]", start)
        if stop < 0:
            raise DeviceError(f"host pattern {pattern!r}: '[' without ']'")
        pieces.append(rest[:start])
        count, values = _range_values(rest[start + 1 : stop], pattern)
        pieces.append((count, values))
        total *= count
        if total > limit:
            raise DeviceError(
                f"host pattern {pattern!r}: expands to "
                f"{total if total < 10**12 else 'over 10^12'} hosts "
                f"(at most {limit} per pattern)"
            )
        rest = rest[stop + 1 :]
    pieces.append(rest)
    names = [""]
    for piece in pieces:
        if isinstance(piece, str):
            names = [n + piece for n in names]
        else:
            vals = list(piece[1]())
            names = [n + v for n in names for v in vals]
    return names, port


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


def _parse_yaml(parsed: _Parsed, data: dict[Any, Any], origin: str) -> None:
    budget = [MAX_YAML_NODES]
    for name, body in data.items():
        _yaml_group(parsed, name, body, origin, budget, 0)


def _yaml_group(
    parsed: _Parsed, name: Any, body: Any, origin: str, budget: list[int], depth: int
) -> str:
    if not isinstance(name, str):
        raise DeviceError(f"inventory {origin}: group name {name!r} is not a string")
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_NESTING:
        raise DeviceError(
            f"inventory {origin}: groups nested too deep or too many (recursive YAML anchors?)"
        )
    if body is not None and not isinstance(body, dict):
        raise DeviceError(
            f"inventory {origin}: group {name!r} must be a mapping (hosts/vars/children), "
            f"not a {type(body).__name__}"
        )
    parsed.group(name)
    body = body or {}
    for section in ("vars", "children", "hosts"):
        value = body.get(section)
        if isinstance(value, str):  # Ansible allows `hosts: pi01` for a single entry
            value = {value: None}
        if value is not None and not isinstance(value, dict):
            raise DeviceError(
                f"inventory {origin}: {section} of group {name!r} must be a mapping "
                f"(name: vars), not a {type(value).__name__}"
            )
        if section == "vars":
            for key, val in (value or {}).items():
                parsed.set_group_var(name, key, val, origin)
        elif section == "children":
            for child, child_body in (value or {}).items():
                child = _yaml_group(parsed, child, child_body, origin, budget, depth + 1)
                parsed.add_child(name, child, origin)
        else:
            for pattern, hvars in (value or {}).items():
                if not isinstance(pattern, str):
                    raise DeviceError(
                        f"inventory {origin}: host {pattern!r} in group {name!r}: quote host names "
                        "that YAML reads as numbers"
                    )
                if hvars is not None and not isinstance(hvars, dict):
                    raise DeviceError(f"inventory {origin}: host {pattern}: its vars must be a mapping")
                _add_pattern(parsed, pattern, name, hvars or {}, origin)
    for key in body:
        if key not in ("vars", "children", "hosts"):
            log.warning(
                "inventory %s: group %s: ignoring unexpected key %r (as Ansible does)", origin, name, key
            )
    return name


def _add_pattern(parsed: _Parsed, pattern: str, group: str, hvars: dict[Any, Any], origin: str) -> None:
    try:
        names, port = expand_host_pattern(pattern)
    except DeviceError as exc:
        raise DeviceError(f"inventory {origin}: {exc}") from None
    parsed.expanded += len(names)
    if parsed.expanded > MAX_EXPANDED_NAMES:
        raise DeviceError(
            f"inventory {origin}: host patterns expand to more than {MAX_EXPANDED_NAMES} names"
        )
    for host in names:
        hv = parsed.add_host(host, group, port, origin)
        for key, value in hvars.items():
            if not isinstance(key, str):
                raise DeviceError(
                    f"inventory {origin}: host {host}: variable name {key!r} is not a string"
                )
            hv[key] = _Var(value, origin)


def _ini_value(text: str) -> Any:
    """A value from an INI inventory, typed as Ansible types it: a Python literal if it is one, else
    text."""
    if len(text) > 100_000:
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
    return _plain(value)


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


def _parse_ini(parsed: _Parsed, text: str, path: Path) -> None:
    """Ansible's INI inventory: ``[group]`` host lines with inline ``key=value``, ``[group:vars]``,
    ``[group:children]``; hosts before any section are ungrouped.  A ``:vars`` or ``:children`` section
    may only name a group declared somewhere in the file, as in Ansible."""
    group, state = "ungrouped", "hosts"
    parsed.group("all")
    parsed.group("ungrouped")
    pending: dict[str, tuple[int, str, str]] = {}  # group → (line, state, parent) awaiting a declaration
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        where = f"{path}:{lineno}"
        if not line or line[0] in "#;":
            continue
        m = _SECTION.match(line)
        if m:
            group, state = m.group(1), m.group(2) or "hosts"
            if state not in ("hosts", "vars", "children"):
                raise DeviceError(
                    f"inventory {where}: section [{group}:{state}] has unknown type {state!r}"
                )
            if group not in parsed.groups:
                if state == "vars" and group not in pending:
                    pending[group] = (lineno, "vars", group)
                parsed.group(group)
            if group in pending and state != "vars":
                del pending[group]
            continue
        if line.startswith("[") and line.endswith("]"):
            raise DeviceError(f"inventory {where}: invalid section {line!r} (no spaces inside [ ])")
        if state == "hosts":
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError as exc:
                raise DeviceError(f"inventory {where}: cannot parse host line: {exc}") from None
            if not tokens:
                continue
            hvars: dict[str, Any] = {}
            for token in tokens[1:]:
                if "=" not in token:
                    raise DeviceError(
                        f"inventory {where}: expected key=value after the host, got {token!r}"
                    )
                key, value = token.split("=", 1)
                hvars[key] = _ini_value(value)
            if tokens[0].strip() == "---":
                raise DeviceError(f"inventory {where}: '---' (is this a YAML file?)")
            _add_pattern(parsed, tokens[0], group, hvars, where)
        elif state == "vars":
            if "=" not in line:
                raise DeviceError(f"inventory {where}: expected key=value, got {line!r}")
            key, value = (part.strip() for part in line.split("=", 1))
            parsed.set_group_var(group, key, _ini_value(value), where)
        else:
            m = _GROUP_LINE.match(line)
            if not m:
                raise DeviceError(f"inventory {where}: expected a group name, got {line!r}")
            child = m.group(1)
            if child not in parsed.groups and child not in pending:
                pending[child] = (lineno, "children", group)
            parsed.add_child(group, child, where)
    for name, (lineno, kind, parent) in pending.items():
        if kind == "vars":
            raise DeviceError(
                f"inventory {path}:{lineno}: section [{name}:vars] names an undefined group"
            )
        raise DeviceError(
            f"inventory {path}:{lineno}: [{parent}:children] names undefined group {name!r}"
        )


# --------------------------------------------------------------------- group_vars/ and host_vars/


def _vars_files(folder: Path, name: str) -> list[Path]:
    """The files Ansible's host_group_vars plugin reads for ``name``: ``NAME``, ``NAME.yml``,
    ``NAME.yaml`` or ``NAME.json`` (the first that exists), or every such file under a folder of that
    name, sorted."""
    if not _SAFE_ENTITY.match(name):
        return []
    for ext in _VARS_EXTS:
        candidate = folder / f"{name}{ext}"
        if not candidate.exists():
            continue
        if not candidate.is_dir():
            return [candidate]
        found: list[Path] = []
        _walk_vars_dir(candidate, found, 0)
        return found
    return []


def _walk_vars_dir(folder: Path, found: list[Path], depth: int) -> None:
    if depth > 16:
        raise DeviceError(f"inventory vars folder {folder}: nested too deep")
    for entry in sorted(os.listdir(folder)):
        if entry.startswith(".") or entry.endswith("~"):
            continue
        p = folder / entry
        ext = os.path.splitext(entry)[1]
        if p.is_dir() and not ext:
            _walk_vars_dir(p, found, depth + 1)
        elif p.is_file() and (not ext or ext in _YAML_EXTS):
            found.append(p)
            if len(found) > MAX_VARS_FILES:
                raise DeviceError(f"inventory vars folder {folder}: more than {MAX_VARS_FILES} files")


def _load_vars_file(path: Path) -> dict[str, _Var]:
    data = _load_yaml(_read_text(path, MAX_VARS_FILE_BYTES), path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DeviceError(f"inventory vars file {path}: expected a mapping of variables")
    out = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise DeviceError(f"inventory vars file {path}: variable name {key!r} is not a string")
        out[key] = _Var(value, str(path))
    return out


def _entity_vars(folder: Path, name: str) -> dict[str, _Var]:
    merged: dict[str, _Var] = {}
    for f in _vars_files(folder, name):
        merged.update(_load_vars_file(f))
    return merged


# --------------------------------------------------------------------------------------- resolving


def _finish(parsed: _Parsed) -> tuple[dict[str, int], dict[str, set[str]]]:
    """Put parentless groups under ``all`` and groupless hosts in ``ungrouped``, as Ansible does, and
    return each group's depth (the longest path from ``all``: it orders group vars, a child over its
    parent) and every group each host is in, directly or through children.

    Kahn's topological order, without recursion: a loop of groups (``[a:children] b``,
    ``[b:children] a``) is found whatever its size, and a deep or wide graph costs linear time."""
    parsed.group("all")
    parsed.group("ungrouped")
    for name, g in list(parsed.groups.items()):
        if name != "all" and not g.parents:
            parsed.add_child("all", name, str(parsed.source))
    edges = sum(len(g.children) for g in parsed.groups.values())
    if edges > MAX_GROUP_EDGES:
        raise DeviceError(f"inventory {parsed.source}: more than {MAX_GROUP_EDGES} group-child links")
    in_group = {h for name, g in parsed.groups.items() if name not in _IMPLICIT_GROUPS for h in g.hosts}
    for host in parsed.hostvars:
        if host not in in_group:  # also hosts listed directly under `all`, as Ansible does
            parsed.groups["ungrouped"].hosts[host] = None
    waiting = {name: len(g.parents) for name, g in parsed.groups.items()}
    order, ready = [], [name for name, n in waiting.items() if n == 0]
    while ready:
        name = ready.pop()
        order.append(name)
        for child in parsed.groups[name].children:
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    if len(order) < len(parsed.groups):
        looped = sorted(name for name, n in waiting.items() if n > 0)
        raise DeviceError(f"inventory {parsed.source}: groups form a loop: {', '.join(looped[:10])}")
    depth = {"all": 0}
    ancestors: dict[str, set[str]] = {}
    for name in order:
        g = parsed.groups[name]
        depth[name] = max((depth[p] + 1 for p in g.parents), default=0)
        if depth[name] > MAX_NESTING:
            raise DeviceError(f"inventory {parsed.source}: groups nested more than {MAX_NESTING} deep")
        ancestors[name] = {name}.union(*(ancestors[p] for p in g.parents))
    member_of: dict[str, set[str]] = {h: set() for h in parsed.hostvars}
    for name, g in parsed.groups.items():
        for host in g.hosts:
            member_of[host] |= ancestors[name]
    return depth, member_of


def _merged_vars(
    parsed: _Parsed, depth: dict[str, int], groups: dict[str, set[str]], base: Path | None
) -> dict[str, dict[str, _Var]]:
    """Each host's variables with Ansible's precedence, lowest first: ``all``'s inventory vars, other
    groups' inventory vars (ordered by depth, ``ansible_group_priority``, name: a child over its parent),
    ``group_vars/all``, ``group_vars/GROUP`` in the same order, the host's inventory vars, and
    ``host_vars/HOST``."""
    if parsed.merged:
        return parsed.hostvars
    group_files: dict[str, dict[str, _Var]] = {}

    def gfiles(name: str) -> dict[str, _Var]:
        if name not in group_files:
            group_files[name] = _entity_vars(base / "group_vars", name) if base else {}
        return group_files[name]

    out = {}
    for host, member_of in groups.items():
        ordered = sorted(
            (g for g in member_of if g != "all"),
            key=lambda g: (depth.get(g, 0), parsed.groups[g].priority, g),
        )
        merged: dict[str, _Var] = dict(parsed.groups["all"].vars)
        for g in ordered:
            merged.update(parsed.groups[g].vars)
        merged.update(gfiles("all"))
        for g in ordered:
            merged.update(gfiles(g))
        merged.update(parsed.hostvars[host])
        if base:
            merged.update(_entity_vars(base / "host_vars", host))
        out[host] = merged
    return out


# ----------------------------------------------------------------------------------- ansible-inventory


def find_ansible_inventory() -> str | None:
    """``ansible-inventory`` on PATH, else beside this Python (a virtual environment not activated)."""
    found = shutil.which("ansible-inventory")
    if found:
        return found
    beside = Path(sys.executable).parent / "ansible-inventory"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def _str_list(value: Any, what: str, origin: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DeviceError(f"{origin}: {what}: expected a list of names")
    return value


def parse_ansible_json(data: Any, source: Path, origin: str) -> _Parsed:
    """``ansible-inventory --list`` output → the inventory model, checking every type it relies on.

    The JSON comes from whatever the inventory runs (a script, a plugin), so it is held to the limits of
    a file: at most ``MAX_HOSTS`` hosts and ``MAX_GROUPS`` groups, names and vars of the right types."""
    if not isinstance(data, dict):
        raise DeviceError(f"{origin}: expected a JSON object of groups")
    parsed = _Parsed(source, from_ansible=True)
    meta = data.get("_meta", {})
    if not isinstance(meta, dict) or not isinstance(meta.get("hostvars", {}), dict):
        raise DeviceError(f"{origin}: _meta.hostvars must be an object")
    hostvars = meta.get("hostvars", {})
    if len(data) > MAX_GROUPS + 1:
        raise DeviceError(f"{origin}: more than {MAX_GROUPS} groups")
    for name, body in data.items():
        if name == "_meta":
            continue
        if not isinstance(body, dict):
            raise DeviceError(f"{origin}: group {name!r}: expected an object")
        parsed.group(name)
        for host in _str_list(body.get("hosts"), f"group {name} hosts", origin):
            parsed.add_host(host, name, None, origin)
        for child in _str_list(body.get("children"), f"group {name} children", origin):
            # An empty child group is named here but has no entry of its own (Ansible omits them).
            parsed.add_child(name, child, origin)
        gvars = body.get("vars", {})
        if not isinstance(gvars, dict):
            raise DeviceError(f"{origin}: group {name}: vars must be an object")
        for key, value in gvars.items():
            parsed.set_group_var(name, key, value, origin)
    for host, hvars in hostvars.items():
        if not isinstance(host, str) or not isinstance(hvars, dict):
            raise DeviceError(f"{origin}: hostvars of {host!r}: expected an object")
        if host not in parsed.hostvars:
            parsed.add_host(host, "ungrouped", None, origin)
        hv = parsed.hostvars[host]
        for key, value in hvars.items():
            hv[key] = _Var(value, origin)
    # `--list` merges group vars into each host's; `--export` (or a hand-made JSON) keeps them apart.
    parsed.merged = not any(g.vars for g in parsed.groups.values())
    return parsed


def run_ansible_inventory(path: Path, exe: str | None = None) -> _Parsed:
    """Read ``path`` through ``ansible-inventory --list`` (time and output bounded); check the JSON."""
    exe = exe or find_ansible_inventory()
    if not exe:
        raise DeviceError(
            f"inventory {path}: reading it needs ansible-inventory, which is not installed "
            "(pip install ansible-core)"
        )
    origin = f"ansible-inventory -i {path}"
    env = dict(
        os.environ,
        ANSIBLE_INVENTORY_UNPARSED_FAILED="1",
        ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED="1",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
    )
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.run(
                [exe, "-i", str(path), "--list"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                timeout=ANSIBLE_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{origin}: no answer within {ANSIBLE_TIMEOUT_S:.0f} s") from None
        except OSError as exc:
            raise DeviceError(f"{origin}: cannot run {exe}: {exc.strerror or exc}") from None
        err.seek(0)
        tail = err.read()[-4000:].decode("utf-8", "replace")
        if proc.returncode != 0:
            lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
            detail = (
                " ".join(ln for ln in lines if "ERROR" in ln or "rror" in ln)[-600:]
                or " ".join(lines)[-600:]
            )
            raise DeviceError(f"{origin} failed (exit {proc.returncode}): {detail}")
        size = out.seek(0, os.SEEK_END)
        if size > MAX_ANSIBLE_JSON_BYTES:
            raise DeviceError(
                f"{origin}: {size} bytes of output, more than {MAX_ANSIBLE_JSON_BYTES >> 20} MiB"
            )
        out.seek(0)
        try:
            data = json.loads(out.read().decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise DeviceError(f"{origin}: output is not JSON: {_one_line(exc)}") from None
    return parse_ansible_json(data, path, origin)


# ------------------------------------------------------------------------------ values → devices


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def python_command(value: Any) -> str | None:
    """``ansible_python_interpreter`` / ``edgenas_python`` → the interpreter, one program.

    Ansible runs the value through a shell, so ``/usr/bin/env python3`` is common.  edgenas stores the
    interpreter as one string and runs it as argv[0] in every call site (probe, setup, bench, predict,
    fleet), so the value is split with shlex: ``env PROG`` is stored as ``PROG`` (env looks PROG up on
    PATH, exactly as running PROG directly does), one word is kept, and a command line with options is
    refused rather than run as a file named ``python3 -u``.  Ansible's ``auto*`` values mean "discover
    it": None, edgenas' default (python3)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a path, got {type(value).__name__} {value!r}")
    if value.strip() in _AUTO_INTERPRETERS:
        return None
    try:
        argv = shlex.split(value)
    except ValueError as exc:
        raise ValueError(f"cannot split {value!r}: {exc}") from None
    if (
        len(argv) == 2
        and posixpath.basename(argv[0]) == "env"
        and not argv[1].startswith("-")
        and "=" not in argv[1]
    ):
        argv = argv[1:]
    if len(argv) != 1 or not argv[0]:
        raise ValueError(
            f"{value!r} is a command line; edgenas runs the interpreter as one program: give its path "
            "(e.g. /usr/bin/python3 or a venv's bin/python)"
        )
    if argv[0].startswith("-") or any(ord(c) < 32 for c in argv[0]):
        raise ValueError(f"{value!r} is not an interpreter path")
    return argv[0]


def validate_workdir(value: Any, kind: str, *, host_home: Path | None = None) -> str:
    """A device work folder edgenas may create, replace and delete files in.

    Refused: ``/``, ``..`` anywhere, ``~``/``$VAR`` (not expanded: they would be literal folder names), a
    home folder itself (``.`` on SSH, ``/home/pi``, ``/root``, Termux' home), shared roots (``/tmp``,
    ``/data/local/tmp``, ``/var``) and anything inside system folders (``/etc``, ``/usr``, ``/bin``, …);
    any character outside letters, digits and ``/._-+@,:=`` (a backslash makes every upload look
    corrupt, spaces and quotes break the scripts) and any component starting with ``-`` (``-rf`` is an
    option to ``rm``).  Relative folders are relative to the SSH login folder, so only SSH devices may
    use them."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a folder path, got {value!r}")
    if len(value) > 1024 or any(ord(c) < 32 for c in value):
        raise ValueError(f"{value!r}: too long or holds control characters")
    if value.startswith("~") or "$" in value or "`" in value:
        raise ValueError(
            f"{value!r}: ~ and $VARS are not expanded; give a path relative to the login folder "
            "(SSH) or an absolute one"
        )
    if ".." in value.split("/"):
        raise ValueError(f"{value!r}: '..' is not allowed in a work folder")
    bad = sorted({c for c in value if not _WORKDIR_CHAR.match(c)})
    if bad:
        raise ValueError(
            f"{value!r}: holds {''.join(bad)!r}; the device scripts take only letters, digits and "
            "/ . _ - + @ , : = in a work folder (GNU sha256sum escapes a backslash, so every upload "
            "would look corrupt, and a shell splits at spaces and quotes)"
        )
    dashed = next((part for part in value.split("/") if part.startswith("-")), None)
    if dashed is not None:
        raise ValueError(
            f"{value!r}: the component {dashed!r} starts with '-', which the device's commands "
            "(rm, mkdir, sha256sum) would read as options; rename the folder"
        )
    norm = posixpath.normpath(value)
    if not norm.startswith("/"):
        if kind != "ssh":
            raise ValueError(f"{value!r}: must be absolute on a {kind} device")
        if norm == ".":
            raise ValueError(
                f"{value!r} is the login (home) folder itself; use a folder inside it, e.g. edgenas"
            )
        return norm
    if norm in _SHARED_ROOTS or norm == "//":
        raise ValueError(f"{value!r} is a shared or top-level folder; use a folder of its own inside it")
    if any(norm == t or norm.startswith(t + "/") for t in _SYSTEM_TREES):
        raise ValueError(f"{value!r} is inside a system folder")
    if _HOME_DIRS.match(norm):
        raise ValueError(f"{value!r} is a home folder itself; use a folder inside it")
    if kind == "local" and host_home is not None:
        home = os.path.normpath(str(host_home))
        if norm == home:
            raise ValueError(f"{value!r} is this host's home folder itself")
    return norm


def check_benchmark_binary(value: Any, inventory_dir: Path, allowed: Sequence[Path] = ()) -> str:
    """An ``edgenas_benchmark_binary``: it is uploaded to the device and executed there, so it must be a
    regular ELF executable whose real location (symlinks resolved) is inside the inventory's folder or a
    folder the user allowed (``--binary-dir``), not any file the host can read (``~/.ssh/id_ed25519``).

    Returns the absolute path as written (not resolved), like ``device add --benchmark-binary``."""
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ValueError(f"expected a file path, got {value!r}")
    p = Path(os.path.expanduser(value))
    if not p.is_absolute():
        p = inventory_dir / p
    p = Path(os.path.abspath(p))
    try:
        real = p.resolve(strict=True)
        st = real.stat()
    except OSError as exc:
        raise ValueError(f"{p}: {exc.strerror or 'cannot be read'}") from None
    roots = [Path(os.path.realpath(r)) for r in (inventory_dir, *allowed)]
    if not any(real == r or real.is_relative_to(r) for r in roots):
        where = ", ".join(str(r) for r in roots)
        raise ValueError(f"{p} is outside {where}; allow its folder with --binary-dir")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{p}: not a regular file")
    if st.st_size > MAX_BINARY_BYTES:
        raise ValueError(f"{p}: {st.st_size} bytes, larger than {MAX_BINARY_BYTES >> 20} MiB")
    try:
        with open(real, "rb") as f:
            head = f.read(18)
    except OSError as exc:
        raise ValueError(f"{p}: {exc.strerror or 'cannot be read'}") from None
    if len(head) < 18 or head[:4] != b"\x7fELF":
        raise ValueError(f"{p}: not an ELF executable (benchmark_model is one)")
    e_type = int.from_bytes(head[16:18], "little" if head[5] == 1 else "big")
    if e_type not in (2, 3):  # ET_EXEC, ET_DYN (PIE)
        raise ValueError(f"{p}: an ELF file but not an executable (e_type {e_type})")
    return str(p)


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected a port number 1-65535, got {value!r}")
    if isinstance(value, str):
        if not _PORT_RE.match(value.strip()):
            raise ValueError(f"expected a port number 1-65535, got {value!r}")
        value = int(value.strip())
    if not 0 < value < 65536:
        raise ValueError(f"port {value} out of range 1-65535")
    return value


def _positive(value: Any, unit: str, most: float) -> float:
    """A number of ``unit`` in (0, ``most``]; YAML booleans and text are refused, not coerced."""
    if isinstance(value, bool):
        raise ValueError(f"expected {unit}, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected {unit}, got {value!r}") from None
    if not 0 < number <= most:
        raise ValueError(f"expected a positive number of {unit} (at most {most:g}), got {value!r}")
    return number


def _timeout(value: Any) -> float:
    return _positive(value, "seconds", 3600)


def _latency_ms(value: Any) -> float:
    """``edgenas_latency_ms``: the device's latency budget for ``fleet specialize``."""
    return _positive(value, "milliseconds", 1e7)


def _device_class(value: Any) -> str:
    """``edgenas_class``: the device's class, named by the user (edgenas.records.classes)."""
    from edgenas.records.classes import ClassError, validate_class

    try:
        return validate_class(value)
    except ClassError as exc:
        raise ValueError(str(exc)) from None


def _text(regex: re.Pattern[str], what: str) -> Any:
    def check(value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValueError(f"expected {what}, got {value!r}")
        value = str(value)
        if not regex.match(value) or value.startswith("-"):
            raise ValueError(f"expected {what}, got {value!r}")
        return value

    return check


_host_value = _text(_HOST_VALUE, "a host name or address")
_user_value = _text(_USER_VALUE, "a user name")
_serial_value = _text(_SERIAL_VALUE, "an ADB serial or HOST:PORT")


@dataclass
class _Ctx:
    host: str
    vars: dict[str, _Var]
    source: Path

    def raw(self, *keys: str) -> tuple[str, Any]:
        for key in keys:
            var = self.vars.get(key)
            if var is not None and var.value is not None:
                return key, var.value
        return keys[0], None

    def get(self, *keys: str, check: Any = None) -> Any:
        key, value = self.raw(*keys)
        if value is None:
            return None
        if _is_template(value):
            self.fail(
                key, f"{value!r} is a Jinja template, which edgenas does not evaluate; write the value"
            )
        if check is None:
            return value
        try:
            return check(value)
        except ValueError as exc:
            self.fail(key, str(exc))

    def fail(self, key: str, message: str) -> NoReturn:
        var = self.vars.get(key)
        origin = var.origin if var is not None else str(self.source)
        raise DeviceError(f"inventory {origin}: host {self.host}: {key}: {message}")


def _same_program(command: str, allowed: Path) -> bool:
    """Whether ``command`` (a path, or a name looked up on PATH as the local transport runs it) is the
    program ``allowed`` is, symlinks resolved: a venv's ``bin/python`` and the file it links to are
    one program."""
    found = command if "/" in command else shutil.which(command)
    if not found:
        return False
    return os.path.realpath(found) == os.path.realpath(allowed)


def _check_local_python(ctx: _Ctx, python: str | None, allowed: Sequence[Path]) -> None:
    """A local device runs its interpreter on this host, as the edgenas user, at every probe and bench:
    an inventory line ``ansible_connection=local ansible_python_interpreter=/any/program`` would make
    edgenas execute any program.  So a local device from an inventory may name only this edgenas' own
    interpreter or one the user allowed by hand (``device import --allow-local-python PATH``)."""
    if python is None:
        return  # not set (or auto): the device runs this edgenas' own interpreter
    choices = [Path(sys.executable), *allowed]
    if any(_same_program(python, choice) for choice in choices):
        return
    key, _ = ctx.raw("edgenas_python", "ansible_python_interpreter")
    ctx.fail(
        key,
        f"{python!r} is not this edgenas' interpreter ({sys.executable}); a local device runs it on "
        f"this host at every probe and bench, so an inventory may name another one only when you "
        f"allow it: device import --allow-local-python {python}",
    )


def _device(
    ctx: _Ctx,
    groups: list[str],
    home: Path,
    ssh_config: Path | None,
    binary_dirs: Sequence[Path],
    local_pythons: Sequence[Path] = (),
) -> Device:
    kind = ctx.get("edgenas_kind", check=lambda v: v if v in ("ssh", "adb", "local") else _bad_kind(v))
    if kind is None:
        connection = ctx.get("ansible_connection")
        if connection == "local":
            kind = "local"
        elif connection is None or connection in _SSH_CONNECTIONS:
            kind = "ssh"
        else:
            ctx.fail(
                "ansible_connection",
                f"{connection!r} is not a connection edgenas can use (ssh, local); "
                "set edgenas_kind, or edgenas_skip: true to leave the host out",
            )
    python = ctx.get("edgenas_python", "ansible_python_interpreter", check=python_command)
    if kind == "local":
        _check_local_python(ctx, python, local_pythons)
    workdir = ctx.get(
        "edgenas_workdir", check=lambda v: validate_workdir(v, kind, host_home=Path.home())
    )
    inventory_dir = ctx.source if ctx.source.is_dir() else ctx.source.parent
    binary = ctx.get(
        "edgenas_benchmark_binary", check=lambda v: check_benchmark_binary(v, inventory_dir, binary_dirs)
    )
    timeout = ctx.get("edgenas_timeout", check=_timeout)
    budget = ctx.get("edgenas_latency_ms", check=_latency_ms)
    device_class = ctx.get("edgenas_class", check=_device_class)
    common: dict[str, Any] = dict(
        latency_budget_ms=budget,
        device_class=device_class,
        benchmark_binary=binary,
        workdir=workdir,
        python=python,
        timeout_s=timeout,
        groups=groups,
        home=home,
    )
    try:
        validate_name(ctx.host)
        for g in groups:
            validate_group(g)
    except DeviceError as exc:
        raise DeviceError(f"inventory {ctx.source}: host {ctx.host}: {exc}") from None
    if kind == "local":
        return make_device(ctx.host, "local", **common)
    if kind == "adb":
        serial = ctx.get("edgenas_serial", "ansible_host", check=_serial_value) or ctx.host
        return make_device(ctx.host, "adb", serial=serial, **common)
    address = ctx.get("ansible_host", "ansible_ssh_host", check=_host_value) or ctx.host
    port = ctx.get("ansible_port", "ansible_ssh_port", check=_port)
    user = ctx.get("ansible_user", "ansible_ssh_user", check=_user_value)
    key = ctx.get(
        "ansible_ssh_private_key_file",
        "ansible_private_key_file",
        check=lambda v: v if isinstance(v, str) and v and "\0" not in v else _bad("a key file path", v),
    )
    try:
        target = parse_ssh_target(address, ssh_config)
    except DeviceError as exc:
        ctx.fail("ansible_host", str(exc))
    return make_device(
        ctx.host,
        "ssh",
        host=target.host,
        user=user or target.user,
        port=port or target.port,
        key_path=key or target.key_path,
        ssh_alias=target.alias,
        **common,
    )


def _bad_kind(value: Any) -> str:
    raise ValueError(f"unknown edgenas_kind {value!r} (ssh, adb or local)")


def _bad(what: str, value: Any) -> str:
    raise ValueError(f"expected {what}, got {value!r}")


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


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
    (``local``), and edgenas' own ``edgenas_kind`` (``ssh``/``adb``/``local``), ``edgenas_serial``,
    ``edgenas_python``, ``edgenas_workdir``, ``edgenas_timeout``, ``edgenas_benchmark_binary``
    (relative to the inventory's folder), ``edgenas_latency_ms`` (the device's latency budget for
    ``fleet specialize``), ``edgenas_class`` (its device class, instead of the one derived from its
    probe) and ``edgenas_skip``.  Every group a host is in, except
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
    (keeping their probe results, stored host-key fingerprint and, unless the inventory names one, the
    registered benchmark binary).  Returns (added, updated) names.

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
                    device = replace(device, host_key_fingerprint=old.host_key_fingerprint)
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
