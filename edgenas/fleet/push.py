"""``fleet push``: put a model on many devices so that each one ends up either on the new version or
still on its old one — never on half a file — and, once switched, proven to load and run there.

Per device, under the one device lock (:mod:`edgenas.device.session`): read the state and create the
staging folder (one command), upload model and manifest into ``models/NAME/.incoming-<tag>/`` (each
file through the transport's own temp-name + sha256 check on the device, against the sha256 the
package records; free space checked first), then one command checks the staged
folder, renames it to ``VERSION`` and switches ``previous`` then ``current`` by renaming fresh symlinks
over them.  A device that dies at any point before the last rename still runs its old version; one that
dies after it runs the new one.

Then the **health check**: the device loads the new model with its own runtime and runs one inference
(the runner, or LiteRT's benchmark_model on a device without Python).  A device where that fails is
rolled back at once (``rolled-back``) — the model that passed sha256 but crashes this runtime never
stays current.  ``canary=N`` pushes to N devices first and stops when any of them fails, as Mender
and Greengrass users expect.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from edgenas.core.errors import EdgeNASError
from edgenas.device.cancel import Cancel
from edgenas.device.connect import open_transport
from edgenas.device.fanout import (
    DEFAULT_MAX_FAIL_PERCENT,
    DEFAULT_PARALLEL,
    DeviceResult,
    FanOut,
    device_step,
    fan_out,
    short_error,
)
from edgenas.device.registry import Device
from edgenas.device.session import SPACE_MARGIN_KIB, DeviceSession, NoSpaceError, check_space
from edgenas.device.transports import Transport
from edgenas.export.package import MANIFEST_FILE, MODEL_FILE, ModelPackage
from edgenas.fleet.common import FleetError
from edgenas.fleet.state import (
    MODELS_DIR,
    STATE_TIMEOUT_S,
    DeviceState,
    new_tag,
    read_state,
    run_fleet_script,
)
from edgenas.measure.bench import BenchSettings, backend_for
from edgenas.records.deployments import record_deployment
from edgenas.records.store import Store

DEFAULT_TRANSFER_TIMEOUT_S = 300.0
HEALTH_TIMEOUT_S = 300.0


class PushError(FleetError):
    """One device's push failed; the message is the table's reason column."""


def push_one(
    device: Device,
    home: Path,
    model: ModelPackage,
    name: str,
    *,
    transfer_timeout: float = DEFAULT_TRANSFER_TIMEOUT_S,
    command_timeout: float = STATE_TIMEOUT_S,
    check_space: bool = True,
    health_check: bool = True,
    cancel: Cancel | None = None,
    opener: Callable[[Device, Path], Transport] = open_transport,
) -> DeviceResult:
    """Push ``model`` as ``name`` to one device; returns its row (never raises for device trouble)."""
    result = DeviceResult(device.name, "failed", model=name, version=model.version, sha256=model.sha256)

    def work(session: DeviceSession) -> None:
        held = _push(session, model, name, result, transfer_timeout, command_timeout, check_space)
        if health_check and result.status == "ok":
            _health_check(session, model, name, result, held)


    return device_step(home, device, result, work, cancel, opener)


def _push(
    session: DeviceSession,
    model: ModelPackage,
    name: str,
    result: DeviceResult,
    transfer_timeout: float,
    command_timeout: float,
    check_space: bool,
) -> str | None:
    """Upload and switch; returns the version that was current before (None: none was)."""
    t = session.transport
    version, workdir = model.version, session.path(".")
    phases = result.extra.setdefault("phases_s", {})
    mark = time.monotonic()

    def phase(what: str) -> None:
        nonlocal mark
        now = time.monotonic()
        phases[what] = round(phases.get(what, 0.0) + now - mark, 4)
        mark = now

    tag = new_tag()
    stage = f".incoming-{tag}"
    # One round trip reads the state, frees old uploads and makes the staging folder when needed.
    state = read_state(session, name, version=version, create=True, timeout=command_timeout,
                       stage=(stage, model.sha256))
    phase("state")
    held = state.models.get(name)
    result.previous_sha256 = held.current_sha256 if held else None
    before = held.current if held else None
    mdir = f"{MODELS_DIR}/{name}"
    if not model_free_device(session):  # the health check runs the runner: make it current first
        runner = session.runner_file()
        if state.runner_sha256 != runner.sha256:
            session.ensure([runner], timeout=transfer_timeout)
            result.bytes_sent += runner.path.stat().st_size
    if held and held.current == version and held.current_sha256 == model.sha256:
        if held.current_manifest_sha256 == model.manifest_sha256:
            result.status, result.reason = "unchanged", f"{version} already current"
            return before
        t.put_known(model.manifest_path, f"{mdir}/{version}/{MANIFEST_FILE}", model.manifest_sha256,
                    timeout=transfer_timeout)
        result.bytes_sent += model.manifest_path.stat().st_size
        result.status, result.reason = "ok", "manifest updated (same model)"
        return before
    if state.target_sha256 != model.sha256:  # not on the device yet (or damaged): upload it
        try:
            _check_space(state, model, session.device, check_space)
        except PushError:
            session.run(["rm", "-rf", "--", f"{mdir}/{stage}"], command_timeout)  # the empty folder
            raise
        if state.staged != stage:
            raise PushError(f"cannot create {workdir}/{mdir}/{stage} (read-only or full workdir?)")
        try:  # the package knows both sha256: the device checks them, the host hashes nothing
            t.put_known(model.model_path, f"{mdir}/{stage}/{MODEL_FILE}", model.sha256,
                        timeout=transfer_timeout)
            result.bytes_sent += model.size
            t.put_known(model.manifest_path, f"{mdir}/{stage}/{MANIFEST_FILE}", model.manifest_sha256,
                        timeout=transfer_timeout)
            result.bytes_sent += model.manifest_path.stat().st_size
            phase("upload")
        except EdgeNASError as exc:
            raise PushError(_upload_failure(session, name, stage, model, exc, workdir)) from exc
    else:
        stage = ""  # the version is on the device: fleet-commit checks it instead
        if state.target_manifest_sha256 != model.manifest_sha256:
            t.put_known(model.manifest_path, f"{mdir}/{version}/{MANIFEST_FILE}",
                        model.manifest_sha256, timeout=transfer_timeout)
            result.bytes_sent += model.manifest_path.stat().st_size
    args = [name, version, stage, model.sha256, model.manifest_sha256, tag]
    rc, out, err = run_fleet_script(session, "fleet-commit", args, command_timeout)
    phase("switch")
    lines = out.strip().splitlines()
    verdict = lines[0][:300] if lines else ""
    if verdict.startswith("FAIL "):
        raise PushError(verdict[5:])
    fields = verdict.split("\t")
    if rc != 0 or fields[0] != "OK" or len(fields) < 2:
        raise PushError(f"switching to {version} failed (exit {rc}): {(err or out).strip()[:200]}")
    if fields[1] != version:
        raise PushError(f"after the switch current is {fields[1][:20] or 'nothing'}, not {version}")
    result.status = "ok"
    result.reason = "switched" + (f" from {before}" if before else "")
    return before


def model_free_device(session: DeviceSession) -> bool:
    """A device measured with LiteRT's benchmark_model has no Python: the runner is never pushed."""
    return bool(session.device.benchmark_binary)


