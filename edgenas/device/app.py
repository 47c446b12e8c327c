"""The on-device package shipped as one file: ``runner.pyz``, a zipapp of ``edgenas_device``.

Why one file: a device gets the runner with one upload and one sha256 comparison, and runs it with any
Python >= 3.8 (``python runner.pyz info``) without installing anything.  Why deterministic: the host
decides whether to upload by comparing sha256s, so the archive's bytes must depend on the code alone —
entries sorted, fixed timestamps and permissions, no ``__pycache__``, stored uncompressed (deflate output
can differ between zlib builds, and two operators' hosts must produce the same file).  Why cached:
building costs a few milliseconds but every device command asks for the app; the cache is keyed by the
hash of the sources, so an edited source file gives a new archive and nothing else does.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import edgenas_device

log = logging.getLogger(__name__)

APP_NAME = "runner.pyz"
PACKAGE = "edgenas_device"
# 1980-01-01, the earliest time a zip entry can carry.
_EPOCH = (1980, 1, 1, 0, 0, 0)
_SHEBANG = b"#!/usr/bin/env python3\n"
_MAIN = (
    b'"""The edgenas runner, a zipapp of edgenas_device: python runner.pyz info|bench|predict."""\n'
    b"import sys\n\n"
    b"from edgenas_device.__main__ import main\n\n"
    b"sys.exit(main())\n"
)


@dataclass(frozen=True)
class RunnerApp:
    """A built ``runner.pyz``: where it is on the host and the sha256 of its bytes (what a device's copy
    is compared with, and what the runner reports as ``runner.sha256``)."""

    path: Path
    sha256: str


def package_dir() -> Path:
    """The ``edgenas_device`` sources this host would ship (the checkout's or the installed copy)."""

    return Path(edgenas_device.__file__).resolve().parent


def _sources(src: Path) -> list[tuple[str, bytes]]:
    files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix == ".py")
    if not any(p.name == "__main__.py" for p in files):
        raise FileNotFoundError(f"{src} has no __main__.py: not the on-device package")
    return [(f"{PACKAGE}/{p.name}", p.read_bytes()) for p in files]


def source_hash(sources: list[tuple[str, bytes]]) -> str:
    """sha256 over the entry names and contents (the cache key); the same rule as
    ``edgenas_device.contract.source_sha256``, which the runner reports when run from a folder."""
    h = hashlib.sha256()
    for name, data in sources:
        h.update(
            name.rpartition("/")[2].encode("utf-8")
            + b"\0"
            + str(len(data)).encode("ascii")
            + b"\0"
            + data
        )
    return h.hexdigest()


def _write_archive(target: Path, sources: list[tuple[str, bytes]]) -> None:
    with open(target, "wb") as raw:
        raw.write(_SHEBANG)
        with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, data in [("__main__.py", _MAIN)] + sources:
                info = zipfile.ZipInfo(name, date_time=_EPOCH)
                info.external_attr = 0o644 << 16
                info.create_system = 3  # Unix, whatever the host
                zf.writestr(info, data)
        raw.flush()
        os.fsync(raw.fileno())
    os.chmod(target, 0o755)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_runner_app(cache_dir: Path, src: Path | None = None) -> RunnerApp:
    """Build (or reuse) ``runner.pyz`` for the current ``edgenas_device`` sources under ``cache_dir``.

    The archive lives at ``cache_dir/<first 16 hex of the source hash>/runner.pyz``; an archive already
    there is reused after checking it is one this function wrote (a ``.sha256`` beside it matching the
    file's bytes), so a truncated or edited cache file is rebuilt, never shipped.  Safe to call from
    several processes at once: each writes a private temporary file and renames it into place, and the
    bytes are identical.  Older versions are left in place (a process still running an older edgenas
    may be uploading one); each is ~100 KiB.
    """
    sources = _sources(src or package_dir())
    key = source_hash(sources)
    folder = Path(cache_dir) / key[:16]
    path = folder / APP_NAME
    stamp = folder / (APP_NAME + ".sha256")
    if path.is_file() and stamp.is_file():
        recorded = stamp.read_text(encoding="ascii", errors="replace").strip()
        if _sha256(path) == recorded:
            return RunnerApp(path, recorded)
        log.warning("cached %s does not match its recorded sha256; rebuilding", path)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".runner-", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _write_archive(tmp, sources)
        digest = _sha256(tmp)
        os.replace(tmp, path)
        fd, stamp_tmp = tempfile.mkstemp(prefix=".stamp-", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(digest + "\n")
        os.replace(stamp_tmp, stamp)
    finally:
        tmp.unlink(missing_ok=True)
    log.debug("built %s (%s)", path, digest[:12])
    return RunnerApp(path, digest)


__all__ = ["APP_NAME", "RunnerApp", "build_runner_app", "package_dir", "source_hash"]
