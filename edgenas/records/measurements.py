"""The ``measurements`` table: one row per benchmark of one model on one device, with its provenance.

Every query on the table lives here.  What makes two measurements comparable — and so what a resumed
campaign may skip — is the :class:`ResumeKey`: the device, the arch and precision, the thread count,
the runtime *and its version* (a runtime upgrade on the device changes the numbers: it is measured
again, the old rows stay), the supernet the model was exported from (its sha256) and the bench
:class:`Protocol` (timed runs, minimum seconds, warm-up, XNNPACK).  The protocol has its own columns
(store migration 6 -> 7, back-filled from each row's ``result_json``) so the resume query is an exact,
indexed comparison rather than a JSON scan.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from edgenas.core.errors import EdgeNASError
from edgenas.records.store import Store

# The statistics a caller may rank or fit by (column names are interpolated, so only these).
STAT_COLUMNS = ("median_ms", "p90_ms", "mean_ms", "min_ms")


class MeasurementError(EdgeNASError):
    """A measurement cannot be stored (a value of the wrong type or out of range)."""


@dataclass(frozen=True)
class Protocol:
    """How a benchmark was run, as far as it changes the numbers.  ``max_secs`` (a safety cap) and the
    host-side CV threshold and retries are left out: they never change how one run is timed."""

    runs: int
    min_secs: float
    warmup_runs: int
    warmup_secs: float
    xnnpack: bool = True

    @classmethod
    def of(cls, settings: Any) -> Protocol:
        """From :class:`edgenas.measure.bench.BenchSettings` or the ``edgenas.settings`` dict of a
        stored row
        (rows from before the XNNPACK switch were measured with it: the runner's default)."""
        if isinstance(settings, Mapping):
            get = settings.get
        else:
            def get(key: str, default: Any = None) -> Any:
                return getattr(settings, key, default)
        try:
            runs, warmup_runs = get("runs"), get("warmup_runs")
            min_secs, warmup_secs = float(get("min_secs")), float(get("warmup_secs"))
            xnnpack = get("xnnpack", True)
        except (TypeError, ValueError):
            raise MeasurementError(f"not a bench protocol: {settings!r}"[:300]) from None
        if not (isinstance(runs, int) and isinstance(warmup_runs, int) and isinstance(xnnpack, bool)
                and runs >= 0 and warmup_runs >= 0 and math.isfinite(min_secs)
                and math.isfinite(warmup_secs) and min_secs >= 0 and warmup_secs >= 0):
            raise MeasurementError(f"not a bench protocol: {settings!r}"[:300])
        return cls(runs, min_secs, warmup_runs, warmup_secs, xnnpack)


@dataclass(frozen=True)
class Measurement:
    """One row.  ``protocol`` is None only for rows stored before the protocol was recorded without
    ``edgenas.settings`` (they never count as done for a resumed campaign)."""

    device: str
    arch: str
    space: str | None
    precision: str
    threads: int
    runtime: str | None
    runtime_version: str | None
    model_sha256: str
    source_sha256: str | None
    campaign: str | None
    median_ms: float
    p90_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    min_ms: float | None = None
    cv: float | None = None
    init_ms: float | None = None
    first_ms: float | None = None
    runs: int | None = None
    peak_rss_kib: int | None = None
    noisy: bool = False
    governor: str | None = None
    freq_mhz_before: float | None = None
    freq_mhz_after: float | None = None
    temp_c_before: float | None = None
    temp_c_after: float | None = None
    protocol: Protocol | None = None
    device_class: str | None = None
    cpus: str | None = None  # the CPU set the benchmark was pinned to (None: not pinned)
    memory_kib: int | None = None  # the model's peak memory (records.memory); None: not known
    result_json: str = "{}"
    created_at: float = field(default_factory=time.time)
    id: int | None = None

    @property
    def result(self) -> dict[str, Any]:
        """The raw runner (or benchmark_model) answer plus ``edgenas`` metadata; {} if unreadable."""
        try:
            data = json.loads(self.result_json)
        except (TypeError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def to_dict(self) -> dict[str, Any]:
        """The flat row of :data:`FIELDS` (no raw JSON): what ``measurements list/export`` show."""
        flat = {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("protocol", "result_json")}
        flat["noisy"] = int(self.noisy)
        p = self.protocol
        flat.update(protocol_runs=p.runs if p else None, protocol_min_secs=p.min_secs if p else None,
                    protocol_warmup_runs=p.warmup_runs if p else None,
                    protocol_warmup_secs=p.warmup_secs if p else None,
                    xnnpack=(int(p.xnnpack) if p else None))
        return {k: flat[k] for k in FIELDS}


# The flat columns, in export order (CSV header of `measurements export`).
FIELDS = (
    "id", "device", "device_class", "arch", "space", "precision", "threads", "runtime",
    "runtime_version", "model_sha256", "source_sha256", "campaign", "median_ms", "p90_ms", "mean_ms",
    "std_ms", "min_ms",
    "cv", "init_ms", "first_ms", "runs", "peak_rss_kib", "noisy", "governor", "freq_mhz_before",
    "freq_mhz_after", "temp_c_before", "temp_c_after", "protocol_runs", "protocol_min_secs",
    "protocol_warmup_runs", "protocol_warmup_secs", "xnnpack", "cpus", "memory_kib", "created_at",
)
_INSERT_COLUMNS = (*(c for c in FIELDS if c != "id"), "result_json")
_SELECT = f"SELECT {', '.join(FIELDS)}, result_json FROM measurements"


@dataclass(frozen=True)
class ResumeKey:
    """What a stored measurement must share with the one a campaign is about to take to count as
    already done (see the module docstring).  ``device_class``: a row taken on any device of the
    class counts (edgenas.records.classes)."""

    device_class: str
    space: str
    threads: int
    source_sha256: str
    runtime: str
    runtime_version: str | None
    protocol: Protocol


# ---------------------------------------------------------------------------------------------- write


# The numeric columns a device's answer fills, with their bounds: every device of a class reads these
# rows (its latency predictor is fitted on them), so one board's garbage must never land here.
# (column, upper bound, integer); all are non-negative.  edgenas.device.answers checks the answer
# first, with the device and field named; this is the last guard for any other writer.
_CHECKED = (("median_ms", 1e6, False), ("p90_ms", 1e6, False), ("mean_ms", 1e6, False),
            ("std_ms", 1e6, False), ("min_ms", 1e6, False), ("cv", 1e4, False),
            ("init_ms", 1e6, False), ("first_ms", 1e6, False), ("runs", 100_000_000, True),
            ("peak_rss_kib", 1 << 30, True), ("memory_kib", 1 << 30, True))


def _check(m: Measurement) -> None:
    """Refuse a row whose statistics are not finite, non-negative numbers under their bound (counts
    real integers): :class:`MeasurementError` naming the device, the column and the value."""
    for column, high, whole in _CHECKED:
        value = getattr(m, column)
        if value is None and column != "median_ms":
            continue
        kind_ok = isinstance(value, int) if whole else isinstance(value, (int, float))
        if not (kind_ok and not isinstance(value, bool) and math.isfinite(value)
                and 0 <= value <= high):
            raise MeasurementError(f"{m.device}: refusing to store {column} {value!r}"[:200]
                                   + f" for {m.arch}")


def insert(store: Store, m: Measurement) -> Measurement:
    """Store ``m`` (its ``id`` is ignored) and return it with the id SQLite gave it."""
    _check(m)
    row = m.to_dict()
    row["device_class"] = m.device_class or m.device  # a device without a class is one of its own
    row["result_json"] = m.result_json
    with store.transaction() as conn:
        cur = conn.execute(
            f"INSERT INTO measurements ({', '.join(_INSERT_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(_INSERT_COLUMNS))})",
            tuple(row[c] for c in _INSERT_COLUMNS),
        )
    return replace(m, id=cur.lastrowid, device_class=row["device_class"])


# ---------------------------------------------------------------------------------------------- read


def _from_row(r: sqlite3.Row) -> Measurement:
    keys = r.keys()
    protocol = None
    if r["protocol_runs"] is not None and r["protocol_min_secs"] is not None:
        protocol = Protocol(int(r["protocol_runs"]), float(r["protocol_min_secs"]),
                            int(r["protocol_warmup_runs"] or 0), float(r["protocol_warmup_secs"] or 0),
                            bool(1 if r["xnnpack"] is None else r["xnnpack"]))
    values = {f.name: r[f.name] for f in fields(Measurement)
              if f.name in keys and f.name not in ("protocol", "noisy")}
    return Measurement(**values, noisy=bool(r["noisy"]), protocol=protocol)


_XNNPACK = "COALESCE(xnnpack, 1) = ?"  # rows without a recorded protocol ran the default: with it


def find(store: Store, device: str | None = None, precision: str | None = None,
         threads: int | None = None, space: str | None = None,
         campaign: str | None = None, *, xnnpack: bool | None = None,
         device_class: str | None = None) -> list[Measurement]:
    """Stored measurements filtered as given (``xnnpack``: measured with / without it), oldest first."""
    where, params = [], []
    for column, value in (("device", device), ("precision", precision), ("threads", threads),
                          ("space", space), ("campaign", campaign), ("device_class", device_class)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if xnnpack is not None:
        where.append(_XNNPACK)
        params.append(int(xnnpack))
    sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
    return [_from_row(r) for r in store.query(sql, tuple(params))]


def for_predictor(store: Store, device_class: str, precision: str, threads: int, *,
                  xnnpack: bool | None = None) -> list[Measurement]:
    """Every row a latency predictor of (device class, precision, threads) and this XNNPACK profile
    may be fitted on — measured on any device of the class — oldest first."""
    return find(store, device_class=device_class, precision=precision, threads=threads,
                xnnpack=xnnpack)


def done_counts(store: Store, key: ResumeKey) -> dict[tuple[str, str], int]:
    """How many comparable measurements (same :class:`ResumeKey`) exist per (arch, precision): what a
    resumed campaign does not measure again."""
    p = key.protocol
    rows = store.query(
        "SELECT arch, precision, COUNT(*) AS n FROM measurements "
        "WHERE device_class = ? AND space = ? AND threads = ? AND source_sha256 = ? AND runtime = ? "
        "AND runtime_version IS ? AND protocol_runs = ? AND protocol_min_secs = ? "
        "AND protocol_warmup_runs = ? AND protocol_warmup_secs = ? AND xnnpack = ? "
        "GROUP BY arch, precision",
        (key.device_class, key.space, key.threads, key.source_sha256, key.runtime, key.runtime_version,
         p.runs, p.min_secs, p.warmup_runs, p.warmup_secs, int(p.xnnpack)))
    return {(r["arch"], r["precision"]): int(r["n"]) for r in rows}


def best_by_arch(store: Store, device_class: str, precision: str, threads: int,
                 space: str) -> list[tuple[str, float]]:
    """(arch, fastest median) per measured arch of the class, by arch."""
    rows = store.query("SELECT arch, MIN(median_ms) FROM measurements WHERE device_class = ? AND "
                       "precision = ? AND threads = ? AND space = ? GROUP BY arch ORDER BY arch",
                       (device_class, precision, threads, space))
    return [(str(r[0]), float(r[1])) for r in rows]


def best_by_arch_precision(store: Store, device_class: str, threads: int, space: str,
                           column: str = "median_ms", *,
                           xnnpack: bool | None = None) -> list[tuple[str, str, float]]:
    """(arch, precision, fastest ``column`` — the median where that is missing) per measured pair."""
    if column not in STAT_COLUMNS:
        raise MeasurementError(f"unknown statistic column {column!r} (one of {', '.join(STAT_COLUMNS)})")
    extra, params = ("", ()) if xnnpack is None else (f" AND {_XNNPACK}", (int(xnnpack),))
    rows = store.query(
        f"SELECT arch, precision, MIN(COALESCE({column}, median_ms)) FROM measurements "
        f"WHERE device_class = ? AND threads = ? AND space = ?{extra} GROUP BY arch, precision",
        (device_class, threads, space, *params))
    return [(str(r[0]), str(r[1]), float(r[2])) for r in rows]


def medians(store: Store, device_class: str, space: str, threads: int) -> list[tuple[str, float]]:
    """(precision, median) of every row of the class in ``space`` at ``threads``."""
    rows = store.query("SELECT precision, median_ms FROM measurements WHERE device_class = ? "
                       "AND space = ? AND threads = ? ORDER BY id", (device_class, space, threads))
    return [(str(r[0]), float(r[1])) for r in rows]


def profiles(store: Store, space: str) -> list[tuple[str, str, int, int]]:
    """(device class, precision, threads, distinct archs measured) of every profile measured in
    ``space``."""
    rows = store.query("SELECT device_class, precision, threads, COUNT(DISTINCT arch) "
                       "FROM measurements WHERE space = ? GROUP BY device_class, precision, threads "
                       "ORDER BY device_class, precision, threads", (space,))
    return [(str(r[0]), str(r[1]), int(r[2]), int(r[3])) for r in rows]


def profile_rows(store: Store, device_class: str, precision: str, threads: int, space: str,
                 column: str = "median_ms") -> list[tuple[str, float, float, float | None]]:
    """(arch, ``column`` or the median, median, cv) of every row of one class's profile, oldest first:
    what the adaptive campaign scores its predictor and noise floor on."""
    if column not in STAT_COLUMNS:
        raise MeasurementError(f"unknown statistic column {column!r} (one of {', '.join(STAT_COLUMNS)})")
    rows = store.query(f"SELECT arch, COALESCE({column}, median_ms), median_ms, cv FROM measurements "
                       "WHERE device_class = ? AND precision = ? AND threads = ? AND space = ? "
                       "ORDER BY id", (device_class, precision, threads, space))
    return [(str(r[0]), float(r[1]), float(r[2]), None if r[3] is None else float(r[3]))
            for r in rows]


__all__ = ["FIELDS", "Measurement", "MeasurementError", "Protocol", "ResumeKey", "best_by_arch",
           "best_by_arch_precision", "done_counts", "find", "for_predictor", "insert", "medians",
           "profile_rows", "profiles"]
