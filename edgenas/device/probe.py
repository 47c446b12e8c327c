"""What a device is and whether it can run the runner: probe, setup and fleet-wide check.

Device facts are written once, in the on-device package (``edgenas_device.facts``): a probe runs
``devices/scripts/facts.sh`` through the shell first (a phone or a minimal board may have no Python,
and we still want its CPU, memory, OS, governor and temperature), then, where the device's Python
exists, the runner's ``info`` — whose facts come from that Python. That order matters on boards
whose Python runs under an emulator or a different userland than the login shell: the runtime's own
view of the CPU is the one measurements depend on, so it wins. Each TFLite runtime is tried in its
own child process on the device (tflite_runtime must never share a process with TensorFlow).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgenas_device.facts import install_advice, parse_facts_sh

from edgenas.core.errors import DeviceError, EdgeNASError, TransportError
from edgenas.device.connect import open_transport
from edgenas.device.registry import Device
from edgenas.device.scripts import script
from edgenas.device.session import DeviceSession, NoRuntimeError, RunnerError
from edgenas.device.transports import Transport

PROBE_TIMEOUT_S = 90.0
RUNTIMES = ("ai_edge_litert", "tflite_runtime", "tensorflow")
_RUNNER_NAMES = {"litert": "ai_edge_litert", "tflite_runtime": "tflite_runtime",
                 "tensorflow": "tensorflow"}


def probe(session: DeviceSession, *, all_runtimes: bool = False,
          timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Facts about a device (see the module docstring); raises TransportError if it cannot be reached."""
    started = time.monotonic()
    res = session.run(["sh", "-c", script("facts"), "facts", session.python], timeout, cwd=None)
    if res.rc != 0:
        raise DeviceError(f"{session.name}: the probe script failed (exit {res.rc}): "
                          f"{res.stderr.strip()[:300]}")
    result: dict[str, Any] = dict(parse_facts_sh(res.stdout))
    python_path = result.pop("python_path", None)
    result.update(
        python=None, python_version=None, numpy=None,
        runtimes={n: {"installed": False, "importable": False, "error": "no Python"} for n in RUNTIMES},
        facts_from="shell",
    )
    if python_path and not session.device.benchmark_binary:
        left = max(5.0, timeout - (time.monotonic() - started))
        args = ["--probe-timeout", f"{max(1.0, left / 2):g}"]
        args += [] if all_runtimes else ["--lazy-probe"]
        try:
            info = session.runner("info", args, timeout=left)
        except (RunnerError, NoRuntimeError) as exc:
            result["python"] = python_path
            result["python_error"] = str(exc)[:300]
        else:
            result.update(_from_info(info))
    result["runtime"] = next((n for n in RUNTIMES if result["runtimes"][n].get("importable")), None)
    result["install_hint"] = (
        None if result["runtime"]
        else install_advice(result["python_version"], result.get("arch"), result.get("python_bits"))
    )
    result["rtt_ms"] = round(_round_trip_ms(session.transport), 2)
    result["probe_s"] = round(time.monotonic() - started, 2)
    return result


def _from_info(info: dict[str, Any]) -> dict[str, Any]:
    """The runner's ``info`` answer in the probe's shape; every value type-checked (untrusted)."""
    out: dict[str, Any] = {"facts_from": "python"}
    device = info.get("device") if isinstance(info.get("device"), dict) else {}
    for key, value in device.items():
        if isinstance(value, (str, int, float)) or value is None:
            out[key] = value[:256] if isinstance(value, str) else value
    python = info.get("python") if isinstance(info.get("python"), dict) else {}
    platform = info.get("platform") if isinstance(info.get("platform"), dict) else {}
    out["python"] = str(python.get("executable") or "")[:512] or None
    out["python_version"] = str(python.get("version") or "")[:32] or None
    bits = platform.get("pointer_bits")
    out["python_bits"] = bits if bits in (32, 64) else None
    out["numpy"] = str(info.get("numpy"))[:32] if info.get("numpy") else None
    runtimes: dict[str, Any] = {}
    raw = info.get("runtimes") if isinstance(info.get("runtimes"), dict) else {}
    for runner_name, name in _RUNNER_NAMES.items():
        r = raw.get(runner_name) if isinstance(raw.get(runner_name), dict) else {}
        importable = r.get("importable")
        runtimes[name] = {
            "installed": bool(r.get("installed")),
            "importable": importable if isinstance(importable, bool) or importable is None else False,
            "version": str(r.get("version") or r.get("distribution_version") or "")[:64] or None,
        }
        if r.get("error"):
            runtimes[name]["error"] = str(r["error"])[:300]
        if r.get("note"):
            runtimes[name]["note"] = str(r["note"])[:300]
    out["runtimes"] = runtimes
    cpu = info.get("cpu") if isinstance(info.get("cpu"), dict) else {}
    clusters = cpu_clusters(cpu.get("topology"))
    if clusters:
        out["cpu_clusters"] = clusters
    return out


