"""LiteRT's ``benchmark_model`` binary as a measurement backend: its command line and its output.

Why this exists: an Android phone usually has no Python, so the runner (``devices/runner.py``) cannot
run there, but LiteRT ships a native ``benchmark_model`` for every ABI.  When a device is registered
with ``--benchmark-binary PATH``, :mod:`edgenas.measure.bench` pushes that binary, runs it with the same
protocol the runner uses (the runner copied its protocol *from* this tool, so the numbers compare), and
turns its log into the same measurement record the runner's JSON becomes.

This module only builds command lines and reads text; it never connects to a device, so it is tested on
captured output.  What the binary prints (``tensorflow/lite/tools/benchmark``; ``TFLITE_LOG`` lines
prefixed ``INFO:``/``WARN:``/``ERROR:``, on stdout or stderr depending on the build, so callers pass
both streams):

* ``Initialized session in 25.4ms.`` and, at the end, ``Inference timings in us: Init: 25400, First
  inference: 33561, Warmup (avg): 21222.1, Inference (avg): 20300``;
* ``Running benchmark for at least N iterations and at least S seconds but terminate if exceeding M
  seconds.`` twice (warm-up, then the timed runs), each followed by a statistics line in microseconds:
  ``count=24 first=33561 curr=20345 min=19988 max=33561 avg=21222.1 std=2689``, or ``count=5
  curr=1234(all same)`` when every run took the same time, or ``count=1 curr=1234``; some newer builds
  append percentiles (``p5=… median=… p95=…``), so every ``key=value`` pair is kept;
* memory: ``Memory footprint delta from the start of the tool (MB): init=3.0 overall=10.2`` and, with
  ``--report_peak_memory_footprint=true``, ``Overall peak memory footprint (MB) via periodic monitoring:
  12.5``;
* failures: ``ERROR: Could not open 'x.tflite'.``, ``ERROR: Failed to mmap model x.tflite``, ... and a
  non-zero exit status.

What the binary does **not** report unless the build prints percentiles: the median and the p90.  The
record then uses the mean as its central value and says so (``median_source: "avg"``); ``p90_ms`` stays
``None``.  Individual run times are never printed, so ``times_ms`` is empty.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from edgenas.device.scripts import script

NAME = "benchmark_model"
REMOTE_PATH = "bin/benchmark_model"  # relative to the device workdir

# Flags whose loss would silently change the measurement: an old build that does not know one of these
# is refused rather than trusted.  (--report_peak_memory_footprint only adds the peak memory line.)
PROTOCOL_FLAGS = ("graph", "num_threads", "num_runs", "min_secs", "max_secs", "warmup_runs",
                  "warmup_min_secs", "use_xnnpack")

# Error lines that mean "this model cannot be loaded or run by this binary" (the runner's exit 3).
_MODEL_ERRORS = (
    "Could not open '",
    "Failed to mmap model",
    "not a valid Flatbuffer",
    "Model provided has model identifier",
    "The model allocation is null",
    "Failed to initialize the interpreter",
    "Failed to allocate tensors",
    "Didn't find op for builtin opcode",
    "Encountered unresolved custom op",
    "Registration failed",
)

_PREFIX = re.compile(r"^(INFO|WARN|WARNING|ERROR|FATAL): ?")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"
_PAIR = re.compile(rf"([A-Za-z_][A-Za-z0-9_]*)=({_NUMBER})")
_RUNNING = re.compile(r"Running benchmark for at least (\d+) iterations and at least "
                      rf"({_NUMBER}) seconds but terminate if exceeding ({_NUMBER}) seconds")
_INIT = re.compile(rf"Initialized session in ({_NUMBER}) ?ms")
_TIMINGS = re.compile(rf"Inference timings in us: Init: ({_NUMBER}), First inference: ({_NUMBER}), "
                      rf"Warmup \(avg\): ({_NUMBER}), Inference \(avg\): ({_NUMBER})")
_FOOTPRINT = re.compile(rf"(?:Memory footprint delta from the start of the tool|Peak memory footprint)"
                        rf" \(MB\): init=({_NUMBER}) overall=({_NUMBER})")
_PEAK = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring: ({_NUMBER})")
_MODEL_SIZE = re.compile(rf"The input model file size \(MB\): ({_NUMBER})")
_UNCONSUMED = re.compile(r"Unconsumed cmdline flags: (.*)")
_VERSION = re.compile(r"(?i)\b(?:version|litert|tflite|tensorflow lite)\b[^0-9\n]{0,20}"
                      r"v?(\d+\.\d+(?:\.\d+)?(?:[-+.][0-9A-Za-z.]+)?)")


# Bounds on what a device may print.  A real log is a few KB with lines under 300 characters; one
# inference slower than 1000 s (1e9 us) or a count beyond 1e8 runs is not a measurement but corruption.
MAX_OUTPUT_CHARS = 1_000_000
MAX_LINE_CHARS = 4096
MAX_MESSAGES = 50
MAX_MESSAGE_CHARS = 500
MAX_LATENCY_US = 1e9
MAX_COUNT = 1e8
MAX_MB = 1e7
_STAT_KEYS = frozenset({"count", "first", "curr", "min", "max", "avg", "std", "median"})


class OutputError(ValueError):
    """The binary's output is not a complete, believable benchmark (missing statistics, zero runs,
    impossible numbers, too large).  The only exception the output parser raises."""


# ------------------------------------------------------------------------------------ command line


def _num(value: float) -> str:
    """Numbers as the binary's parser reads them (``istream >> float``): plain decimal, no exponent."""
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    return text or "0"


