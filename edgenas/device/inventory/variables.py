"""``group_vars/`` and ``host_vars/`` beside the inventory, and Ansible's variable precedence."""

from __future__ import annotations

import os
from pathlib import Path

from edgenas.core.errors import DeviceError
from edgenas.device.inventory.model import (
    _IMPLICIT_GROUPS,
    _SAFE_ENTITY,
    _VARS_EXTS,
    _YAML_EXTS,
    MAX_GROUP_EDGES,
    MAX_NESTING,
    MAX_VARS_FILE_BYTES,
    MAX_VARS_FILES,
    _load_yaml,
    _Parsed,
    _read_text,
    _Var,
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
