r"""The on-device layout of deployed models, and reading it back.

::

    <workdir>/runner.py
    <workdir>/models/<NAME>/<VERSION>/model.tflite     VERSION = first 12 hex of the model's sha256
    <workdir>/models/<NAME>/<VERSION>/manifest.json
    <workdir>/models/<NAME>/current  -> <VERSION>       relative symlinks, replaced by rename(2)
    <workdir>/models/<NAME>/previous -> <VERSION>
    <workdir>/models/<NAME>/.incoming-<tag>/            an upload in progress (never read)
    <workdir>/models/cache/                             ``edgenas bench``'s own copies (not a model)

Why this shape: a version directory only ever appears complete (uploaded to ``.incoming-*``, checked,
then renamed), and ``current`` is switched by renaming a new symlink over the old one, which is atomic.
Whatever moment a device dies at, ``current`` names a complete, checked version.  Naming versions by
their sha256 makes a push idempotent and makes every version directory self-verifying.

Everything here runs as small POSIX ``sh`` scripts with only ``readlink``, ``sha256sum``, ``mv``,
``ln``, ``df`` (all in coreutils, busybox and Android's toybox); where ``mv -T`` or ``sha256sum`` is
missing, the device's Python (needed by the runner anyway) does the same job.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from edgenas.fleet.common import FleetError
from edgenas.registry import Device
from edgenas.transports import Transport

MODELS_DIR = "models"
STATE_TIMEOUT_S = 60.0

# Shared shell helpers.  h FILE prints the sha256 of FILE (empty when missing); swap A B renames A over
# B atomically (mv -T is GNU/toybox/busybox; os.replace where it is missing).
_HELPERS = r"""
h() { [ -f "$1" ] || return 1; s=$(sha256sum "$1" 2>/dev/null) || s=$("$PY" -c \
'import hashlib,sys;print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1" 2>/dev/null) \
|| return 1; echo "${s%% *}"; }
swap() { mv -T "$1" "$2" 2>/dev/null || "$PY" -c 'import os,sys;os.replace(sys.argv[1],sys.argv[2])' \
"$1" "$2"; }
"""

# $1 workdir, $2 python, $3 model name ('' = all), $4 version to look for ('' = none), $5 1 = prepare a
# push: create the model directory, drop unfinished uploads (a killed push leaves its partial files;
# one push per device at a time is assumed), report free space.  Prints tab-separated records:
#   M name current previous current_sha previous_sha current_manifest_sha  (previous_sha: not when
#                                                                          preparing a push)
#   T version_sha version_manifest_sha     (the asked-for version, if present)
#   F free_kib                              (free space where uploads go)
#   R runner_sha
_STATE_SCRIPT = (
    r"""
W=$1 PY=$2 NAME=$3 VER=$4 CREATE=$5
"""
    + _HELPERS
    + r"""
if [ "$CREATE" = 1 ]; then
  mkdir -p "$W/models/$NAME" || { echo "E cannot create $W/models/$NAME"; exit 0; }
fi
cd "$W" 2>/dev/null || { echo "E noworkdir"; exit 0; }
printf 'R\t%s\n' "$(h runner.py)"
[ -d models ] || exit 0
for d in models/*/; do
  [ -d "$d" ] || continue
  n=${d#models/}; n=${n%/}
  [ -n "$NAME" ] && [ "$n" != "$NAME" ] && continue
  m=models/$n
  [ "$n" = cache ] && continue
  [ -L $m/current ] || [ -L $m/previous ] || [ "$n" = "$NAME" ] || continue
  printf 'M\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$(readlink $m/current 2>/dev/null)" \
    "$(readlink $m/previous 2>/dev/null)" "$(h $m/current/model.tflite)" \
    "$([ "$CREATE" = 1 ] || h $m/previous/model.tflite)" "$(h $m/current/manifest.json)"
  if [ -n "$VER" ] && [ -d "$m/$VER" ]; then
    printf 'T\t%s\t%s\n' "$(h $m/$VER/model.tflite)" "$(h $m/$VER/manifest.json)"
  fi
  if [ "$CREATE" = 1 ]; then
    rm -rf "$m"/.incoming-* 2>/dev/null
    set -- $(df -Pk "$m" 2>/dev/null | tail -n 1)
    printf 'F\t%s\n' "$4"
  fi
done
exit 0
"""
)


@dataclass
class ModelState:
    """What one device holds of one model name, read on the device."""

    name: str
    current: str | None
    previous: str | None
    current_sha256: str | None
    previous_sha256: str | None
    current_manifest_sha256: str | None

    @property
    def intact(self) -> bool:
        """The current model file exists and its sha256 matches the version it is filed under."""
        sha = self.current_sha256
        return bool(self.current and sha and sha.startswith(self.current))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "current": self.current,
            "previous": self.previous,
            "current_sha256": self.current_sha256,
            "previous_sha256": self.previous_sha256,
            "intact": self.intact,
        }


@dataclass
class DeviceState:
    """Everything :func:`read_state` learned about a device."""

    models: dict[str, ModelState]
    runner_sha256: str | None = None
    target_sha256: str | None = None
    target_manifest_sha256: str | None = None
    free_kib: int | None = None
    workdir_exists: bool = True


def workdir_of(transport: Transport, device: Device) -> str:
    return device.workdir or transport.workdir or "."


def python_of(device: Device) -> str:
    return device.python or "python3"


def new_tag() -> str:
    return secrets.token_hex(4)


def run_script(
    transport: Transport, script: str, args: list[str], timeout: float = STATE_TIMEOUT_S
) -> tuple[int, str, str]:
    """Run one of this package's shell scripts with positional arguments (each quoted by the
    transport); the device runs ``sh -c SCRIPT edgenas-fleet ARGS...``."""
    rc, out, err = transport.run(["sh", "-c", script, "edgenas-fleet", *args], timeout=timeout)
    return rc, out, err


def read_state(
    transport: Transport,
    device: Device,
    name: str | None = None,
    *,
    version: str | None = None,
    create: bool = False,
    timeout: float = STATE_TIMEOUT_S,
) -> DeviceState:
    """Read the models on a device (one model when ``name`` is given), checking every current file's
    sha256 on the device itself.  ``create`` also makes ``models/NAME`` and reports free space."""
    if create and not name:
        raise FleetError("internal: create needs a model name")
    rc, out, err = run_script(
        transport,
        _STATE_SCRIPT,
        [workdir_of(transport, device), python_of(device), name or "", version or "",
         "1" if create else ""],
        timeout,
    )
    if rc != 0:
        raise FleetError(
            f"{device.name}: reading the deployed models failed (exit {rc}): "
            f"{(err.strip().splitlines() or ['no output'])[-1][:300]}"
        )
    state = DeviceState(models={})
    for line in out.splitlines():
        fields = line.split("\t")
        kind, rest = fields[0], [f or None for f in fields[1:]]
        if kind == "E" or line.startswith("E "):
            if "noworkdir" in line:
                state.workdir_exists = False
            else:
                raise FleetError(f"{device.name}: {line[2:]}")
        elif kind == "R":
            state.runner_sha256 = rest[0] if rest else None
        elif kind == "M" and len(rest) >= 6 and rest[0]:
            state.models[rest[0]] = ModelState(rest[0], *rest[1:6])
        elif kind == "T" and len(rest) >= 2:
            state.target_sha256, state.target_manifest_sha256 = rest[0], rest[1]
        elif kind == "F" and rest and rest[0] and rest[0].isdigit():
            state.free_kib = int(rest[0])
    return state
