"""Search speed and quality: 10 000 candidate evaluations, and evolution / NSGA-II at equal budgets.

The predictors are the real classes with made-up coefficients, so the numbers measure the search
machinery, not a trained supernet: an :class:`AccuracyPredictor` (ridge on OFA's encoding) fitted
to a synthetic ground truth (rising with log MACs, plus a per-arch term), and a
:class:`LatencyPredictor` (NNLS per operator kind) with fixed per-kind costs.

Compared with the search code as it was before vectorising (``edgenas/search/searcher.py`` at commit
``OLD``, loaded from git) on the same predictors: wall time of 10 000 evaluations (encoding, both
predictors, constraint check; median of ``--repeats``), and the best predicted accuracy that
evolution and NSGA-II reach for the same number of accuracy evaluations, over seeds.  The machine
is shared, so its load average is printed with the numbers.

In the same run, the original once-for-all ``EvolutionFinder`` (mit-han-lab/once-for-all,
``ofa/nas/search_algorithm/evolution.py``) searches 10 000 candidates (population 100, 99
generations) under the same latency budget.  Nothing of OFA is copied into this repository: its
finder, ``AccuracyPredictor`` and ``MobileNetArchEncoder`` are read from a git mirror of that
repository at run time (``--ofa-mirror``, made by the ``fetch`` tool; the comparison is skipped
with a message when it is absent).  Their finder calls an efficiency predictor per candidate and
an accuracy predictor per generation; it is given the same synthetic latency predictor ours
tabulates, called per candidate as their finder does, and either their own ``AccuracyPredictor``
(a torch MLP, 3 x 400, on their one-hot encoding; random weights: the cost is the point, not the
values) or our ridge accuracy predictor (so that the best accuracy found can be compared too).

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
import types
import zlib
from pathlib import Path

import numpy as np

from edgenas import Arch, SearchSpace
from edgenas.cli.common import table
from edgenas.predictors.accuracy import fit_accuracy_predictor
from edgenas.predictors.latency import LatencyPredictor, feature_names
from edgenas.search.problem import Constraints, DeviceModel, predictor_score
from edgenas.search.searcher import Searcher
from edgenas.search.strategies import evolve, nsga2_front

OLD = "ab77257"
OFA_MIRROR = "/work/.mirror/mit-han-lab+once-for-all/repo"
OFA_FILES = {"ofa_evolution": "ofa/nas/search_algorithm/evolution.py",
             "ofa_acc_predictor": "ofa/nas/accuracy_predictor/acc_predictor.py",
             "ofa_arch_encoder": "ofa/nas/accuracy_predictor/arch_encoder.py"}
ROOT = Path(__file__).resolve().parents[1]
# made-up per-kind costs (ms per unit); realistic orders of magnitude for a phone core
COSTS = {"invoke": 0.05, "blocks": 0.004, "stem_macs": 2e-8, "head_macs": 1.2e-8,
         "pw_macs": 1e-8, "dw3_macs": 2.5e-8, "dw5_macs": 2.2e-8, "dw7_macs": 2.0e-8,
         "hswish_elems": 3e-9, "relu_elems": 1e-9, "se_elems": 2e-9, "se_blocks": 0.002,
         "residual_elems": 1e-9}


def old_search_module():  # noqa: ANN201 - a module object
    """``edgenas/search/searcher.py`` as it was at ``OLD`` (before vectorising), from git."""
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{OLD}:edgenas/search/searcher.py"],
                          check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_search.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("old_search", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["old_search"] = mod
    spec.loader.exec_module(mod)
    return mod


def load_ofa(mirror: Path) -> tuple[dict[str, types.ModuleType], str] | None:
    """OFA's finder, accuracy predictor and arch encoder from a git mirror, or None (with why).

    Each file is read with ``git show HEAD:<path>`` into a temporary folder and loaded as a
    standalone module.  ``arch_encoder.py`` imports ``ofa.imagenet_classification.networks`` for
    its ResNet encoder only (which needs torchvision); a stub stands in for that import while the
    file loads and is removed afterwards."""
    try:
        commit = subprocess.run(["git", "-C", str(mirror), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        print(f"OFA comparison skipped: no git mirror of once-for-all at {mirror} "
              "(fetch github:mit-han-lab/once-for-all, or pass --ofa-mirror)")
        return None
    tmp = Path(tempfile.mkdtemp(prefix="ofa-"))
    stubs = {name: types.ModuleType(name) for name in
             ("ofa", "ofa.imagenet_classification", "ofa.imagenet_classification.networks")}
    stubs["ofa.imagenet_classification.networks"].ResNets = None  # type: ignore[attr-defined]
    saved = {name: sys.modules.get(name) for name in stubs}
    mods: dict[str, types.ModuleType] = {}
    try:
        sys.modules.update(stubs)
        for name, rel in OFA_FILES.items():
            text = subprocess.run(["git", "-C", str(mirror), "show", f"HEAD:{rel}"], check=True,
                                  capture_output=True, text=True).stdout
            path = tmp / f"{name}.py"
            path.write_text(text)
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec and spec.loader
            mods[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mods[name])
    except (subprocess.CalledProcessError, ImportError) as exc:
        print(f"OFA comparison skipped: cannot load OFA's files from {mirror}: {exc}")
        return None
    finally:
        for name, old_mod in saved.items():
            if old_mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old_mod
    return mods, commit


class OFAEfficiency:
    """OFA's efficiency-predictor interface (``get_efficiency(arch_dict)``, one candidate per
    call) over our latency predictor; counts its calls (their finder re-samples rejected ones)."""

    def __init__(self, space: SearchSpace, lat_pred: LatencyPredictor) -> None:
        self.space, self.lat_pred, self.calls = space, lat_pred, 0

    def get_efficiency(self, arch_dict: dict) -> float:
        self.calls += 1
        arch = Arch.from_ofa(arch_dict, arch_dict["image_size"])
        return float(self.lat_pred.predict(self.space, arch))


class OFARidge:
    """OFA's accuracy-predictor interface (``arch_encoder``, ``predict_acc(list of dicts)``, one
    batch per generation) over our ridge accuracy predictor."""

    def __init__(self, space: SearchSpace, acc_pred, encoder) -> None:  # noqa: ANN001
        self.space, self.acc_pred, self.arch_encoder = space, acc_pred, encoder

    def predict_acc(self, arch_dicts: list[dict]) -> np.ndarray:
        archs = [Arch.from_ofa(d, d["image_size"]) for d in arch_dicts]
        return np.asarray(self.acc_pred.predict_many(self.space, archs), dtype=np.float64)


def run_ofa(mods: dict[str, types.ModuleType], space: SearchSpace, acc_pred,  # noqa: ANN001
            lat_pred: LatencyPredictor, budget: float, accuracy: str, seed: int) -> dict:
    """One OFA EvolutionFinder search of 10 000 candidates (100 + 99 generations x 100)."""
    import random

    import torch

    encoder = mods["ofa_arch_encoder"].MobileNetArchEncoder(
        image_size_list=list(space.resolutions), ks_list=list(space.kernel_choices),
        expand_list=list(space.expand_choices), depth_list=list(space.depth_choices), n_stage=5)
    if accuracy == "mlp":
        torch.manual_seed(seed)
        predictor = mods["ofa_acc_predictor"].AccuracyPredictor(encoder, hidden_size=400,
                                                                n_layers=3, device="cpu")
    else:
        predictor = OFARidge(space, acc_pred, encoder)
    efficiency = OFAEfficiency(space, lat_pred)
    finder = mods["ofa_evolution"].EvolutionFinder(efficiency, predictor, population_size=100,
                                                   max_time_budget=99)
    random.seed(seed)  # their finder draws from the global generators
    np.random.seed(seed)
    load = os.getloadavg()[0]
    t = time.perf_counter()
    with torch.no_grad():
        _, best = finder.run_evolution_search(budget, verbose=False)
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "best": float(best[0]), "best_latency_ms": float(best[2]),
            "candidates": 100 * 100, "efficiency_calls": efficiency.calls,
            "load_avg_1min": load}


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
    ap.add_argument("--ofa-mirror", default=OFA_MIRROR,
                    help="git mirror of mit-han-lab/once-for-all (skipped when absent)")
    ap.add_argument("--ofa-repeats", type=int, default=3)
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

    # ---- the original OFA EvolutionFinder against ours: 10 000 candidates, same predictors
    ofa: dict[str, object] = {}
    loaded = load_ofa(Path(args.ofa_mirror))
    if loaded is not None:
        mods, commit = loaded
        runs: dict[str, list[dict]] = {"ofa_mlp": [], "ofa_ridge": [], "ours_evolution": []}
        for rep in range(args.ofa_repeats):
            runs["ofa_mlp"].append(run_ofa(mods, space, acc_pred, lat_pred, budget, "mlp", rep))
            runs["ofa_ridge"].append(run_ofa(mods, space, acc_pred, lat_pred, budget, "ridge",
                                             rep))
            # ours: the same algorithm (Searcher.evolution, OFA's), 10 000 accuracy
            # evaluations, the tables built inside the timing
            s_new = Searcher(space, score, [device], constraints, 1000, seed=rep, budget=10_000)
            load = os.getloadavg()[0]
            t = time.perf_counter()
            best = evolve(s_new, population=100, generations=None)[0]
            runs["ours_evolution"].append({"seconds": time.perf_counter() - t,
                                           "best": best.accuracy,
                                           "evaluations": s_new.evaluations,
                                           "load_avg_1min": load})
            print(f"OFA finder repeat {rep + 1}: mlp {runs['ofa_mlp'][-1]['seconds']:.2f} s, "
                  f"ridge {runs['ofa_ridge'][-1]['seconds']:.2f} s; ours "
                  f"{runs['ours_evolution'][-1]['seconds']:.2f} s (load {load:.1f})", flush=True)
        ofa = {"commit": commit, "runs": runs,
               "median_seconds": {k: med([r["seconds"] for r in v]) for k, v in runs.items()},
               "mean_best": {k: float(np.mean([r["best"] for r in v])) for k, v in runs.items()}}

    # ---- quality at equal evaluation budgets
    quality: dict[str, list[dict[str, float]]] = {"evolution": [], "nsga2": []}
    for seed in range(args.seeds):
        s_old = old.Searcher(space, lambda a: acc_pred.predict_many(space, a), [old_device],
                             constraints, 1000, seed=seed)
        t = time.perf_counter()
        best_old = evolve(s_old, population=100, generations=60)[0].accuracy
        old_s = time.perf_counter() - t
        n_eval = len(s_old.cache)
        s_new = Searcher(space, score, [device], constraints, 1000, seed=seed, budget=n_eval)
        s_new._tables = None
        t = time.perf_counter()
        best_new = evolve(s_new, population=100, generations=None)[0].accuracy
        new_s = time.perf_counter() - t
        quality["evolution"].append({"evaluations": n_eval, "old_best": best_old,
                                     "new_best": best_new, "old_s": old_s, "new_s": new_s,
                                     "new_evaluations": s_new.evaluations})

        s_old = old.Searcher(space, lambda a: acc_pred.predict_many(space, a), [old_device],
                             constraints, 1000, seed=seed)
        t = time.perf_counter()
        front_old = nsga2_front(s_old, population=100, generations=20)
        old_s = time.perf_counter() - t
        n_eval = len(s_old.cache)
        s_new = Searcher(space, score, [device], constraints, 1000, seed=seed, budget=n_eval)
        t = time.perf_counter()
        front_new = nsga2_front(s_new, population=100, generations=None)
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
    if ofa:
        ms, mb = ofa["median_seconds"], ofa["mean_best"]  # type: ignore[index]
        ours_10k = med(build_t) + med(new_t)
        rows += [
            ["OFA EvolutionFinder, 10 000 candidates, their MLP predictor",
             f"{ms['ofa_mlp']:.2f} s", f"{ms['ofa_mlp'] / ours_10k:.1f}x ours incl. tables; "
             f"{ms['ofa_mlp'] / ms['ours_evolution']:.1f}x our evolution"],
            ["OFA EvolutionFinder, 10 000 candidates, our ridge predictor",
             f"{ms['ofa_ridge']:.2f} s", f"{ms['ofa_ridge'] / ours_10k:.1f}x ours incl. tables; "
             f"{ms['ofa_ridge'] / ms['ours_evolution']:.1f}x our evolution; "
             f"best {mb['ofa_ridge']:.4f}"],
            ["ours, evolution (OFA's) to 10 000 evaluations, tables incl.",
             f"{ms['ours_evolution']:.2f} s", f"best {mb['ours_evolution']:.4f}, "
             f"{args.ofa_repeats} seeds"]]
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
        "quality": quality,
        "ofa_comparison": ofa or {"skipped": f"no OFA mirror at {args.ofa_mirror}"},
        "ofa_comparison_setup": {
            "ofa_mlp": "OFA EvolutionFinder (population 100, 99 generations: 10 000 candidates) "
                       "with OFA's AccuracyPredictor (torch MLP 3x400, random weights, their "
                       "MobileNetArchEncoder) and our synthetic latency predictor per candidate",
            "ofa_ridge": "the same finder with our ridge accuracy predictor (per generation) and "
                         "the same latency predictor per candidate",
            "ours_evolution": "Searcher.evolution (OFA's algorithm, vectorised) to 10 000 "
                              "accuracy evaluations, table build included"}}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
