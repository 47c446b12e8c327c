"""The YAML (and JSON) inventory format: nested groups with ``hosts``, ``vars`` and ``children``."""

from __future__ import annotations

from typing import Any

from edgenas.core.errors import DeviceError
from edgenas.device.inventory.model import MAX_NESTING, MAX_YAML_NODES, _Parsed, log
from edgenas.device.inventory.patterns import _add_pattern


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