def _health_check(session: DeviceSession, model: ModelPackage, name: str, result: DeviceResult,
                  before: str | None) -> None:
    """Load the switched model on the device and run one inference; roll back if that fails."""

    backend = backend_for(session.device, session.home)
    once = BenchSettings(runs=1, min_secs=0.0, warmup_runs=0, warmup_secs=0.0, max_secs=60.0)
    remote = f"{MODELS_DIR}/{name}/{model.version}/{MODEL_FILE}"
    t0 = time.monotonic()
    try:
        if model_free_device(session):  # the runner was made current by the push itself
            session.ensure([backend.tool()])
        backend.run_once(session, model, once, HEALTH_TIMEOUT_S, remote=remote)
    except EdgeNASError as exc:
        why = short_error(exc, session.name)
        undo = _undo(session, name, before)
        result.status = "rolled-back"
        result.reason = f"health check failed ({why}); {undo}"
        return
    result.extra["health_s"] = round(time.monotonic() - t0, 3)
    result.reason = f"{result.reason}; health check ok"


def _undo(session: DeviceSession, name: str, before: str | None) -> str:
    """Put the device back on ``before`` (or on nothing, for a first deployment)."""
    try:
        if before:
            rc, out, _ = run_fleet_script(session, "fleet-rollback", [name, new_tag()])
            if rc == 0 and out.startswith("OK\t"):
                return f"rolled back to {before}"
            return f"ROLLBACK FAILED: {out.strip()[:200]}"
        res = session.run(["rm", "-f", "--", f"{MODELS_DIR}/{name}/current"])
        return "current removed (no previous version)" if res.rc == 0 else \
            f"ROLLBACK FAILED: {res.stderr.strip()[:200]}"
    except EdgeNASError as exc:
        return f"ROLLBACK FAILED: {short_error(exc, session.name)}"


