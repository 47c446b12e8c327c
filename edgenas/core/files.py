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
import pwd
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


def _owner_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def unsafe_path_reason(path: Path | str, *, uid: int | None = None) -> str | None:
    """Why another user could change what is in the folder ``path``, or None when only this user (or
    root) can.  Used for folders edgenas runs code from: whoever can write a file there, or rename the
    folder or one of its parents, can swap what edgenas executes and so run code as its user.

    The rule of OpenSSH's StrictModes for ``~/.ssh``: ``path`` and every folder above it up to ``/``
    must be owned by this user or root and must not be writable by group or others.  One exception,
    for parents only: a folder with the sticky bit (``/tmp``) may be world-writable, since there
    others may add names but not rename or delete ours.  ``path`` itself never gets that exception.
    A ``path`` that does not exist yet is judged by the parents that do (its creator makes the rest).
    Symlinks on the way must be owned by this user or root (their owner can retarget them), and the
    folders they lead to are judged as well.  ``uid`` defaults to the effective user.
    """
    uid = os.geteuid() if uid is None else uid
    given = Path(os.path.abspath(path))
    real = Path(os.path.realpath(given))
    for chain in (given, real) if real != given else (given,):
        for folder in (chain, *chain.parents):
            try:
                st = os.lstat(folder)
            except FileNotFoundError:
                continue  # not created yet (only the deepest parts of the path can be missing)
            except OSError as exc:
                return f"cannot inspect {folder}: {exc.strerror or exc}"
            if st.st_uid not in (uid, 0):
                return (f"{folder} is owned by {_owner_name(st.st_uid)}, not by this user or root, "
                        "so its owner can replace what edgenas runs there")
            if stat.S_ISLNK(st.st_mode):
                continue  # a link's own mode means nothing; where it leads is the real chain
            if not stat.S_ISDIR(st.st_mode):
                return f"{folder} is not a folder"
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o022 and (folder == chain or not mode & stat.S_ISVTX):
                who = "group and others" if mode & 0o022 == 0o022 else (
                    "its group" if mode & 0o020 else "others")
                return (f"{folder} is writable by {who} (mode {mode:o}), so they can replace what "
                        f"edgenas runs there (`chmod go-w {folder}` if only you use it)")
    return None


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
