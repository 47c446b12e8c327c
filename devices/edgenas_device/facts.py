"""What a device is and what state it is in, read from /proc, /sys and the Python side; install hints.

This is the one home of device facts.  The runner reports them under ``info`` (and the state snapshot
around ``bench``); the host imports this same module for :func:`install_advice` and for
:func:`parse_facts_sh`, which turns the output of ``devices/scripts/facts.sh`` (the probe for a device
with no Python, e.g. a phone with only ``benchmark_model``) into the *same* :func:`summary` dict.
Everything is read defensively: a fact a device does not expose is ``None``, never an exception.
Python >= 3.8, stdlib only (numpy is only asked for its version).
"""

from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from typing import Any

# Values from a device are bounded: a broken sysfs file cannot make a fact megabytes long.
MAX_FACT_CHARS = 256
_SIXTY_FOUR_BIT = ("x86_64", "amd64", "aarch64", "arm64")

# The keys of summary() and parse_facts_sh(), in order: what the host stores as a device's probe.
SUMMARY_KEYS = (
    "arch",
    "kernel",
    "os",
    "cpu_model",
    "board",
    "cores",
    "cores_usable",
    "mem_total_mib",
    "mem_available_mib",
    "governor",
    "freq_mhz",
    "freq_max_mhz",
    "temperature_c",
    "boot_id",
    "uptime_s",
)


