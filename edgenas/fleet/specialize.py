"""``fleet specialize``: from one trained supernet to a fleet where every class of device runs the best
subnet for its own hardware.

The promise of a once-for-all supernet is one training and a specialised subnet per kind of device.
A fleet is grouped into device classes (:mod:`edgenas.records.classes`: devices whose latency is the
same), and
for each class in the group, in order:

1. **measure** — unless the class already has latency predictors for the supernet's space: a few-shot
   adaptive campaign (:mod:`edgenas.measure.adaptive`, transfer from the classes already measured) on
   *one*
   device of the class, the representative (the first reachable by name), then ``predictor fit``.
   With ``--precision auto`` both fp32 and int8 are measured, so that the search can pick the faster.
2. **search** under the class's latency budget (``--latency-ms``, else the strictest
   ``latency_budget_ms`` of its devices) and memory budget (``--max-memory-mb``, else the strictest
   ``memory_budget_mb`` of its devices, inventory ``edgenas_memory_mb``; none when no device has
   one), the winner's latency and peak memory verified on the representative.  Under a memory
   budget the class's memory predictor is fitted from its stored measurements when it has none.
3. **export** the winner at the precision the search chose, calibrated and validated on the supernet's
   own training data; the manifest's promise is keyed by class, so ``fleet bench`` checks every
   device of the class against it.
4. **push** it to every device of the class (the health check and ``--canary`` of ``fleet push``).
5. **bench** a sample of the class's devices (``--per-class``, drawn with ``--seed``) where the model
   is deployed (:func:`edgenas.fleet.bench.spot_check`): ``ok`` when every sampled device is within
   the promise's band and near its class's median, ``drift`` otherwise.

The accuracy predictor is per supernet, not per device: it is fitted once (``predictor fit-accuracy``'s
evaluation, resumable) before the first search.

Everything is resumable.  ``<home>/specialize/<group>/state.json`` records each class's finished
steps with the inputs they were made from (supernet sha256, budget, precision, threads; the device
list for push and bench); a re-run skips a step whose inputs are unchanged, so a second run of a
finished specialisation measures, searches and pushes nothing.  The steps themselves resume too
(measurements, accuracy evaluations and exports are stored as they are made).  ``--dry-run`` prints
the plan (classes, devices, budgets, what would be measured) and touches nothing but the probes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgenas.core.errors import EdgeNASError
from edgenas.core.files import atomic_write_json, open_private, private_dir, sha256_file
from edgenas.device import probe as devlib
from edgenas.device.cancel import Cancel
from edgenas.device.connect import open_transport
from edgenas.device.fanout import DeviceResult, fan_out, session_for
from edgenas.device.registry import Device, save_probe, select_devices
from edgenas.device.transports import Transport
from edgenas.export.package import ModelPackage
from edgenas.fleet.bench import spot_check
from edgenas.fleet.common import FleetError, validate_model_name
from edgenas.fleet.push import push
from edgenas.measure.adaptive import measure_adaptive
from edgenas.measure.bench import BenchSettings
from edgenas.measure.campaign import ExportWorkers
from edgenas.predictors.accuracy import AccuracyPredictor, fit_and_save
from edgenas.predictors.accuracy import predictor_path as accuracy_path
from edgenas.predictors.latency import LatencyPredictorError, load_predictor
from edgenas.predictors.latency_fit import fit
from edgenas.records.classes import by_class, how
from edgenas.records.store import Store, open_store
from edgenas.search.problem import Constraints
from edgenas.space.spec import SearchSpace

if TYPE_CHECKING:
    from edgenas.measure.campaign import ExportWorkers

log = logging.getLogger(__name__)

STEPS = ("measure", "search", "export", "push", "bench")
AUTO_PRECISIONS = ("fp32", "int8")
DEFAULT_SAMPLES = 20
DEFAULT_PER_CLASS = 2
ACCURACY_SAMPLES = 40


class SpecializeError(FleetError):
    """The specialisation cannot start or a class cannot go on (the reason says which)."""


@dataclass
class ClassPlan:
    """What will happen to one class."""

    key: str
    how: str
    devices: list[str]
    representative: str
    budget_ms: float | None
    precisions: list[str]
    to_measure: list[str] = field(default_factory=list)  # precisions without a predictor yet
    todo: list[str] = field(default_factory=list)  # steps to run (the others are done)
    memory_mb: float | None = None  # the class's peak memory budget (MiB); None: none

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class Plan:
    group: str
    ckpt: Path
    source_sha256: str
    space: str
    threads: int
    precision: str
    name: str
    classes: list[ClassPlan]
    unreachable: dict[str, str]
    accuracy_predictor: bool  # already fitted for this supernet

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "supernet": str(self.ckpt), "supernet_sha256": self.source_sha256,
                "space": self.space, "threads": self.threads, "precision": self.precision,
                "name": self.name, "accuracy_predictor": self.accuracy_predictor,
                "unreachable": self.unreachable, "classes": [c.to_dict() for c in self.classes]}


def state_dir(home: Path, group: str) -> Path:
    return Path(home) / "specialize" / group


def class_model_dir(home: Path, group: str, key: str) -> Path:
    """Where a class's exported model lives (group and class key are validated names)."""
    return state_dir(home, group) / "models" / key


