"""Campaign throughput on the local device: subnets measured per minute, export included, per bench
protocol, each next to the protocol's own noise floor.

    .venv/bin/python benchmarks/measure.py [--samples 20] [--precision fp32] [--workers 2]
                                           [--protocols default,trimmed]
                                           [--out benchmarks/results/measure.json]

For each protocol, a random-weight supernet of ``--space`` (default mbv3-tiny) in a fresh temporary
workspace (so nothing is
cached) is measured by `edgenas measure` on the host: the wall time of that first pass, exports
included, gives subnets per minute (the few-shot issue's floor: 30).  Exports overlap benchmarks (the
export workers keep off the core the benchmark uses, see docs/measurement.md).  Then every subnet is
measured a second time (``repeats=2``, exports cached): the share of subnets whose two measurements
agree within ±5 % and ±10 % is that protocol's noise floor — what a shorter protocol costs in
repeatability, and so how far it may be trimmed.

Protocols: ``default`` (50 runs, ≥ 1 s, 0.5 s warm-up: `edgenas measure`'s defaults) and ``trimmed``
(20 runs, ≥ 0.25 s, 0.1 s warm-up).  The load average is printed beside each: on a shared host it
moves both numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgenas.measure.adaptive import TRIMMED  # noqa: E402  (the protocol `measure --adaptive` starts with)

PROTOCOLS = {"default": dict(runs=50, min_secs=1.0, warmup_secs=0.5), "trimmed": dict(TRIMMED)}


def run_protocol(name: str, samples: int, precisions: list[str], workers: int,
                 space: str = "mbv3-tiny") -> dict:
    import numpy as np
    import torch

    from edgenas import build_supernet
    from edgenas.device import registry
    from edgenas.measure.bench import BenchSettings
    from edgenas.measure.campaign import measure
    from edgenas.predictors.latency import quality
    from edgenas.records import measurements
    from edgenas.records.store import open_store
    from edgenas.training.data import load_data

    settings = BenchSettings(**PROTOCOLS[name])
    with tempfile.TemporaryDirectory(prefix="edgenas-bench-measure-") as tmp:
        home = Path(tmp)
        torch.manual_seed(0)
        from edgenas.space.spec import SearchSpace

        size = SearchSpace.load(space).resolutions[-1]
        data = load_data("digits", size=size)
        net = build_supernet(space, 10, labels=data.labels, normalization=data.normalization)
        ckpt = net.save(home / "tiny.pt", meta={"data": {"source": "digits"}})
        with open_store(home) as store:
            registry.add_device(store, registry.make_device("host", "local", home=home))
            load0 = os.getloadavg()[0]
            t0 = time.monotonic()
            report = measure(store, home, ckpt, ["host"], samples, precisions, 1, 0, workers,
                             settings=settings, progress=False)
            wall = time.monotonic() - t0
            measure(store, home, ckpt, ["host"], samples, precisions, 1, 0, workers,
                    settings=settings, repeats=2, progress=False)
            load1 = os.getloadavg()[0]
            by: dict[tuple[str, str], list[float]] = {}
            for m in measurements.find(store, device="host"):
                by.setdefault((m.arch, m.precision), []).append(m.median_ms)
    pairs = np.asarray([v[:2] for v in by.values() if len(v) >= 2])
    floor = quality(pairs[:, 0], pairs[:, 1]) if len(pairs) else {}
    dev = report.devices["host"]
    return {
        "protocol": name, **PROTOCOLS[name], "wall_s": round(wall, 1), "measured": dev.measured,
        "exported": report.exported, "subnets_per_minute": round(dev.measured / wall * 60, 2),
        "complete": report.complete, "noise_pairs": int(len(pairs)),
        "noise_within_5": floor.get("within_5"), "noise_within_10": floor.get("within_10"),
        "load_avg": [round(load0, 2), round(load1, 2)],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="mbv3-tiny")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--protocols", default="default,trimmed",
                    help=f"Comma list of {', '.join(PROTOCOLS)}.")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "measure.json")
    args = ap.parse_args()
    rows = [run_protocol(p, args.samples, args.precision.split(","), args.workers, args.space)
            for p in args.protocols.split(",")]
    print(f"{'protocol':10} {'runs':>5} {'min s':>6} {'warm s':>6} {'subnets/min':>12} "
          f"{'noise ±5 %':>10} {'noise ±10 %':>11} {'load':>11}")
    for r in rows:
        print(f"{r['protocol']:10} {r['runs']:5d} {r['min_secs']:6.2f} {r['warmup_secs']:6.2f} "
              f"{r['subnets_per_minute']:12.1f} {100 * (r['noise_within_5'] or 0):9.0f}% "
              f"{100 * (r['noise_within_10'] or 0):10.0f}% "
              f"{r['load_avg'][0]:5.2f}-{r['load_avg'][1]:<5.2f}")
    result = {"benchmark": "measure", "space": args.space, "samples": args.samples,
              "precisions": args.precision.split(","), "workers": args.workers, "rows": rows,
              "host": {"machine": platform.machine(), "python": platform.python_version(),
                       "cpus": os.cpu_count()},
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
