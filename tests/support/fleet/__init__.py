"""The test fleet: real sshd and adb devices on this machine (see docs/devices.md, "The test fleet").

Tests get it through the session fixture ``fleet`` in ``tests/conftest.py``; other code can build one
with :class:`Fleet` directly.
"""

from tests.support.fleet.fleet import Fleet
from tests.support.fleet.system import FleetError

__all__ = ["Fleet", "FleetError"]
