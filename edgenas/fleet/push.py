"""``fleet push``: put a model on many devices so that each one ends up either on the new version or
still on its old one — never on half a file.

Per device: read the state (one command), upload the runner if its sha256 differs, upload model and
manifest into ``models/NAME/.incoming-<tag>/`` (each file through the transport's own temp-name + sha256
check on the device), then one command checks the staged folder, renames it to ``VERSION`` and
switches ``previous`` then ``current`` by renaming fresh symlinks over them.  A device that dies at any
point before the last rename still runs its old version; one that dies after it runs the new one.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from edgenas.devices import runner_path
from edgenas.errors import EdgeNASError
from edgenas.fleet.common import (
    DEFAULT_PARALLEL,
    DeviceResult,
    FanOut,
    FleetError,
    device_lock,
    fan_out,
    short_error,
)
from edgenas.fleet.model import MANIFEST_FILE, MODEL_FILE, LocalModel, sha256_file
from edgenas.fleet.records import record_deployment
from edgenas.fleet.state import (
    _HELPERS,
    MODELS_DIR,
    STATE_TIMEOUT_S,
    DeviceState,
    new_tag,
    python_of,
    read_state,
    run_script,
    workdir_of,
)
from edgenas.registry import Device
from edgenas.store import Store
from edgenas.transports import Transport, open_transport

DEFAULT_TRANSFER_TIMEOUT_S = 300.0
SPACE_MARGIN_KIB = 64  # directory entries, the manifest's temp copy, filesystem rounding

# $1 workdir $2 python $3 name $4 version $5 staging dir ('' = version already there) $6 model sha256
# $7 manifest sha256 $8 tag.  Prints "OK<TAB>current" or "FAIL reason".  The staged model is not hashed
# again: the transport's put() already checked its sha256 on the device (sha256sum) before renaming it
# into the staging folder, and nothing else writes there.  A version already on the device is checked.
_COMMIT_SCRIPT = (
    r"""
W=$1 PY=$2 NAME=$3 VER=$4 STAGE=$5 SHA=$6 MSHA=$7 TAG=$8
"""
    + _HELPERS
    + r"""
fail() { [ -n "$STAGE" ] && rm -rf "$STAGE"; echo "FAIL $*"; exit 0; }
cd "$W/models/$NAME" 2>/dev/null || { echo "FAIL the folder $W/models/$NAME is gone"; exit 0; }
if [ -n "$STAGE" ]; then
  [ -f "$STAGE/model.tflite" ] || fail "the uploaded model is missing on the device"
  [ "$(h "$STAGE/manifest.json")" = "$MSHA" ] || fail "the uploaded manifest's sha256 differs"
  if [ -e "$VER" ] || [ -L "$VER" ]; then
    mv "$VER" ".trash-$TAG" || fail "cannot move the damaged copy of $VER aside"
  fi
  if ! mv "$STAGE" "$VER"; then
    [ -e ".trash-$TAG" ] && mv ".trash-$TAG" "$VER"
    fail "cannot move the upload into place as $VER"
  fi
  STAGE=
elif [ "$(h "$VER/model.tflite")" != "$SHA" ]; then
  fail "the copy of $VER already on the device is damaged"
fi
cur=$(readlink current 2>/dev/null)
if [ "$cur" != "$VER" ]; then
  if [ -n "$cur" ]; then
    ln -s "$cur" ".previous.tmp-$TAG" && swap ".previous.tmp-$TAG" previous \
      || fail "cannot update previous"
  fi
  ln -s "$VER" ".current.tmp-$TAG" && swap ".current.tmp-$TAG" current || fail "cannot switch current"
fi
printf 'OK\t%s\n' "$(readlink current)"
prev=$(readlink previous 2>/dev/null)
for v in * .incoming-* .trash-* .current.tmp-* .previous.tmp-*; do
  case "$v" in current|previous|"$VER"|"$prev") continue;; esac
  [ -e "$v" ] || [ -L "$v" ] && rm -rf "$v"
