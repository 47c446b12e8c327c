"""The malloc tuning edgenas' heavy commands run under, and how a local device leaves it out.

The heavy commands re-execute themselves with ``GLIBC_TUNABLES`` asking for huge pages
(edgenas/cli/allocator.py), and every process they start inherits it.  That is wanted for the host's
own work (export and training workers) and wrong for a *device*: a local device's runner must be
measured under the malloc the user's own program would get, or its peak memory moves in 2 MB
steps and its latency is not the deployed one.  :func:`untuned` gives back the environment as it was
before the re-execution."""

from __future__ import annotations

from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb=1"
# Set to "tuned" in a process edgenas re-executed under TUNABLE; "system" opts out of the re-exec.
MARK = "EDGENAS_MALLOC"


def untuned(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` less what the re-execution added (TUNABLE and MARK); a tunable the user set
    themselves (no MARK) stays, as do their other tunables."""
    env = dict(environ)
    if env.get(MARK) != "tuned":
        return env
    del env[MARK]
    kept = [p for p in env.get("GLIBC_TUNABLES", "").split(":") if p and p != TUNABLE]
    if kept:
        env["GLIBC_TUNABLES"] = ":".join(kept)
    else:
        env.pop("GLIBC_TUNABLES", None)
    return env
