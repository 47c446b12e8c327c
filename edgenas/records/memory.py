"""A model's peak memory, as every benchmark stores it (``measurements.memory_kib``).

What "the model's peak memory" is, in one place, because three readers must agree: the bench that
stores a row, the store migration that fills the column for rows stored before it existed, and the
memory predictor fitted on those rows (the search's ``--max-memory-mb`` and ``fleet bench``'s memory
promise compare against the same number).  It is what loading and running the model added to the
benchmark process's resident memory at its peak — not the process's whole peak, so that the Python
interpreter, numpy and the runtime library (the same for every model on a device) are not counted.
A device's memory budget is therefore the memory its application may spend on the model.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Mapping
from typing import Any

MAX_KIB = 1 << 30  # 1 TiB: the bound the bench answers are checked against


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_KIB


def model_memory_kib(result: Mapping[str, Any]) -> int | None:
    """The model's peak memory (KiB) in a bench answer (the runner's JSON or benchmark_model's record):

    * runner: ``memory.hwm_kib − memory.rss_before_kib`` (the high-water mark is reset to the RSS
      of ``rss_before`` just before the model loads: devices/edgenas_device/timing.py);
    * LiteRT's ``benchmark_model``: its ``footprint_overall_mib``, the growth of its peak RSS from
      the tool's start — the same quantity, measured by the tool itself.

    None when the answer has neither.  A runner from before ``hwm_kib`` reported only
    ``peak_rss_kib`` (``ru_maxrss``), which Linux carries across ``exec`` — a local runner started by a
    1 GB host process reports that process's peak — so it is never used for this."""
    memory = result.get("memory") if isinstance(result, Mapping) else None
    if not isinstance(memory, Mapping):
        return None
    hwm, before = memory.get("hwm_kib"), memory.get("rss_before_kib")
    if _whole(hwm) and _whole(before):
        return max(0, hwm - before)
    overall = memory.get("footprint_overall_mib")
    if (isinstance(overall, (int, float)) and not isinstance(overall, bool) and math.isfinite(overall)
            and 0 <= overall <= MAX_KIB / 1024):
        return int(round(overall * 1024))
    return None


def backfill(conn: sqlite3.Connection) -> None:
    """Store migration 12 -> 13: ``memory_kib`` of the rows stored before the column existed, from
    each row's raw answer (rows of runners from before ``hwm_kib`` stay NULL)."""
    rows = conn.execute("SELECT id, result_json FROM measurements WHERE memory_kib IS NULL").fetchall()
    for row_id, raw in rows:
        try:
            value = model_memory_kib(json.loads(raw))
        except (TypeError, ValueError, RecursionError):
            continue
        if value is not None:
            conn.execute("UPDATE measurements SET memory_kib = ? WHERE id = ?", (value, row_id))


__all__ = ["backfill", "model_memory_kib"]
