"""Cancelling a command that is working on devices: Ctrl-C or SIGTERM stops what it started there.

A benchmark left running on a board after its host process died overlaps the next one and stores a
contaminated row; a lock left behind blocks the next command.  So the main thread (the only one Python
delivers signals to) turns SIGTERM into KeyboardInterrupt, and whoever catches it calls
:meth:`Cancel.cancel`: every open device session then stops its remote job and releases its lock, in
parallel and bounded in time, while the worker threads unwind.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, Protocol

from edgenas.core.errors import EdgeNASError

log = logging.getLogger(__name__)
ABORT_TIMEOUT_S = 20.0


class Cancelled(EdgeNASError):
    """The command was cancelled (Ctrl-C or SIGTERM); what it started on devices was stopped."""


class Abortable(Protocol):
    name: str

    def abort(self) -> None: ...


class Cancel:
    """Shared by the threads of one command.  Sessions register while open."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._mutex = threading.Lock()
        self._open: set[Any] = set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` once :meth:`cancel` was called (workers call it between steps)."""
        if self._event.is_set():
            raise Cancelled("cancelled")

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if cancelled meanwhile."""
        return self._event.wait(seconds)

    def register(self, session: Abortable) -> None:
        with self._mutex:
            self._open.add(session)

    def unregister(self, session: Abortable) -> None:
        with self._mutex:
            self._open.discard(session)

    def cancel(self, timeout: float = ABORT_TIMEOUT_S) -> None:
        """Stop every open session's remote job and release its lock, all devices at once."""
        self._event.set()
        with self._mutex:
            sessions = list(self._open)
        if not sessions:
            return
        pool = ThreadPoolExecutor(max_workers=min(16, len(sessions)), thread_name_prefix="abort")
        futures = {pool.submit(s.abort): s for s in sessions}
        done, not_done = wait(futures, timeout=timeout)
        for fut in done:
            if fut.exception() is not None:
                log.warning("%s: could not stop its job: %s", futures[fut].name, fut.exception())
        for fut in not_done:
            log.warning("%s: did not answer the cancel within %g s; its lock expires on its own",
                        futures[fut].name, timeout)
        pool.shutdown(wait=False, cancel_futures=True)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt in the main thread, as Ctrl-C does, so that
    one ``except KeyboardInterrupt``/``finally`` path cleans up for both."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = ["Cancel", "Cancelled", "sigterm_as_interrupt"]
