"""``fleet bench``: measure the deployed (or a given) model on every device at once and compare each
device with the latency the search promised for it.

The measurement itself is :class:`edgenas.measure.bench.DeviceBencher` (one benchmark at a time per
device under
the device lock, noise retries, a ``measurements`` row per device), run for all devices in parallel:
devices are independent machines, so a fleet report takes as long as its slowest device.  A deployed
model is timed where it lies on the device: nothing is downloaded from a device, so a device lying
about its state can at worst fail its own row, never write to this host.

Why compare with the search's prediction: the search picked this subnet because a latency predictor
said it fits the budget on each device.  A device measuring outside the predictor's error band means the
predictor (or the device: thermal throttling, another governor, another runtime) is off, and the
promise the search made does not hold there — worth flagging before users notice.

Spot checks (``fleet bench --per-class N``, :func:`spot_check`): devices of one class
(:mod:`edgenas.records.classes`) run a model at the same speed, so a sample of each class tells how the
class
is doing, and a device
of the class that measures far from the others is the one worth looking at (a board that throttles,
a phone in power-save mode, a board someone put in the wrong class).  A device is therefore held to
two references: the promise (the manifest's ``search`` block for the device's name, then for its
class, then the class's latency predictor) and, when its class has at least two devices measured in
this run, the class's own median in this run.

Memory is a promise too: a device registered with a memory budget (``device add --memory-budget-mb``,
inventory ``edgenas_memory_mb``) — or, without one, the search's memory constraint recorded in the
model's manifest — is flagged ``memory_over`` when the model's measured peak memory
(:mod:`edgenas.records.memory`) exceeds it.  Unlike latency there is no band: the budget is what the
device has to spare, so one MiB over is over.
"""

from __future__ import annotations

import logging
import math
import random
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edgenas.device.cancel import Cancel
from edgenas.device.connect import open_transport
from edgenas.device.fanout import DEFAULT_PARALLEL, DeviceResult, FanOut, fan_out, session_for
from edgenas.device.registry import Device
from edgenas.device.transports import Transport
from edgenas.export.package import MODEL_FILE, VERSION_HEX, ModelPackage
from edgenas.fleet.common import FleetError
from edgenas.fleet.predict import pick_model
from edgenas.fleet.state import MODELS_DIR, read_state
from edgenas.measure.bench import BenchSettings, DeviceBencher
from edgenas.predictors.latency import (
    STATISTICS,
    LatencyPredictorError,
    load_predictor,
    measured_latency,
)
from edgenas.records.classes import by_class, class_of
from edgenas.records.deployments import deployed_manifest
from edgenas.records.store import open_store
from edgenas.space.spec import SearchSpace, available_spaces

log = logging.getLogger(__name__)

DEFAULT_ERROR_BAND = 0.10  # nn-Meter's ±10 %, used when the manifest gives a prediction but no band
DEFAULT_PER_CLASS = 2  # what `fleet specialize` samples; `fleet bench` measures every device by default


class LatencyPredictor(Protocol):
    """What the search's per-device latency predictors offer (edgenas.predictors.latency)."""

    error: float
    statistic: str

    def predict(self, space: Any, arch: Any) -> float: ...


@dataclass(frozen=True)
class Promise:
    """The latency the search predicted for a device, with the predictor's relative error band and
    the run-time statistic (median, min, mean) the prediction is of."""

    ms: float
    error: float
    source: str
    statistic: str = "median"


def promised_latency(manifest: Mapping[str, Any], device: str,
                     predictor: LatencyPredictor | None = None,
                     device_class: str | None = None) -> Promise | None:
    """Where the search's prediction is found, in order: the manifest's ``search`` block (``latency_ms``
    per device and ``error`` per device or for all, as the search writes a candidate), the same under
    ``provenance.search``; in each, the device's name first, then its class (``fleet specialize``
    keys its promise by class: every device of the class is held to it); then ``predictor`` (the
    device's, or its class's latency predictor)."""
    keys = [device] + ([device_class] if device_class and device_class != device else [])
    for key in keys:
        for block in (manifest.get("search"), (manifest.get("provenance") or {}).get("search")):
            promise = _from_block(block, key, "manifest")
            if promise is not None:
                return promise
    if predictor is not None and manifest.get("arch"):
        try:
            ms = float(predictor.predict(_space_of(manifest), manifest["arch"]))
        except Exception:  # noqa: BLE001 - a predictor that cannot read this arch only means no promise
            return None
        if not (math.isfinite(ms) and ms > 0):
            return None
        return Promise(ms, _band(getattr(predictor, "error", None)), "latency predictor",
                       str(getattr(predictor, "statistic", "median")))
    return None


