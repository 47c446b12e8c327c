"""The remote shell scripts, read from ``devices/scripts/<name>.sh``.

Why files and not string constants: a file is what ``shellcheck`` reads
(``tests/integration/test_scripts.py``
runs it on every script in ``make test``), what a reviewer can run by hand on a board, and each script
has one home.  Scripts are sent as the argument of ``sh -c``, so each must be POSIX ``sh`` (a phone's
``toybox``/``mksh`` shell or busybox ``ash``), never bash.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from edgenas.core.paths import devices_dir

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class ScriptNotFound(LookupError):
    """A script name with no file under ``devices/scripts/`` (a packaging error, not user input)."""


def scripts_dir() -> Path:
    """The folder holding the ``*.sh`` files (in a checkout or under ``<prefix>/share/edgenas``)."""
    return devices_dir() / "scripts"


@functools.cache
def script(name: str) -> str:
    """The text of ``devices/scripts/<name>.sh``, read once per process (the files do not change).

    ``name`` is a plain script name such as ``"state"``: no folders, no suffix.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"bad script name {name!r}: expected a plain name like 'state'")
    path = scripts_dir() / f"{name}.sh"
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScriptNotFound(f"no remote script {path} (is edgenas installed with its devices/ folder?)"
                             ) from None


__all__ = ["ScriptNotFound", "script", "scripts_dir"]
