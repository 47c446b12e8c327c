"""Host patterns as Ansible expands them: ``web[01:20].example.com``, ``[a:f]``, ``host:port``."""

from __future__ import annotations

import string
from typing import Any

from edgenas.core.errors import DeviceError
from edgenas.device.inventory.model import (
    _BRACKETED_HOSTPORT,
    _HOSTPORT,
    MAX_EXPANDED_NAMES,
    MAX_HOSTS_PER_PATTERN,
    _Parsed,
    _Var,
)

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