def build_argv(binary: str, graph: str, *, threads: int, runs: int, min_secs: float, max_secs: float,
               warmup_runs: int, warmup_secs: float, xnnpack: bool | None = None) -> list[str]:
    """The benchmark_model command line for the runner's protocol (docs/runner.md).

    The binary only understands ``--name=value`` (a separate value is an unknown argument, silently
    ignored with a warning), so every flag is one argv element.  ``threads=0`` (the runtime's choice)
    is the binary's ``-1``.  ``--use_xnnpack`` is passed only when asked: by default the binary, like the
    runner, uses whatever default delegate its runtime applies.
    """
    argv = [
        binary,
        f"--graph={graph}",
        f"--num_threads={threads if threads > 0 else -1}",
        f"--num_runs={int(runs)}",
        f"--min_secs={_num(min_secs)}",
        f"--max_secs={_num(max_secs)}",
        f"--warmup_runs={int(warmup_runs)}",
        f"--warmup_min_secs={_num(warmup_secs)}",
        "--report_peak_memory_footprint=true",
    ]
    if xnnpack is not None:
        argv.append(f"--use_xnnpack={'true' if xnnpack else 'false'}")
    return argv


def version_argv(binary: str) -> list[str]:
    """Ask the binary for its version.  Release builds have no such flag (they warn about it and fail
    for want of ``--graph``), so :func:`parse_version` returns ``None`` for them."""
    return [binary, "--version"]


def parse_version(rc: int, text: str) -> str | None:
    """A version number from ``--version`` output, only when the binary answered it successfully."""
    if rc != 0:
        return None
    m = _VERSION.search(text[:MAX_LINE_CHARS * 4])
    return m.group(1) if m else None


# ------------------------------------------------------------------------------------------ output


def combine(stdout: str, stderr: str) -> str:
    """Both streams as one text: builds differ in where INFO lines go, errors go to stderr."""
    return "\n".join(part for part in (stdout, stderr) if part)


def _clip(message: str) -> str:
    """A device-supplied message cut to a length that fits in an error line and a database row."""
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "…"


