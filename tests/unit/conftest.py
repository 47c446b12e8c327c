"""The unit tier's rules, checked on every test rather than trusted: a unit test starts no process (no
device, no daemon, no CLI), imports no TensorFlow or TFLite runtime, and needs no root.  A test that
breaks a rule fails with the rule's name, so the tier stays runnable anywhere in about a minute."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

HEAVY = ("tensorflow", "ai_edge_litert", "tflite_runtime", "keras")


def _no_process(self: subprocess.Popen, args: object, *rest: object, **kw: object) -> None:
    raise AssertionError(f"unit tier: a unit test starts no process (tried {args!r}); "
                         "move it to tests/integration or tests/system")


@pytest.fixture(autouse=True)
def unit_rules(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Refuse processes during the test; after it, refuse TensorFlow or a TFLite runtime in the
    interpreter (imported by the test or by the library code it called)."""
    before = {m for m in HEAVY if m in sys.modules}
    monkeypatch.setattr(subprocess.Popen, "__init__", _no_process)
    yield
    loaded = sorted(m for m in HEAVY if m in sys.modules and m not in before)
    assert not loaded, f"unit tier: imported {loaded}; move the test to tests/integration"
