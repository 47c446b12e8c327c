"""``fleet status``: what each device runs, read and sha256-checked on the device, against what this
workspace last deployed there.

Why check on the device: a recorded deployment only says what was pushed.  Someone may have copied
another file over the model, rolled back by hand, or re-imaged the board; the status a user acts on must
be the device's actual bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgenas.device.cancel import Cancel
from edgenas.device.connect import open_transport
from edgenas.device.fanout import DEFAULT_PARALLEL, DeviceResult, FanOut, fan_out, session_for
from edgenas.device.registry import Device
from edgenas.device.transports import Transport
from edgenas.fleet.state import ModelState, read_state
from edgenas.records.deployments import Deployment, deployed_names, expected_state
from edgenas.records.store import Store


def drift(model: ModelState | None, expected: Deployment | None) -> str | None:
    """Why the device differs from the record (None: it does not).  Checked in order of severity."""
    if model is None:
        return "missing on the device" if expected else None
    if model.current is None:
        return "no current version"
    if not model.current_sha256:
        return f"current model file of {model.current} is missing"
    if not model.intact:
        return f"current model file was modified on the device (sha256 {model.current_sha256[:12]})"
    if expected is None:
        return None
    if model.current_sha256 != expected.sha256:
        return f"expected {expected.version} (last {expected.action}), found {model.current}"
    return None


def status_rows(
    store: Store,
    home: Path,
    devices: Sequence[Device],
    name: str | None = None,
    *,
    parallel: int = DEFAULT_PARALLEL,
    opener: Callable[[Device, Path], Transport] = open_transport,
) -> tuple[list[dict[str, Any]], FanOut]:
    """One row per device and model: ``device, model, version, sha256, previous, expected, drift,
    error``.  Unreachable devices get one row with ``error``."""

    def work(dev: Device, cancel: Cancel) -> DeviceResult:
        # Under the device lock: a status read during a push would see a half-switched device.
        with session_for(home, dev, cancel, opener) as session, session.locked():
            state = read_state(session, name)
        return DeviceResult(dev.name, "ok", extra={"models": state.models})

    # Expected states are read here, not in the workers: SQLite connections stay in their thread.
    expected = {
        (d.name, n): expected_state(store, d.name, n)
        for d in devices
        for n in ([name] if name else deployed_names(store, d.name))
    }
    outcome = fan_out(devices, work, parallel=parallel, max_fail_percent=100.0)
    rows: list[dict[str, Any]] = []
    for result in outcome.results:
        if result.failed:
            rows.append({"device": result.device, "model": name, "error": result.reason,
                         "drift": None})
            continue
        models: dict[str, ModelState] = result.extra["models"]
        names = sorted(set(models) | {n for (d, n) in expected if d == result.device})
        if not names:
            rows.append({"device": result.device, "model": None, "error": None,
                         "drift": None, "note": "no models deployed"})
        for n in names:
            held, want = models.get(n), expected.get((result.device, n))
            rows.append({
                "device": result.device,
                "model": n,
                "version": held.current if held else None,
                "sha256": held.current_sha256 if held else None,
                "previous": held.previous if held else None,
                "previous_sha256": held.previous_sha256 if held else None,
                "intact": held.intact if held else False,
                "expected_version": want.version if want else None,
                "expected_sha256": want.sha256 if want else None,
                "drift": drift(held, want),
                "error": None,
            })
    return rows, outcome