def _lines(text: str) -> list[tuple[str, str]]:
    """(severity, message) per non-empty line; lines without a prefix count as INFO."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        m = _PREFIX.match(line)
        severity = (m.group(1) if m else "INFO").replace("WARNING", "WARN")
        out.append((severity, line[m.end():].strip() if m else line))
    return out


def _finite(text: str, limit: float) -> float | None:
    """``text`` as a float when it is finite, non-negative and at most ``limit``, else ``None``."""
    try:
        value = float(text)
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) and 0.0 <= value <= limit else None


def _count(text: str) -> int | None:
    """A run count: a whole number in [0, MAX_COUNT] (``1e3`` is allowed; ``2.5``, ``nan`` are not)."""
    value = _finite(text, MAX_COUNT)
    return int(value) if value is not None and value == int(value) else None


def _stat_key(key: str) -> bool:
    return key in _STAT_KEYS or bool(re.fullmatch(r"p\d{1,2}(?:\.\d{1,3})?", key))


def parse_stat(message: str) -> dict[str, Any]:
    """One statistics line (microseconds) as numbers, ``all_same`` filled in.

    ``count=5 curr=1234(all same)`` and ``count=1 curr=1234`` print no min/max/avg/std: every run took
    ``curr`` microseconds, so those are ``curr`` and the deviation is 0.

    The line comes from a device, so it is checked before any number is believed: every value must be
    finite, non-negative and below :data:`MAX_LATENCY_US`, the count a whole number, and min ≤ avg ≤ max
    (within the 6 significant digits the binary prints).  Anything else raises :class:`OutputError` —
    one clear reason, never a ``ValueError`` from ``int(nan)`` or a negative latency stored as a fact.
    Keys a newer build may add beyond the known ones (count, first, curr, min, max, avg, std, median,
    ``pNN``) are dropped rather than trusted.
    """
    if len(message) > MAX_LINE_CHARS:
        raise OutputError(f"statistics line of {len(message)} characters (at most {MAX_LINE_CHARS})")
    raw = {k: v for k, v in _PAIR.findall(message) if _stat_key(k)}
    if "count" not in raw:
        raise OutputError(f"not a statistics line: {_clip(message)!r}")
    count = _count(raw["count"])
    if count is None:
        raise OutputError(f"statistics line with an impossible run count {_clip(raw['count'])!r}: "
                          f"{_clip(message)!r}")
    stat: dict[str, Any] = {}
    for key, text in raw.items():
        if key == "count":
            continue
        value = _finite(text, MAX_LATENCY_US)
        if value is None:
            raise OutputError(f"statistics line with an impossible {key}={_clip(text)} (must be a "
                              f"finite time in 0..{MAX_LATENCY_US:.0e} us): {_clip(message)!r}")
        stat[key] = value
    stat["count"] = count
    summary = [key for key in ("min", "max", "avg", "std") if key in stat]
    stat["all_same"] = "(all same)" in message or (count > 0 and not summary)
    if count > 0 and stat["all_same"]:
        curr = stat.get("curr")
        if curr is None:
            raise OutputError(f"statistics line without a value: {_clip(message)!r}")
        for key in ("first", "min", "max", "avg"):
            stat.setdefault(key, curr)
        stat.setdefault("std", 0.0)
    elif count > 0 and len(summary) < 4:
        raise OutputError(f"statistics line with only {', '.join(summary)} of min, max, avg, std: "
                          f"{_clip(message)!r}")
    if count > 0:
        _check_order(stat, message)
    return stat


def _check_order(stat: dict[str, Any], message: str) -> None:
    """min ≤ every central value and percentile ≤ max, with slack for 6-digit printing."""
    low, high = stat.get("min"), stat.get("max")
    if low is None or high is None:
        return
    slack = 1e-4 * high + 1.0
    if low > high + slack:
        raise OutputError(f"statistics line with min above max: {_clip(message)!r}")
    for key, value in stat.items():
        if key in ("avg", "median") or (key.startswith("p") and key != "count"):
            if not low - slack <= value <= high + slack:
                raise OutputError(f"statistics line with {key} outside min..max: {_clip(message)!r}")


def _quantity(out: dict[str, Any], name: str, text: str, limit: float) -> float | None:
    """An auxiliary number (init time, memory): a bad one is dropped with a warning, not stored."""
    value = _finite(text, limit)
    if value is None:
        _note(out["warnings"], f"ignored {name}={_clip(text)} from benchmark_model (not a finite "
                               f"number in 0..{limit:.0e})")
    return value


def _note(messages: list[str], message: str) -> None:
    if len(messages) < MAX_MESSAGES:
        messages.append(_clip(message))


def parse_output(text: str) -> dict[str, Any]:
    """Everything the binary's log says, in its own units (µs, ms, MB), plus errors and warnings.

    Keys: ``warmup`` and ``timed`` (statistics dicts, ``None`` when absent), ``runs_requested`` (the
    two "Running benchmark for at least ..." lines as dicts), ``init_us``, ``init_ms``,
    ``first_inference_us``, ``warmup_avg_us``, ``inference_avg_us``, ``footprint_init_mb``,
    ``footprint_overall_mb``, ``peak_mb``, ``model_size_mb``, ``unconsumed_flags`` (flag names the
    binary did not know), ``errors`` and ``warnings`` (messages, at most :data:`MAX_MESSAGES` of
    :data:`MAX_MESSAGE_CHARS` each), ``invalid`` (why the output cannot be a measurement: too large, a
    statistics line with impossible numbers).  Never raises: what is missing is ``None``;
    :func:`to_measurement` decides whether that is enough.  A log larger than
    :data:`MAX_OUTPUT_CHARS` (a real one is a few KB) is not parsed at all.
    """
    out: dict[str, Any] = {
        "warmup": None, "timed": None, "runs_requested": [], "init_us": None, "init_ms": None,
        "first_inference_us": None, "warmup_avg_us": None, "inference_avg_us": None,
        "footprint_init_mb": None, "footprint_overall_mb": None, "peak_mb": None,
        "model_size_mb": None, "unconsumed_flags": [], "errors": [], "warnings": [], "invalid": [],
    }
    if len(text) > MAX_OUTPUT_CHARS:
        out["invalid"].append(f"benchmark_model printed {len(text):,} characters, more than the "
                              f"{MAX_OUTPUT_CHARS:,} a benchmark log can be")
        return out
    stats: list[dict[str, Any]] = []
    phase_of_next_stat: list[int] = []
    for severity, msg in _lines(text):
        if severity in ("ERROR", "FATAL"):
            _note(out["errors"], msg)
            continue
        if severity == "WARN":
            _note(out["warnings"], msg)
            m = _UNCONSUMED.search(msg[:MAX_LINE_CHARS])
            if m:
                flags = [a.split("=", 1)[0].lstrip("-")[:64] for a in m.group(1).split()]
                out["unconsumed_flags"] = (out["unconsumed_flags"] + flags)[:MAX_MESSAGES]
            continue
        if msg.startswith("count="):
            phase = phase_of_next_stat.pop(0) if phase_of_next_stat else len(stats)
            try:
                stat = parse_stat(msg)
            except OutputError as exc:
                stat = {"invalid": str(exc)}
            stat["phase"] = phase
            stats.append(stat)
            continue
        if len(msg) > MAX_LINE_CHARS:
            continue  # no line the parser reads is this long
        if m := _RUNNING.search(msg):
            out["runs_requested"].append({"runs": _count(m.group(1)),
                                          "min_secs": _finite(m.group(2), 1e9),
                                          "max_secs": _finite(m.group(3), 1e9)})
            phase_of_next_stat.append(len(out["runs_requested"]) - 1)
        elif m := _TIMINGS.search(msg):
            out["init_us"], out["first_inference_us"], out["warmup_avg_us"], out["inference_avg_us"] = (
                _quantity(out, name, g, MAX_LATENCY_US)
                for name, g in zip(("Init", "First inference", "Warmup (avg)", "Inference (avg)"),
                                   m.groups()))
        elif m := _INIT.search(msg):
            out["init_ms"] = _quantity(out, "init_ms", m.group(1), MAX_LATENCY_US / 1000)
        elif m := _FOOTPRINT.search(msg):
            out["footprint_init_mb"] = _quantity(out, "footprint init", m.group(1), MAX_MB)
            out["footprint_overall_mb"] = _quantity(out, "footprint overall", m.group(2), MAX_MB)
        elif m := _PEAK.search(msg):
            out["peak_mb"] = _quantity(out, "peak memory", m.group(1), MAX_MB)
        elif m := _MODEL_SIZE.search(msg):
            out["model_size_mb"] = _quantity(out, "model size", m.group(1), MAX_MB)
    for stat in stats:
        key = "warmup" if stat.pop("phase") == 0 else "timed"
        out[key] = stat  # the last one of a phase wins (a build that prints a phase twice)
    return out


def is_model_error(errors: Sequence[str]) -> bool:
    """Whether the binary's errors say the *model* cannot be loaded (not the binary or the device)."""
    return any(marker in e for e in errors for marker in _MODEL_ERRORS)


