"""A whole search for one device or group: predictors in, verified choice out.

:mod:`edgenas.search.searcher` is the pure algorithm; this module wires it to the workspace: it loads the
accuracy predictor of the supernet and a latency predictor per device (choosing the precision per
device when asked), runs the search, measures the top candidates *on the devices* through the
measurement pipeline (exports cached, results stored with provenance), re-ranks on the measured
numbers, and writes ``search.json`` and a Pareto plot.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgenas.core.errors import EdgeNASError
from edgenas.core.files import atomic_write_json, sha256_file
from edgenas.core.plots import plot_pareto
from edgenas.device.registry import resolve_class as resolve
from edgenas.device.registry import select_devices
from edgenas.export.api import training_data_source
from edgenas.measure.bench import BenchSettings
from edgenas.measure.campaign import list_measurements, measure
from edgenas.predictors.accuracy import AccuracyPredictor, predictor_path
from edgenas.predictors.latency import STATISTICS, LatencyPredictor, load_predictor
from edgenas.predictors.memory import MemoryPredictor
from edgenas.predictors.memory import load_predictor as load_memory_predictor
from edgenas.records.measurements import best_by_arch_precision
from edgenas.records.store import Store
from edgenas.search.problem import (
    Candidate,
    Constraints,
    DeviceModel,
    pareto_front,
    rerank_on_measured,
    spread,
)
from edgenas.search.searcher import Searcher
from edgenas.search.strategies import (
    default_budget,
    default_strategy,
    evolve,
    make_score,
    nsga2_front,
    run_strategy,
)
from edgenas.space.spec import SearchSpace
from edgenas.supernets.checkpoint import load_checkpoint
from edgenas.supernets.mbv3 import load_supernet
from edgenas.training.data import load_data

if TYPE_CHECKING:
    from edgenas.measure.campaign import ExportWorkers

PRECISIONS = ("fp32", "int8")


@dataclass
class SearchOutcome:
    result: dict[str, Any]
    chosen: Candidate | None
    path: Path | None


def measured_ratio(store: Store, device: str, threads: int, space: str,
                   statistic: str = "median", xnnpack: bool = True,
                   near_ms: float | None = None) -> tuple[float | None, str]:
    """(median of int8/fp32 latency of ``statistic`` over archs measured in both precisions on the
    device class ``device`` with its XNNPACK setting, which archs it is over, in words).

    ``near_ms`` (the search's latency budget): only archs that are within 1.5x of it in their faster
    precision count — where the budget binds is what matters, and on some runtimes the ratio flips
    with size (LiteRT's aarch64 int8 is faster on small subnets and slower on large ones).  All archs
    count when fewer than 3 are that near."""

    rows = best_by_arch_precision(store, device, threads, space, STATISTICS[statistic],
                                  xnnpack=xnnpack)
    by: dict[str, dict[str, float]] = {}
    for arch, precision, ms in rows:
        by.setdefault(arch, {})[precision] = float(ms)
    pairs = [(v["int8"], v["fp32"]) for v in by.values() if "int8" in v and "fp32" in v]
    over = f"all {len(pairs)} subnets measured in both"
    if near_ms is not None:
        near = [(a, b) for a, b in pairs if min(a, b) <= 1.5 * near_ms]
        if len(near) >= 3:
            pairs, over = near, f"the {len(near)} subnets near the budget"
    ratios = [a / b for a, b in pairs]
    return (float(np.median(ratios)) if ratios else None), over


def choose_precision(store: Store, home: Path, device: str, threads: int, space: str,
                     asked: str, xnnpack: bool = True,
                     budget_ms: float | None = None) -> tuple[str, LatencyPredictor, str]:
    """The precision to search with on ``device`` and why (``auto``: whichever measured faster on
    the subnets near ``budget_ms``, see :func:`measured_ratio`).  Only predictors fitted with the
    device's XNNPACK setting are used."""

    klass = resolve(store, device)  # the device's class: its predictors and measurements
    if asked != "auto":
        return asked, load_predictor(home, klass, asked, threads, xnnpack=xnnpack), "as asked"
    available = {}
    for precision in PRECISIONS:
        try:
            available[precision] = load_predictor(home, klass, precision, threads, xnnpack=xnnpack)
        except EdgeNASError:
            continue
    if not available:
        raise EdgeNASError(f"no latency predictor for {device}: run `edgenas measure` and "
                           f"`edgenas predictor fit --device {device}` first")
    if len(available) == 1:
        (precision, pred), = available.items()
        return precision, pred, f"only {precision} was measured"
    ratio, over = measured_ratio(store, klass, threads, space, available["fp32"].statistic, xnnpack,
                                 budget_ms)
    if ratio is None:
        return "int8", available["int8"], "no arch measured in both precisions; int8 by default"
    precision = "int8" if ratio < 1.0 else "fp32"
    return precision, available[precision], f"int8 measured {ratio:.2f}x fp32 on this device ({over})"


def with_safety_margin(ranked: list[Candidate], models: list[DeviceModel],
                       constraints: Constraints, k: int) -> list[Candidate]:
    """Candidates to measure: the best by prediction, then the best that still fit when every
    device's latency (and, under a memory budget, peak memory) is inflated by its predictor's error
    band.

    The most accurate predictions sit right at the budget, so on a noisy device all of them can
    measure over it; the margin keeps at least one candidate that should truly fit.
    """
    if k <= 0 or not ranked:
        return []
    picks = ranked[: max(1, k // 2)]
    if constraints.latency_ms is not None or constraints.max_memory_mb is not None:
        errors = {m.name: m.error if m.error == m.error else 0.0 for m in models}  # NaN -> 0
        mem_err = max([m.memory_error for m in models if m.memory_error == m.memory_error] or [0.0])

        def fits(c: Candidate) -> bool:
            late = constraints.latency_ms is not None and any(
                ms * (1 + errors.get(d, 0.0)) > constraints.latency_ms for d, ms in c.latency.items())
            heavy = (constraints.max_memory_mb is not None and c.memory_mb is not None
                     and c.memory_mb * (1 + mem_err) > constraints.max_memory_mb)
            return not (late or heavy)

        safe = [c for c in ranked if fits(c)]
        picks += [c for c in safe if c not in picks][: k - len(picks)]
    picks += [c for c in ranked if c not in picks][: k - len(picks)]
    return picks


def predicted_front(cands: list[Candidate]) -> list[Candidate]:
    """Evaluated candidates no other one beats on both predicted accuracy and latency (over the
    budget too, so the plot shows what the budget costs)."""
    idx = pareto_front([(-c.accuracy, c.worst_latency) for c in cands])
    return sorted((cands[i] for i in idx), key=lambda c: c.worst_latency)


def run_search(store: Store, home: Path, ckpt: Path, targets: list[str], constraints: Constraints,
               *, precision: str = "auto", objective: str = "accuracy", threads: int = 1,
               out_dir: Path | None = None, verify_top: int = 3, population: int = 60,
               generations: int = 12, seed: int = 0, progress: bool = True,
               strategy: str | None = None, budget: int | None = None,
               accuracy: str = "predictor", data_source: str | None = None,
               export_workers: ExportWorkers | None = None) -> SearchOutcome:
    """Search ``ckpt``'s space for ``targets`` (device names or groups); see the module doc.

    ``strategy`` (one of :data:`edgenas.search.strategies.STRATEGIES`) spends ``budget`` accuracy
    evaluations of the ``accuracy`` source (``predictor``, ``proxy:NAME`` or ``supernet``);
    without a strategy, OFA's evolution runs ``population`` × ``generations`` as before (NSGA-II
    for ``objective="pareto"``).  ``export_workers``: the caller's, for the verification's exports."""

    data = load_checkpoint(ckpt)
    space = SearchSpace.from_spec(data["space"])
    num_classes = int(data["num_classes"])
    source_sha = sha256_file(ckpt)
    acc_pred = (AccuracyPredictor.load(predictor_path(home, source_sha))
                if accuracy == "predictor" else None)
    devices = select_devices(store, targets)
    models, chosen_precision, reasons = [], {}, {}
    preds: dict[str, LatencyPredictor] = {}
    memory: dict[str, MemoryPredictor] = {}
    for dev in devices:
        prec, pred, why = choose_precision(store, home, dev.name, threads, space.name, precision,
                                           dev.xnnpack, constraints.latency_ms)
        chosen_precision[dev.name], reasons[dev.name], preds[dev.name] = prec, why, pred
        model = DeviceModel(dev.name, prec, lambda archs, p=pred: p.predict_many(space, archs),
                            pred.error)
        if constraints.max_memory_mb is not None:  # a memory budget: each device's memory predictor
            mem = memory[dev.name] = load_memory_predictor(home, resolve(store, dev.name), prec,
                                                           threads)
            model.memory = lambda archs, m=mem: m.predict_many(space, archs)
            model.memory_error = mem.error
        models.append(model)
    searcher = Searcher(space, _score(accuracy, space, ckpt, acc_pred, data_source, seed),
                        models, constraints, num_classes, seed)
    if strategy is not None or budget is not None or accuracy != "predictor":
        budget = budget or default_budget(accuracy, strategy)
        options: dict[str, Any] = {}
        if strategy == "gradient":  # it searches the supernet itself, on its training data
            options["net"], options["data"] = _supernet_and_data(ckpt, space, data_source)
        run_strategy(searcher, strategy or default_strategy(budget), budget=budget,
                     progress=progress, **options)
        ranked = searcher.front() if objective == "pareto" else searcher.ranked()
    elif objective == "pareto":
        ranked = nsga2_front(searcher, population, generations)
    else:
        ranked = evolve(searcher, population, generations)
    if objective == "pareto":
        to_verify = spread(ranked, verify_top)
    else:
        to_verify = with_safety_margin(ranked, models, constraints, verify_top)

    if verify_top > 0 and to_verify:
        # Measured as each predictor's training data was (same precision and bench protocol) and
        # compared on the statistic it predicts.
        batches: dict[tuple[str, str], list[str]] = {}
        for dev, prec in chosen_precision.items():
            key = (prec, json.dumps(preds[dev].protocol, sort_keys=True))
            batches.setdefault(key, []).append(dev)
        for (prec, proto), names in sorted(batches.items()):
            settings = _bench_settings(json.loads(proto), threads)
            measure(store, home, ckpt, names, 0, [prec], threads, seed, workers=min(2, os.cpu_count()
                    or 1), progress=progress, archs=[c.arch for c in to_verify], settings=settings,
                    export_workers=export_workers)
        for c in to_verify:
            for dev, prec in chosen_precision.items():
                rows = [r for r in list_measurements(store, dev, prec, threads, space.name)
                        if r["arch"] == c.arch.to_string()]
                if rows:
                    c.measured[dev] = preds[dev].measured(rows[-1])
                    if rows[-1].get("memory_kib") is not None:
                        c.measured_memory[dev] = float(rows[-1]["memory_kib"]) / 1024.0
        to_verify = rerank_on_measured(to_verify, constraints)
    chosen = to_verify[0] if to_verify else (ranked[0] if ranked else None)
    within = memory_within = None
    if chosen is not None and chosen.measured and constraints.latency_ms is not None:
        within = max(chosen.measured.values()) <= constraints.latency_ms
    if chosen is not None and chosen.measured_memory and constraints.max_memory_mb is not None:
        memory_within = max(chosen.measured_memory.values()) <= constraints.max_memory_mb

    result = {
        "supernet": str(ckpt), "supernet_sha256": source_sha, "space": space.name,
        "objective": objective, "constraints": vars(constraints), "threads": threads,
        "strategy": strategy, "accuracy_source": accuracy, "evaluations": searcher.evaluations,
        "precision": chosen_precision, "precision_reason": reasons,
        "predictors": {"accuracy": None if acc_pred is None else {
                           "rmse": acc_pred.rmse, "spearman": acc_pred.quality.get("spearman")},
                       "latency": {m.name: {"precision": m.precision, "p90_rel_error": m.error,
                                            "statistic": preds[m.name].statistic}
                                   for m in models},
                       "memory": {d: {"precision": m.precision, "p90_rel_error": m.error,
                                      "repeatability": m.noise} for d, m in memory.items()}},
        "evaluated": [c.to_json() for c in list(searcher.cache.values())[:2000]],
        "front": [c.to_json() for c in predicted_front(list(searcher.cache.values()))],
        "ranked": [c.to_json() for c in ranked[:50]],
        "verified": [c.to_json() for c in to_verify],
        "chosen": None if chosen is None else {
            **chosen.to_json(), "error": {m.name: m.error for m in models},
            "statistic": {d: p.statistic for d, p in preds.items()},
            "precision": chosen_precision, "measured_within_budget": within,
            **({"memory_error": {d: m.error for d, m in memory.items()},
                "measured_within_memory_budget": memory_within} if memory else {})},
    }
    path = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = atomic_write_json(out_dir / "search.json", result, indent=1)
        plot_pareto(result, out_dir / "pareto.png")
    return SearchOutcome(result, chosen, path)


def _supernet_and_data(ckpt: Path, space: SearchSpace, data_source: str | None) -> tuple[Any, Any]:
    """The supernet of ``ckpt`` and the data set it trained on (or ``data_source``), normalised as
    the supernet expects."""
    net = load_supernet(ckpt)
    source = data_source or training_data_source(net.meta)
    if source is None:
        raise EdgeNASError(f"{ckpt} does not record its data set; pass --data")
    data = load_data(source, size=space.resolutions[-1])
    data.normalization = dict(net.normalization)
    return net, data


def _score(accuracy: str, space: SearchSpace, ckpt: Path, acc_pred: AccuracyPredictor | None,
           data_source: str | None, seed: int) -> Any:
    """The search's accuracy estimate (see :func:`edgenas.search.strategies.make_score`)."""

    if accuracy == "predictor":
        return make_score(accuracy, space, predictor=acc_pred)

    net, data = _supernet_and_data(ckpt, space, data_source)
    return make_score(accuracy, space, net=net, data=data, num_classes=net.num_classes, seed=seed)


def _bench_settings(protocol: dict[str, Any] | None, threads: int) -> Any:
    """BenchSettings from a predictor's recorded protocol (unknown fields ignored), else defaults."""
    from dataclasses import fields


    known = {f.name for f in fields(BenchSettings)}
    kwargs = {k: v for k, v in (protocol or {}).items() if k in known}
    kwargs["threads"] = threads
    return BenchSettings(**kwargs)
