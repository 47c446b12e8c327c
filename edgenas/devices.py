"""What a device is and whether it can run the runner: probe, setup and fleet-wide check.

A probe is two commands over the device's transport.  The first is a POSIX ``sh`` script, because a
phone or a minimal board may have no Python at all and we still want its CPU, memory, OS, governor and
temperature.  The second runs the device's Python and asks, for each TFLite runtime, whether it imports
— each in *its own* child process, in parallel: tflite_runtime must never share a process with
TensorFlow, and importing TensorFlow takes seconds, so by default it is only imported when neither
lighter runtime works (the runner would never reach it otherwise; ``all_runtimes=True`` forces it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgenas.errors import DeviceError, EdgeNASError, TransportError
from edgenas.files import last_json
from edgenas.paths import devices_dir
from edgenas.registry import Device
from edgenas.transports import Transport, open_transport

PROBE_TIMEOUT_S = 90.0
RUNTIMES = ("ai_edge_litert", "tflite_runtime", "tensorflow")

# $1 = the device's python.  One key=value per line; values never contain newlines.
_SYSTEM_SCRIPT = r"""
py="$1"
kv() { printf '%s=%s\n' "$1" "$(printf '%s' "$2" | tr '\n' ' ')"; }
kv arch "$(uname -m 2>/dev/null)"
kv kernel "$(uname -r 2>/dev/null)"
if [ -r /etc/os-release ]; then kv os "$(. /etc/os-release 2>/dev/null; echo "$PRETTY_NAME")"
elif command -v getprop >/dev/null 2>&1; then kv os "Android $(getprop ro.build.version.release)"
else kv os "$(uname -s 2>/dev/null)"; fi
kv cpu_model "$(grep -m1 -iE '^(model name|cpu model|hardware)[[:space:]]*:' /proc/cpuinfo 2>/dev/null \
  | sed 's/^[^:]*:[[:space:]]*//')"
kv board "$(tr -d '\000' < /proc/device-tree/model 2>/dev/null)"
kv cores_online "$(grep -c '^processor' /proc/cpuinfo 2>/dev/null)"
kv cores_usable "$(nproc 2>/dev/null)"
kv mem_total_kib "$(awk '/^MemTotal:/ {print $2}' /proc/meminfo 2>/dev/null)"
kv mem_available_kib "$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo 2>/dev/null)"
f=/sys/devices/system/cpu/cpu0/cpufreq
kv governor "$(cat $f/scaling_governor 2>/dev/null)"
kv freq_khz "$(cat $f/scaling_cur_freq 2>/dev/null)"
kv freq_max_khz "$(cat $f/cpuinfo_max_freq 2>/dev/null)"
t=
for z in /sys/class/thermal/thermal_zone*/temp; do
  v=$(cat "$z" 2>/dev/null) || continue
  case "$v" in ''|*[!0-9-]*) continue;; esac
  if [ -z "$t" ] || [ "$v" -gt "$t" ]; then t=$v; fi
done
kv temp_millic "$t"
if command -v "$py" >/dev/null 2>&1; then kv python_path "$(command -v "$py")"; fi
"""

# argv: all_runtimes (0/1), timeout.  Prints one JSON object.
_RUNTIME_SCRIPT = r"""
import importlib.util, json, platform, subprocess, sys, time
CHILD = {
 "ai_edge_litert": "import ai_edge_litert as m; from ai_edge_litert import interpreter",
 "tflite_runtime": "import tflite_runtime as m; from tflite_runtime import interpreter",
 "tensorflow": "import tensorflow as m; m.lite.Interpreter",
}
DIST = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime",
        "tensorflow": "tensorflow"}
TAIL = "; import json; print(json.dumps(str(getattr(m, '__version__', ''))))"
def dist_version(name):
    try:
        from importlib import metadata
    except ImportError:
        return None
    for d in (name, name + "-cpu"):
        try:
            return metadata.version(d)
        except Exception:
            pass
    return None
def installed(mod):
    try:
        return importlib.util.find_spec(mod) is not None
    except Exception:
        return False
