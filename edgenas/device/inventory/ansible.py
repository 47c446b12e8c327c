"""Inventories only Ansible can read (scripts, plugins, vault): ``ansible-inventory --list`` JSON, run
only when the user asks with ``--via-ansible`` (it executes the inventory)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgenas.core.errors import DeviceError
from edgenas.device.inventory.model import (
    ANSIBLE_TIMEOUT_S,
    MAX_ANSIBLE_JSON_BYTES,
    MAX_GROUPS,
    _one_line,
    _Parsed,
    _Var,
)

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