def cpu_clusters(topology: Any) -> str | None:
    """The runner's per-CPU topology (untrusted) as one line: consecutive CPUs of the same maximum
    frequency and capacity together, ``0-3 1800 MHz cap 446; 4-7 2400 MHz cap 1024``, so a user sees
    which cores are big (the set to pin with ``--cpus``)."""
    if not isinstance(topology, list):
        return None

    def whole(value: Any, high: int) -> int | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= high
        return value if ok else None

    groups: list[list[Any]] = []  # [first cpu, last cpu, max_khz, capacity]
    for row in topology[:1024]:
        if not isinstance(row, dict):
            continue
        cpu = whole(row.get("cpu"), 4095)
        if cpu is None:
            continue
        khz, cap = whole(row.get("max_khz"), 100_000_000), whole(row.get("capacity"), 1 << 20)
        if groups and groups[-1][1] == cpu - 1 and groups[-1][2:] == [khz, cap]:
            groups[-1][1] = cpu
        else:
            groups.append([cpu, cpu, khz, cap])
    parts = []
    for first, last, khz, cap in groups:
        cpus = str(first) if first == last else f"{first}-{last}"
        about = [f"{khz / 1000:g} MHz" if khz is not None else "",
                 f"cap {cap}" if cap is not None else ""]
        parts.append(" ".join([cpus, *[a for a in about if a]]))
    return "; ".join(parts)[:512] or None


def _round_trip_ms(transport: Transport, n: int = 3) -> float:
    """Best of ``n`` warm command round trips: the fixed cost every measurement command pays."""
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        transport.run(["true"], timeout=30)
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def setup(session: DeviceSession, *, timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Put the runner on the device (by sha256) and run its ``info`` there.

    Returns the runner's info JSON.  Raises DeviceError saying exactly what to install when the device
    has no Python, or no usable TFLite runtime (numpy included).
    """
    try:
        info = session.runner("info", ["--no-probe"], timeout=timeout)
    except NoRuntimeError as exc:
        if "no Python" in str(exc):
            arch = (session.device.probe or {}).get("arch")
            raise DeviceError(f"{session.name}: there is no Python at {session.python!r} on the "
                              f"device; {install_advice(None, arch)}") from None
        raise
    if not isinstance(info.get("runtime"), dict):
        err = info.get("runtime_error")
        error = (err.get("error") if isinstance(err, dict) else None) or "no runtime"
        python_info = info.get("python") if isinstance(info.get("python"), dict) else {}
        platform = info.get("platform") if isinstance(info.get("platform"), dict) else {}
        hint = install_advice(python_info.get("version"), platform.get("machine"))
        error = str(error).split("; install")[0][:300]  # the runner appends its own hint; ours follows
        raise DeviceError(
            f"{session.name}: the runner works but no TFLite runtime is usable ({error}). "
            f"Install one on the device for {session.python}: {hint}"
        )
    return info


@dataclass
class CheckResult:
    """One row of ``device check``."""

    device: Device
    ok: bool
    seconds: float
    probe: dict[str, Any] | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def check(
    devices: Iterable[Device],
    home: Path,
    *,
    all_runtimes: bool = False,
    workers: int = 8,
    timeout: float = PROBE_TIMEOUT_S,
    opener: Callable[[Device, Path], Transport] = open_transport,
) -> list[CheckResult]:
    """Probe every device in parallel; one unreachable device costs its own connect timeout, not the
    others' time.  Results come back in the order given."""
    devices = list(devices)

    def one(device: Device) -> CheckResult:
        t0 = time.monotonic()
        try:
            with DeviceSession(home, device, opener=opener) as session:
                facts = probe(session, all_runtimes=all_runtimes, timeout=timeout)
            return CheckResult(device, True, time.monotonic() - t0, probe=facts)
        except EdgeNASError as exc:
            return CheckResult(device, False, time.monotonic() - t0, error=str(exc))

    if not devices:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(devices)))) as pool:
        return list(pool.map(one, devices))



__all__ = ["CheckResult", "TransportError", "check", "install_advice", "probe", "setup"]