def probe(names, deadline):
    procs = {n: subprocess.Popen([sys.executable, "-c", CHILD[n] + TAIL], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, stdin=subprocess.DEVNULL) for n in names}
    out = {}
    for n, p in procs.items():
        try:
            so, se = p.communicate(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill(); p.communicate()
            out[n] = {"importable": False, "error": "import timed out"}
            continue
        if p.returncode == 0:
            version = json.loads(so.decode().strip().splitlines()[-1]) or None
            out[n] = {"importable": True, "version": version}
        else:
            lines = [l for l in se.decode("utf-8", "replace").strip().splitlines() if l.strip()]
            error = lines[-1] if lines else "exit %d" % p.returncode
            out[n] = {"importable": False, "error": error[:300]}
    return out
all_runtimes, timeout = sys.argv[1] == "1", float(sys.argv[2])
deadline = time.time() + timeout
res = {n: {"installed": installed(n), "version": dist_version(DIST[n])} for n in CHILD}
light = [n for n in ("ai_edge_litert", "tflite_runtime") if res[n]["installed"]]
for n, r in probe(light + (["tensorflow"] if all_runtimes and res["tensorflow"]["installed"] else []),
                  deadline).items():
    res[n].update(r)
if not all_runtimes and res["tensorflow"]["installed"]:
    if any(res[n].get("importable") for n in light):
        res["tensorflow"].update(importable=None, note="not imported: a lighter runtime is usable")
    else:
        res["tensorflow"].update(probe(["tensorflow"], deadline)["tensorflow"])
for n in CHILD:
    if not res[n]["installed"]:
        res[n].update(importable=False, error="not installed")
bits = 64 if sys.maxsize > 2**32 else 32
print(json.dumps({"python_version": platform.python_version(), "python_bits": bits,
                  "python_executable": sys.executable, "numpy": dist_version("numpy"), "runtimes": res}))
"""


def install_advice(python_version: str | None, arch: str | None, bits: int | None = None) -> str:
    """Exactly what to ``pip install`` for a TFLite runtime on this device.

    LiteRT (ai-edge-litert) has wheels for Python >= 3.10 on 64-bit x86 and ARM; everything else
    (32-bit Pi OS, older Python) needs tflite-runtime, which needs numpy < 2 and Python <= 3.11.
    """
    arch = (arch or "").lower()
    if not python_version:
        return (
            "install Python 3 (3.10 or newer: `apt install python3 python3-pip`), then "
            "`pip install ai-edge-litert`; or give the device's interpreter with --python"
        )
    major_minor = tuple(int(x) for x in python_version.split(".")[:2])
    is64 = arch in ("x86_64", "amd64", "aarch64", "arm64") and bits != 32
    if major_minor < (3, 8):
        return f"Python {python_version} is too old for the runner: install Python >= 3.8"
    if major_minor >= (3, 10) and is64:
        return "pip install ai-edge-litert"
    if major_minor >= (3, 12):
        return (
            f"no TFLite runtime wheel exists for Python {python_version} on {arch or 'this CPU'}: "
            'install Python 3.11, then `pip install tflite-runtime "numpy<2"`'
        )
    return 'pip install tflite-runtime "numpy<2"'


def probe(
    transport: Transport, device: Device, *, all_runtimes: bool = False, timeout: float = PROBE_TIMEOUT_S
) -> dict[str, Any]:
    """Facts about a device (see the module docstring); raises TransportError if it cannot be reached."""
    started = time.monotonic()
    python = device.python or "python3"
    rc, out, err = transport.run(["sh", "-c", _SYSTEM_SCRIPT, "sh", python], timeout=timeout)
    if rc != 0:
        raise DeviceError(f"{device.name}: the probe script failed (exit {rc}): {err.strip()[:300]}")
    facts = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    result: dict[str, Any] = {
        "arch": facts.get("arch") or None,
        "kernel": facts.get("kernel") or None,
        "os": facts.get("os") or None,
        "cpu_model": facts.get("cpu_model") or facts.get("board") or None,
        "board": facts.get("board") or None,
        "cores": _int(facts.get("cores_online")),
        "cores_usable": _int(facts.get("cores_usable")),
        "mem_total_mib": _mib(facts.get("mem_total_kib")),
        "mem_available_mib": _mib(facts.get("mem_available_kib")),
        "governor": facts.get("governor") or None,
        "freq_mhz": _mhz(facts.get("freq_khz")),
        "freq_max_mhz": _mhz(facts.get("freq_max_khz")),
        "temperature_c": round(int(facts["temp_millic"]) / 1000, 1)
        if _int(facts.get("temp_millic")) is not None
        else None,
        "python": None,
        "python_version": None,
        "numpy": None,
        "runtimes": {
            name: {"installed": False, "importable": False, "error": "no Python"} for name in RUNTIMES
        },
    }
    if facts.get("python_path"):
        left = max(5.0, timeout - (time.monotonic() - started))
        rc, out, err = transport.run(
            [python, "-c", _RUNTIME_SCRIPT, "1" if all_runtimes else "0", str(max(1.0, left - 2.0))],
            timeout=left,
        )
        info = last_json(out)
        if rc != 0 or info is None:
            result["python_error"] = (err.strip().splitlines() or [f"exit {rc}"])[-1][:300]
            result["python"] = facts["python_path"]
        else:
            result.update(
                python=info["python_executable"],
                python_version=info["python_version"],
                python_bits=info["python_bits"],
                numpy=info["numpy"],
                runtimes=info["runtimes"],
            )
    result["runtime"] = next((n for n in RUNTIMES if result["runtimes"][n].get("importable")), None)
    result["install_hint"] = (
        None
        if result["runtime"]
        else install_advice(result["python_version"], result["arch"], result.get("python_bits"))
    )
    result["rtt_ms"] = round(_round_trip_ms(transport), 2)
    result["probe_s"] = round(time.monotonic() - started, 2)
    return result


def _round_trip_ms(transport: Transport, n: int = 3) -> float:
    """Best of ``n`` warm command round trips: the fixed cost every measurement command pays."""
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        transport.run(["true"], timeout=30)
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def runner_path() -> Path:
    path = devices_dir() / "runner.py"
    if not path.is_file():
        raise DeviceError(f"the on-device runner is missing from this installation ({path})")
    return path


def setup(
    transport: Transport, device: Device, *, runner: Path | None = None, timeout: float = PROBE_TIMEOUT_S
) -> dict[str, Any]:
    """Copy the runner into the device workdir and run ``runner.py info`` there.

    Returns the runner's info JSON.  Raises DeviceError saying exactly what to install when the device
    has no Python, or no usable TFLite runtime (numpy included).
    """
    runner = runner or runner_path()
    workdir = device.workdir or "."
    rc, _, err = transport.run(["mkdir", "-p", "--", workdir], timeout=timeout)
    if rc != 0:
        raise DeviceError(f"{device.name}: cannot create the workdir {workdir}: {err.strip()}")
    # Relative remote paths and cwd resolve against the transport's workdir (the device's).
    transport.put(runner, "runner.py", timeout=timeout)
    python = device.python or "python3"
    rc, out, err = transport.run([python, "runner.py", "info", "--no-probe"], timeout=timeout, cwd=".")
    if rc == 127:
        raise DeviceError(
            f"{device.name}: there is no Python at {python!r} on the device; "
            f"{install_advice(None, _arch(device))}"
        )
    info = last_json(out)
    if info is None:
        raise DeviceError(
            f"{device.name}: the runner did not start with {python} (exit {rc}): "
            f"{(err.strip().splitlines() or ['no output'])[-1][:300]}"
        )
    if info.get("runtime") is None:
        error = (info.get("runtime_error") or {}).get("error") or info.get("error") or "no runtime"
        python_info = info.get("python") or {}
        hint = info.get("install_hint") or install_advice(
            python_info.get("version"), (info.get("platform") or {}).get("machine")
        )
        error = error.split("; install")[0]  # the runner appends its own hint; ours follows
        raise DeviceError(
            f"{device.name}: the runner works but no TFLite runtime is usable ({error}). "
            f"Install one on the device for {python}: {hint}"
        )
    return info


def _arch(device: Device) -> str | None:
    return (device.probe or {}).get("arch")


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
            with opener(device, home) as transport:
                facts = probe(transport, device, all_runtimes=all_runtimes, timeout=timeout)
            return CheckResult(device, True, time.monotonic() - t0, probe=facts)
        except EdgeNASError as exc:
            return CheckResult(device, False, time.monotonic() - t0, error=str(exc))

    if not devices:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(devices)))) as pool:
        return list(pool.map(one, devices))



def _int(value: str | None) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _mib(kib: str | None) -> int | None:
    v = _int(kib)
    return None if v is None else v // 1024


def _mhz(khz: str | None) -> float | None:
    v = _int(khz)
    return None if v is None else round(v / 1000, 1)


__all__ = ["CheckResult", "TransportError", "check", "install_advice", "probe", "runner_path", "setup"]