def _band(err: Any) -> float:
    """A usable relative error band: the given one when it is a positive finite number."""
    ok = isinstance(err, (int, float)) and not isinstance(err, bool) and math.isfinite(err) and err > 0
    return float(err) if ok else DEFAULT_ERROR_BAND


def _from_block(block: Any, key: str, source: str) -> Promise | None:
    if not isinstance(block, Mapping):
        return None
    latency = block.get("latency_ms")
    ms = latency.get(key) if isinstance(latency, Mapping) else None
    if not (isinstance(ms, (int, float)) and not isinstance(ms, bool) and math.isfinite(ms) and ms > 0):
        return None
    err = block.get("error")
    err = err.get(key) if isinstance(err, Mapping) else err
    given = isinstance(err, (int, float)) and not isinstance(err, bool) and err > 0
    stat = block.get("statistic")
    stat = stat.get(key) if isinstance(stat, Mapping) else stat
    return Promise(float(ms), _band(err), source if given else f"{source} (default band)",
                   stat if stat in STATISTICS else "median")


def _space_of(manifest: Mapping[str, Any]) -> Any:
    """The manifest's search space as the predictor needs it: a built-in space by name (a manifest is
    never a reason to read another file); anything else is handed over as it is."""
    space = manifest.get("space")
    if isinstance(space, str):

        if space in available_spaces():
            return SearchSpace.load(space)
    return space


def memory_promise(manifest: Mapping[str, Any],
                   device: Device | None) -> tuple[float | None, str | None]:
    """(the peak memory in MiB the model must stay within on ``device``, where that comes from): the
    device's own budget first, then the memory constraint of the search the manifest records
    (``search.constraints.max_memory_mb``, or under ``provenance.search``); (None, None) without
    either."""
    own = getattr(device, "memory_budget_mb", None)
    if isinstance(own, (int, float)) and not isinstance(own, bool) and math.isfinite(own) and own > 0:
        return float(own), "device budget"
    for block in (manifest.get("search"), (manifest.get("provenance") or {}).get("search")):
        constraints = block.get("constraints") if isinstance(block, Mapping) else None
        limit = constraints.get("max_memory_mb") if isinstance(constraints, Mapping) else None
        if (isinstance(limit, (int, float)) and not isinstance(limit, bool) and math.isfinite(limit)
                and limit > 0):
            return float(limit), "search constraint"
    return None, None


def over_memory(memory_kib: Any, budget_mb: float | None) -> tuple[float | None, bool]:
    """(the measured peak memory in MiB, whether it is over ``budget_mb``); (None, False) when the
    benchmark recorded no peak memory (an old runner)."""
    if not (isinstance(memory_kib, (int, float)) and not isinstance(memory_kib, bool)
            and math.isfinite(memory_kib) and memory_kib >= 0):
        return None, False
    mib = float(memory_kib) / 1024.0
    return mib, budget_mb is not None and mib > budget_mb


def compare(measured_ms: float, promise: Promise | None) -> tuple[float | None, bool]:
    """(relative difference, drifted past the band)."""
    if promise is None:
        return None, False
    delta = (measured_ms - promise.ms) / promise.ms
    return delta, abs(delta) > promise.error


@dataclass(frozen=True)
class DeployedModel:
    """A model deployed on a device, timed where it is.  Its manifest is the one this workspace pushed
    with that sha256 (from ``deployments``), never the device's copy: device answers are untrusted."""

    model_path: Path  # "<device>:<remote path>", for messages only
    sha256: str
    data: dict[str, Any]  # the manifest as JSON, as ModelPackage.data
    size_bytes: int | None = None


