"""Artifacts built once and shared: by every test module of a run, by both pytest-xdist workers, and
(where the key says the inputs are unchanged) by later runs.

``make test`` runs two pytest workers, so two modules may ask for the same artifact at the same time.
:func:`build_once` makes that safe: an exclusive ``flock`` on ``<final>.lock`` lets one caller build
into a private folder beside ``final`` and rename it into place; the other waits and then finds it
done.  A half-built folder is never visible under ``final`` (a killed build leaves only its private
folder, removed by the next builder).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

DONE = "done"  # the marker written last into a finished artifact folder


@contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``lock_file`` (created if missing) for the block."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_once(final: Path, build: Callable[[Path], None], *, prune_siblings: bool = False) -> Path:
    """``final``, built by ``build(folder)`` unless a finished copy is there already.

    ``build`` fills an empty private folder; on success the folder gets the ``done`` marker and is
    renamed to ``final``.  ``prune_siblings`` removes the other finished folders beside ``final``
    (artifacts of older keys) so a cache keyed by a source hash does not grow without bound.
    """
    final = Path(final)
    if (final / DONE).exists():
        return final
    parent = final.parent
    with locked(parent / f"{final.name}.lock"):
        if (final / DONE).exists():  # another worker built it while this one waited
            return final
        for stale in parent.glob(f".{final.name}.build-*"):  # a killed builder's leftovers
            shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)  # unfinished: no marker
        work = Path(tempfile.mkdtemp(dir=parent, prefix=f".{final.name}.build-"))
        os.chmod(work, 0o755)  # as a plain mkdir would make it: device users may read the files
        try:
            build(work)
            (work / DONE).write_text("ok")
            os.rename(work, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if prune_siblings:
            for old in parent.iterdir():
                if old.is_dir() and old != final and (old / DONE).exists():
                    shutil.rmtree(old, ignore_errors=True)
    return final
