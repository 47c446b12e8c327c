"""``fleet rollback``: point ``current`` back at ``previous`` on each device, atomically.

Only the symlinks change (the previous version's files are still on the device and are sha256-checked
against their version name first), so a rollback takes one command per device and needs no upload.
``current`` is switched first: a device that dies between the two renames already runs the previous
version, which is what was asked.  ``previous`` then names the version rolled back from, so a second
rollback rolls forward again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from edgenas.device import layout
from edgenas.device.cancel import Cancel
from edgenas.device.connect import open_transport
from edgenas.device.fanout import (
    DEFAULT_MAX_FAIL_PERCENT,
    DEFAULT_PARALLEL,
    DeviceResult,
    FanOut,
    device_step,
    fan_out,
)
from edgenas.device.registry import Device
from edgenas.device.session import DeviceSession
from edgenas.device.transports import Transport
from edgenas.fleet.common import FleetError
from edgenas.fleet.predict import pick_model
from edgenas.fleet.state import STATE_TIMEOUT_S, new_tag, read_state, run_fleet_script
from edgenas.records.deployments import record_deployment
from edgenas.records.store import Store


def rollback_one(
    device: Device,
    home: Path,
    name: str | None,
    *,
    timeout: float = STATE_TIMEOUT_S,
    cancel: Cancel | None = None,
    opener: Callable[[Device, Path], Transport] = open_transport,
) -> DeviceResult:
    """Roll one device back; ``name`` may be omitted when the device holds a single model."""
    result = DeviceResult(device.name, "failed", model=name)

    def work(session: DeviceSession) -> None:
        nonlocal name
        state = read_state(session, name, timeout=timeout)
        name = result.model = pick_model(state.models, name)
        held_model = state.models[name]
        result.previous_sha256 = held_model.current_sha256
        rc, out, err = run_fleet_script(session, "fleet-rollback", [name, new_tag()], timeout)
        verdict = (out.strip().splitlines() or [""])[0][:300]
        if verdict.startswith("FAIL "):
            raise FleetError(verdict[5:])
        fields = verdict.split("\t")
        if rc != 0 or fields[0] != "OK" or len(fields) < 3:
            raise FleetError(f"rollback failed (exit {rc}): {(err or out).strip()[:200]}")
        version, sha = layout.version(fields[1]), layout.sha256(fields[2])
        if not version or not sha or not sha.startswith(version):
            raise FleetError("the device reported a damaged state after the rollback; "
                             "run `edgenas fleet status`")
        result.version, result.sha256 = version, sha
        result.status, result.reason = "ok", f"{held_model.current} -> {version}"


    return device_step(home, device, result, work, cancel, opener)


def rollback(
    store: Store,
    home: Path,
    devices: Sequence[Device],
    name: str | None = None,
    *,
    parallel: int = DEFAULT_PARALLEL,
    max_fail_percent: float = DEFAULT_MAX_FAIL_PERCENT,
    opener: Callable[[Device, Path], Transport] = open_transport,
) -> FanOut:
    """Roll every device back in bounded parallel; each outcome is recorded in ``deployments``."""
    if not devices:
        raise FleetError("no devices selected (give --group or --device; see `edgenas device list`)")

    def record(result: DeviceResult) -> None:
        if result.status != "skipped" and result.model:
            record_deployment(store, result, "rollback", None)

    return fan_out(
        devices,
        lambda dev, cancel: rollback_one(dev, home, name, cancel=cancel, opener=opener),
        parallel=parallel,
        max_fail_percent=max_fail_percent,
        on_result=record,
    )