def sample_per_class(devices: Sequence[Device], per_class: int, seed: int | None = None) -> list[Device]:
    """``per_class`` devices of each class (every device of a smaller class), drawn with ``seed``
    (None: a fresh random draw), in name order.  The same devices and seed give the same sample."""
    if per_class < 1:
        raise FleetError(f"--per-class must be at least 1, not {per_class}")
    rng = random.Random(seed)
    picked: list[Device] = []
    for _key, members in by_class(devices).items():
        picked += members if len(members) <= per_class else rng.sample(members, per_class)
    return sorted(picked, key=lambda d: d.name)


def spot_check(
    home: Path,
    devices: Sequence[Device],
    name: str | None,
    *,
    per_class: int = DEFAULT_PER_CLASS,
    settings: BenchSettings | None = None,
    seed: int | None = None,
    parallel: int = DEFAULT_PARALLEL,
    campaign: str | None = None,
    opener: Callable[[Device, Path], Transport] = open_transport,
) -> tuple[list[dict[str, Any]], FanOut]:
    """Time the deployed model ``name`` on ``per_class`` devices of each class of ``devices``.

    One row per sampled device (see :func:`fleet_bench`): its ``class``, the promise it was held to
    (name, then class key in the manifest, then the class's predictor) and ``drift`` when it is off
    that promise's band or off its class's median in this run (``class_drift``).  Summarise the rows
    per class with :func:`class_summary`.  Failed devices are rows with an ``error``; nothing raises
    for one device's failure."""
    return fleet_bench(home, devices, None, name, settings=settings, parallel=parallel,
                       campaign=campaign, opener=opener, per_class=per_class, seed=seed)


def fleet_bench(
    home: Path,
    devices: Sequence[Device],
    model_dir: Path | None = None,
    name: str | None = None,
    *,
    settings: BenchSettings | None = None,
    parallel: int = DEFAULT_PARALLEL,
    campaign: str | None = None,
    predictors: Mapping[str, LatencyPredictor] | None = None,
    opener: Callable[[Device, Path], Transport] = open_transport,
    per_class: int | None = None,
    seed: int | None = None,
) -> tuple[list[dict[str, Any]], FanOut]:
    """Benchmark on every device in parallel; one row per device (see :func:`_row`).

    ``model_dir``: benchmark this folder everywhere (its manifest also gets each device's measured
    latency, as ``edgenas bench`` does); otherwise each device's current model of ``name``, timed in
    place on the device (read, sha256-checked and benchmarked under one hold of the device lock).
    ``settings``: the bench protocol and thread count [default: the runner's own protocol, 1 thread].
    ``per_class``: only a sample of that many devices of each class (``seed`` draws it).
    ``predictors``: latency predictors by device name; a device without one is held to its class's
    saved predictor (for the model's precision and thread count) when the manifest promises nothing.
    """

    if not devices:
        raise FleetError("no devices selected (give --group or --device; see `edgenas device list`)")
    if per_class is not None:
        devices = sample_per_class(devices, per_class, seed)
    classes = {d.name: class_of(d) for d in devices}
    campaign = campaign or f"fleet-bench-{time.strftime('%Y%m%d-%H%M%S')}"
    settings = settings or BenchSettings()
    local = ModelPackage.open(model_dir) if model_dir is not None else None

    def work(dev: Device, cancel: Cancel) -> DeviceResult:
        # this thread's own store connection (SQLite stays in its thread)
        with open_store(home) as store, session_for(home, dev, cancel, opener) as session, \
                DeviceBencher(home, dev, settings, session=session) as bencher:
            if local is not None:
                record = bencher.bench(store, local, campaign=campaign)
                return DeviceResult(dev.name, "ok", version=local.sha256[:VERSION_HEX],
                                    extra={"record": record, "manifest": local.data})
            with session.locked():
                state = read_state(session, name)
                model = pick_model(state.models, name)
                held = state.models[model]
                if not held.intact or held.current is None or held.current_sha256 is None:
                    raise FleetError(f"the current version of {model} is missing or damaged; push again")
                remote = f"{MODELS_DIR}/{model}/{held.current}/{MODEL_FILE}"
                target = DeployedModel(Path(f"{dev.name}:{remote}"), held.current_sha256,
                                       deployed_manifest(store, held.current_sha256))
                record = bencher.bench(store, target, campaign=campaign,  # type: ignore[arg-type]
                                       remote=remote, update_manifest=False)
        return DeviceResult(dev.name, "ok", model=model, version=held.current,
                            sha256=held.current_sha256,
                            extra={"record": record, "manifest": target.data})

    outcome = fan_out(devices, work, parallel=parallel, max_fail_percent=100.0)
    class_predictor = _class_predictors(home, settings.threads)
    by_name = {d.name: d for d in devices}
    rows = []
    for r in outcome.results:
        key = classes.get(r.device, r.device)
        predictor = (predictors or {}).get(r.device)
        if predictor is None and not r.failed:
            precision = r.extra["manifest"].get("precision") or r.extra["record"].get("precision")
            predictor = class_predictor(key, precision)
        rows.append(_row(r, predictor, key, by_name.get(r.device)))
    check_against_class(rows)
    for row in rows:
        row["campaign"] = campaign
    return rows, outcome


