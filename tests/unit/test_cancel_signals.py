"""A signal turned into an exception must not be lost when it lands in a finalizer.

Python prints an exception raised inside ``__del__`` ("Exception ignored in ...") and drops it; paramiko
closes channels in ``__del__`` while a command unwinds, so a Ctrl-C or SIGTERM arriving there used to
leave `bench` running for its full protocol (seen as a flaky cancel test under two workers).
"""

from __future__ import annotations

import signal
import sys
import threading

import pytest

from edgenas.device.cancel import raise_from_signal, sigterm_as_interrupt


def test_outside_a_finalizer_the_exception_is_raised() -> None:
    with pytest.raises(KeyboardInterrupt):
        raise_from_signal(signal.SIGUSR1, sys._getframe(), KeyboardInterrupt())


def test_inside_a_finalizer_the_signal_is_sent_again_instead_of_lost() -> None:
    delivered = threading.Event()
    raised: list[BaseException] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: delivered.set())

    class Closing:
        def __del__(self) -> None:
            try:
                raise_from_signal(signal.SIGUSR1, sys._getframe(), KeyboardInterrupt())
            except BaseException as exc:  # would be printed and dropped by Python
                raised.append(exc)

    try:
        obj = Closing()
        del obj
        assert raised == []
        assert delivered.wait(5), "the signal was not sent again"
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_sigint_and_sigterm_both_interrupt_and_are_restored_after() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with sigterm_as_interrupt():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(sig)
            assert callable(handler)
            with pytest.raises(KeyboardInterrupt):
                handler(sig, sys._getframe())
    assert {s: signal.getsignal(s) for s in before} == before


class _FlakyTransport:
    """Answers the unlock script with a transport error ``failures`` times, then succeeds."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    def remote_path(self, path: str) -> str:
        return f"/wd/{path}"

    def run(self, argv, timeout=None):  # noqa: ANN001 - the Transport.run shape the lock uses
        from edgenas.core.errors import TransportError

        self.calls += 1
        if self.calls <= self.failures:
            raise TransportError("connection reset while a cancel was in flight")
        return 0, "", ""


@pytest.mark.parametrize("failures, calls, warned", [(1, 2, False), (2, 2, True)])
def test_a_lock_release_broken_by_a_cancel_is_retried_once_then_reported(failures, calls, warned,
                                                                         caplog) -> None:
    from edgenas.device.lock import DeviceLock

    transport = _FlakyTransport(failures)
    lock = DeviceLock(transport, "board", ttl_s=60, workspace=None)  # type: ignore[arg-type]
    lock.token = "abc"  # as if acquired
    with caplog.at_level("WARNING"):
        lock.release()
    assert transport.calls == calls
    assert ("could not release the device lock" in caplog.text) is warned
    assert lock.token == ""
