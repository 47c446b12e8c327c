"""Search strategies side by side: best accuracy at equal evaluations and latency budget, one run.

Every strategy of :mod:`edgenas.search.strategies` gets the same number of accuracy evaluations and the
same latency budget, over several seeds; the table gives the mean best accuracy found (and the
spread), the winner per (evaluations, budget) cell, and the wall time.  The default strategy for
a budget (:func:`edgenas.search.strategies.default_strategy`) should be the winner at that many
evaluations; the script says where it is not.

The predictors are the real classes with synthetic coefficients (as ``benchmarks/search.py``): a
ridge accuracy predictor fitted to a ground truth that rises with log MACs plus a per-arch term,
and an NNLS latency predictor with fixed per-kind costs.  Then each strategy's choice (largest
budget, loose latency, seed 0) is exported (fp32 TFLite, untrained weights: latency does not
depend on them) and measured on this machine as a local device through
``edgenas.measure.bench.bench_model``, so the predicted order can be compared with a measured one.

With ``--supernet CKPT`` it runs the other comparison, the one the ``gradient`` strategy needs (it
searches the supernet itself, so a synthetic accuracy cannot judge it): on one trained supernet, its
data and the same latency predictor, every strategy gets the same **wall time** (``--seconds``)
under a tight and a loose latency budget; the predictor strategies search with an accuracy predictor
fitted to the BN-recalibrated top-1 of ``--fit-archs`` random subnets of that supernet, the gradient
strategy with the supernet and the training images; each one's choice is then scored by its
BN-recalibrated top-1 (mean over seeds).  The choices at the loose budget (seed 0) are measured on
this machine next to the latency the search promised.  Its rows go to the ``supernet`` section of
the same JSON (the rest of the file is kept).

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
from edgenas.search.problem import Constraints, DeviceModel, predictor_score  # noqa: E402
from edgenas.search.searcher import Searcher  # noqa: E402
from edgenas.search.strategies import STRATEGIES, default_strategy, run_strategy  # noqa: E402


def measure_on_host(space: SearchSpace, archs: dict[str, str], repeats: int = 2,
                    runs: int = 30, min_secs: float = 0.5) -> dict[str, dict[str, object]]:
    """Measure each distinct chosen arch on this machine (fp32, 1 thread) ``repeats`` times.

    The passes are interleaved (every arch once, then every arch again), so a change of host load
    during the run shows as a difference between passes of the same model rather than as a
    difference between models: the spread between passes and the bench's own coefficient of
    variation are the noise floor against which the measured order of the strategies is judged.
    Returns, per distinct arch, every pass's median, p90, CV, noisy flag and the host load average
    at that moment."""
    from edgenas.device.probe import setup
    from edgenas.device.registry import add_device, make_device
    from edgenas.device.session import DeviceSession
    from edgenas.export.api import export
    from edgenas.measure.bench import bench_model
    from edgenas.records.store import open_store
    from edgenas.supernets.mbv3 import build_supernet

    home = Path(tempfile.mkdtemp(prefix="edgenas-strategies-"))
    net = build_supernet(space, 10)
    net.meta = {"data": "digits"}
    distinct = list(dict.fromkeys(archs.values()))
    out: dict[str, dict[str, object]] = {a: {"passes": []} for a in distinct}
    with open_store(home) as store:
        device = add_device(store, make_device("host", "local", home=home, python=sys.executable))
        with DeviceSession(home, device) as session:
            setup(session)
        for arch in distinct:
            t = time.perf_counter()
            export(net, arch, "fp32", home / "models" / arch, data="digits",
                   calibration_samples=8)
            out[arch]["export_s"] = time.perf_counter() - t
            print(f"exported {arch} in {out[arch]['export_s']:.1f} s", flush=True)
        for rep in range(repeats):
            for arch in distinct:
                load = os.getloadavg()[0]
                row = bench_model(store, home, "host", home / "models" / arch, runs=runs,
                                  min_secs=min_secs)
                p = {"median_ms": float(row["median_ms"]), "p90_ms": row.get("p90_ms"),
                     "cv": row.get("cv"), "noisy": bool(row.get("noisy")),
                     "runs": row.get("runs"), "load_avg_1min": load}
                out[arch]["passes"].append(p)  # type: ignore[union-attr]
                print(f"pass {rep + 1}: {arch} {p['median_ms']:.3f} ms (cv {p['cv']}, "
                      f"load {load:.1f})", flush=True)
    for m in out.values():
        medians = [float(p["median_ms"]) for p in m["passes"]]  # type: ignore[union-attr]
        m["median_ms"] = float(np.median(medians))
        # relative spread between passes of the same model: the run-to-run noise floor
        m["pass_spread"] = float((max(medians) - min(medians)) / np.mean(medians))
        m["cv_max"] = float(max(float(p["cv"] or 0.0) for p in m["passes"]))  # type: ignore[union-attr]
    return out


def kendall_tau(x: list[float], y: list[float]) -> float:
    """Kendall's tau-a of two equally long lists (pairs tied in either count as discordant-free)."""
    n, s = len(x), 0.0
    for i in range(n):
        for j in range(i + 1, n):
            s += float(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]))
    return s / (n * (n - 1) / 2) if n > 1 else float("nan")


