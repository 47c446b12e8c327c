"""What every fleet verb shares beyond the device fan-out (:mod:`edgenas.device.fanout`): the fleet's
error type and the rules for a model's name on devices."""

from __future__ import annotations

import re

from edgenas.core.errors import EdgeNASError
from edgenas.export.package import ModelPackage

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RESERVED_NAMES = ("cache",)  # models/cache/ holds `edgenas bench`'s copies on the device


class FleetError(EdgeNASError):
    """A fleet operation cannot start (bad model folder, no devices, bad option) or failed on a device;
    the message names the device and says what happened."""


def validate_model_name(name: str) -> str:
    """Model names become directory names on devices, so they are restricted like device names."""
    if not _NAME_RE.match(name or ""):
        raise FleetError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' or '-' "
            "(at most 64, starting with a letter or digit)"
        )
    if name in RESERVED_NAMES:
        raise FleetError(f"the model name {name!r} is reserved on devices; pick another with --name")
    return name


def resolve_name(model: ModelPackage | None, name: str | None) -> str:
    """The model's name on devices: ``name`` if given, else the package's default; validated."""
    return validate_model_name(name or (model.default_name if model else ""))
