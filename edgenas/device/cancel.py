"""Cancelling a command that is working on devices: Ctrl-C or SIGTERM stops what it started there.

A benchmark left running on a board after its host process died overlaps the next one and stores a
contaminated row; a lock left behind blocks the next command.  So the main thread (the only one Python
delivers signals to) turns SIGTERM into KeyboardInterrupt, and whoever catches it calls
:meth:`Cancel.cancel`: every open device session then stops its remote job and releases its lock, in
parallel and bounded in time, while the worker threads unwind.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from types import FrameType
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


REDELIVER_S = 0.05  # how soon a signal that arrived inside a finalizer is sent again


def _inside_finalizer(frame: FrameType | None) -> bool:
    """True when the interrupted code runs in a ``__del__``: Python prints an exception raised there
    ("Exception ignored in ...") and drops it, so a signal turned into one would be lost."""
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def raise_from_signal(signum: int, frame: FrameType | None, exc: BaseException) -> None:
    """Raise ``exc`` for a signal, or, when it arrived inside a finalizer (paramiko's channels and
    transports close in ``__del__`` while a command unwinds), send the same signal again a moment
    later instead, so the command still stops instead of running on with the signal swallowed."""
    if _inside_finalizer(frame):
        threading.Timer(REDELIVER_S, os.kill, (os.getpid(), signum)).start()
        return
    raise exc


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt in the main thread, as Ctrl-C does, so that
    one ``except KeyboardInterrupt``/``finally`` path cleans up for both.  Ctrl-C's handler is
    replaced too, so neither signal is lost when it lands in a finalizer (:func:`raise_from_signal`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise_from_signal(signum, frame, KeyboardInterrupt(f"signal {signum}"))

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


__all__ = ["Cancel", "Cancelled", "raise_from_signal", "sigterm_as_interrupt"]
