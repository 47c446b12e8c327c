"""``fleet predict``: run the runner's ``predict`` on the current model of every device — the quickest
end-to-end check that a rollout works (model loads with the device's runtime, labels and normalisation
from the manifest that shipped with it, plausible top-k)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgenas.devices import runner_path
from edgenas.errors import EdgeNASError
from edgenas.files import last_json  # noqa: F401  (re-exported)
from edgenas.fleet.common import DEFAULT_PARALLEL, DeviceResult, FanOut, FleetError, fan_out, short_error
from edgenas.fleet.model import MODEL_FILE, sha256_file
from edgenas.fleet.state import MODELS_DIR, read_state
from edgenas.registry import Device
from edgenas.transports import Transport, open_transport

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



def predict_one(
    device: Device,
    home: Path,
    input_path: Path,
    name: str | None,
    *,
    top_k: int = 3,
    timeout: float = PREDICT_TIMEOUT_S,
    opener: Callable[[Device, Path], Transport] = open_transport,
) -> DeviceResult:
    """Upload ``input_path`` (once per content) and run predict on the device's current model."""
    start = time.monotonic()
    result = DeviceResult(device.name, "failed", model=name)
    try:
        with opener(device, home) as t:
            state = read_state(t, device, name)
            if not state.workdir_exists:
                raise FleetError("nothing deployed on this device (its workdir does not exist)")
            name = result.model = pick_model(state.models, name)
            held = state.models[name]
            if not held.intact:
                raise FleetError(f"the current version of {name} is missing or damaged; push again")
            result.version, result.sha256 = held.current, held.current_sha256
            runner = runner_path()
            if state.runner_sha256 != sha256_file(runner):
                t.put(runner, "runner.py", timeout=timeout)
            remote_input = f"inputs/{sha256_file(input_path)[:12]}{input_path.suffix.lower()}"
            t.run(["mkdir", "-p", "inputs"], timeout=timeout, cwd=".")
            t.put(input_path, remote_input, timeout=timeout)
            argv = [device.python or "python3", "runner.py", "predict",
                    f"{MODELS_DIR}/{name}/current/{MODEL_FILE}", remote_input, "--top-k", str(top_k)]
            rc, out, err = t.run(argv, timeout=timeout, cwd=".")
            report = last_json(out)
            if report is None:
                raise FleetError(f"the runner printed no result (exit {rc}): "
                                 f"{(err.strip().splitlines() or ['no output'])[-1][:200]}")
            if "error" in report:
                hint = f" ({report['hint']})" if report.get("hint") else ""
                raise FleetError(f"predict failed: {report['error']}{hint}")
            predictions = report.get("predictions") or [{}]
            result.status = "ok"
            result.extra = {
                "runtime": (report.get("runtime") or {}).get("name"),
                "precision": report.get("precision"),
                "top_k": predictions[0].get("top_k", []),
                "report": report,
            }
    except EdgeNASError as exc:
        result.status, result.reason = "failed", short_error(exc, device.name)
    result.seconds = round(time.monotonic() - start, 3)
    return result


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
        lambda dev: predict_one(dev, home, input_path, name, top_k=top_k, opener=opener),
        parallel=parallel,
    )
