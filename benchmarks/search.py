"""Search speed and quality: wall time of 10 000 candidate evaluations, evolution vs random search.

Uses analytic stand-in predictors (accuracy rising with log MACs plus a deterministic per-arch
term, latency proportional to MACs) so the numbers measure the search machinery, not a particular
trained supernet.  Prints a table and writes ``benchmarks/results/search.json``.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from pathlib import Path

import numpy as np

from edgenas import SearchSpace
from edgenas.cli.common import table
from edgenas.predictors.accuracy import arch_features
from edgenas.search import Constraints, DeviceModel, Searcher


def main() -> None:
    space = SearchSpace.load("mbv3-w1.0")
    rng = np.random.default_rng(0)
    weights = rng.normal(0, 0.01, arch_features(space, space.smallest()).shape[0])

    def accuracy(archs):
        x = np.stack([arch_features(space, a) for a in archs])
        base = np.array([0.05 * math.log10(space.macs(a)) for a in archs])
        jitter = np.array([(zlib.crc32(a.to_string().encode()) % 1000) / 1e5 for a in archs])
        return 0.4 + base + x @ weights + jitter

    device = DeviceModel("host", "fp32", lambda archs: [space.macs(a) * 1e-7 for a in archs])
    lo, hi = (space.macs(space.smallest()) * 1e-7, space.macs(space.largest()) * 1e-7)
    budget = lo + 0.3 * (hi - lo)

    # raw evaluation throughput
    archs = space.sample_many(10_000, seed=1)
    searcher = Searcher(space, accuracy, [device], Constraints(latency_ms=budget), 1000, seed=0)
    start = time.perf_counter()
    searcher.evaluate(archs)
    eval_seconds = time.perf_counter() - start

    # evolution with a 10 000-evaluation budget vs random search with the same number
    searcher = Searcher(space, accuracy, [device], Constraints(latency_ms=budget), 1000, seed=0)
    start = time.perf_counter()
    best = searcher.evolution(population=100, generations=60)
    evo_seconds = time.perf_counter() - start
    evaluations = len(searcher.cache)
    rand = Searcher(space, accuracy, [device], Constraints(latency_ms=budget), 1000, seed=0)
    feasible = [c for c in rand.evaluate(space.sample_many(evaluations, seed=2))
                if rand.feasible(c)]
    rand_best = max(c.accuracy for c in feasible)

    rows = [["10 000 candidate evaluations", f"{eval_seconds:.2f} s", "goal <= 5 s"],
            ["evolution: evaluations", evaluations, f"{evo_seconds:.1f} s"],
            ["evolution: best score (synthetic)", f"{best[0].accuracy:.4f}",
             f"latency {best[0].worst_latency:.2f} <= {budget:.2f} ms"],
            ["random search: best score, same evaluations", f"{rand_best:.4f}",
             f"{len(feasible)} feasible"]]
    print(f"search on {space.name} ({space.size():.2e} subnets)")
    print(table(["", "value", "note"], rows))
    out = Path(__file__).parent / "results" / "search.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"space": space.name, "eval_10000_seconds": eval_seconds,
                               "evolution": {"evaluations": evaluations, "seconds": evo_seconds,
                                             "best": best[0].accuracy},
                               "random": {"evaluations": evaluations, "best": rand_best,
                                          "feasible": len(feasible)},
                               "budget_ms": budget}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
