"""``fleet rollback``: point ``current`` back at ``previous`` on each device, atomically.

Only the symlinks change (the previous version's files are still on the device and are sha256-checked
against their version name first), so a rollback takes one command per device and needs no upload.
``current`` is switched first: a device that dies between the two renames already runs the previous
version, which is what was asked.  ``previous`` then names the version rolled back from, so a second
rollback rolls forward again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

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
from edgenas.fleet.records import record_deployment
from edgenas.fleet.state import (
    _HELPERS,
    STATE_TIMEOUT_S,
    new_tag,
    python_of,
    read_state,
    run_script,
    workdir_of,
)
from edgenas.registry import Device
from edgenas.store import Store
from edgenas.transports import Transport, open_transport

# $1 workdir $2 python $3 name $4 tag.  Prints "OK<TAB>current<TAB>sha<TAB>previous sha" or "FAIL why".
_ROLLBACK_SCRIPT = (
    r"""
W=$1 PY=$2 NAME=$3 TAG=$4
"""
    + _HELPERS
    + r"""
cd "$W/models/$NAME" 2>/dev/null || { echo "FAIL no model $NAME on this device"; exit 0; }
cur=$(readlink current 2>/dev/null); prev=$(readlink previous 2>/dev/null)
[ -n "$prev" ] || { echo "FAIL no previous version of $NAME to roll back to"; exit 0; }
[ "$prev" != "$cur" ] || { echo "FAIL previous and current are the same version ($cur)"; exit 0; }
s=$(h "$prev/model.tflite") || { echo "FAIL the previous version $prev is missing"; exit 0; }
case "$s" in "$prev"*) ;; *) echo "FAIL the previous version $prev is damaged (sha256 $s)"; exit 0;; esac
if ! { ln -s "$prev" ".current.tmp-$TAG" && swap ".current.tmp-$TAG" current; }; then
  rm -f ".current.tmp-$TAG"; echo "FAIL cannot switch current to $prev"; exit 0
fi
if [ -n "$cur" ]; then ln -s "$cur" ".previous.tmp-$TAG" && swap ".previous.tmp-$TAG" previous; fi
printf 'OK\t%s\t%s\n' "$(readlink current)" "$(h current/model.tflite)"
exit 0
"""
)


def rollback_one(
    device: Device,
    home: Path,
    name: str | None,
    *,
    timeout: float = STATE_TIMEOUT_S,
    opener: Callable[[Device, Path], Transport] = open_transport,
) -> DeviceResult:
    """Roll one device back; ``name`` may be omitted when the device holds a single model."""
    start = time.monotonic()
    result = DeviceResult(device.name, "failed", model=name)
    try:
        with device_lock(home, device.name), opener(device, home) as t:
            state = read_state(t, device, name, timeout=timeout)
            if name is None:
                if len(state.models) != 1:
                    held = ", ".join(sorted(state.models)) or "none"
                    raise FleetError(
                        f"pass --name: the device holds {len(state.models)} models ({held})"
                    )
                name = result.model = next(iter(state.models))
            held_model = state.models.get(name)
            if held_model is None:
                raise FleetError(f"no model {name} on this device")
            result.previous_sha256 = held_model.current_sha256
            rc, out, err = run_script(
                t, _ROLLBACK_SCRIPT, [workdir_of(t, device), python_of(device), name, new_tag()], timeout
            )
            verdict = (out.strip().splitlines() or [""])[0]
            if verdict.startswith("FAIL "):
                raise FleetError(verdict[5:])
            fields = verdict.split("\t")
            if rc != 0 or fields[0] != "OK" or len(fields) < 3:
                raise FleetError(f"rollback failed (exit {rc}): {(err or out).strip()[:200]}")
            result.version, result.sha256 = fields[1], fields[2]
            result.status, result.reason = "ok", f"{held_model.current} -> {fields[1]}"
    except EdgeNASError as exc:
        result.status, result.reason = "failed", short_error(exc, device.name)
    result.seconds = round(time.monotonic() - start, 3)
    return result


def rollback(
    store: Store,
    home: Path,
    devices: Sequence[Device],
    name: str | None = None,
    *,
    parallel: int = DEFAULT_PARALLEL,
    max_fail_percent: float = 100.0,
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
        lambda dev: rollback_one(dev, home, name, opener=opener),
        parallel=parallel,
        max_fail_percent=max_fail_percent,
        on_result=record,
    )
