"""Ways of reaching a device, behind one interface (:class:`Transport`): local, SSH, ADB.

:func:`edgenas.device.connect.open_transport` picks the implementation for a device record; only
the device session (:mod:`edgenas.device.session`) and ``device add``'s host-key check call it.
"""

from __future__ import annotations

from edgenas.device.transports.base import OutputLimitError, RunResult, Transport

__all__ = ["OutputLimitError", "RunResult", "Transport"]
