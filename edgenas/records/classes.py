"""Device classes: the devices whose latency is the same, so that measuring one serves all of them.

A fleet of 40 identical Raspberry Pi 4s needs one measurement campaign and one latency predictor, not
40.  What makes two devices' latencies the same is what they run a model on: the CPU model and its
core count, the OS architecture (an aarch64 and an armv7l userland on the same board differ), the
runtime and its version, and whether the runtime uses XNNPACK.  Precision and thread count matter too,
but they are already part of every measurement's key, so they are not part of the class.

A device's class is derived from its stored probe (``edgenas device probe``) unless the user named it
(``device add --class``, ``device set-class``).  A device never probed is a class of its own, named
after it: nothing is shared on a guess.  Each measurement is stamped with its device's class when it
is taken (``measurements.device_class``), so a device whose probe changes — a runtime upgrade, another
board behind the same name — moves to another class and its old rows stay with the old one.  The one
exception is a device's first probe: rows it took while unprobed (stamped with its name) follow it into
its derived class (:func:`adopt_on_probe`), because they were measured on that same hardware.

A device pinned to a CPU set (``device add --cpus 4-7``, inventory ``edgenas_cpus``, or ``bench
--cpus`` / ``measure --cpus`` for one run) is another class: on big.LITTLE the big and the little cores
run the same model 2-4x apart, so the set is appended to the class (``…-cpus4-7``), whether the class
was derived or named.

Class keys are file- and command-line-safe names (``[a-z0-9._-]``, at most 64 characters): they name
predictor files and appear in reports.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgenas.core.errors import EdgeNASError

if TYPE_CHECKING:  # pragma: no cover
    from edgenas.device.registry import Device

MAX_KEY = 64
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Marketing words that make CPU names long without telling two CPUs apart.
_NOISE = re.compile(r"\((?:r|tm|c)\)|\b(?:cpu|processor|with|radeon graphics)\b|@.*$", re.IGNORECASE)


class ClassError(EdgeNASError):
    """A device class name that cannot be used (bad characters, too long)."""


MAX_CPU = 4095


def parse_cpu_set(value: object) -> str:
    """A CPU set as ``taskset -c`` and cgroups write it (``4-7``, ``0,2-3``, ``5``), checked and made
    canonical (sorted, merged ranges); ValueError says what is wrong.  An int is one CPU."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"expected a CPU set such as 4-7 or 0,2-3, got {value!r}")
    text = str(value).replace(" ", "")
    cpus: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"(\d{1,4})(?:-(\d{1,4}))?", part)
        if not m:
            raise ValueError(f"expected a CPU set such as 4-7 or 0,2-3, got {value!r}")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo or hi > MAX_CPU:
            raise ValueError(f"CPU range {part!r} in {value!r} is empty or beyond CPU {MAX_CPU}")
        cpus.update(range(lo, hi + 1))
    return format_cpu_set(cpus)


def cpu_list(spec: str) -> list[int]:
    """The CPUs of a (canonical or not) CPU set, sorted."""
    out: set[int] = set()
    for part in parse_cpu_set(spec).split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return sorted(out)


