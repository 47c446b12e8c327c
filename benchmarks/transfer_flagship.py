"""A second host profile for the flagship space: a few-shot transfer campaign on ``mbv3-w1.0``.

    .venv/bin/python benchmarks/transfer_flagship.py [--home .edgenas/bench-predictor-mbv3-w1.0]
        [--samples 20] [--unseen 15] [--out benchmarks/results/transfer_flagship.json]

``--home`` is benchmarks/predictor.py's workspace: its device ``host`` (LiteRT with XNNPACK,
1 thread, fp32 and int8 at 128-224 px) is the one prior profile.  The second profile is the same
host on LiteRT's built-in kernels (``--no-xnnpack``): other kernels, another cost per operator
kind, which is what a transfer has to learn from a few measurements.

1. a new local device ``noxnn-<n>`` (built-in kernels): ``measure --adaptive --samples N`` at fp32,
   1 thread (trimmed protocol while it agrees with the full one), then ``predictor fit`` (method
   auto: a transfer from ``host``);
2. ``--unseen`` of the prior's subnets the campaign did not measure, each benchmarked twice on the
   new device with the full protocol: the device's own noise floor (second within ±10 % of the
   first) and the predictor's error against their mean;
3. a MACs-only baseline (latency = a + b·MACs, fitted on the campaign's subnets) on the same
   subnets.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _quality(y: np.ndarray, yhat: np.ndarray) -> dict[str, float]:
    err = np.abs(yhat / y - 1)
    return {"within_5": float(np.mean(err <= 0.05)), "within_10": float(np.mean(err <= 0.10)),
            "p90": float(np.quantile(err, 0.9)), "bias": float(np.median(yhat / y - 1))}


def run(args: argparse.Namespace) -> dict:
    from edgenas.core.files import sha256_file
    from edgenas.device import registry
    from edgenas.export.package import ModelPackage
    from edgenas.measure.adaptive import measure_adaptive
    from edgenas.measure.bench import BenchSettings, open_bencher
    from edgenas.measure.campaign import cached_export, measure
    from edgenas.predictors import latency as lat
    from edgenas.predictors.latency_fit import fit
    from edgenas.records.store import open_store
    from edgenas.space.spec import SearchSpace

    home = args.home.resolve()
    ckpt = home / "mbv3-w1.0-random.pt"
    if not ckpt.exists():
        raise SystemExit(f"{ckpt} missing: run benchmarks/predictor.py --home {home} first")
    space = SearchSpace.load("mbv3-w1.0")
    sha = sha256_file(ckpt)
    cache = home / "cache" / "exports"
    with open_store(home) as store:
        names = {d.name for d in registry.list_devices(store)}
        n = 1
        while f"noxnn-{n}" in names:
            n += 1
        dev = f"noxnn-{n}"
        registry.add_device(store, registry.make_device(dev, "local", home=home, xnnpack=False))
        prior = lat.training_set(store, "host", "fp32", 1, statistic="median")
        full = BenchSettings(threads=1)
        t0 = time.monotonic()
        rep = measure_adaptive(store, home, ckpt, dev, args.samples, "fp32", 1, workers=2,
                               settings=full, statistic="median", trim=True, progress=True,
                               export_cache=cache)
        campaign_s = time.monotonic() - t0
        pred = fit(store, dev, "fp32", 1, save_to=home, statistic="median")
        ts = lat.training_set(store, dev, "fp32", 1, statistic="median")
    measured = {a.to_string() for a in ts.archs} | set(rep.measured)
    unseen = [a.to_string() for a in prior.archs if a.to_string() not in measured][:args.unseen]
    with open_store(home) as store:  # exported already for the prior; any missing is made here
        measure(store, home, ckpt, ["host"], len(unseen), ["fp32"], 1, 0, 2, progress=False,
                archs=unseen, export_cache=cache)
    runs: dict[str, list[float]] = {a: [] for a in unseen}
    with open_store(home) as store, open_bencher(home, dev, full) as bencher:
        for order in (unseen, unseen[::-1]):
            for a in order:
                pkg = ModelPackage.open(cached_export(cache, sha, a, "fp32"))
                runs[a].append(bencher.bench(store, pkg, settings=full,
                                             update_manifest=False)["median_ms"])
    first = np.asarray([runs[a][0] for a in unseen])
    second = np.asarray([runs[a][1] for a in unseen])
    y = (first + second) / 2
    archs = [space.parse(a) for a in unseen]
    yhat = pred.predict_many(space, archs)
    macs = np.asarray([space.macs(a, 10) for a in ts.archs], dtype=float)
    b, a0 = np.polyfit(macs, ts.latency_ms, 1)
    base = a0 + b * np.asarray([space.macs(a, 10) for a in archs], dtype=float)
    return {
        "benchmark": "few-shot transfer to a second host profile, mbv3-w1.0",
        "space": "mbv3-w1.0", "prior": "host (XNNPACK) fp32 t1", "device": dev,
        "profile": "host, LiteRT built-in kernels (--no-xnnpack), fp32, 1 thread",
        "campaign": {"subnets": len(set(rep.measured)), "seconds": round(campaign_s, 1),
                     "rounds": [r.line() for r in rep.rounds], "stopped": rep.stopped},
        "predictor": {"method": pred.extra.get("method"),
                      "describe": pred.extra.get("describe")},
        "results": [
            {"model": "re-measurement (noise floor)", "subnets": len(unseen),
             **_quality(first, second)},
            {"model": f"transfer predictor ({pred.extra.get('method')})", "subnets": len(unseen),
             **_quality(y, yhat)},
            {"model": "MACs-only baseline", "subnets": len(unseen), **_quality(y, base)},
        ],
        "rows": [{"arch": a, "runs_ms": runs[a], "predicted_ms": round(float(p), 3)}
                 for a, p in zip(unseen, yhat)],
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(),
                 "loadavg_end": os.getloadavg()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=REPO / ".edgenas" / "bench-predictor-mbv3-w1.0")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--unseen", type=int, default=15)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" /
                    "transfer_flagship.json")
    args = ap.parse_args()
    result = run(args)
    from edgenas.cli.common import table

    print(result["campaign"]["stopped"])
    print(table(["model", "subnets", "within ±5 %", "within ±10 %", "p90 |err|", "bias"],
                [[r["model"], r["subnets"], f"{r['within_5']:.0%}", f"{r['within_10']:.0%}",
                  f"{r['p90']:.1%}", f"{r['bias']:+.1%}"] for r in result["results"]]))
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