def _class_predictors(home: Path, threads: int) -> Callable[[str, Any], LatencyPredictor | None]:
    """Each class's saved latency predictor for a precision, loaded once per run; None where there is
    none or it cannot be read (then the device simply has no promise)."""

    cache: dict[tuple[str, str], LatencyPredictor | None] = {}

    def get(key: str, precision: Any) -> LatencyPredictor | None:
        if not isinstance(precision, str):
            return None
        if (key, precision) not in cache:
            try:
                cache[key, precision] = load_predictor(home, key, precision, threads)
            except (LatencyPredictorError, OSError, ValueError) as exc:
                log.debug("no latency predictor for class %s (%s): %s", key, precision, exc)
                cache[key, precision] = None
        return cache[key, precision]

    return get


def check_against_class(rows: Sequence[dict[str, Any]]) -> None:
    """Hold every measured device to its class's median in this run (classes with ≥ 2 measured
    devices), within the band of its promise (±10 % without one): sets ``class_median_ms``,
    ``class_delta`` and ``class_drift``, and ``drift`` when either check failed.

    With an even number of devices the lower middle value is the reference: what goes wrong on a
    device (throttling, power-save, a background load) makes it slower, so of two devices the slow
    one is flagged, not both."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        row.setdefault("class_median_ms", None)
        row.setdefault("class_delta", None)
        row.setdefault("class_drift", False)
        if not row.get("error") and isinstance(row.get("median_ms"), (int, float)):
            groups.setdefault(str(row.get("class")), []).append(row)
    for members in groups.values():
        if len(members) < 2:
            continue
        ref = statistics.median_low(float(r["median_ms"]) for r in members)
        if ref <= 0:
            continue
        for row in members:
            delta = (float(row["median_ms"]) - ref) / ref
            band = row.get("error_band") or DEFAULT_ERROR_BAND
            row.update(class_median_ms=ref, class_delta=delta, class_drift=abs(delta) > band)
            row["drift"] = bool(row["promise_drift"] or row["class_drift"])


def class_summary(rows: Sequence[Mapping[str, Any]],
                  devices: Sequence[Device] | None = None) -> list[dict[str, Any]]:
    """One line per class: devices measured of ``total`` (the class's devices among ``devices``, the
    selection the sample was drawn from), the median of their medians, the worst difference from
    the promise and from the class median (largest in size, with its sign), and who drifted."""
    totals = {key: len(members) for key, members in by_class(devices or []).items()}
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = str(row.get("class") or row["device"])
        s = out.setdefault(key, {"class": key, "measured": 0, "failed": 0, "medians": [],
                                 "worst_delta": None, "worst_class_delta": None, "drift": [],
                                 "memory_over": []})
        if row.get("error"):
            s["failed"] += 1
            continue
        s["measured"] += 1
        s["medians"].append(float(row["median_ms"]))
        for field_, name in (("delta", "worst_delta"), ("class_delta", "worst_class_delta")):
            v = row.get(field_)
            if isinstance(v, (int, float)) and (s[name] is None or abs(v) > abs(s[name])):
                s[name] = float(v)
        if row.get("drift"):
            s["drift"].append(row["device"])
        if row.get("memory_over"):
            s["memory_over"].append(row["device"])
    result = []
    for key in sorted(out):
        s = out[key]
        medians = s.pop("medians")
        s["total"] = totals.get(key, s["measured"] + s["failed"])
        s["median_ms"] = statistics.median(medians) if medians else None
        result.append(s)
    return result


def _row(result: DeviceResult, predictor: LatencyPredictor | None,
         device_class: str | None = None, device: Device | None = None) -> dict[str, Any]:
    key = device_class or result.device
    if result.failed:
        return {"device": result.device, "class": key, "error": result.reason, "drift": False,
                "promise_drift": False, "memory_over": False}
    rec, manifest = result.extra["record"], result.extra["manifest"]
    promise = promised_latency(manifest, result.device, predictor, key)
    delta, drifted = compare(measured_latency(rec, promise.statistic) if promise else 0.0, promise)
    budget_mb, budget_source = memory_promise(manifest, device)
    memory_mb, memory_over = over_memory(rec.get("memory_kib"), budget_mb)
    return {
        "device": result.device,
        "class": key,
        "version": result.version,
        "runtime": rec.get("runtime"),
        "runtime_version": rec.get("runtime_version"),
        "precision": rec.get("precision") or manifest.get("precision"),
        "median_ms": rec.get("median_ms"),
        "p90_ms": rec.get("p90_ms"),
        "cv": rec.get("cv"),
        "noisy": bool(rec.get("noisy")),
        "predicted_ms": promise.ms if promise else None,
        "statistic": promise.statistic if promise else "median",
        "error_band": promise.error if promise else None,
        "prediction_source": promise.source if promise else None,
        "delta": delta,
        "drift": drifted,
        "promise_drift": drifted,
        "memory_mb": memory_mb,
        "memory_budget_mb": budget_mb,
        "memory_budget_source": budget_source,
        "memory_over": memory_over,
        "measurement_id": rec.get("id"),
        "error": None,
    }


def plot(rows: Sequence[Mapping[str, Any]], path: Path, title: str) -> Path:
    """Bar per device (median, whisker to p90), the promised latency and its band as a black marker
    with error bars; devices that drifted are drawn red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if not r.get("error")]
    if not ok:
        raise FleetError("nothing to plot: no device was measured")
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(ok) + 2), 3.6), dpi=120)
    xs = list(range(len(ok)))
    medians = [float(r["median_ms"]) for r in ok]
    upper = [max(0.0, float(r.get("p90_ms") or r["median_ms"]) - m) for r, m in zip(ok, medians)]
    colours = ["#d62728" if r.get("drift") else "#1f77b4" for r in ok]
    ax.bar(xs, medians, color=colours, yerr=[[0] * len(ok), upper], capsize=3)
    from matplotlib.patches import Patch

    handles: list[Any] = [Patch(color="#1f77b4", label="median (whisker: p90)")]
    if any(r.get("drift") for r in ok):
        handles.append(Patch(color="#d62728", label="outside the predicted band"))
    promised = [(x, r) for x, r in zip(xs, ok) if r.get("predicted_ms")]
    if promised:
        handles.append(ax.errorbar(
            [x for x, _ in promised], [r["predicted_ms"] for _, r in promised],
            yerr=[r["predicted_ms"] * r["error_band"] for _, r in promised],
            fmt="o", color="black", capsize=4, label="predicted ± band"))
    ax.set_xticks(xs, [f"{r['device']}\n{r.get('runtime') or ''}" for r in ok], fontsize=8)
    ax.set_ylabel("latency (ms)")
    ax.set_title(title, fontsize=10)
    ax.legend(handles=handles, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