def format_cpu_set(cpus: Iterable[int]) -> str:
    """``[0, 1, 2, 3, 6]`` as ``0-3,6``."""
    ordered = sorted(set(int(c) for c in cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def pinned_class(key: str, cpus: str | None) -> str:
    """``key`` of a device run on the CPU set ``cpus``: ``key-cpus4-7`` (``,`` written ``_``); within
    64 characters (the base shortened, with a hash, when needed)."""
    if not cpus:
        return key
    suffix = "-cpus" + cpus.replace(",", "_")
    if len(key) + len(suffix) <= MAX_KEY:
        return key + suffix
    digest = hashlib.sha256(f"{key}{suffix}".encode()).hexdigest()[:8]
    room = MAX_KEY - len(digest) - 1
    return f"{(key + suffix)[:room].rstrip('-._')}-{digest}"


def validate_class(name: str) -> str:
    """A user-given class name: letters, digits, '.', '_' or '-', at most 64, starting alphanumeric."""
    if not isinstance(name, str) or not _KEY_RE.match(name):
        raise ClassError(f"invalid device class {name!r}: use letters, digits, '.', '_' or '-' "
                         "(at most 64, starting with a letter or digit)")
    return name


@dataclass(frozen=True)
class ClassFacts:
    """What a class is derived from (None where the probe did not say)."""

    arch: str | None
    cpu_model: str | None
    cores: int | None
    runtime: str | None
    runtime_version: str | None
    xnnpack: bool

    def describe(self) -> str:
        """For people: ``aarch64, Cortex-A72 ×4, litert 2.3.0``."""
        rt = " ".join(x for x in (self.runtime, self.runtime_version) if x) or "no runtime"
        cpu = f"{self.cpu_model or 'unknown CPU'} ×{self.cores or '?'}"
        return f"{self.arch or '?'}, {cpu}, {rt}" + ("" if self.xnnpack else ", no XNNPACK")


def facts_of(probe: Mapping[str, Any] | None, xnnpack: bool = True,
             benchmark_binary: bool = False) -> ClassFacts | None:
    """The class-making facts of a stored probe; None when there is no usable probe.

    The probe is what the device said about itself: every value is type-checked here again, and a
    value of the wrong type counts as unknown rather than as a distinct class.
    """
    if not isinstance(probe, Mapping):
        return None

    def text(value: Any) -> str | None:
        return " ".join(value.split())[:128] or None if isinstance(value, str) else None

    arch, cpu = text(probe.get("arch")), text(probe.get("cpu_model"))
    cores = probe.get("cores")
    if not (isinstance(cores, int) and not isinstance(cores, bool) and 0 < cores < 4096):
        cores = None
    runtime = text(probe.get("runtime"))
    version = None
    runtimes = probe.get("runtimes")
    if runtime and isinstance(runtimes, Mapping) and isinstance(runtimes.get(runtime), Mapping):
        version = text(runtimes[runtime].get("version"))
    if benchmark_binary:  # a phone measured with LiteRT's benchmark_model: that is its runtime
        runtime, version = "benchmark_model", None
    if arch is None and cpu is None:
        return None
    return ClassFacts(arch, cpu, cores, runtime, version, bool(xnnpack))


def _slug(text: str) -> str:
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9._]+", "-", text.lower())).strip("-._")


def derived_key(facts: ClassFacts) -> str:
    """The class name derived from ``facts``: readable, and unique to them (a hash is added when the
    readable part had to be shortened)."""
    cpu = _slug(_NOISE.sub(" ", facts.cpu_model or "")) or "cpu"
    parts = [facts.arch or "arch", cpu, f"{facts.cores}c" if facts.cores else "",
             facts.runtime or "noruntime", facts.runtime_version or "",
             "" if facts.xnnpack else "noxnnpack"]
    readable = _slug("-".join(p for p in parts if p))
    if len(readable) <= MAX_KEY:
        return readable
    digest = hashlib.sha256(repr(facts).encode()).hexdigest()[:8]
    return f"{readable[:MAX_KEY - 9].rstrip('-.')}-{digest}"


def class_of(device: Device) -> str:
    """``device``'s class now: the user's name for it, else derived from its probe, else its own
    name (a device never probed shares nothing); with its CPU set appended when it is pinned."""
    cpus = getattr(device, "cpus", None)
    if device.device_class:
        return pinned_class(device.device_class, cpus)
    facts = facts_of(device.probe, device.xnnpack, bool(device.benchmark_binary))
    return pinned_class(derived_key(facts) if facts is not None else device.name, cpus)


def how(device: Device) -> str:
    """Where ``device``'s class comes from, for ``device show`` and reports."""
    if device.device_class:
        return "set by the user"
    facts = facts_of(device.probe, device.xnnpack, bool(device.benchmark_binary))
    cpus = getattr(device, "cpus", None)
    pin = f", on CPUs {cpus}" if cpus else ""
    return (f"derived: {facts.describe()}{pin}" if facts
            else f"not probed yet: a class of its own{pin}")


def by_class(devices: Iterable[Device]) -> dict[str, list[Device]]:
    """The devices grouped by class, classes and their members in name order."""
    out: dict[str, list[Device]] = {}
    for d in sorted(devices, key=lambda d: d.name):
        out.setdefault(class_of(d), []).append(d)
    return dict(sorted(out.items()))


def move_class(conn: sqlite3.Connection, device: str, to_class: str,
               from_class: str | None = None) -> int:
    """Inside the caller's transaction: stamp ``device``'s rows (only those of ``from_class``, if
    given) with ``to_class``; the number of rows moved.  Used when a device's first
    probe adopts its unprobed rows, and by the migration that introduced classes."""
    if from_class is None:
        cur = conn.execute("UPDATE measurements SET device_class = ? WHERE device = ?",
                           (to_class, device))
    else:
        cur = conn.execute("UPDATE measurements SET device_class = ? WHERE device = ? "
                           "AND device_class = ?", (to_class, device, from_class))
    return int(cur.rowcount)


def adopt_on_probe(conn: Any, device: Device, new_probe: Mapping[str, Any]) -> None:
    """Inside ``registry.save_probe``'s transaction: a device's first probe takes the rows it measured
    while unprobed (stamped with its own name) into its derived class.  Later probe changes move
    nothing: the rows stay with the class they were measured in."""
    if device.probe is not None or device.device_class:
        return
    facts = facts_of(new_probe, device.xnnpack, bool(device.benchmark_binary))
    if facts is None:
        return
    cpus = getattr(device, "cpus", None)
    move_class(conn, device.name, pinned_class(derived_key(facts), cpus),
               from_class=pinned_class(device.name, cpus))


__all__ = ["ClassError", "ClassFacts", "adopt_on_probe", "backfill", "by_class", "class_of",
           "cpu_list", "derived_key", "facts_of", "format_cpu_set", "how", "move_class",
           "parse_cpu_set", "pinned_class", "validate_class"]


def backfill(conn: Any) -> None:
    """Store migration 8 -> 9: stamp the rows measured before classes existed with their device's
    class as derived from its stored probe (rows of unprobed or removed devices keep the device's
    name, which is what the migration's SQL already wrote)."""
    for name, probe_json, xnnpack, binary in conn.execute(
            "SELECT name, probe_json, xnnpack, benchmark_binary FROM devices "
            "WHERE probe_json IS NOT NULL").fetchall():
        try:
            probe = json.loads(probe_json)
        except ValueError:
            continue
        facts = facts_of(probe, bool(xnnpack), bool(binary))
        if facts is not None:
            move_class(conn, name, derived_key(facts))
