"""End to end: a new device's few-shot predictor through ``edgenas measure --adaptive``, timed.

    .venv/bin/python benchmarks/adaptive_campaign.py [--source-home .edgenas/bench-transfer-quiet]
                                                     [--profiles host-fp32-t1,...] [--samples 20]
                                                     [--out benchmarks/results/adaptive_campaign.json]

benchmarks/predictor_transfer.py scores the few-shot predictor on stored latencies.  This script
runs it the way a user does, for real, once per profile P of that benchmark's workspace:

1. a copy of the workspace's database *without P's measurements* is the user's workspace before
   the new device arrives (the other profiles are its prior);
2. the adaptive campaign runs on P's device as the CLI starts it (``--samples`` at most, the
   trimmed protocol while the device's re-measurements agree within ±5 %, a cold export cache:
   every export and benchmark is paid for) and stops on its own held-out estimate;
3. ``predictor fit`` (method auto) fits P's predictor from what was measured;
4. that predictor is scored on P's stored measurements of the subnets the campaign did not measure
   (60 subnets on the host, measured with a longer protocol by predictor_transfer.py) — next to P's
   own noise floor from the same store.

Printed and written: subnets measured, rounds, the protocol of each round, seconds end to end, the
campaign's own estimate when it stopped and the quality it really has.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import predictor_transfer as pt  # noqa: E402  (the profiles and their stored measurements)


def workspace_without(source: Path, dest: Path, profile: str) -> None:
    """``dest``: a workspace whose database is ``source``'s without ``profile``'s measurements."""
    device, precision, threads, _, _ = pt.PROFILES[profile]
    dest.mkdir(mode=0o700, parents=True)
    with sqlite3.connect(source / "edgenas.db") as src, sqlite3.connect(dest / "edgenas.db") as dst:
        src.backup(dst)
        dst.execute("DELETE FROM measurements WHERE device = ? AND precision = ? AND threads = ?",
                    (device, precision, threads))


def run_one(source: Path, ckpt: Path, profile: str, samples: int, workers: int) -> dict:
    import numpy as np

    from edgenas.measure.adaptive import measure_adaptive
    from edgenas.measure.bench import BenchSettings
    from edgenas.predictors import latency as lat  # noqa: F401
    from edgenas.predictors import latency_fit, transfer
    from edgenas.records.store import open_store
    from edgenas.space.spec import SearchSpace

    device, precision, threads, board, _ = pt.PROFILES[profile]
    with open_store(source) as store:
        truth, floor, _ = pt.load_profile(store, profile, "median")
    space = SearchSpace.load("mbv3-tiny")
    with tempfile.TemporaryDirectory(prefix="edgenas-adaptive-") as tmp:
        home = Path(tmp) / "home"
        workspace_without(source, home, profile)
        t0 = time.monotonic()
        with open_store(home) as store:
            rep = measure_adaptive(store, home, ckpt, device, samples, precision, threads,
                                   workers=workers, settings=BenchSettings(threads=threads),
                                   statistic="median", export_cache=home / "exports", trim=True,
                                   progress=True)
            pred = latency_fit.fit(store, device, precision, threads, save_to=home, statistic="median")
        seconds = time.monotonic() - t0
    measured = set(rep.measured)
    held = sorted(a for a in truth if a not in measured)
    y = np.asarray([truth[a] for a in held])
    q = transfer.quality(y, pred.predict_many(space, [space.parse(a) for a in held]))
    last = rep.rounds[-1] if rep.rounds else None
    return {"device": device, "precision": precision, "threads": threads, "emulated": bool(board),
            "subnets_measured": len(measured), "rounds": len(rep.rounds),
            "protocols": [r.protocol for r in rep.rounds], "stopped": rep.stopped,
            "seconds_campaign": round(rep.seconds, 1), "seconds_with_fit": round(seconds, 1),
            "estimate_at_stop": last.estimate if last else None,
            # its estimate on the random subnets the design did not choose (held out, never fitted)
            "unseen_estimate_at_stop": getattr(last, "unseen", None) if last else None,
            "noise_pairs_in_campaign": last.noise_pairs if last else 0,
            "campaign_noise_within_10": last.noise_within_10 if last else None,
            "method": pred.extra.get("method", "per-device"),
            "held_out": {**q, "subnets": len(held)}, "noise_floor": floor}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source-home", type=Path, default=REPO / ".edgenas" / "bench-transfer-quiet")
    ap.add_argument("--profiles", default="all", help=f"Comma list of {', '.join(pt.PROFILES)}.")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path,
                    default=REPO / "benchmarks" / "results" / "adaptive_campaign.json")
    args = ap.parse_args()
    source = args.source_home.resolve()
    ckpt = source / "mbv3-tiny-random.pt"
    if not (source / "edgenas.db").exists() or not ckpt.exists():
        sys.exit(f"{source}: run benchmarks/predictor_transfer.py --home {source} first")
    profiles = list(pt.PROFILES) if args.profiles == "all" else args.profiles.split(",")
    load = os.getloadavg()
    results = {}
    for p in profiles:
        results[p] = run_one(source, ckpt, p, args.samples, args.workers)
        print(f"{p}: {json.dumps(results[p])}", file=sys.stderr)
    headers = ["profile", "floor ±10%", "K", "rounds (protocol)", "s", "estimate ±10%",
               "held out ±10%", "±5%", "p90", "rho", "method"]
    lines = []
    for p, r in results.items():
        e, h, f = r["estimate_at_stop"], r["held_out"], r["noise_floor"]
        lines.append([p, f"{100 * f['within_10']:.0f} %" if f else "?", r["subnets_measured"],
                      f"{r['rounds']} ({'/'.join(sorted(set(r['protocols'])))})",
                      f"{r['seconds_with_fit']:.0f}",
                      f"{100 * e['within_10']:.0f} %" if e else "-", f"{100 * h['within_10']:.0f} %",
                      f"{100 * h['within_5']:.0f} %", f"{100 * h['p90_rel_error']:.1f} %",
                      f"{h['spearman']:.3f}", r["method"]])
    pt.print_table(headers, lines)
    out = {"benchmark": "adaptive_campaign", "space": "mbv3-tiny", "samples": args.samples,
           "load_avg_at_start": load, "load_avg_at_end": os.getloadavg(), "cpus": os.cpu_count(),
           "results": results}
    pt.write_json(args.out, out)


if __name__ == "__main__":
    main()
