"""Campaign throughput on the local device: subnets measured per minute, export included.

    .venv/bin/python benchmarks/measure.py [--samples 20] [--precision fp32] [--workers 2]
                                           [--out benchmarks/results/measure.json]

Builds a random-weight mbv3-tiny supernet in a fresh temporary workspace (so nothing is cached), runs
`edgenas measure` on the host and reports wall time, exports and benchmarks per minute (the issue's
floor: 10 subnets per minute, export included), and how the time splits between the export phase and
the benchmark phase (the host is benchmarked only after the exports, see docs/measurement.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--min-secs", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "measure.json")
    args = ap.parse_args()

    import torch

    from edgenas import build_supernet, registry
    from edgenas.bench import BenchSettings
    from edgenas.data import load_data
    from edgenas.measure import measure
    from edgenas.store import open_store

    with tempfile.TemporaryDirectory(prefix="edgenas-bench-measure-") as tmp:
        home = Path(tmp)
        torch.manual_seed(0)
        data = load_data("digits", size=32)
        net = build_supernet("mbv3-tiny", 10, labels=data.labels, normalization=data.normalization)
        ckpt = net.save(home / "tiny.pt", meta={"data": {"source": "digits"}})
        with open_store(home) as store:
            registry.add_device(store, registry.make_device("host", "local", home=home))
            t0 = time.monotonic()
            report = measure(store, home, ckpt, ["host"], args.samples, args.precision.split(","), 1,
                             0, args.workers,
                             settings=BenchSettings(runs=args.runs, min_secs=args.min_secs))
            wall = time.monotonic() - t0
    dev = report.devices["host"]
    result = {
        "benchmark": "measure", "space": "mbv3-tiny", "samples": args.samples,
        "precisions": report.precisions, "workers": args.workers,
        "protocol": {"runs": args.runs, "min_secs": args.min_secs},
        "wall_s": round(wall, 1), "measured": dev.measured, "exported": report.exported,
        "subnets_per_minute": round(dev.measured / wall * 60, 2),
        "bench_phase_s": round(dev.seconds, 1), "export_phase_s": round(wall - dev.seconds, 1),
        "complete": report.complete,
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
