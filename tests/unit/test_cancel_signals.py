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