def tail(text: str, lines: int = 8, chars: int = 800) -> str:
    """The last lines of the binary's output, for error messages (only the end of a huge one is read)."""
    kept = [ln.rstrip() for ln in text[-64 * chars:].splitlines() if ln.strip()][-lines:]
    return " | ".join(kept)[-chars:] or "no output"


def _ms(us: float | None) -> float | None:
    return None if us is None or math.isnan(us) else round(us / 1000.0, 9)


def to_measurement(parsed: dict[str, Any], *, threads: int, protocol: dict[str, Any]) -> dict[str, Any]:
    """The runner-shaped measurement (docs/runner.md, "bench JSON") from :func:`parse_output`.

    The same keys as the runner's JSON where the binary reports the fact, so the bench stores it
    unchanged: ``count``, ``median_ms``, ``p90_ms``, ``mean_ms``, ``std_ms``, ``min_ms``, ``max_ms``,
    ``cv`` (std / mean, both over the timed runs), ``init_ms``, ``first_inference_ms``, ``warmup``,
    ``memory.peak_rss_kib`` (the binary's peak footprint, MiB × 1024).  Additions: ``median_source``
    (``"median"`` when the build printed one, else ``"avg"``: the central value is then the mean),
    ``percentiles_ms`` (any ``pNN`` the build printed), ``memory.footprint_*_mib``.

    Raises :class:`OutputError` (and nothing else) when the output is too large, a statistics line has
    impossible numbers, there is no timed-run statistics line, or it counted no runs.  Every number in
    a returned record is finite and non-negative.
    """
    for reason in parsed.get("invalid") or ():
        raise OutputError(reason)
    timed = parsed.get("timed")
    if not timed:
        raise OutputError("no statistics line for the timed runs in benchmark_model's output")
    warmup = parsed.get("warmup") or {}
    for stat in (timed, warmup):
        if "invalid" in stat:
            raise OutputError(stat["invalid"])
    if timed["count"] <= 0 or timed.get("avg") is None:
        raise OutputError("benchmark_model reported zero timed runs")
    if timed["avg"] <= 0:
        raise OutputError("benchmark_model reported an average of 0 us over the timed runs")
    mean_us = float(timed["avg"])
    std_us = float(timed.get("std", 0.0))
    if "median" in timed or "p50" in timed:
        median_us, median_source = float(timed.get("median", timed.get("p50"))), "median"
    else:
        median_us, median_source = mean_us, "avg"
    percentiles = {k: _ms(v) for k, v in sorted(timed.items())
                   if re.fullmatch(r"p\d+(?:\.\d+)?", k) or k == "median"}
    first_us = parsed.get("first_inference_us")
    if not warmup.get("count"):  # no warm-up run: the binary prints 0; the first timed run was first
        first_us = timed.get("first")
    elif first_us is None:
        first_us = warmup.get("first")
    init_ms = _ms(parsed.get("init_us")) if parsed.get("init_us") is not None else parsed.get("init_ms")
    peak_mb = parsed.get("peak_mb")
    return {
        "command": "bench",
        "backend": NAME,
        "threads": threads if threads > 0 else None,
        "threads_requested": threads,
        "protocol": dict(protocol),
        "init_ms": init_ms,
        "first_inference_ms": _ms(first_us),
        "warmup": {"count": warmup.get("count"), "mean_ms": _ms(warmup.get("avg"))},
        "times_ms": [],
        "times_listed_all": False,
        "count": int(timed["count"]),
        "median_ms": _ms(median_us),
        "median_source": median_source,
        "p90_ms": _ms(timed.get("p90")),
        "mean_ms": _ms(mean_us),
        "std_ms": _ms(std_us),
        "min_ms": _ms(timed.get("min")),
        "max_ms": _ms(timed.get("max")),
        "cv": (std_us / mean_us) if mean_us > 0 else None,
        "percentiles_ms": percentiles,
        "memory": {
            "peak_rss_kib": int(round(peak_mb * 1024)) if peak_mb and peak_mb > 0 else None,
            "footprint_init_mib": parsed.get("footprint_init_mb"),
            "footprint_overall_mib": parsed.get("footprint_overall_mb"),
        },
        "model_size_mb": parsed.get("model_size_mb"),
        "warnings": list(parsed.get("warnings") or []),
    }


