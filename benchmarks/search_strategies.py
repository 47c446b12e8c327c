"""Search strategies side by side: best accuracy at equal evaluations and latency budget, one run.

Every strategy of :mod:`edgenas.strategies` gets the same number of accuracy evaluations and the
same latency budget, over several seeds; the table gives the mean best accuracy found (and the
spread), the winner per (evaluations, budget) cell, and the wall time.  The default strategy for
a budget (:func:`edgenas.strategies.default_strategy`) should be the winner at that many
evaluations; the script says where it is not.

The predictors are the real classes with synthetic coefficients (as ``benchmarks/search.py``): a
ridge accuracy predictor fitted to a ground truth that rises with log MACs plus a per-arch term,
and an NNLS latency predictor with fixed per-kind costs.  Then each strategy's choice (largest
budget, loose latency, seed 0) is exported (fp32 TFLite, untrained weights: latency does not
depend on them) and measured on this machine as a local device through
``edgenas.bench.bench_model``, so the predicted order can be compared with a measured one.

Writes ``benchmarks/results/search_strategies.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from search import predictors  # noqa: E402  (benchmarks/search.py)

from edgenas import SearchSpace  # noqa: E402
from edgenas.cli.common import table  # noqa: E402
from edgenas.search import Constraints, DeviceModel, Searcher, predictor_score  # noqa: E402
from edgenas.strategies import STRATEGIES, default_strategy, run_strategy  # noqa: E402


def measure_on_host(space: SearchSpace, archs: dict[str, str]) -> dict[str, float]:
    """Median latency (ms, fp32, 1 thread) of each strategy's chosen arch on this machine."""
    from edgenas.bench import bench_model
    from edgenas.device.session import DeviceSession
    from edgenas.devices import setup
    from edgenas.export.api import export
    from edgenas.registry import add_device, make_device
    from edgenas.store import open_store
    from edgenas.supernets.mbv3 import build_supernet

    home = Path(tempfile.mkdtemp(prefix="edgenas-strategies-"))
    net = build_supernet(space, 10)
    net.meta = {"data": "digits"}
    out: dict[str, float] = {}
    with open_store(home) as store:
        device = add_device(store, make_device("host", "local", home=home, python=sys.executable))
        with DeviceSession(home, device) as session:
            setup(session)
        done: dict[str, float] = {}
        for name, arch in archs.items():
            if arch not in done:
                model_dir = home / "models" / arch
                export(net, arch, "fp32", model_dir, data="digits", calibration_samples=8)
                row = bench_model(store, home, "host", model_dir, runs=30, min_secs=0.5)
                done[arch] = float(row["median_ms"])
            out[name] = done[arch]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="mbv3-w1.0")
    ap.add_argument("--evaluations", default="50,200", help="comma-separated budgets")
    ap.add_argument("--latency", default="0.15,0.4",
                    help="latency budgets as fractions of the way from the smallest to the "
                    "largest subnet's predicted latency")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--no-host", action="store_true", help="skip the on-host measurement")
    args = ap.parse_args()
    space = SearchSpace.load(args.space)
    acc_pred, lat_pred = predictors(space)
    device = DeviceModel("host", "fp32", lambda archs: lat_pred.predict_many(space, archs), 0.05)
    lo, hi = lat_pred.predict(space, space.smallest()), lat_pred.predict(space, space.largest())
    budgets = [int(x) for x in args.evaluations.split(",")]
    fractions = [float(x) for x in args.latency.split(",")]
    names = args.strategies.split(",")
    load_before = os.getloadavg()
    tables = None
    results: dict[str, dict[str, object]] = {}
    chosen: dict[str, str] = {}
    for frac in fractions:
        limit = lo + frac * (hi - lo)
        for n in budgets:
            cell = f"{n} evals, {limit:.2f} ms"
            results[cell] = {}
            for name in names:
                bests, seconds, archs = [], [], []
                for seed in range(args.seeds):
                    s = Searcher(space, predictor_score(space, acc_pred), [device],
                                 Constraints(latency_ms=limit), 1000, seed=seed)
                    if tables is not None:
                        s._tables = tables  # same predictors: the tables are built once
                    t = time.perf_counter()
                    ranked = run_strategy(s, name, budget=n)
                    seconds.append(time.perf_counter() - t)
                    tables = s._tables
                    bests.append(ranked[0].accuracy if ranked else float("nan"))
                    archs.append(ranked[0].arch.to_string() if ranked else None)
                results[cell][name] = {"mean": float(np.mean(bests)), "std": float(np.std(bests)),
                                       "bests": bests, "seconds": float(np.median(seconds)),
                                       "archs": archs}
                print(f"{cell:24s} {name:14s} {np.mean(bests):.4f} ± {np.std(bests):.4f}  "
                      f"{np.median(seconds):.2f} s", flush=True)
                if frac == fractions[-1] and n == budgets[-1] and archs[0]:
                    chosen[name] = archs[0]
    load_after = os.getloadavg()

    wins = {name: 0 for name in names}
    rows = []
    for cell, per in results.items():
        winner = max(per, key=lambda k: per[k]["mean"])  # type: ignore[index]
        wins[winner] += 1
        rows.append([cell] + [f"{per[k]['mean']:.4f}" + (" *" if k == winner else "")
                              for k in names] + [winner])
    print(f"\n{space.name}, {args.seeds} seeds, mean best predicted accuracy (* = best in the row); "
          f"load average {load_before[0]:.1f} -> {load_after[0]:.1f} on {os.cpu_count()} CPUs")
    print(table(["evaluations, latency budget"] + names + ["winner"], rows))
    times = [[name] + [f"{results[c][name]['seconds']:.2f}" for c in results] for name in names]
    print(table(["strategy (median s)"] + list(results), times))
    overall = max(wins, key=lambda k: (wins[k], np.mean([results[c][k]["mean"]
                                                         for c in results])))
    mismatch = [c for c, per in results.items()
                if default_strategy(int(c.split()[0])) != max(per, key=lambda k: per[k]["mean"])]
    print(f"wins: {wins}; the default for each budget "
          + ", ".join(f"{n}: {default_strategy(n)}" for n in budgets)
          + (f"; not the winner in {mismatch}" if mismatch else "; the winner in every row"))

    host: dict[str, float] = {}
    if not args.no_host and chosen:
        host = measure_on_host(space, chosen)
        limit = lo + fractions[-1] * (hi - lo)
        rows = [[name, chosen[name], f"{lat_pred.predict(space, space.parse(chosen[name])):.2f}",
                 f"{host[name]:.2f}"] for name in chosen]
        print(f"\nchosen subnets ({budgets[-1]} evaluations, predicted budget {limit:.2f} ms), "
              "measured on this machine (fp32, 1 thread, median):")
        print(table(["strategy", "arch", "predicted ms (synthetic)", "host ms"], rows))
    out = Path(__file__).parent / "results" / "search_strategies.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"space": space.name, "seeds": args.seeds, "results": results,
                               "wins": wins, "overall": overall,
                               "default": {n: default_strategy(n) for n in budgets},
                               "default_not_winner": mismatch,
                               "chosen": chosen, "host_median_ms": host,
                               "load_avg": {"before": load_before, "after": load_after}},
                              indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
