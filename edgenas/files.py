"""Small file helpers shared across edgenas: content hashes, atomic writes, private files and folders,
runner JSON output.

Why private: the workspace holds device addresses, SSH host keys, measurements and models — nothing
another user of the machine should read or, worse, replace.  So its folder is 0700 and its files 0600,
set with ``chmod`` after creation so the result does not depend on the caller's umask.

Why atomic writes fsync twice: ``rename`` makes a new file appear whole or not at all, but only once
the file's data *and* the directory entry are on disk; fsyncing the folder after the rename is what
makes the new name survive a power cut.  Temp names are random and created with ``O_EXCL``
(``mkstemp``), so two writers of one file never write into the same temp file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

logger = logging.getLogger(__name__)

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (models can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: Path | str) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk.  Some file systems refuse to
    fsync a directory; the data is then as safe as that file system allows, so that is not an error."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def private_dir(path: Path | str) -> Path:
    """Make ``path`` (and missing parents) a folder only its owner can enter: 0700, whatever the umask.

    A folder that already exists with group or world access is tightened, with a warning, since that
    means files in it may already have been readable by others.  A folder this user cannot chmod
    (someone else's) is left alone with a warning rather than failing the command.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            try:
                os.chmod(path, mode & ~0o077 | PRIVATE_DIR_MODE)
            except OSError as exc:
                logger.warning("workspace %s is readable by other users (mode %o) and cannot be "
                               "made private: %s", path, mode, exc)
            else:
                logger.warning("workspace %s was readable by other users (mode %o); it is now %o",
                               path, mode, PRIVATE_DIR_MODE)
        return path
    os.chmod(path, PRIVATE_DIR_MODE)
    fsync_dir(path.parent)
    return path


def private_file(path: Path | str) -> Path:
    """Make an existing file ``path`` 0600 (no-op when it already is, or does not exist)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return Path(path)
    if mode != PRIVATE_FILE_MODE:
        os.chmod(path, PRIVATE_FILE_MODE)
    return Path(path)


def open_private(path: Path | str, flags: int = os.O_RDWR) -> int:
    """``os.open`` that creates ``path`` 0600 whatever the umask (lock files, databases); returns the fd.

    The mode of ``os.open`` is filtered by the umask and applies only on creation, so the file is
    ``fchmod``-ed as well: a lock file a looser umask created earlier is tightened on next use.
    """
    fd = os.open(path, flags | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != PRIVATE_FILE_MODE:
            os.fchmod(fd, PRIVATE_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def atomic_write(path: Path, write: Callable[[BinaryIO], object], mode: int = PRIVATE_FILE_MODE) -> Path:
    """Let ``write`` fill a temp file in the same folder, fsync it, rename it over ``path`` and fsync
    the folder: readers never see half a file, and a crash leaves the previous version in place.

    The temp file is ``.<name>.<random>.tmp``, created exclusively; ``mode`` (0600 by default) is set
    on it explicitly, so the result does not depend on the umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: Path, data: bytes, mode: int = PRIVATE_FILE_MODE) -> Path:
    return atomic_write(path, lambda handle: handle.write(data), mode)


def atomic_write_text(path: Path, text: str, mode: int = PRIVATE_FILE_MODE) -> Path:
    """``text`` as UTF-8 through :func:`atomic_write`."""
    return atomic_write_bytes(path, text.encode("utf-8"), mode)


def atomic_write_json(path: Path, data: Any, indent: int | None = 1,
                      mode: int = PRIVATE_FILE_MODE) -> Path:
    """``data`` as JSON through :func:`atomic_write` (serialised first: a value that cannot be
    serialised leaves the old file untouched)."""
    return atomic_write_text(path, json.dumps(data, indent=indent), mode)


def last_json(text: str) -> dict[str, Any] | None:
    """The last line of ``text`` that is a JSON object: the runner prints exactly one, but a
    device's shell or Python may print warnings before it."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None