done
exit 0
"""
)

class PushError(FleetError):
    """One device's push failed; the message is the table's reason column."""


def push_one(
    device: Device,
    home: Path,
    model: LocalModel,
    name: str,
    *,
    transfer_timeout: float = DEFAULT_TRANSFER_TIMEOUT_S,
    command_timeout: float = STATE_TIMEOUT_S,
    check_space: bool = True,
    opener: Callable[[Device, Path], Transport] = open_transport,
) -> DeviceResult:
    """Push ``model`` as ``name`` to one device; returns its row (never raises for device trouble)."""
    start = time.monotonic()
    result = DeviceResult(device.name, "failed", model=name, version=model.version, sha256=model.sha256)
    try:
        with device_lock(home, device.name), opener(device, home) as transport:
            _push(transport, device, model, name, result, transfer_timeout, command_timeout, check_space)
    except EdgeNASError as exc:
        result.status, result.reason = "failed", short_error(exc, device.name)
    result.seconds = round(time.monotonic() - start, 3)
    return result


def _push(
    t: Transport,
    device: Device,
    model: LocalModel,
    name: str,
    result: DeviceResult,
    transfer_timeout: float,
    command_timeout: float,
    check_space: bool,
) -> None:
    version, workdir = model.version, workdir_of(t, device)
    phases = result.extra.setdefault("phases_s", {})
    mark = time.monotonic()

    def phase(what: str) -> None:
        nonlocal mark
        now = time.monotonic()
        phases[what] = round(phases.get(what, 0.0) + now - mark, 4)
        mark = now

    state = read_state(t, device, name, version=version, create=True, timeout=command_timeout)
    phase("state")
    held = state.models.get(name)
    result.previous_sha256 = held.current_sha256 if held else None
    mdir = f"{MODELS_DIR}/{name}"
    if held and held.current == version and held.current_sha256 == model.sha256:
        if held.current_manifest_sha256 == model.manifest_sha256:
            result.status, result.reason = "unchanged", f"{version} already current"
            return
        t.put(model.manifest_path, f"{mdir}/{version}/{MANIFEST_FILE}", timeout=transfer_timeout)
        result.bytes_sent += model.manifest_path.stat().st_size
        result.status, result.reason = "ok", "manifest updated (same model)"
        return
    runner = runner_path()
    if state.runner_sha256 != sha256_file(runner):
        t.put(runner, "runner.py", timeout=transfer_timeout)
        result.bytes_sent += runner.stat().st_size
    tag = new_tag()
    stage = ""
    if state.target_sha256 != model.sha256:  # not on the device yet (or damaged): upload it
        _check_space(state, model, device, check_space)
        stage = f".incoming-{tag}"
        rc, _, err = t.run(["mkdir", "-p", "--", f"{mdir}/{stage}"], timeout=command_timeout, cwd=".")
        if rc != 0:
            raise PushError(f"cannot create {workdir}/{mdir}/{stage}: {err.strip()[:200]}")
        try:
            t.put(model.model_path, f"{mdir}/{stage}/{MODEL_FILE}", timeout=transfer_timeout)
            result.bytes_sent += model.size
            t.put(model.manifest_path, f"{mdir}/{stage}/{MANIFEST_FILE}", timeout=transfer_timeout)
            result.bytes_sent += model.manifest_path.stat().st_size
            phase("upload")
        except EdgeNASError as exc:
            raise PushError(_upload_failure(t, device, name, stage, model, exc, workdir)) from exc
    elif state.target_manifest_sha256 != model.manifest_sha256:
        t.put(model.manifest_path, f"{mdir}/{version}/{MANIFEST_FILE}", timeout=transfer_timeout)
        result.bytes_sent += model.manifest_path.stat().st_size
    args = [workdir, python_of(device), name, version, stage, model.sha256, model.manifest_sha256, tag]
    rc, out, err = run_script(t, _COMMIT_SCRIPT, args, command_timeout)
    phase("switch")
    lines = out.strip().splitlines()
    verdict = lines[0] if lines else ""
    if verdict.startswith("FAIL "):
        raise PushError(verdict[5:])
    fields = verdict.split("\t")
    if rc != 0 or fields[0] != "OK" or len(fields) < 2:
        raise PushError(f"switching to {version} failed (exit {rc}): {(err or out).strip()[:200]}")
    if fields[1] != version:
        raise PushError(f"after the switch current is {fields[1] or 'nothing'}, not {version}")
    result.status = "ok"
    result.reason = "switched" + (f" from {held.current}" if held and held.current else "")


def _check_space(state: DeviceState, model: LocalModel, device: Device, check: bool) -> None:
    need = math.ceil(model.bytes_total / 1024) + SPACE_MARGIN_KIB
    if check and state.free_kib is not None and state.free_kib < need:
        raise PushError(
            f"not enough space on the device: the model needs {_mib(need)} and only "
            f"{_mib(state.free_kib)} is free under {device.workdir}/{MODELS_DIR}; the previous "
            "version stays current (free space, or give the device another --workdir)"
        )


def _upload_failure(
    t: Transport, device: Device, name: str, stage: str, model: LocalModel, exc: BaseException,
    workdir: str,
) -> str:
    """Say why an upload failed; a full disk often shows up as a bare SFTP 'Failure', so look."""
    message = short_error(exc, device.name)
    try:
        run_script(t, 'rm -rf "$1"', [f"{workdir}/{MODELS_DIR}/{name}/{stage}"], 10.0)
        state = read_state(t, device, name, create=True, timeout=10.0)
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
    model: LocalModel,
    name: str,
    *,
    parallel: int = DEFAULT_PARALLEL,
    max_fail_percent: float = 100.0,
    transfer_timeout: float = DEFAULT_TRANSFER_TIMEOUT_S,
    opener: Callable[[Device, Path], Transport] = open_transport,
) -> FanOut:
    """Push to every device in bounded parallel and record each outcome in ``deployments``."""
    if not devices:
        raise FleetError("no devices selected (give --group or --device; see `edgenas device list`)")
    manifest_json = json.dumps(model.manifest, sort_keys=True)

    def record(result: DeviceResult) -> None:
        if result.status != "skipped":
            record_deployment(store, result, "push", manifest_json)

    return fan_out(
        devices,
        lambda dev: push_one(dev, home, model, name, transfer_timeout=transfer_timeout, opener=opener),
        parallel=parallel,
        max_fail_percent=max_fail_percent,
        on_result=record,
    )
