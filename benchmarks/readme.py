"""Generate benchmarks/README.md from the result files: one section per ``benchmarks/results/*.json``.

    .venv/bin/python benchmarks/readme.py            # rewrite benchmarks/README.md
    .venv/bin/python benchmarks/readme.py --check    # exit 1 when README.md is stale

Measured numbers live only in the result files, each written by its benchmark script; docs/ says what
the tool does and links here.  Every section is stamped with the date and machine its file records
(``created``/``date`` and ``host``/``machine``/``cpus``, or says they are not recorded), so a table
is never read without knowing where and when it was measured.  The
tables are derived mechanically: the file's first list of records, or its mapping of named records,
with the scalar fields as columns.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
MAX_ROWS = 40
MAX_COLUMNS = 10
ABOUT_KEYS = ("benchmark", "what", "note")
DATE_KEYS = ("created", "date", "when")


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)) and all(_scalar(v) for v in value) and len(value) <= 6:
        return ", ".join(_fmt(v) for v in value)
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")[:80]


def _table(rows: Sequence[Mapping[str, Any]], first: str | None = None) -> list[str]:
    """A markdown table of the rows' scalar (or short-list) fields, in first-seen order."""
    columns: list[str] = []
    for row in rows:
        for key, value in row.items():
            if key not in columns and (_scalar(value) or (isinstance(value, list) and len(value) <= 6
                                                           and all(_scalar(v) for v in value))):
                columns.append(key)
    columns = columns[:MAX_COLUMNS]
    if first is not None:
        columns = [first, *[c for c in columns if c != first]][:MAX_COLUMNS + 1]
    if not columns:
        return []
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows[:MAX_ROWS]:
        out.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    if len(rows) > MAX_ROWS:
        out.append(f"\n({len(rows) - MAX_ROWS} more rows in the file)")
    return out


def _records(data: Any) -> list[dict[str, Any]] | None:
    """The file's records: a top-level list of objects, a ``rows``/``results`` list, or a mapping
    of named objects (``results``, ``devices``, ``profiles`` ...) turned into rows named by key."""
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        return data
    if not isinstance(data, dict):
        return None
    for key in ("rows", "results", "devices", "precisions", "profiles", "push"):
        value = data.get(key)
        if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            return value
        if isinstance(value, dict) and value and all(isinstance(r, dict) for r in value.values()):
            return [{"name": name, **record} for name, record in value.items()]
    return None


def _stamp(path: Path, data: Any) -> tuple[str, str]:
    """(date, machine) as the file records them."""
    date = machine = None
    if isinstance(data, dict):
        date = next((str(data[k]) for k in DATE_KEYS if data.get(k)), None)
        host = data.get("host")
        parts = []
        if isinstance(host, dict):
            parts += [str(host[k]) for k in ("machine", "processor", "python") if host.get(k)]
            if host.get("cpus"):
                parts.append(f"{host['cpus']} CPUs")
        elif isinstance(host, str):
            parts.append(host)
        if isinstance(data.get("machine"), str):
            parts.append(data["machine"])
        if data.get("cpus") and not any("CPUs" in p for p in parts):
            parts.append(f"{data['cpus']} CPUs")
        load = data.get("load_avg") or data.get("loadavg") or data.get("load_avg_at_start")
        if isinstance(load, list) and load:
            parts.append(f"load {_fmt(load[0])}")
        machine = ", ".join(parts) or None
    return date or "(date not recorded in the file)", machine or "(machine not recorded in the file)"


def _summary(data: Any) -> list[str]:
    """The file's top-level scalar facts (space, samples, ratios ...), one line."""
    if not isinstance(data, dict):
        return []
    facts = [f"{k} = {_fmt(v)}" for k, v in data.items()
             if _scalar(v) and k not in ABOUT_KEYS and k not in DATE_KEYS]
    return ["Settings and headline numbers: " + "; ".join(facts) + "."] if facts else []


def section(path: Path) -> list[str]:
    """One result file as a README section."""
    data = json.loads(path.read_text())
    date, machine = _stamp(path, data)
    script = HERE / f"{path.stem.split('-')[0]}.py"
    lines = [f"## {path.stem}", ""]
    made_by = f"`benchmarks/{script.name}`" if script.exists() else "its benchmark script"
    lines.append(f"File `results/{path.name}`, written by {made_by}. Measured {date} on {machine}.")
    lines.append("")
    about = next((str(data[k]) for k in ABOUT_KEYS if isinstance(data, dict) and data.get(k)), None)
    if about and about != path.stem:
        lines += [about, ""]
    summary = _summary(data)
    if summary:
        lines += summary + [""]
    rows = _records(data)
    table = _table(rows, "name" if rows and "name" in rows[0] else None) if rows else []
    lines += (table or ["(no table: see the file for its nested fields)"]) + [""]
    return lines


def render() -> str:
    out = ["# Benchmarks: measured results", "",
           "Generated by `benchmarks/readme.py` from `benchmarks/results/*.json`; do not edit by hand.",
           "Each benchmark script prints its table and writes one result file; rerun a script,",
           "then `.venv/bin/python benchmarks/readme.py`. Timings on the shared 2-core VM move",
           "with its load, which the files record where the script measured it; compare rows of",
           "one file, not across files from different days.", ""]
    for path in sorted(RESULTS.glob("*.json")):
        out += section(path)
    return "\n".join(out).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when README.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = README.read_text() if README.exists() else ""
        if current != text:
            print("benchmarks/README.md is stale: run .venv/bin/python benchmarks/readme.py",
                  file=sys.stderr)
            return 1
        return 0
    README.write_text(text)
    print(f"wrote {README} ({len(list(RESULTS.glob('*.json')))} result files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
