"""Wall time of ``edgenas device list`` (and a few other model-free verbs): the cost of starting the CLI.

Why: ``device list`` is what an operator types most and what scripts poll; before the imports were made
lazy it loaded torch (~1-2 s) to print a table from SQLite.  This script times the verbs in fresh
processes on a workspace with five registered devices, for the working tree and, with ``--baseline
REF``, for a git revision (extracted with ``git archive`` and put first on ``PYTHONPATH``), and prints
a table of medians.  It also records which heavy modules each run imported.

    .venv/bin/python benchmarks/cli_startup.py --baseline b2dba96 --runs 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "results" / "cli_startup.json"
HEAVY = ("torch", "tensorflow", "sklearn", "matplotlib", "numpy", "paramiko", "yaml")
VERBS = (("device", "list"), ("--help",), ("fleet", "history"), ("measurements", "list"))

# Runs the CLI in-process after timing nothing but the interpreter: the child prints which heavy
# modules ended up imported on stderr's last line, so a regression shows in the table, not just the time.
_CHILD = (
    "import sys, json\n"
    "from edgenas.cli import main\n"
    "sys.argv[0] = 'edgenas'\n"
    "try:\n"
    "    main()\n"
    "except SystemExit:\n"
    "    pass\n"
    f"sys.stderr.write('\\nHEAVY ' + json.dumps([m for m in {HEAVY!r} if m in sys.modules]) + '\\n')\n"
    "sys.stderr.write('EDGENAS ' + __import__('edgenas').__file__ + '\\n')\n"
)


def _tree_at(ref: str, dest: Path) -> Path:
    """The package as it was at ``ref``, without touching the working tree or the index."""
    data = subprocess.run(["git", "-C", str(REPO), "archive", ref, "edgenas", "devices", "supernets"],
                          check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _workspace(home: Path, source: Path, devices: int) -> None:
    """A workspace with ``devices`` local devices, registered through the CLI of ``source``."""
    for i in range(devices):
        _run(source, home, ["device", "add", f"bench{i}", "--local", "--group", "bench"], check=True)


def _run(source: Path, home: Path, argv: list[str], check: bool = False) -> tuple[float, list[str], str]:
    env = {**os.environ, "EDGENAS_HOME": str(home), "PYTHONPATH": str(source)}
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", _CHILD, *argv], env=env, cwd=source, capture_output=True,
                         text=True)
    elapsed = time.perf_counter() - start
    if check and res.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {res.stderr[-2000:]}")
    heavy: list[str] = []
    where = ""
    for line in res.stderr.splitlines():
        if line.startswith("HEAVY "):
            heavy = json.loads(line[6:])
        elif line.startswith("EDGENAS "):
            where = line[8:]
    return elapsed, heavy, where


def measure(label: str, source: Path, runs: int, devices: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgenas-startup-") as tmp:
        home = Path(tmp) / "home"
        _workspace(home, source, devices)
        for verb in VERBS:
            _run(source, home, list(verb))  # warm the page cache and .pyc files
            times, heavy, where = [], [], ""
            for _ in range(runs):
                elapsed, heavy, where = _run(source, home, list(verb))
                times.append(elapsed)
            if not where.startswith(str(source)):
                raise SystemExit(f"{label}: imported edgenas from {where}, not {source}")
            rows.append({"tree": label, "verb": " ".join(verb), "runs": runs,
                         "median_s": round(statistics.median(times), 4),
                         "min_s": round(min(times), 4), "max_s": round(max(times), 4),
                         "heavy_modules": heavy})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=None, help="git revision to compare with (e.g. b2dba96)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--devices", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="edgenas-baseline-") as tmp:
        if args.baseline:
            tree = _tree_at(args.baseline, Path(tmp))
            rows += measure(f"baseline {args.baseline}", tree, args.runs, args.devices)
        rows += measure("working tree", REPO, args.runs, args.devices)
    width = max(len(r["tree"]) for r in rows)
    print(f"{'tree':<{width}}  {'verb':<18} {'median s':>9} {'min s':>7} {'max s':>7}  heavy modules")
    for r in rows:
        print(f"{r['tree']:<{width}}  {r['verb']:<18} {r['median_s']:>9.3f} {r['min_s']:>7.3f} "
              f"{r['max_s']:>7.3f}  {','.join(r['heavy_modules']) or '-'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "what": "wall time of fresh `edgenas` processes on a workspace with local devices",
        "devices": args.devices, "python": platform.python_version(), "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
