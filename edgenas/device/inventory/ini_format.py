"""The INI inventory format: ``[group]``, ``[group:vars]``, ``[group:children]`` sections."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path
from typing import Any

from edgenas.core.errors import DeviceError
from edgenas.device.inventory.model import _GROUP_LINE, _SECTION, _Parsed, _plain
from edgenas.device.inventory.patterns import _add_pattern


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
