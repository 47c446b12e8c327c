"""What a device answers, checked before the host believes any of it.

Why this exists: a device is another machine — one board in a class of many, possibly compromised,
possibly just broken.  Its answers are stored (``measurements`` rows that every device of its class
shares, so one board's garbage would feed the class's latency predictor), compared, plotted and
printed.  Checking only ``median_ms`` let ``"cv": "x"`` or ``"p90_ms": {}`` end a command in a
traceback, and stored ``mean_ms: -5``, ``p90_ms: 1e308``, ``count: "x"`` or ``peak_rss_kib: "lots"``;
an answer nested 100 000 levels deep made ``json.loads`` raise ``RecursionError``.

So, in one place for every path that takes runner output (``bench``, ``measure``, ``fleet bench``, the
push health check, ``fleet predict``):

* :func:`parse_answer` / :func:`check_output`: the JSON line is bounded in size and nesting depth
  *before* ``json.loads`` sees it (a bracket scan that skips strings), so no answer can exhaust the
  recursion limit — here or later, when the raw answer is stored with ``json.dumps``;
* :func:`bench_answer`: every field the host uses is type- and range-checked as
  :mod:`edgenas.measure.benchmark_model` checks ``benchmark_model``'s log: numbers finite, non-negative
  and
  under a sane bound, integers really integers (``True`` is not a count), strings short and printable
  (:mod:`edgenas.core.text`), nested records of the right shape;
* :func:`predict_answer`: the same for ``predict``'s top-k.

Every error is a :class:`~edgenas.device.errors.RunnerError` naming the device and the field, so
callers handle a lying device exactly as a failed one: nothing is stored.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from itertools import accumulate
from typing import Any

from edgenas.core.errors import DeviceError
from edgenas.core.text import is_printable, printable
from edgenas.device.errors import RunnerError

# Bounds.  A real bench answer is a few tens of KB (at most 2000 listed run times) nested 4 deep;
# one inference slower than 1000 s, more than 1e8 runs, or a process using more than 1 TiB is not a
# measurement but corruption (the same bounds as edgenas.measure.benchmark_model's parser).
MAX_ANSWER_CHARS = 8 * 1024 * 1024  # the transports' stdout limit
MAX_DEPTH = 32
MAX_MS = 1e6
MAX_COUNT = 100_000_000
MAX_CV = 1e4  # std/mean of n runs is at most sqrt(n), and n is at most MAX_COUNT
MAX_RSS_KIB = 1 << 30
MAX_KHZ = 100_000_000  # 100 GHz
MIN_TEMP_C, MAX_TEMP_C = -273.15, 1000.0
MAX_NAME_CHARS = 64
MAX_LIST = 4096  # cpufreq policies, thermal zones, top-k entries
MAX_PREDICTIONS = 1 << 20  # one per input sample (evaluate sends a whole validation batch)
MAX_SCORE = 1e30
MAX_LABEL_CHARS = 256

# The bench answer's timing fields: (key, required).
TIMES_MS = (("median_ms", True), ("p90_ms", False), ("mean_ms", False), ("std_ms", False),
            ("min_ms", False), ("max_ms", False), ("init_ms", False), ("first_inference_ms", False))

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _error(message: str) -> DeviceError:
    """A lying device is handled exactly as a failing one: a :class:`RunnerError`."""
    return RunnerError(message)


# ------------------------------------------------------------------------------------------ JSON


def depth(line: str) -> int:
    """The deepest nesting of ``[``/``{`` in a JSON text, brackets inside strings not counted.
    Linear and non-recursive, so it is safe on any input (a bracket scan, not a parse)."""
    brackets = _BRACKETS.findall(_STRING.sub("", line))
    if not brackets:
        return 0
    return max(0, max(accumulate(map(_DEPTH_STEP.__getitem__, brackets))))


def _check_line(device: str, verb: str, line: str) -> None:
    if len(line) > MAX_ANSWER_CHARS:
        raise _error(f"{device}: the runner's {verb} answer is {len(line)} characters long (the limit "
                     f"is {MAX_ANSWER_CHARS}); refused")
    deepest = depth(line)
    if deepest > MAX_DEPTH:
        raise _error(f"{device}: the runner's {verb} answer is nested {deepest} levels deep (the limit "
                     f"is {MAX_DEPTH}); refused")


def check_output(device: str, stdout: str, verb: str) -> None:
    """Refuse ``stdout`` when any line a JSON reader would try (one starting with ``{``) is too large
    or too deeply nested: call before handing the output to a parser that has no such bound
    (:func:`edgenas.core.files.last_json`)."""
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            _check_line(device, verb, line)


def parse_answer(device: str, stdout: str, verb: str) -> dict[str, Any] | None:
    """The last line of ``stdout`` that is a JSON object (the runner prints one; a shell or Python
    may print warnings before it), or None.  Unlike :func:`edgenas.core.files.last_json`, a candidate
    line that is too large or nested deeper than :data:`MAX_DEPTH` is refused with a clear error
    before it is parsed, so a device can never raise ``RecursionError`` in the host."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        _check_line(device, verb, line)
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    return None


@contextmanager
def refuse_deep(device: str, verb: str) -> Iterator[None]:
    """Around a call that parses a runner answer without :func:`parse_answer`'s bounds
    (``DeviceSession.runner``): a ``RecursionError`` from an answer nested too deep becomes the
    device's error instead of a traceback."""
    try:
        yield
    except RecursionError:
        raise _error(f"{device}: the runner's {verb} answer is nested too deep to read; "
                     "refused") from None


# ------------------------------------------------------------------------------------------ fields


def _where(device: str, verb: str, field: str) -> str:
    return f"{device}: the runner's {verb} answer has an invalid {field}"


def _shown(value: Any) -> str:
    """A refused value, short and printable, for the error message."""
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return printable(text, limit=60)


def number(device: str, verb: str, field: str, value: Any, *, low: float = 0.0, high: float,
           required: bool = False) -> float | None:
    """A finite real number in [low, high] (``bool`` is not a number), or None when absent."""
    if value is None and not required:
        return None
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and low <= value <= high)
    if not ok:
        raise _error(f"{_where(device, verb, field)}: {_shown(value)} (a number from {low:g} to "
                     f"{high:g} is expected)")
    return float(value)


def integer(device: str, verb: str, field: str, value: Any, *, low: int = 0, high: int,
            required: bool = False) -> int | None:
    """An ``int`` (not a bool, not a float) in [low, high], or None when absent."""
    if value is None and not required:
        return None
    if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
        raise _error(f"{_where(device, verb, field)}: {_shown(value)} (an integer from {low} to "
                     f"{high} is expected)")
    return value


def name(device: str, verb: str, field: str, value: Any, *, limit: int = MAX_NAME_CHARS,
         required: bool = False, empty: bool = False) -> str | None:
    """A short printable string (no control characters; empty only when ``empty``), or None when
    absent."""
    if value is None and not required:
        return None
    if not (isinstance(value, str) and (value or empty) and len(value) <= limit
            and is_printable(value)):
        raise _error(f"{_where(device, verb, field)}: {_shown(value)} (printable text of at most "
                     f"{limit} characters is expected)")
    return value


def record(device: str, verb: str, field: str, value: Any) -> Mapping[str, Any]:
    """A JSON object, or {} when absent."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _error(f"{_where(device, verb, field)}: {_shown(value)} (an object is expected)")
    return value


def items(device: str, verb: str, field: str, value: Any, *,
          limit: int = MAX_LIST) -> list[Mapping[str, Any]]:
    """A list of at most ``limit`` JSON objects, or [] when absent."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > limit:
        raise _error(f"{_where(device, verb, field)}: {_shown(value)} (a list of at most {limit} "
                     "objects is expected)")
    for i, entry in enumerate(value):
        record(device, verb, f"{field}[{i}]", entry)
    return value


def _state(device: str, verb: str, field: str, value: Any) -> None:
    """``state_before`` / ``state_after``: the cpufreq and thermal entries the stored row reads."""
    state = record(device, verb, field, value)
    for i, cpu in enumerate(items(device, verb, f"{field}.cpufreq", state.get("cpufreq"))):
        where = f"{field}.cpufreq[{i}]"
        name(device, verb, f"{where}.governor", cpu.get("governor"))
        for key in ("cur_khz", "min_khz", "max_khz"):
            number(device, verb, f"{where}.{key}", cpu.get(key), high=MAX_KHZ)
    for i, zone in enumerate(items(device, verb, f"{field}.thermal", state.get("thermal"))):
        number(device, verb, f"{field}.thermal[{i}].temp_c", zone.get("temp_c"), low=MIN_TEMP_C,
               high=MAX_TEMP_C)


# ------------------------------------------------------------------------------------------ answers


def bench_answer(device: str, data: Any, *, sha256: str | None = None,
                 verb: str = "bench") -> dict[str, Any]:
    """Check a bench answer (the runner's JSON, or
    :func:`edgenas.measure.benchmark_model.to_measurement`'s
    record) field by field and return it.

    Checked: the timing fields (:data:`TIMES_MS`; ``median_ms`` required) finite in [0, MAX_MS];
    ``count`` an integer in [1, MAX_COUNT]; ``cv`` finite in [0, sqrt(count)]; ``memory`` an object whose
    ``peak_rss_kib``, ``rss_*_kib`` and ``hwm_kib`` are integers (``hwm_reset`` a bool, benchmark_model's
    ``footprint_*_mib`` numbers); ``runtime`` an object whose ``name`` and ``version`` are short
    printable strings; ``model.sha256`` 64 hex digits and, given ``sha256``, that one; the state
    records' governors, frequencies and temperatures.  Anything else in the answer is kept as the raw
    record (bounded by :func:`parse_answer`), never read by the host."""
    answer = record(device, verb, "answer", data)
    if not answer:
        raise _error(f"{device}: the runner's {verb} answer is empty")
    for key, required in TIMES_MS:
        number(device, verb, key, answer.get(key), high=MAX_MS, required=required)
    count = integer(device, verb, "count", answer.get("count"), low=1, high=MAX_COUNT)
    # std/mean of n non-negative times is at most sqrt(n): one slow run among many fast ones on a
    # noisy board gives a large but real CV; more than sqrt(n) is arithmetic no run can produce
    number(device, verb, "cv", answer.get("cv"),
           high=MAX_CV if count is None else math.sqrt(count) * (1 + 1e-9))
    memory = record(device, verb, "memory", answer.get("memory"))
    for key in ("peak_rss_kib", "rss_before_kib", "rss_after_init_kib", "rss_after_kib", "hwm_kib"):
        integer(device, verb, f"memory.{key}", memory.get(key), high=MAX_RSS_KIB)
    if memory.get("hwm_reset") is not None and not isinstance(memory.get("hwm_reset"), bool):
        raise _error(f"{_where(device, verb, 'memory.hwm_reset')}: {_shown(memory.get('hwm_reset'))} "
                     "(true or false is expected)")
    for key in ("footprint_init_mib", "footprint_overall_mib"):  # benchmark_model's own deltas
        number(device, verb, f"memory.{key}", memory.get(key), high=1e7)  # the parser's MAX_MB
    runtime = record(device, verb, "runtime", answer.get("runtime"))
    name(device, verb, "runtime.name", runtime.get("name"))
    name(device, verb, "runtime.version", runtime.get("version"))
    model = record(device, verb, "model", answer.get("model"))
    got = model.get("sha256")
    if got is not None and not (isinstance(got, str) and _SHA256.fullmatch(got)):
        raise _error(f"{_where(device, verb, 'model.sha256')}: {_shown(got)}")
    if sha256 is not None and got not in (None, sha256):
        raise _error(f"{device}: the device benchmarked a different file than {sha256[:12]}")
    for key in ("state_before", "state_after"):
        _state(device, verb, key, answer.get(key))
    return dict(answer)


def predict_answer(device: str, data: Any, top_k: int | None = None) -> dict[str, Any]:
    """Check a ``predict`` answer: ``runtime.name`` and ``precision`` short printable strings;
    ``predictions`` a list of objects whose ``top_k`` lists 1 to ``top_k`` entries ``{index, label,
    probability, score}`` with an integer index, a printable label (or null) and finite numbers (a
    probability in [0, 1] when the runner applied the softmax).  Returns the answer."""
    verb = "predict"
    answer = record(device, verb, "answer", data)
    runtime = record(device, verb, "runtime", answer.get("runtime"))
    name(device, verb, "runtime.name", runtime.get("name"))
    name(device, verb, "precision", answer.get("precision"))
    softmax = record(device, verb, "output", answer.get("output")).get("softmax_applied") is True
    low, high = (0.0, 1.0 + 1e-6) if softmax else (-MAX_SCORE, MAX_SCORE)
    predictions = items(device, verb, "predictions", answer.get("predictions"), limit=MAX_PREDICTIONS)
    for i, pred in enumerate(predictions):
        entries = items(device, verb, f"predictions[{i}].top_k", pred.get("top_k"))
        if not entries or (top_k is not None and len(entries) > top_k):
            raise _error(f"{_where(device, verb, f'predictions[{i}].top_k')}: {len(entries)} entries "
                         f"for top-k {top_k}")
        for j, entry in enumerate(entries):
            where = f"predictions[{i}].top_k[{j}]"
            integer(device, verb, f"{where}.index", entry.get("index"), high=1 << 31)
            name(device, verb, f"{where}.label", entry.get("label"), limit=MAX_LABEL_CHARS,
                 empty=True)
            number(device, verb, f"{where}.probability", entry.get("probability"), low=low, high=high)
            number(device, verb, f"{where}.score", entry.get("score"), low=-MAX_SCORE, high=MAX_SCORE)
    return dict(answer)


__all__ = ["MAX_DEPTH", "bench_answer", "check_output", "depth", "parse_answer",
           "predict_answer", "refuse_deep"]
