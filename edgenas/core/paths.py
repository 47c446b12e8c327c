"""Where edgenas finds the files it ships (search-space specs, the on-device runner).

In a source checkout (or an editable install) they sit beside the package at the repository's top
level; a wheel installs them under ``<prefix>/share/edgenas``.  Looking in both keeps one copy of
each file in the repository.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[2]


def _asset_dir(name: str) -> Path:
    candidates = [_REPO_ROOT / name, Path(sys.prefix) / "share" / "edgenas" / name]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return candidates[0]


def spec_dir() -> Path:
    """Folder of the built-in search-space specs (``supernets/``)."""
    return _asset_dir("supernets")


def devices_dir() -> Path:
    """Folder of what runs on devices (``devices/``: the runner, bootstrap, profiles)."""
    return _asset_dir("devices")


def default_home() -> Path:
    """The workspace: ``$EDGENAS_HOME`` or ``~/.edgenas``."""
    return Path(os.environ.get("EDGENAS_HOME") or Path.home() / ".edgenas")