# ------------------------------------------------------------------------------------- device state

# The runner's state_before/state_after (cpufreq, thermal, throttled, time) read with plain shell, for
# devices that have no Python.  A fixed script: nothing from the user is spliced into it.
STATE_SCRIPT = script("state")  # devices/scripts/state.sh


def _int(text: str) -> int | None:
    """A decimal integer of at most 18 digits (a device cannot make ``int`` raise with 5,000 digits)."""
    text = text.strip()
    return int(text) if re.fullmatch(r"-?[0-9]{1,18}", text) else None


def parse_state(stdout: str) -> dict[str, Any]:
    """:data:`STATE_SCRIPT`'s output as the runner's state dict (kHz, °C, device clock seconds)."""
    state: dict[str, Any] = {"cpufreq": [], "thermal": [], "throttled": None, "time": None}
    for line in stdout.splitlines():
        parts = line.split("\t")
        if parts[0] == "cpufreq" and len(parts) >= 6 and _int(parts[1]) is not None:
            state["cpufreq"].append({"cpu": _int(parts[1]), "governor": parts[2].strip() or None,
                                     "cur_khz": _int(parts[3]), "min_khz": _int(parts[4]),
                                     "max_khz": _int(parts[5])})
        elif parts[0] == "thermal" and len(parts) >= 3:
            milli = _int(parts[2])
            state["thermal"].append({"zone": parts[1], "type": "\t".join(parts[3:]).strip() or None,
                                     "temp_c": milli / 1000.0 if milli is not None else None})
        elif parts[0] == "throttled" and len(parts) >= 2:
            state["throttled"] = parts[1].strip().partition("=")[2] or None
        elif parts[0] == "time" and len(parts) >= 2 and _int(parts[1]) is not None:
            state["time"] = float(parts[1])
    state["cpufreq"].sort(key=lambda c: c["cpu"])
    return state


__all__ = ["NAME", "PROTOCOL_FLAGS", "REMOTE_PATH", "STATE_SCRIPT", "OutputError", "build_argv",
           "combine", "is_model_error", "parse_output", "parse_stat", "parse_state", "parse_version",
           "tail", "to_measurement", "version_argv"]