def load_state(home: Path, group: str) -> dict[str, Any]:
    """The group's state file ({} when there is none).  Written only by this module; still read
    defensively (a hand-edited or truncated file restarts the steps rather than crashing)."""
    path = state_dir(home, group) / "state.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s unreadable (%s): every step is checked again", path, exc)
        return {}
    return data if isinstance(data, dict) and isinstance(data.get("classes"), dict) else {}


def _save_state(home: Path, group: str, state: dict[str, Any]) -> None:
    state["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write_json(private_dir(state_dir(home, group)) / "state.json", state, indent=1)


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def step_inputs(plan: Plan, cp: ClassPlan, step: str) -> str:
    """What a step's result depends on: unchanged inputs make a finished step count as done."""
    base: tuple[Any, ...] = (plan.source_sha256, cp.budget_ms, plan.precision, plan.threads, cp.key)
    if cp.memory_mb is not None:  # only then: steps finished before memory budgets stay done
        base += (("memory_mb", cp.memory_mb),)
    if step in ("push", "bench"):
        return _fingerprint(*base, plan.name, sorted(cp.devices), step)
    return _fingerprint(*base, step)


# ---------------------------------------------------------------------------------------------- plan


def probe_group(store: Store, home: Path, devices: Sequence[Device], *, parallel: int = 16,
                opener: Callable[[Device, Path], Transport] = open_transport
                ) -> tuple[list[Device], dict[str, str]]:
    """Probe every device now (their classes come from what they are today); (reachable devices,
    re-read with their new probe, {unreachable device: reason})."""

    def work(dev: Device, cancel: Cancel) -> DeviceResult:
        with session_for(home, dev, cancel, opener) as session:
            return DeviceResult(dev.name, "ok", extra={"probe": devlib.probe(session)})

    fan = fan_out(devices, work, parallel=parallel, max_fail_percent=100.0)
    down: dict[str, str] = {}
    for r in fan.results:
        if r.status == "ok":
            save_probe(store, r.device, r.extra["probe"])
        else:
            down[r.device] = r.reason or r.status
    names = [d.name for d in devices if d.name not in down]
    return (select_devices(store, names) if names else []), down


def make_plan(store: Store, home: Path, ckpt: Path, group: str, *, latency_ms: float | None = None,
              precision: str = "auto", threads: int = 1, name: str | None = None, probe: bool = True,
              opener: Callable[[Device, Path], Transport] = open_transport,
              memory_mb: float | None = None) -> Plan:
    """Probe the group, group it into classes and say what each class needs (``memory_mb``: the
    memory budget of every class, instead of each class's strictest device budget)."""
    from edgenas.supernets.checkpoint import load_checkpoint  # lazy: torch stays out of CLI start-up

    if precision != "auto" and precision not in ("fp32", "fp16", "int8", "dynamic"):
        raise SpecializeError(f"unknown precision {precision!r} (auto, fp32, fp16, int8 or dynamic)")
    if latency_ms is not None and not latency_ms > 0:
        raise SpecializeError("--latency-ms must be positive")
    if memory_mb is not None and not memory_mb > 0:
        raise SpecializeError("--max-memory-mb must be positive")
    name = validate_model_name(name or group)
    members = select_devices(store, [group])
    if not members:
        raise SpecializeError(f"group {group!r} has no devices (see `edgenas device list`)")
    if probe:
        members, down = probe_group(store, home, members, opener=opener)
    else:
        down = {}
    ckpt = Path(ckpt).resolve()
    space = SearchSpace.from_spec(load_checkpoint(ckpt)["space"])
    source_sha = sha256_file(ckpt)
    state = load_state(home, group)
    precisions = list(AUTO_PRECISIONS) if precision == "auto" else [precision]
    plans: list[ClassPlan] = []
    partial = Plan(group, ckpt, source_sha, space.name, threads, precision, name, plans, down, False)
    for key, devs in by_class(members).items():
        budgets = [d.latency_budget_ms for d in devs if d.latency_budget_ms]
        budget = latency_ms if latency_ms is not None else (min(budgets) if budgets else None)
        cp = ClassPlan(key, how(devs[0]), [d.name for d in devs], devs[0].name, budget, precisions)
        memories = [d.memory_budget_mb for d in devs if d.memory_budget_mb]
        cp.memory_mb = memory_mb if memory_mb is not None else (min(memories) if memories else None)
        for p in precisions:
            try:
                pred = load_predictor(home, key, p, threads, xnnpack=devs[0].xnnpack)
            except LatencyPredictorError:
                cp.to_measure.append(p)
                continue
            if pred.space != space.name:
                cp.to_measure.append(p)
        done = (state.get("classes") or {}).get(key) or {}
        steps = done.get("steps") if isinstance(done.get("steps"), dict) else {}
        cp.todo = [s for s in STEPS if (steps.get(s) or {}).get("inputs") != step_inputs(partial, cp, s)]
        if not cp.to_measure and "measure" in cp.todo:
            cp.todo.remove("measure")
        plans.append(cp)
    partial.accuracy_predictor = accuracy_path(home, source_sha).exists() and _loads(
        AccuracyPredictor, accuracy_path(home, source_sha))
    return partial


def _loads(cls: Any, path: Path) -> bool:
    try:
        cls.load(path)
    except (EdgeNASError, OSError, ValueError):
        return False
    return True


def describe_plan(plan: Plan, samples: int) -> list[str]:
    """The plan in words, one line per class and per unreachable device."""
    lines = [f"specialize {plan.ckpt.name} ({plan.space}) for group {plan.group}: "
             f"{len(plan.classes)} class(es), model name {plan.name!r}, precision {plan.precision}, "
             f"{plan.threads} thread(s)"]
    if not plan.accuracy_predictor:
        lines.append(f"  accuracy predictor: to fit ({ACCURACY_SAMPLES} subnets evaluated once, "
                     "shared by every class)")
    for cp in plan.classes:
        budget = f"≤ {cp.budget_ms:g} ms" if cp.budget_ms else "NO BUDGET (give --latency-ms)"
        if cp.memory_mb is not None:
            budget += f", peak memory ≤ {cp.memory_mb:g} MiB"
        measure = (f"measure {', '.join(cp.to_measure)} on {cp.representative} (≤ {samples} subnets "
                   "each, adaptive)") if cp.to_measure else "predictors exist"
        todo = ", ".join(cp.todo) if cp.todo else "nothing (done)"
        lines.append(f"  class {cp.key} ({cp.how}): {len(cp.devices)} device(s) "
                     f"{', '.join(cp.devices[:6])}{' …' if len(cp.devices) > 6 else ''}; budget "
                     f"{budget}; {measure}; to do: {todo}")
    for dev, why in plan.unreachable.items():
        lines.append(f"  {dev}: unreachable, left out ({why})")
    return lines


# ----------------------------------------------------------------------------------------------- run


@dataclass
class ClassOutcome:
    key: str
    devices: list[str]
    status: str = "pending"
    arch: str | None = None
    precision: str | None = None
    accuracy: float | None = None
    promised_ms: float | None = None
    measured_ms: dict[str, float] = field(default_factory=dict)
    promised_memory_mb: float | None = None
    measured_memory_mb: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    skipped_steps: list[str] = field(default_factory=list)


def run(store: Store, home: Path, plan: Plan, *, samples: int = DEFAULT_SAMPLES, canary: int = 0,
        per_class: int = DEFAULT_PER_CLASS, verify_top: int = 2, seed: int = 0,
        protocol: BenchSettings | None = None, say: Callable[[str], None] = log.info,
        opener: Callable[[Device, Path], Transport] = open_transport) -> list[ClassOutcome]:
    """Carry out ``plan`` class by class; one failing class does not stop the others.

    ``protocol``: the bench protocol of the campaigns and of the final benchmark [default: the
    runner's own], run at the plan's thread count (the search verifies with each predictor's own
    protocol)."""
    protocol = replace(protocol or BenchSettings(), threads=plan.threads)
    missing = [cp.key for cp in plan.classes if cp.budget_ms is None]
    if missing:
        raise SpecializeError(f"no latency budget for class(es) {', '.join(missing)}: give "
                              "--latency-ms, or set the devices' budget (`device add "
                              "--latency-budget-ms`, inventory variable edgenas_latency_ms)")
    with _group_lock(home, plan.group):
        state = load_state(home, plan.group) or {}
        state.update(group=plan.group, supernet=str(plan.ckpt), supernet_sha256=plan.source_sha256,
                     name=plan.name)
        state.setdefault("classes", {})
        if any(cp.todo for cp in plan.classes) and not plan.accuracy_predictor:
            say(f"accuracy predictor: evaluating {ACCURACY_SAMPLES} subnets of the supernet (once)")

            fit_and_save(home, plan.ckpt, ACCURACY_SAMPLES, None, seed)
        outcomes = []

        # One set of export workers for every class's campaign rounds and search verification.
        with ExportWorkers() as exporters:
            for cp in plan.classes:
                entry = state["classes"].setdefault(cp.key, {})
                entry.update(devices=cp.devices, representative=cp.representative,
                             budget_ms=cp.budget_ms, how=cp.how)
                entry.setdefault("steps", {})
                out = ClassOutcome(cp.key, cp.devices)
                try:
                    _run_class(store, home, plan, cp, entry, out, samples=samples, canary=canary,
                               per_class=per_class, verify_top=verify_top, seed=seed, say=say,
                               protocol=protocol, exporters=exporters,
                               save=lambda: _save_state(home, plan.group, state), opener=opener)
                except EdgeNASError as exc:
                    out.status, out.reason = "failed", str(exc)
                    say(f"class {cp.key}: FAILED: {exc}")
                entry["status"], entry["reason"] = out.status, out.reason
                _save_state(home, plan.group, state)
                outcomes.append(out)
    return outcomes


def _run_class(store: Store, home: Path, plan: Plan, cp: ClassPlan, entry: dict[str, Any],
               out: ClassOutcome, *, samples: int, canary: int, per_class: int, verify_top: int,
               seed: int, say: Callable[[str], None], save: Callable[[], None],
               protocol: BenchSettings, opener: Callable[[Device, Path], Transport],
               exporters: ExportWorkers | None = None) -> None:
    steps: dict[str, Any] = entry["steps"]

    def done(step: str, **result: Any) -> None:
        steps[step] = {"inputs": step_inputs(plan, cp, step), "at": time.time(), **result}
        save()

    def fresh(step: str) -> bool:
        if step not in cp.todo:
            out.skipped_steps.append(step)
            return False
        return True

    if fresh("measure"):
        for precision in cp.to_measure:
            say(f"class {cp.key}: measuring {precision} on {cp.representative} (≤ {samples} subnets)")
            _measure(store, home, plan, cp, precision, samples, seed, protocol, exporters)
        done("measure", precisions=list(cp.to_measure))
    if fresh("search"):
        say(f"class {cp.key}: searching under {cp.budget_ms:g} ms"
            + ("" if cp.memory_mb is None else f" and {cp.memory_mb:g} MiB of peak memory"))
        steps.pop("export", None)  # a new search invalidates what came after it
        steps.pop("push", None)
        steps.pop("bench", None)
        cp.todo = list(dict.fromkeys([*cp.todo, "export", "push", "bench"]))
        done("search", **_search(store, home, plan, cp, verify_top, seed, exporters))
    found = steps["search"]
    out.arch, out.precision = found["arch"], found["precision"]
    out.accuracy, out.promised_ms = found.get("accuracy"), found.get("promised_ms")
    out.promised_memory_mb = found.get("promised_memory_mb")
    entry.update(arch=out.arch, precision=out.precision, accuracy=out.accuracy,
                 promised_ms=out.promised_ms, promised_memory_mb=out.promised_memory_mb)
    if fresh("export"):
        say(f"class {cp.key}: exporting {out.arch} ({out.precision})")
        steps.pop("push", None)
        steps.pop("bench", None)
        cp.todo = list(dict.fromkeys([*cp.todo, "push", "bench"]))
        done("export", **_export(home, plan, cp, found))
    model_dir = class_model_dir(home, plan.group, cp.key)  # never a path read back from the state
    entry["model_dir"] = str(model_dir)
    if fresh("push"):
        say(f"class {cp.key}: pushing to {len(cp.devices)} device(s)"
            + (f", {canary} canary first" if canary else ""))
        results = _push(store, home, plan, cp, model_dir, canary, opener)
        bad = {d: s for d, s in results.items() if s not in ("ok", "unchanged")}
        entry["push"] = results
        if bad:
            raise SpecializeError("push failed on " + ", ".join(f"{d} ({s})" for d, s in bad.items()))
        cp.todo = list(dict.fromkeys([*cp.todo, "bench"]))
        done("push", results=results)
    if fresh("bench"):
        say(f"class {cp.key}: benchmarking the deployed model on {min(per_class, len(cp.devices))} "
            f"of its {len(cp.devices)} device(s)")
        measured, drifted, memory, heavy = _bench(home, plan, cp, per_class, seed, protocol, opener)
        done("bench", measured_ms=measured, drift=drifted, measured_memory_mb=memory,
             memory_over=heavy)
    bench = steps["bench"]
    out.measured_ms = dict(bench.get("measured_ms") or {})
    out.measured_memory_mb = dict(bench.get("measured_memory_mb") or {})
    entry["measured_ms"] = out.measured_ms
    entry["measured_memory_mb"] = out.measured_memory_mb
    out.status = "drift" if bench.get("drift") or bench.get("memory_over") else "ok"


def _measure(store: Store, home: Path, plan: Plan, cp: ClassPlan, precision: str, samples: int,
             seed: int, protocol: BenchSettings, exporters: ExportWorkers | None = None) -> None:

    rep = measure_adaptive(store, home, plan.ckpt, cp.representative, samples, precision,
                           plan.threads, seed=seed, progress=False, settings=protocol,
                           export_workers=exporters)
    if not rep.measured and rep.errors:
        raise SpecializeError(f"measuring {precision} on {cp.representative} failed: {rep.errors[0]}")
    fit(store, cp.representative, precision, plan.threads, space=plan.space, save_to=home)


def _search(store: Store, home: Path, plan: Plan, cp: ClassPlan, verify_top: int,
            seed: int, exporters: ExportWorkers | None = None) -> dict[str, Any]:
    from edgenas.search.job import run_search  # lazy: torch stays out of CLI start-up

    if cp.memory_mb is not None:
        _memory_predictors(store, home, plan, cp)
    outcome = run_search(store, home, plan.ckpt, [cp.representative],
                         Constraints(latency_ms=cp.budget_ms, max_memory_mb=cp.memory_mb),
                         precision=plan.precision,
                         objective="accuracy", threads=plan.threads,
                         out_dir=state_dir(home, plan.group) / "search" / cp.key,
                         verify_top=verify_top, seed=seed, progress=False,
                         export_workers=exporters)
    chosen, result = outcome.chosen, outcome.result
    if chosen is None:
        raise SpecializeError(f"no subnet fits {cp.budget_ms:g} ms on class {cp.key}")
    rep = cp.representative
    precision = result["precision"][rep]
    latency = result["predictors"]["latency"][rep]
    found = {"arch": chosen.arch.to_string(), "precision": precision,
             "accuracy": float(chosen.accuracy), "promised_ms": float(chosen.latency[rep]),
             "verified_ms": chosen.measured.get(rep), "error": float(latency["p90_rel_error"]),
             "statistic": latency.get("statistic", "median"),
             "within_budget": result["chosen"].get("measured_within_budget"),
             "search_json": str(outcome.path)}
    if cp.memory_mb is not None:
        found.update(promised_memory_mb=chosen.memory_mb,
                     verified_memory_mb=chosen.measured_memory.get(rep),
                     within_memory_budget=result["chosen"].get("measured_within_memory_budget"))
    return found


def _memory_predictors(store: Store, home: Path, plan: Plan, cp: ClassPlan) -> None:
    """Under a memory budget, every precision the search may pick needs the class's memory predictor:
    fit it from the stored measurements where there is none (every benchmark of this edgenas stored
    the model's peak memory, the campaign's too); a class whose rows predate that cannot be searched
    under a memory budget until it is measured again, and the error says so."""
    from edgenas.predictors.memory import MemoryPredictorError
    from edgenas.predictors.memory import fit as fit_memory
    from edgenas.predictors.memory import load_predictor as load_memory

    problems = []
    for precision in cp.precisions:
        try:
            load_memory(home, cp.key, precision, plan.threads)
            continue
        except MemoryPredictorError:
            pass
        try:
            fit_memory(store, cp.representative, precision, plan.threads, space=plan.space,
                       save_to=home)
        except MemoryPredictorError as exc:
            problems.append(str(exc))
    if problems:
        raise SpecializeError(f"class {cp.key} has a memory budget of {cp.memory_mb:g} MiB but no "
                              f"memory predictor: {problems[0]}")


def promise_for_class(plan: Plan, cp: ClassPlan, found: dict[str, Any]) -> dict[str, Any]:
    """The search's promise in the shape ``export --search`` reads, keyed by the class: every device
    of the class is held to it (``fleet bench`` looks a device's class up when its name is absent)."""
    cand = {"arch": found["arch"], "accuracy": found.get("accuracy"),
            "latency_ms": {cp.key: found["promised_ms"]}}
    return {"chosen": cand, "verified": [], "front": [],
            "precision": {cp.key: found["precision"]},
            "predictors": {"latency": {cp.key: {"p90_rel_error": found["error"],
                                                "statistic": found.get("statistic", "median")}}},
            "constraints": {"latency_ms": cp.budget_ms,
                            **({} if cp.memory_mb is None else {"max_memory_mb": cp.memory_mb})},
            "supernet_sha256": plan.source_sha256}


def _export(home: Path, plan: Plan, cp: ClassPlan, found: dict[str, Any]) -> dict[str, Any]:
    from edgenas.export.api import export  # lazy: torch stays out of CLI start-up

    out_dir = class_model_dir(home, plan.group, cp.key)
    result = export(plan.ckpt, found["arch"], found["precision"], out_dir,
                    search=promise_for_class(plan, cp, found))
    acc = result.manifest.get("accuracy") or {}
    return {"model_dir": str(out_dir), "sha256": sha256_file(result.model_path),
            "exported_top1": acc.get("exported_top1") if isinstance(acc, dict) else None}


def _push(store: Store, home: Path, plan: Plan, cp: ClassPlan, model_dir: Path, canary: int,
          opener: Callable[[Device, Path], Transport]) -> dict[str, str]:

    devices = select_devices(store, cp.devices)
    fan = push(store, home, devices, ModelPackage.open(model_dir), plan.name, canary=canary,
               opener=opener)
    return {r.device: r.status if r.status in ("ok", "unchanged") else
            f"{r.status}: {r.reason or ''}".strip(": ")[:200] for r in fan.results}


def _bench(home: Path, plan: Plan, cp: ClassPlan, per_class: int, seed: int,
           protocol: BenchSettings, opener: Callable[[Device, Path], Transport]
           ) -> tuple[dict[str, float], list[str], dict[str, float], list[str]]:
    """Spot-check the deployed model on a sample of the class (:func:`edgenas.fleet.bench.spot_check`:
    seeded sample; each device held to the class's promise in the manifest and to the class's median
    in this run, and to its memory budget).  ({device: measured ms}, [drifted devices], {device:
    measured peak memory MiB}, [devices over their memory budget])."""

    with open_store(home) as store:
        devices = select_devices(store, cp.devices)
    rows, _ = spot_check(home, devices, plan.name, per_class=per_class, settings=protocol, seed=seed,
                         opener=opener)
    failed = [f"{r['device']} ({r['error']})" for r in rows if r.get("error")]
    if failed:
        raise SpecializeError("bench failed on " + ", ".join(failed))
    measured = {r["device"]: float(r["median_ms"]) for r in rows}
    memory = {r["device"]: float(r["memory_mb"]) for r in rows if r.get("memory_mb") is not None}
    return (measured, [r["device"] for r in rows if r.get("drift")], memory,
            [r["device"] for r in rows if r.get("memory_over")])


class _group_lock:
    """One ``fleet specialize`` per group and workspace at a time (a host flock, released on exit)."""

    def __init__(self, home: Path, group: str) -> None:
        locks = private_dir(Path(home) / "locks")
        self.path = locks / f"specialize-{group}.lock"
        self.fd = -1

    def __enter__(self) -> _group_lock:
        self.fd = open_private(self.path)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise SpecializeError("another `fleet specialize` of this group is running in this "
                                  "workspace; wait for it (its progress is kept)") from None
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


__all__ = ["ClassOutcome", "ClassPlan", "Plan", "SpecializeError", "describe_plan", "load_state",
           "make_plan", "probe_group", "promise_for_class", "run", "state_dir", "step_inputs"]