def supernet_mode(args: argparse.Namespace) -> None:
    """Equal wall time on a trained supernet; BN-recalibrated top-1 of every strategy's choice."""
    import torch

    from edgenas.predictors.accuracy import fit_accuracy_predictor
    from edgenas.supernets.mbv3 import load_supernet
    from edgenas.training.data import load_data
    from edgenas.training.evaluate import evaluate_archs

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_before = os.getloadavg()
    net = load_supernet(args.supernet)
    space = net.space
    data = load_data(net.meta.get("data") or "digits", size=space.resolutions[-1])
    data.normalization = dict(net.normalization)
    top1_cache: dict[str, float] = {}

    def top1(archs: list[str]) -> list[float]:
        new = [a for a in dict.fromkeys(archs) if a not in top1_cache]
        for r in evaluate_archs(net, [space.parse(a) for a in new], data,
                                calib_images=args.calib_images):
            top1_cache[r.arch.to_string()] = r.top1
        return [top1_cache[a] for a in archs]

    t = time.perf_counter()
    fit = [a.to_string() for a in space.sample_many(args.fit_archs, seed=123)]
    truth = dict(zip(fit, top1(fit)))
    acc_pred = fit_accuracy_predictor(space, truth, "benchmark", "digits")
    fit_s = time.perf_counter() - t
    print(f"accuracy predictor on {len(fit)} subnets' BN-recalibrated top-1 in {fit_s:.0f} s: "
          f"{acc_pred.quality}", flush=True)
    _, lat_pred = predictors(space)
    device = DeviceModel("host", "fp32", lambda archs: lat_pred.predict_many(space, archs), 0.05)
    lo, hi = lat_pred.predict(space, space.smallest()), lat_pred.predict(space, space.largest())
    fractions = [float(x) for x in args.latency.split(",")]
    names = args.strategies.split(",") if args.strategies else list(STRATEGIES)
    results: dict[str, dict[str, object]] = {}
    chosen: dict[str, str] = {}
    for frac in fractions:
        limit = lo + frac * (hi - lo)
        cell = f"{args.seconds:g} s, {limit:.2f} ms"
        results[cell] = {}
        for name in names:
            archs, seconds, spent, pred_acc, pred_ms = [], [], [], [], []
            load = os.getloadavg()[0]
            for seed in range(args.seeds):
                s = Searcher(space, predictor_score(space, acc_pred), [device],
                             Constraints(latency_ms=limit), net.num_classes, seed=seed)
                options = {"net": net, "data": data} if name == "gradient" else {}
                t = time.perf_counter()
                ranked = run_strategy(s, name, budget=100 if name == "gradient" else 10**6,
                                      seconds=args.seconds, **options)
                seconds.append(time.perf_counter() - t)
                spent.append(s.evaluations)
                archs.append(ranked[0].arch.to_string())
                pred_acc.append(ranked[0].accuracy)
                pred_ms.append(ranked[0].worst_latency)
            tops = top1(archs)
            results[cell][name] = {"mean": float(np.mean(tops)), "std": float(np.std(tops)),
                                   "top1": tops, "predicted_accuracy": pred_acc,
                                   "predicted_ms": pred_ms, "archs": archs,
                                   "seconds": float(np.median(seconds)), "evaluations": spent,
                                   "load_avg_1min": load}
            print(f"{cell:20s} {name:14s} top-1 {np.mean(tops):.4f} ± {np.std(tops):.4f}  "
                  f"{np.median(seconds):.1f} s, {int(np.median(spent))} evaluations "
                  f"(load {load:.1f})", flush=True)
            if frac == fractions[-1]:
                chosen[name] = archs[0]

    def winners(per: dict[str, dict[str, object]]) -> list[str]:
        top = max(float(v["mean"]) for v in per.values())  # type: ignore[arg-type]
        return [k for k, v in per.items() if float(v["mean"]) >= top - 1e-12]  # type: ignore[arg-type]

    rows = [[cell] + [f"{per[k]['mean']:.4f} ±{per[k]['std']:.4f}"
                      + (" *" if k in winners(per) else "") for k in names]
            + ["/".join(winners(per))] for cell, per in results.items()]
    print(f"\n{space.name} supernet {args.supernet}, {args.seeds} seeds, mean BN-recalibrated top-1 "
          "of each strategy's choice at equal wall time (* = best in the row)")
    print(table(["wall time, latency budget"] + names + ["winner"], rows))
    host: dict[str, dict[str, object]] = {}
    if not args.no_host:
        keep = {k: v for k, v in chosen.items() if k in args.host_strategies.split(",")}
        host = measure_on_host(space, keep, args.host_repeats, args.host_runs)
        rows = []
        for name, arch in keep.items():
            promised = float(lat_pred.predict(space, space.parse(arch)))
            rows.append([name, arch, f"{promised:.3f}", f"{float(host[arch]['median_ms']):.3f}"])
            host[arch]["promised_ms"] = promised
        print(table(["strategy", "arch", "promised ms (synthetic predictor)", "host ms"], rows))
    path = Path(args.out)
    saved = json.loads(path.read_text()) if path.exists() else {}
    saved["supernet"] = {
        "checkpoint": str(args.supernet), "space": space.name, "data": data.name,
        "seeds": args.seeds, "seconds": args.seconds, "threads": args.threads,
        "calib_images": args.calib_images,
        "latency_budgets_ms": {f: lo + f * (hi - lo) for f in fractions},
        "accuracy_predictor": {"subnets": len(fit), "fit_seconds": fit_s, **acc_pred.quality},
        "results": results, "winners": {c: winners(per) for c, per in results.items()},
        "chosen": chosen, "host": host, "cpus": os.cpu_count(),
        "load_avg": {"before": load_before, "end": os.getloadavg()},
        "wall_seconds": time.perf_counter() - started}
    path.write_text(json.dumps(saved, indent=1))
    print(f"wrote the supernet section of {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="mbv3-w1.0")
    ap.add_argument("--evaluations", default="50,200", help="comma-separated budgets")
    ap.add_argument("--latency", default="0.15,0.4",
                    help="latency budgets as fractions of the way from the smallest to the "
                    "largest subnet's predicted latency")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--strategies", default=None, help="comma-separated [default: all; "
                    "without --supernet all but gradient, which needs a supernet]")
    ap.add_argument("--supernet", default=None, help="a trained supernet checkpoint: compare at "
                    "equal wall time on its BN-recalibrated top-1 (see the module doc)")
    ap.add_argument("--seconds", type=float, default=30.0, help="--supernet: wall time each")
    ap.add_argument("--fit-archs", type=int, default=40,
                    help="--supernet: subnets the accuracy predictor is fitted on")
    ap.add_argument("--calib-images", type=int, default=500, help="--supernet: BN recalibration")
    ap.add_argument("--threads", type=int, default=1, help="--supernet: torch threads")
    ap.add_argument("--host-strategies", default="gradient,evolution,ofa-evolution",
                    help="--supernet: whose choice is measured on the host")
    ap.add_argument("--no-host", action="store_true", help="skip the on-host measurement")
    ap.add_argument("--host-repeats", type=int, default=3,
                    help="interleaved passes over the chosen subnets (their spread is the noise "
                    "floor)")
    ap.add_argument("--host-runs", type=int, default=30, help="timed runs per bench")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "search_strategies.json"))
    args = ap.parse_args()
    if args.supernet:
        supernet_mode(args)
        return
    space = SearchSpace.load(args.space)
    acc_pred, lat_pred = predictors(space)
    device = DeviceModel("host", "fp32", lambda archs: lat_pred.predict_many(space, archs), 0.05)
    lo, hi = lat_pred.predict(space, space.smallest()), lat_pred.predict(space, space.largest())
    budgets = [int(x) for x in args.evaluations.split(",")]
    fractions = [float(x) for x in args.latency.split(",")]
    names = (args.strategies.split(",") if args.strategies
             else [n for n in STRATEGIES if n != "gradient"])
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
                bests, seconds, archs, spent = [], [], [], []
                load = os.getloadavg()[0]
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
                    spent.append(s.evaluations)  # a strategy may stop early (it converged)
                    archs.append(ranked[0].arch.to_string() if ranked else None)
                results[cell][name] = {"mean": float(np.mean(bests)), "std": float(np.std(bests)),
                                       "bests": bests, "seconds": float(np.median(seconds)),
                                       "archs": archs, "evaluations": spent,
                                       "load_avg_1min": load}
                print(f"{cell:24s} {name:14s} {np.mean(bests):.4f} ± {np.std(bests):.4f}  "
                      f"{np.median(seconds):.2f} s  (load {load:.1f})"
                      + (f"  spent only {spent} evaluations" if min(spent) < n else ""),
                      flush=True)
                if frac == fractions[-1] and n == budgets[-1] and archs[0]:
                    chosen[name] = archs[0]
    load_after = os.getloadavg()

    def winners(per: dict[str, dict[str, object]]) -> list[str]:
        """Every strategy whose mean best equals the row's best (a converged space ties)."""
        top = max(float(v["mean"]) for v in per.values())  # type: ignore[arg-type]
        return [k for k, v in per.items() if float(v["mean"]) >= top - 1e-12]  # type: ignore[arg-type]

    wins = {name: 0 for name in names}
    rows = []
    for cell, per in results.items():
        tops = winners(per)
        for w in tops:
            wins[w] += 1
        rows.append([cell] + [f"{per[k]['mean']:.4f} ±{per[k]['std']:.4f}"
                              + (" *" if k in tops else "") for k in names] + ["/".join(tops)])
    print(f"\n{space.name}, {args.seeds} seeds, mean best predicted accuracy ± std over seeds "
          f"(* = best in the row); load average {load_before[0]:.1f} -> {load_after[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    print(table(["evaluations, latency budget"] + names + ["winner"], rows))
    times = [[name] + [f"{results[c][name]['seconds']:.2f}" for c in results] for name in names]
    print(table(["strategy (median s)"] + list(results), times))
    overall = max(wins, key=lambda k: (wins[k], np.mean([results[c][k]["mean"]
                                                         for c in results])))
    mismatch = [c for c, per in results.items()
                if default_strategy(int(c.split()[0])) not in winners(per)]
    print(f"wins: {wins}; the default for each budget "
          + ", ".join(f"{n}: {default_strategy(n)}" for n in budgets)
          + (f"; not the winner in {mismatch}" if mismatch else "; the winner in every row"))

    host: dict[str, dict[str, object]] = {}
    host_summary: dict[str, object] = {}
    if not args.no_host and chosen:
        host = measure_on_host(space, chosen, args.host_repeats, args.host_runs)
        limit = lo + fractions[-1] * (hi - lo)
        predicted = {a: float(lat_pred.predict(space, space.parse(a))) for a in host}
        noise = max(float(m["pass_spread"]) for m in host.values())  # type: ignore[arg-type]
        cv = max(float(m["cv_max"]) for m in host.values())  # type: ignore[arg-type]
        # the floor for a difference of medians is their run-to-run spread; a bench's CV is the
        # spread of single runs (outliers included), far wider than that of their median
        floor = noise
        arch_list = list(host)
        tau = kendall_tau([predicted[a] for a in arch_list],
                          [float(host[a]["median_ms"]) for a in arch_list])  # type: ignore[arg-type]
        # pairs of distinct subnets whose measured medians differ by more than the noise floor
        resolved = sum(1 for i, a in enumerate(arch_list) for b in arch_list[i + 1:]
                       if abs(float(host[a]["median_ms"]) - float(host[b]["median_ms"]))  # type: ignore[arg-type]
                       > floor * max(float(host[a]["median_ms"]), float(host[b]["median_ms"])))  # type: ignore[arg-type]
        pairs = len(arch_list) * (len(arch_list) - 1) // 2
        host_summary = {"noise_floor_rel": floor, "max_pass_spread_rel": noise, "max_cv": cv,
                        "kendall_tau_predicted_vs_measured": tau,
                        "pairs_resolved_above_noise": resolved, "pairs": pairs,
                        "predicted_ms": predicted}
        rows = []
        for name in chosen:
            m = host[chosen[name]]
            passes = " / ".join(f"{float(p['median_ms']):.3f}" for p in m["passes"])  # type: ignore[union-attr]
            rows.append([name, chosen[name], f"{results[list(results)[-1]][name]['bests'][0]:.4f}",
                         f"{predicted[chosen[name]]:.3f}", f"{float(m['median_ms']):.3f}", passes,
                         f"{100 * float(m['pass_spread']):.1f} %",
                         f"{100 * float(m['cv_max']):.1f} %"])
        print(f"\nchosen subnets ({budgets[-1]} evaluations, predicted budget {limit:.2f} ms, "
              "seed 0), measured on this machine (fp32, 1 thread, median of the passes):")
        print(table(["strategy", "arch", "predicted acc", "predicted ms (synthetic)", "host ms",
                     "passes ms", "pass spread", "max CV"], rows))
        print(f"noise floor {100 * floor:.1f} % (largest spread between passes of one subnet; "
              f"single-run CV up to {100 * cv:.0f} %); Kendall tau "
              f"predicted vs measured {tau:.2f} over {len(arch_list)} distinct subnets; "
              f"{resolved}/{pairs} pairs differ by more than the noise floor")
    load_end = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = json.loads(out.read_text()).get("supernet") if out.exists() else None
    out.write_text(json.dumps({"space": space.name, "seeds": args.seeds,
                               "latency_budgets_ms": {f: lo + f * (hi - lo) for f in fractions},
                               "results": results, "wins": wins, "overall": overall,
                               "winners": {c: winners(per) for c, per in results.items()},
                               "default": {n: default_strategy(n) for n in budgets},
                               "default_not_winner": mismatch,
                               "chosen": chosen, "host": host, "host_summary": host_summary,
                               "cpus": os.cpu_count(),
                               "load_avg": {"before": load_before, "after_search": load_after,
                                            "end": load_end},
                               **({"supernet": kept} if kept else {})},
                              indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
