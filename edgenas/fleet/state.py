r"""The on-device layout of deployed models, and reading it back.

::

    <workdir>/runner.pyz
    <workdir>/models/<NAME>/<VERSION>/model.tflite     VERSION = first 12 hex of the model's sha256
    <workdir>/models/<NAME>/<VERSION>/manifest.json
    <workdir>/models/<NAME>/current  -> <VERSION>       relative symlinks, replaced by rename(2)
    <workdir>/models/<NAME>/previous -> <VERSION>
    <workdir>/models/<NAME>/.incoming-<tag>/            an upload in progress (never read)

Why this shape: a version directory only ever appears complete (uploaded to ``.incoming-*``, checked,
then renamed), and ``current`` is switched by renaming a new symlink over the old one, which is atomic.
Whatever moment a device dies at, ``current`` names a complete, checked version.  Naming versions by
their sha256 makes a push idempotent and makes every version directory self-verifying.

The layout as a whole is :mod:`edgenas.device.layout`.  Everything a device reports here (link targets,
names, hashes) is checked against the exact shapes the layout allows before it is used, so a board that
lies about its state cannot steer the host.  Everything here runs as small POSIX ``sh`` scripts
(``devices/scripts/fleet-*.sh``) with only ``readlink``, ``sha256sum``, ``mv``,
``ln``, ``df`` (all in coreutils, busybox and Android's toybox); where ``mv -T`` or ``sha256sum`` is
missing, the device's Python (needed by the runner anyway) does the same job.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from edgenas.device import layout
from edgenas.device.scripts import script
from edgenas.device.session import DeviceSession
from edgenas.fleet.common import FleetError

MODELS_DIR = layout.MODELS
STATE_TIMEOUT_S = 60.0


def fleet_script(name: str) -> str:
    """A fleet script (devices/scripts/fleet-*.sh) with the helpers it uses in front."""
    return script("fleet-lib") + "\n" + script(name)


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
    staged: str | None = None  # the staging folder fleet-state.sh created (read_state's ``stage``)


def new_tag() -> str:
    return secrets.token_hex(4)


def run_fleet_script(session: DeviceSession, name: str, args: list[str],
                     timeout: float = STATE_TIMEOUT_S) -> tuple[int, str, str]:
    """Run ``devices/scripts/<name>.sh`` (after fleet-lib.sh) with the workdir and the device's Python
    as its first two arguments."""
    res = session.run(["sh", "-c", fleet_script(name), name, session.path("."), session.python, *args],
                      timeout, cwd=None)
    return res.rc, res.stdout, res.stderr


def read_state(
    session: DeviceSession,
    name: str | None = None,
    *,
    version: str | None = None,
    create: bool = False,
    timeout: float = STATE_TIMEOUT_S,
    stage: tuple[str, str] | None = None,
) -> DeviceState:
    """Read the models on a device (one model when ``name`` is given), checking every current file's
    sha256 on the device itself.  ``create`` also makes ``models/NAME`` and reports free space;
    ``stage`` = (folder, sha256) then also creates that staging folder unless ``version`` is already
    there with that model sha256 (``state.staged`` says it was made).

    Untrusted answer: a record whose fields do not have the layout's shapes is dropped (a model whose
    link is not a version name reads as having no current version: damaged, never followed)."""
    if create and not name:
        raise FleetError("internal: create needs a model name")
    args = [name or "", version or "", "1" if create else "", *(stage or ())]
    rc, out, err = run_fleet_script(session, "fleet-state", args, timeout)
    if rc != 0:
        raise FleetError(
            f"{session.name}: reading the deployed models failed (exit {rc}): "
            f"{(err.strip().splitlines() or ['no output'])[-1][:300]}"
        )
    state = DeviceState(models={})
    for line in out.splitlines()[:10_000]:
        fields = line.split("\t")
        kind, rest = fields[0], [f or None for f in fields[1:]]
        if line.startswith("E "):
            if line == "E noworkdir":
                state.workdir_exists = False
            else:
                raise FleetError(f"{session.name}: {line[2:300]}")
        elif kind == "R" and rest:
            state.runner_sha256 = layout.sha256(rest[0])
        elif kind == "M" and len(rest) >= 6 and layout.model_name(rest[0]):
            state.models[rest[0]] = ModelState(
                rest[0], layout.version(rest[1]), layout.version(rest[2]), layout.sha256(rest[3]),
                layout.sha256(rest[4]), layout.sha256(rest[5]))
        elif kind == "T" and len(rest) >= 2:
            state.target_sha256 = layout.sha256(rest[0])
            state.target_manifest_sha256 = layout.sha256(rest[1])
        elif kind == "S" and stage and rest and rest[0] == stage[0]:
            state.staged = stage[0]
        elif kind == "F" and rest and rest[0] and rest[0].isdigit() and len(rest[0]) < 20:
            state.free_kib = int(rest[0])
    return state
