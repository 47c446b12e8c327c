"""``fleet predict``: run the runner's ``predict`` on the current model of every device — the quickest
end-to-end check that a rollout works (model loads with the device's runtime, labels and normalisation
from the manifest that shipped with it, plausible top-k)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgenas.core.files import sha256_file
from edgenas.device import answers, layout
from edgenas.device.cancel import Cancel
from edgenas.device.connect import open_transport
from edgenas.device.fanout import (
    DEFAULT_PARALLEL,
    DeviceResult,
    FanOut,
    device_step,
    fan_out,
)
from edgenas.device.registry import Device
from edgenas.device.session import DeviceSession, LocalFile
from edgenas.device.transports import Transport
from edgenas.export.package import MODEL_FILE
from edgenas.fleet.common import FleetError
from edgenas.fleet.state import MODELS_DIR, read_state
from edgenas.measure.bench import device_cache_mib, touch_and_prune

PREDICT_TIMEOUT_S = 180.0


def pick_model(state_models: dict[str, Any], name: str | None) -> str:
    """The model to use on a device: ``name``, or the only one it holds."""
    if name:
        if name not in state_models:
            raise FleetError(f"no model {name} on this device (push it first)")
        return name
    if len(state_models) != 1:
        held = ", ".join(sorted(state_models)) or "none"
        raise FleetError(f"pass --name: the device holds {len(state_models)} models ({held})")
    return next(iter(state_models))



def input_file(input_path: Path) -> LocalFile:
    """An input (image or .npy) in the device's input cache, named by content: sent once per content."""
    suffix = input_path.suffix.lower()
    if not re.fullmatch(r"\.[a-z0-9]{1,8}", suffix):
        raise FleetError(f"{input_path}: give a .npy array or an image file (.png, .jpg, ...)")
    sha = sha256_file(input_path)
    return LocalFile(input_path, f"{layout.INPUT_CACHE}/{sha[:16]}{suffix}", sha)


def run_predict(session: DeviceSession, model_remote: str, data: LocalFile, top_k: int,
                timeout: float = PREDICT_TIMEOUT_S, *, files: Sequence[LocalFile] = (),
                manifest_remote: str | None = None) -> dict[str, Any]:
    """The runner's ``predict`` on a model on the device (``files`` are made to be there first; the
    manifest is the one beside the model unless ``manifest_remote`` names one); returns its report."""
    if session.device.benchmark_binary:
        raise FleetError("predict needs the edgenas runner (Python + a TFLite runtime) on the device; "
                         "this device is measured with LiteRT's benchmark_model only")
    args = [model_remote, data.remote, "--top-k", str(top_k)]
    if manifest_remote:
        args += ["--manifest", manifest_remote]
    with answers.refuse_deep(session.name, "predict"):
        report = session.runner("predict", args, timeout=timeout, files=[*files, data],
                                model=model_remote)
    # top-k, labels and runtime are printed and compared: checked like a bench answer's fields
    report = answers.predict_answer(session.name, report, top_k)

    touch_and_prune(session, device_cache_mib(session.device), data.remote.rsplit("/", 1)[1],
                    layout.INPUT_CACHE)
    return report


def predict_package(session: DeviceSession, model_path: Path, model_sha256: str, manifest_path: Path,
                    data: LocalFile, top_k: int, timeout: float = PREDICT_TIMEOUT_S) -> dict[str, Any]:
    """``predict`` with a model folder from this host: model and manifest go to the device's cache
    (content-addressed, so a second call sends nothing), not to the deployed models."""
    model = LocalFile(model_path, layout.cached_model(model_sha256), model_sha256)
    manifest_sha = sha256_file(manifest_path)
    manifest = LocalFile(manifest_path, f"{layout.MANIFEST_CACHE}/{manifest_sha}.json", manifest_sha)
    return run_predict(session, model.remote, data, top_k, timeout, files=[model, manifest],
                       manifest_remote=manifest.remote)


def predict_one(
    device: Device,
    home: Path,
    input_path: Path,
    name: str | None,
    *,
    top_k: int = 3,
    timeout: float = PREDICT_TIMEOUT_S,
    cancel: Cancel | None = None,
    opener: Callable[[Device, Path], Transport] = open_transport,
) -> DeviceResult:
    """Upload ``input_path`` (once per content) and run predict on the device's current model."""
    result = DeviceResult(device.name, "failed", model=name)

    def work(session: DeviceSession) -> None:
        nonlocal name
        data = input_file(input_path)
        state = read_state(session, name)
        if not state.workdir_exists:
            raise FleetError("nothing deployed on this device (its workdir does not exist)")
        name = result.model = pick_model(state.models, name)
        held = state.models[name]
        if not held.intact or held.current is None:
            raise FleetError(f"the current version of {name} is missing or damaged; push again")
        result.version, result.sha256 = held.current, held.current_sha256
        report = run_predict(session, f"{MODELS_DIR}/{name}/{held.current}/{MODEL_FILE}", data,
                             top_k, timeout)
        predictions = report.get("predictions") or [{}]
        first = predictions[0] if isinstance(predictions, list) and predictions else {}
        result.status = "ok"
        result.extra = {
            "runtime": (report.get("runtime") or {}).get("name"),
            "precision": report.get("precision"),
            "top_k": first.get("top_k", []) if isinstance(first, dict) else [],
            "report": report,
        }


    return device_step(home, device, result, work, cancel, opener)


def predict(
    home: Path,
    devices: Sequence[Device],
    input_path: Path,
    name: str | None = None,
    *,
    top_k: int = 3,
    parallel: int = DEFAULT_PARALLEL,
    opener: Callable[[Device, Path], Transport] = open_transport,
) -> FanOut:
    if not devices:
        raise FleetError("no devices selected (give --group or --device; see `edgenas device list`)")
    if not input_path.is_file():
        raise FleetError(f"{input_path}: no such input file (give a .npy array or an image)")
    if top_k < 1:
        raise FleetError(f"--top-k must be at least 1 (got {top_k})")
    return fan_out(
        devices,
        lambda dev, cancel: predict_one(dev, home, input_path, name, top_k=top_k, cancel=cancel,
                                        opener=opener),
        parallel=parallel,
        max_fail_percent=100.0,  # a smoke test: every device is asked
    )
