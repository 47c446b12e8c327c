"""Start the heavy commands under a malloc that backs large buffers with huge pages.

Training, BN re-estimation, calibration and validation allocate and free activation tensors of
tens to hundreds of MB on every batch.  glibc's malloc serves each from fresh ``mmap`` pages and
returns them on ``free``, so every batch pays a page fault per 4 KB: an int8 export of the largest
``mbv3-w1.0`` subnet at 224 px took 9 million minor faults and a third of its CPU time in the
kernel.  With ``glibc.malloc.hugetlb=1`` malloc asks for transparent huge pages (``madvise``), which
this kernel setting (``transparent_hugepage=madvise``, the common default) grants only to those who
ask: the same export took 0.2 million faults and 21 % less wall time (benchmarks/export.py).
A local device's runner is started without it (edgenas.core.malloc.untuned).

glibc reads its tunables once, when the process starts, so the command re-executes itself with
``GLIBC_TUNABLES`` set, before any heavy import; the process keeps its pid, arguments and open
files, and worker processes inherit the setting.  Only the commands that run networks do this
(``device list`` and ``--help`` should not pay a second interpreter start), only on glibc ≥ 2.35
(which knows the tunable), never twice, and never when the user set ``glibc.malloc.hugetlb``
themselves or asked for the system default with ``EDGENAS_MALLOC=system``.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence

from edgenas.core.malloc import MARK, TUNABLE

# the commands that train, export or run networks (the first word after the global options)
HEAVY = frozenset({"export", "supernet", "subnet", "measure", "search", "quickstart", "evaluate",
                   "fleet", "proxies"})
_GLOBAL_WITH_VALUE = frozenset({"--home"})


def command_of(argv: Sequence[str]) -> str | None:
    """The command word of an ``edgenas`` argument list (global options and their values
    skipped), or None when there is none."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _GLOBAL_WITH_VALUE:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def _glibc_knows_tunable() -> bool:
    libc, version = platform.libc_ver()
    if libc != "glibc":
        return False
    try:
        major, minor = (int(p) for p in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (2, 35)


def tuned_environment(environ: dict[str, str], argv: Sequence[str]) -> dict[str, str] | None:
    """The environment to re-execute ``edgenas argv`` under, or None to run as is."""
    if environ.get(MARK) or command_of(argv) not in HEAVY or not sys.platform.startswith("linux"):
        return None
    if any(arg in ("-h", "--help") for arg in argv):  # help runs no network
        return None
    current = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in current or not _glibc_knows_tunable():
        return None
    return {**environ, "GLIBC_TUNABLES": f"{current}:{TUNABLE}" if current else TUNABLE,
            MARK: "tuned"}


def reexec_tuned(argv: Sequence[str]) -> None:
    """Replace this process by itself under :func:`tuned_environment` (returns when not needed).

    ``sys.orig_argv`` is the interpreter's own command line (``python /path/edgenas export …``
    or ``python -c … export …``), so the new image runs exactly what this one was asked to."""
    env = tuned_environment(dict(os.environ), argv)
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, list(sys.orig_argv), env)
    except OSError:  # cannot re-execute (a frozen or odd interpreter): run untuned
        return