def read_text(path: str, limit: int = 1 << 20) -> str | None:
    """A small /proc or /sys file, stripped, at most ``limit`` characters; None when unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(limit).strip()
    except OSError:
        return None


def read_int(path: str) -> int | None:
    text = read_text(path, 64)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _short(value: Any) -> str | None:
    if value is None:
        return None
    text = " ".join(str(value).replace("\x00", "").split())
    return text[:MAX_FACT_CHARS] or None


def cpu_model() -> dict[str, Any]:
    """CPU and board: x86 has 'model name', ARM boards 'Hardware'/'Model' or a device-tree model."""
    info: dict[str, Any] = {"model": None, "board": None, "cpuinfo_mhz": None}
    text = read_text("/proc/cpuinfo") or ""
    mhz: list[float] = []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key in ("model name", "cpu model", "processor") and info["model"] is None and value:
            if key == "processor" and value.isdigit():
                continue
            info["model"] = _short(value)
        elif key in ("hardware", "model") and value and not value.isdigit() and info["board"] is None:
            info["board"] = _short(value)
        elif key == "cpu mhz":
            try:
                mhz.append(float(value))
            except ValueError:
                pass
    dt_model = read_text("/proc/device-tree/model") or read_text("/sys/firmware/devicetree/base/model")
    if dt_model:
        info["board"] = _short(dt_model)
    if info["model"] is None:
        info["model"] = _short(platform.processor())
    if mhz:
        info["cpuinfo_mhz"] = mhz
    return info


def cores() -> dict[str, Any]:
    """Logical CPUs in the machine and those this process may run on (taskset/cgroups narrow it)."""
    affinity = None
    if hasattr(os, "sched_getaffinity"):
        try:
            affinity = sorted(os.sched_getaffinity(0))
        except OSError:
            affinity = None
    return {
        "count": os.cpu_count(),
        "affinity": affinity,
        "available": len(affinity) if affinity is not None else os.cpu_count(),
        "topology": topology(),
    }


def topology() -> list[dict[str, Any]]:
    """Per CPU, its maximum frequency (``cpufreq/cpuinfo_max_freq``, kHz) and capacity (``cpu_capacity``:
    the scheduler's relative size, 1024 for the biggest core), None where the kernel does not say:
    on big.LITTLE the big cores are the ones with the larger values, the set to give ``--cpus``."""
    rows = []
    paths = glob.glob("/sys/devices/system/cpu/cpu[0-9]*")
    for d in sorted(paths, key=_cpu_index)[:1024]:
        rows.append({"cpu": _cpu_index(d), "max_khz": read_int(d + "/cpufreq/cpuinfo_max_freq"),
                     "capacity": read_int(d + "/cpu_capacity")})
    return rows


def memory() -> dict[str, Any]:
    """Total/available memory (KiB) and a cgroup limit, which on containers is the real ceiling."""
    out: dict[str, Any] = {"total_kib": None, "available_kib": None, "cgroup_limit_bytes": None}
    for line in (read_text("/proc/meminfo") or "").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "MemTotal:" and parts[1].isdigit():
            out["total_kib"] = int(parts[1])
        elif len(parts) >= 2 and parts[0] == "MemAvailable:" and parts[1].isdigit():
            out["available_kib"] = int(parts[1])
    limit = read_text("/sys/fs/cgroup/memory.max", 64) or read_text(
        "/sys/fs/cgroup/memory/memory.limit_in_bytes", 64
    )
    if limit and limit.isdigit() and int(limit) < 2**60:  # cgroup v1 writes "no limit" as ~2**63
        out["cgroup_limit_bytes"] = int(limit)
    if out["total_kib"] is None and hasattr(os, "sysconf"):
        try:
            out["total_kib"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024
        except (ValueError, OSError):
            pass
    return out


def _cpu_index(path: str) -> int:
    m = re.search(r"cpu(\d+)", path)
    return int(m.group(1)) if m else -1


def cpufreq() -> list[dict[str, Any]]:
    """Governor and frequencies per CPU: a 'powersave' or throttled core explains a slow benchmark."""
    rows = []
    for d in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq"), key=_cpu_index):
        rows.append(
            {
                "cpu": _cpu_index(d),
                "governor": _short(read_text(d + "/scaling_governor", 64)),
                "cur_khz": read_int(d + "/scaling_cur_freq"),
                "min_khz": read_int(d + "/scaling_min_freq"),
                "max_khz": read_int(d + "/scaling_max_freq"),
            }
        )
    return rows


def thermal() -> list[dict[str, Any]]:
    """Temperatures of the thermal zones in degrees C (the kernel reports millidegrees)."""
    rows = []
    for d in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        milli = read_int(d + "/temp")
        rows.append(
            {
                "zone": os.path.basename(d),
                "type": _short(read_text(d + "/type", 256)),
                "temp_c": milli / 1000.0 if milli is not None else None,
            }
        )
    return rows


def throttled() -> str | None:
    """Raspberry Pi firmware throttle flags (under-voltage, capped, throttled) where vcgencmd exists."""
    exe = shutil.which("vcgencmd")
    if not exe:
        return None
    try:
        res = subprocess.run([exe, "get_throttled"], capture_output=True, text=True, timeout=3)
    except (OSError, subprocess.SubprocessError):
        return None
    return _short(res.stdout.strip().partition("=")[2])


def device_state() -> dict[str, Any]:
    """The snapshot taken before and after a benchmark, so a heating or down-clocked run shows."""
    return {"cpufreq": cpufreq(), "thermal": thermal(), "throttled": throttled(), "time": time.time()}


def boot() -> dict[str, Any]:
    """``{boot_id, uptime_s}``: clocks that never jump.  A Pi has no RTC and NTP moves its wall clock by
    hours after boot, so lock staleness is judged by boot id (changes only with a reboot) and uptime."""
    boot_id = read_text("/proc/sys/kernel/random/boot_id", 64)
    if boot_id is not None and not re.fullmatch(r"[0-9a-fA-F-]{8,64}", boot_id):
        boot_id = None
    uptime = None
    raw = (read_text("/proc/uptime", 64) or "").split()
    if raw:
        try:
            uptime = float(raw[0])
        except ValueError:
            uptime = None
    return {"boot_id": boot_id, "uptime_s": uptime}


def os_name() -> str | None:
    """``PRETTY_NAME`` from /etc/os-release, Android's release, or the kernel's name."""
    for line in (read_text("/etc/os-release", 1 << 14) or "").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "PRETTY_NAME":
            return _short(value.strip().strip("\"'"))
    if shutil.which("getprop"):
        try:
            res = subprocess.run(
                ["getprop", "ro.build.version.release"], capture_output=True, text=True, timeout=3
            )
            if res.stdout.strip():
                return _short("Android " + res.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    return _short(platform.system())


def platform_facts() -> dict[str, Any]:
    """``{system, release, machine, pointer_bits, libc}`` of this Python."""
    return {
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "pointer_bits": 64 if sys.maxsize > 2**32 else 32,
        "libc": " ".join(platform.libc_ver()).strip() or None,
    }


def python_facts() -> dict[str, Any]:
    return {
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
    }


def numpy_version() -> str | None:
    try:
        import numpy
    except ImportError:
        return None
    return str(numpy.__version__)


def rss_kib() -> int | None:
    """Current resident set size (KiB) from /proc; None off Linux."""
    for line in (read_text("/proc/self/status") or "").splitlines():
        if line.startswith("VmRSS:"):
            try:
                return int(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


def hwm_kib() -> int | None:
    """Peak RSS (KiB) of this process image since it started or since :func:`reset_peak_rss`
    (``VmHWM``); None off Linux.  Unlike ``ru_maxrss``, which Linux carries across ``exec`` (a runner
    started by a 1 GB host process would report that process's peak), it belongs to this image."""
    for line in (read_text("/proc/self/status") or "").splitlines():
        if line.startswith("VmHWM:"):
            try:
                return int(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0: ``5`` into ``/proc/self/clear_refs``), so a
    later :func:`hwm_kib` is the peak of what follows alone; False where the kernel refuses it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def peak_rss_kib() -> int | None:
    """Peak RSS of this process; ru_maxrss is KiB on Linux but bytes on macOS."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


def _mib(kib: int | None) -> int | None:
    return None if kib is None else kib // 1024


def _mhz(khz: int | None) -> float | None:
    return None if khz is None else round(khz / 1000, 1)


def summary() -> dict[str, Any]:
    """The device in one flat dict (:data:`SUMMARY_KEYS`), as the host stores a device's probe.

    ``governor``/``freq_*`` are cpu0's (the first cpufreq policy), ``temperature_c`` the hottest zone,
    ``cores`` the machine's logical CPUs and ``cores_usable`` those this process may use.
    """
    cpu = cpu_model()
    mem = memory()
    freq = cpufreq()
    first = freq[0] if freq else {}
    max_khz = read_int("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") or first.get("max_khz")
    temps = [z["temp_c"] for z in thermal() if z["temp_c"] is not None]
    c = cores()
    out = {
        "arch": _short(platform.machine()),
        "kernel": _short(platform.release()),
        "os": os_name(),
        "cpu_model": cpu["model"] or cpu["board"],
        "board": cpu["board"],
        "cores": c["count"],
        "cores_usable": c["available"],
        "mem_total_mib": _mib(mem["total_kib"]),
        "mem_available_mib": _mib(mem["available_kib"]),
        "governor": first.get("governor"),
        "freq_mhz": _mhz(first.get("cur_khz")),
        "freq_max_mhz": _mhz(max_khz),
        "temperature_c": round(max(temps), 1) if temps else None,
    }
    out.update(boot())
    return out


def _int_or_none(value: str | None) -> int | None:
    value = (value or "").strip()
    return int(value) if re.fullmatch(r"-?\d{1,18}", value) else None


def parse_facts_sh(stdout: str) -> dict[str, Any]:
    """``devices/scripts/facts.sh`` output (``key=value`` lines) as the :func:`summary` dict, plus
    ``python_path`` (where the requested Python is, or None).

    The text is untrusted device output: only known keys are read, each value is cut to
    :data:`MAX_FACT_CHARS`, numbers must be plain integers, and at most 64 KiB is looked at.
    """
    kv: dict[str, str] = {}
    for line in stdout[: 1 << 16].splitlines()[:200]:
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[a-z_]{1,32}", key):
            kv[key] = value.strip()
    temp = _int_or_none(kv.get("temp_millic"))
    uptime = kv.get("uptime", "").split(".")[0]
    boot_id = kv.get("boot_id") or None
    if boot_id is not None and not re.fullmatch(r"[0-9a-fA-F-]{8,64}", boot_id):
        boot_id = None
    return {
        "arch": _short(kv.get("arch")),
        "kernel": _short(kv.get("kernel")),
        "os": _short(kv.get("os")),
        "cpu_model": _short(kv.get("cpu_model")) or _short(kv.get("board")),
        "board": _short(kv.get("board")),
        "cores": _int_or_none(kv.get("cores_online")),
        "cores_usable": _int_or_none(kv.get("cores_usable")),
        "mem_total_mib": _mib(_int_or_none(kv.get("mem_total_kib"))),
        "mem_available_mib": _mib(_int_or_none(kv.get("mem_available_kib"))),
        "governor": _short(kv.get("governor")),
        "freq_mhz": _mhz(_int_or_none(kv.get("freq_khz"))),
        "freq_max_mhz": _mhz(_int_or_none(kv.get("freq_max_khz"))),
        "temperature_c": round(temp / 1000, 1) if temp is not None else None,
        "boot_id": boot_id,
        "uptime_s": float(_int_or_none(uptime)) if _int_or_none(uptime) is not None else None,
        "python_path": _short(kv.get("python_path")),
    }


# --- install hints ----------------------------------------------------------------------------------


def _major_minor(python_version: str) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", python_version.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def install_advice(python_version: str | None, arch: str | None, bits: int | None = None) -> str:
    """Exactly what to ``pip install`` for a TFLite runtime on a device with this Python and CPU.

    LiteRT (ai-edge-litert) has wheels for Python >= 3.10 on 64-bit x86 and ARM; everything else
    (32-bit Pi OS, older Python) needs tflite-runtime, which needs numpy < 2 and Python <= 3.11.
    ``python_version`` None means the device has no Python at all.
    """
    arch = (arch or "").lower()
    if not python_version:
        return (
            "install Python 3 (3.10 or newer: `apt install python3 python3-pip`), then "
            "`pip install ai-edge-litert`; or give the device's interpreter with --python"
        )
    major_minor = _major_minor(python_version)
    if major_minor is None:
        return f"cannot read the Python version {python_version[:40]!r}: install Python >= 3.8"
    is64 = arch in _SIXTY_FOUR_BIT and bits != 32
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


def install_hint() -> str:
    """:func:`install_advice` for the Python running this code."""
    return install_advice(
        platform.python_version(), platform.machine(), 64 if sys.maxsize > 2**32 else 32
    )
