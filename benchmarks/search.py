"""Search speed and quality: 10 000 candidate evaluations, and evolution / NSGA-II at equal budgets.

The predictors are the real classes with made-up coefficients, so the numbers measure the search
machinery, not a trained supernet: an :class:`AccuracyPredictor` (ridge on OFA's encoding) fitted
to a synthetic ground truth (rising with log MACs, plus a per-arch term), and a
:class:`LatencyPredictor` (NNLS per operator kind) with fixed per-kind costs.

Compared with the search code as it was before vectorising (``edgenas/search.py`` at commit
``OLD``, loaded from git) on the same predictors: wall time of 10 000 evaluations (encoding, both
predictors, constraint check; median of ``--repeats``), and the best predicted accuracy that
evolution and NSGA-II reach for the same number of accuracy evaluations, over seeds.  The machine
is shared, so its load average is printed with the numbers.

Prints a table and writes ``benchmarks/results/search.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from edgenas import SearchSpace
from edgenas.cli.common import table
from edgenas.predictors.accuracy import fit_accuracy_predictor
from edgenas.predictors.latency import LatencyPredictor, feature_names
from edgenas.search import Constraints, DeviceModel, Searcher, predictor_score

OLD = "ab77257"
ROOT = Path(__file__).resolve().parents[1]
# made-up per-kind costs (ms per unit); realistic orders of magnitude for a phone core
COSTS = {"invoke": 0.05, "blocks": 0.004, "stem_macs": 2e-8, "head_macs": 1.2e-8,
         "pw_macs": 1e-8, "dw3_macs": 2.5e-8, "dw5_macs": 2.2e-8, "dw7_macs": 2.0e-8,
         "hswish_elems": 3e-9, "relu_elems": 1e-9, "se_elems": 2e-9, "se_blocks": 0.002,
         "residual_elems": 1e-9}


def old_search_module():  # noqa: ANN201 - a module object
    """``edgenas/search.py`` as it was at ``OLD`` (before vectorising), from git."""
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{OLD}:edgenas/search.py"],
                          check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_search.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("old_search", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["old_search"] = mod
    spec.loader.exec_module(mod)
    return mod


def predictors(space: SearchSpace):  # noqa: ANN201
    """A fitted accuracy predictor and a latency predictor with :data:`COSTS`."""
    truth = {}
    for a in space.sample_many(300, seed=7):
        jitter = (zlib.crc32(a.to_string().encode()) % 1000) / 2e4
        truth[a.to_string()] = 0.05 * math.log10(space.macs(a)) + 0.35 + jitter
    acc = fit_accuracy_predictor(space, truth, "synthetic", "synthetic")
    names = feature_names(space, "ops")
    lat = LatencyPredictor("host", "fp32", 1, space.name, "ops", names,
                           [COSTS.get(n, 0.0) for n in names], [1.0] * len(names), 1000,
                           {"p90_rel_error": 0.05})
    return acc, lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    space = SearchSpace.load("mbv3-w1.0")
    acc_pred, lat_pred = predictors(space)
    score = predictor_score(space, acc_pred)  # as `edgenas search` builds it
    device = DeviceModel("host", "fp32", lambda archs: lat_pred.predict_many(space, archs), 0.05)
    lo, hi = (lat_pred.predict(space, space.smallest()), lat_pred.predict(space, space.largest()))
    budget = lo + 0.3 * (hi - lo)
    constraints = Constraints(latency_ms=budget)
    old = old_search_module()
    old_device = old.DeviceModel("host", "fp32", device.predict, 0.05)
    load_before = os.getloadavg()

    # ---- raw evaluation throughput
    archs = space.sample_many(10_000, seed=1)
    old_t, new_t, new_arch_t, build_t = [], [], [], []
    for rep in range(args.repeats):
        s_old = old.Searcher(space, lambda a: acc_pred.predict_many(space, a), [old_device],
                             constraints, 1000, seed=0)
        t = time.perf_counter()
        s_old.evaluate(archs)
        old_t.append(time.perf_counter() - t)

        s_new = Searcher(space, score, [device], constraints, 1000, seed=0)
        t = time.perf_counter()
        s_new.costs(s_new.codec.sample(1, s_new.np_rng))  # builds the tables
        build_t.append(time.perf_counter() - t)
        enc = s_new.codec.sample(10_000, np.random.default_rng(rep))
        t = time.perf_counter()
        s_new.propose(enc)  # constraint check, then accuracy of the feasible ones, deduplicated
        new_t.append(time.perf_counter() - t)
        s_new2 = Searcher(space, score, [device], constraints, 1000, seed=0)
        s_new2._tables = s_new._tables  # same predictors: reuse the tables
        t = time.perf_counter()
        s_new2.propose(s_new2.codec.encode(archs))  # from Arch objects: encode included
        new_arch_t.append(time.perf_counter() - t)
    med = statistics.median

    # ---- quality at equal evaluation budgets
    quality: dict[str, list[dict[str, float]]] = {"evolution": [], "nsga2": []}
    for seed in range(args.seeds):
        s_old = old.Searcher(space, lambda a: acc_pred.predict_many(space, a), [old_device],
                             constraints, 1000, seed=seed)
        t = time.perf_counter()
        best_old = s_old.evolution(population=100, generations=60)[0].accuracy
        old_s = time.perf_counter() - t
        n_eval = len(s_old.cache)
        s_new = Searcher(space, score, [device], constraints, 1000, seed=seed, budget=n_eval)
        s_new._tables = None
        t = time.perf_counter()
        best_new = s_new.evolution(population=100, generations=None)[0].accuracy
        new_s = time.perf_counter() - t
        quality["evolution"].append({"evaluations": n_eval, "old_best": best_old,
                                     "new_best": best_new, "old_s": old_s, "new_s": new_s,
                                     "new_evaluations": s_new.evaluations})

        s_old = old.Searcher(space, lambda a: acc_pred.predict_many(space, a), [old_device],
                             constraints, 1000, seed=seed)
        t = time.perf_counter()
        front_old = s_old.nsga2(population=100, generations=20)
        old_s = time.perf_counter() - t
        n_eval = len(s_old.cache)
        s_new = Searcher(space, score, [device], constraints, 1000, seed=seed, budget=n_eval)
        t = time.perf_counter()
        front_new = s_new.nsga2(population=100, generations=None)
        new_s = time.perf_counter() - t
        quality["nsga2"].append({"evaluations": n_eval,
                                 "old_best": max(c.accuracy for c in front_old),
                                 "new_best": max(c.accuracy for c in front_new),
                                 "old_front": len(front_old), "new_front": len(front_new),
                                 "old_s": old_s, "new_s": new_s,
                                 "new_evaluations": s_new.evaluations})
    load_after = os.getloadavg()

    def mean(rows: list[dict[str, float]], key: str) -> float:
        return float(np.mean([r[key] for r in rows]))

    rows = [["10 000 evaluations, before (per-arch objects)", f"{med(old_t):.2f} s",
             f"median of {args.repeats}"],
            ["10 000 evaluations, vectorised (encoded rows)", f"{1000 * med(new_t):.1f} ms",
             f"{med(old_t) / med(new_t):.0f}x faster"],
            ["10 000 evaluations, vectorised, from Arch objects", f"{1000 * med(new_arch_t):.0f} ms",
             "encode included"],
            ["tables, built once per search", f"{med(build_t):.2f} s",
             "probe + verify every predictor"],
            ["first 10 000 incl. tables", f"{med(build_t) + med(new_t):.2f} s", "goal <= 1 s"]]
    for name, q in quality.items():
        rows.append([f"{name}: best before / after", f"{mean(q, 'old_best'):.4f} / "
                     f"{mean(q, 'new_best'):.4f}",
                     f"{mean(q, 'evaluations'):.0f} evaluations, {args.seeds} seeds; "
                     f"{mean(q, 'old_s'):.1f} s -> {mean(q, 'new_s'):.2f} s"])
    print(f"search on {space.name} ({space.size():.2e} subnets), latency budget {budget:.2f} ms; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
          f"({os.cpu_count()} CPUs)")
    print(table(["", "value", "note"], rows))
    out = Path(__file__).parent / "results" / "search.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "space": space.name, "budget_ms": budget, "repeats": args.repeats,
        "load_avg": {"before": load_before, "after": load_after}, "cpus": os.cpu_count(),
        "eval_10000_seconds": {"before": med(old_t), "vectorised_rows": med(new_t),
                               "vectorised_from_archs": med(new_arch_t),
                               "tables_build": med(build_t), "all_before": old_t,
                               "all_vectorised_rows": new_t},
        "quality": quality}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