def _check_space(state: DeviceState, model: ModelPackage, device: Device, check: bool) -> None:
    """The session's one free-space rule, on the free space the state read already reported."""
    if not check:
        return
    try:
        check_space(device.name, state.free_kib, [model.bytes_total], f"{device.workdir}/{MODELS_DIR}",
                    "the previous version stays current (free space, or give the device another "
                    "--workdir)")
    except NoSpaceError as exc:
        raise PushError(short_error(exc, device.name)) from None


def _upload_failure(session: DeviceSession, name: str, stage: str, model: ModelPackage,
                    exc: BaseException, workdir: str) -> str:
    """Say why an upload failed; a full disk often shows up as a bare SFTP 'Failure', so look."""
    message = short_error(exc, session.name)
    try:
        session.run(["rm", "-rf", "--", f"{MODELS_DIR}/{name}/{stage}"], 10.0)
        state = read_state(session, name, create=True, timeout=10.0)
    except EdgeNASError:
        return f"upload failed: {message}; the previous version stays current"
    need = math.ceil(model.bytes_total / 1024) + SPACE_MARGIN_KIB
    if "space" in message.lower() or (state.free_kib is not None and state.free_kib < need):
        return (f"the device ran out of space during the upload ({_mib(state.free_kib)} free, the model "
                f"needs {_mib(need)}); the previous version stays current")
    return f"upload failed: {message}; the previous version stays current"


def _mib(kib: int | None) -> str:
    return "?" if kib is None else f"{kib / 1024:.1f} MiB"


def push(
    store: Store,
    home: Path,
    devices: Sequence[Device],
    model: ModelPackage,
    name: str,
    *,
    parallel: int = DEFAULT_PARALLEL,
    max_fail_percent: float = DEFAULT_MAX_FAIL_PERCENT,
    transfer_timeout: float = DEFAULT_TRANSFER_TIMEOUT_S,
    canary: int = 0,
    health_check: bool = True,
    opener: Callable[[Device, Path], Transport] = open_transport,
) -> FanOut:
    """Push to every device in bounded parallel and record each outcome in ``deployments``.

    ``canary``: push to that many devices first (in the order given); if any of them fails or is
    rolled back, the others are not touched (``skipped``)."""
    if not devices:
        raise FleetError("no devices selected (give --group or --device; see `edgenas device list`)")
    if canary < 0:
        raise FleetError(f"--canary must be 0 or more (got {canary})")
    manifest_json = json.dumps(model.data, sort_keys=True)

    def record(result: DeviceResult) -> None:
        if result.status != "skipped":
            record_deployment(store, result, "push", manifest_json)

    def work(dev: Device, cancel: Cancel) -> DeviceResult:
        return push_one(dev, home, model, name, transfer_timeout=transfer_timeout,
                        health_check=health_check, cancel=cancel, opener=opener)

    first, rest = list(devices[:canary]), list(devices[canary:])
    if not first or not rest:
        return fan_out(devices, work, parallel=parallel, max_fail_percent=max_fail_percent,
                       on_result=record)
    head = fan_out(first, work, parallel=parallel, max_fail_percent=100.0, on_result=record)
    if head.failures:
        skipped = [DeviceResult(d.name, "skipped", model=name,
                                reason=f"not started: {head.failures} of {len(first)} canary "
                                       "device(s) failed")
                   for d in rest]
        return FanOut([*head.results, *skipped], limit_reached=True)
    tail = fan_out(rest, work, parallel=parallel, max_fail_percent=max_fail_percent, on_result=record)
    return FanOut([*head.results, *tail.results], tail.limit_reached)
