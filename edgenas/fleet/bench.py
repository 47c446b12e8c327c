"""``fleet bench``: measure the deployed (or a given) model on every device at once and compare each
device with the latency the search promised for it.

The measurement itself is :class:`edgenas.bench.DeviceBencher` (one benchmark at a time per device under
the device lock, noise retries, a ``measurements`` row per device), run for all devices in parallel:
devices are independent machines, so a fleet report takes as long as its slowest device.  A deployed
model is timed where it lies on the device: nothing is downloaded from a device, so a device lying
about its state can at worst fail its own row, never write to this host.

Why compare with the search's prediction: the search picked this subnet because a latency predictor
said it fits the budget on each device.  A device measuring outside the predictor's error band means the
predictor (or the device: thermal throttling, another governor, another runtime) is off, and the
promise the search made does not hold there — worth flagging before users notice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edgenas.device.cancel import Cancel
from edgenas.fleet.common import DEFAULT_PARALLEL, DeviceResult, FanOut, FleetError, fan_out, session_for
from edgenas.fleet.model import MODEL_FILE, VERSION_HEX
from edgenas.fleet.predict import pick_model
from edgenas.fleet.state import MODELS_DIR, read_state
from edgenas.predictors.latency import STATISTICS, measured_latency
from edgenas.records.deployments import deployed_manifest
from edgenas.registry import Device
from edgenas.store import open_store
from edgenas.transports import Transport, open_transport

DEFAULT_ERROR_BAND = 0.10  # nn-Meter's ±10 %, used when the manifest gives a prediction but no band


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
                     predictor: LatencyPredictor | None = None) -> Promise | None:
    """Where the search's prediction is found, in order: the manifest's ``search`` block (``latency_ms``
    per device and ``error`` per device or for all, as the search writes a candidate), the same under
    ``provenance.search``, then a latency predictor for the device."""
    for block, source in ((manifest.get("search"), "manifest"),
                          ((manifest.get("provenance") or {}).get("search"), "manifest")):
        if not isinstance(block, Mapping):
            continue
        latency = block.get("latency_ms")
        ms = latency.get(device) if isinstance(latency, Mapping) else None
        if isinstance(ms, (int, float)) and ms > 0:
            err = block.get("error")
            err = err.get(device) if isinstance(err, Mapping) else err
            band = float(err) if isinstance(err, (int, float)) and err > 0 else DEFAULT_ERROR_BAND
            stat = block.get("statistic")
            stat = stat.get(device) if isinstance(stat, Mapping) else stat
            return Promise(float(ms), band, source if err else f"{source} (default band)",
                           stat if stat in STATISTICS else "median")
    if predictor is not None and manifest.get("arch"):
        try:
            ms = float(predictor.predict(manifest.get("space"), manifest["arch"]))
        except Exception:  # noqa: BLE001 - a predictor that cannot read this arch only means no promise
            return None
        return Promise(ms, float(getattr(predictor, "error", DEFAULT_ERROR_BAND) or DEFAULT_ERROR_BAND),
                       "latency predictor", str(getattr(predictor, "statistic", "median")))
    return None


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
    manifest: dict[str, Any]
    size_bytes: int | None = None


def fleet_bench(
    home: Path,
    devices: Sequence[Device],
    model_dir: Path | None = None,
    name: str | None = None,
    *,
    threads: int = 1,
    runs: int = 50,
    min_secs: float = 1.0,
    parallel: int = DEFAULT_PARALLEL,
    campaign: str | None = None,
    predictors: Mapping[str, LatencyPredictor] | None = None,
    opener: Callable[[Device, Path], Transport] = open_transport,
) -> tuple[list[dict[str, Any]], FanOut]:
    """Benchmark on every device in parallel; one row per device (see :func:`_row`).

    ``model_dir``: benchmark this folder everywhere (its manifest also gets each device's measured
    latency, as ``edgenas bench`` does); otherwise each device's current model of ``name``, timed in
    place on the device (read, sha256-checked and benchmarked under one hold of the device lock).
    """
    from edgenas.bench import BenchSettings, DeviceBencher, load_model_dir

    if not devices:
        raise FleetError("no devices selected (give --group or --device; see `edgenas device list`)")
    campaign = campaign or f"fleet-bench-{time.strftime('%Y%m%d-%H%M%S')}"
    settings = BenchSettings(threads=threads, runs=runs, min_secs=min_secs)
    local = load_model_dir(model_dir) if model_dir is not None else None

    def work(dev: Device, cancel: Cancel) -> DeviceResult:
        # this thread's own store connection (SQLite stays in its thread)
        with open_store(home) as store, session_for(home, dev, cancel, opener) as session, \
                DeviceBencher(home, dev, settings, session=session) as bencher:
            if local is not None:
                record = bencher.bench(store, local, campaign=campaign)
                return DeviceResult(dev.name, "ok", version=local.sha256[:VERSION_HEX],
                                    extra={"record": record, "manifest": local.manifest})
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
                            extra={"record": record, "manifest": target.manifest})

    outcome = fan_out(devices, work, parallel=parallel, max_fail_percent=100.0)
    rows = [_row(r, (predictors or {}).get(r.device)) for r in outcome.results]
    for row in rows:
        row["campaign"] = campaign
    return rows, outcome


def _row(result: DeviceResult, predictor: LatencyPredictor | None) -> dict[str, Any]:
    if result.failed:
        return {"device": result.device, "error": result.reason, "drift": False}
    rec, manifest = result.extra["record"], result.extra["manifest"]
    promise = promised_latency(manifest, result.device, predictor)
    delta, drifted = compare(measured_latency(rec, promise.statistic) if promise else 0.0, promise)
    return {
        "device": result.device,
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
