"""A small filesystem for one device's workdir, to fill its disk on purpose.

A tmpfs of a few MiB is mounted at a directory under the device's home.  SSH devices run sshd in a
private mount namespace, so the mount is made *inside that namespace* (``nsenter --mount`` into the
sshd listener), where the device's sessions see it; ADB emulators run in the host's namespace and get
a plain mount.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.fleet.system import sh


def _ns(pid: int | None) -> list[str]:
    return ["nsenter", "--target", str(pid), "--mount"] if pid else []


@contextmanager
def small_fs(path: Path, size: str = "2m", *, owner: str | None = None,
             mount_ns_pid: int | None = None) -> Iterator[Path]:
    """Mount a ``size`` tmpfs at ``path`` (created if needed, owned by ``owner``) for the duration.

    ``mount_ns_pid``: a process whose mount namespace gets the mount (an SSH device's sshd); None for
    the host's own namespace.
    """
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size},mode=0755"
    if owner:
        entry = pwd.getpwnam(owner)
        os.chown(path, entry.pw_uid, entry.pw_gid)
        opts += f",uid={entry.pw_uid},gid={entry.pw_gid}"
    sh([*_ns(mount_ns_pid), "mount", "-t", "tmpfs", "-o", opts, "edgenas-small-fs", str(path)])
    try:
        yield path
    finally:
        # The namespace is gone when the device was killed meanwhile: nothing left to unmount then.
        sh([*_ns(mount_ns_pid), "umount", "-l", str(path)], check=False)


def sshd_pid(dev) -> int:
    """The device's sshd listener: the first process of its exec chain lives in its mount namespace."""
    if dev.proc is None or dev.proc.poll() is not None:
        raise RuntimeError(f"{dev.name}: sshd is not running")
    return int(dev.proc.pid)
