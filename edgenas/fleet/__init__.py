"""Fleet deployment: push a model to many devices safely, see what runs where, roll back, and
benchmark or smoke-test the rollout on every device.

The on-device layout and its atomicity rules are in :mod:`edgenas.fleet.state`; each verb is its own
module (:mod:`~edgenas.fleet.push`, :mod:`~edgenas.fleet.status`, :mod:`~edgenas.fleet.rollback`,
:mod:`~edgenas.fleet.bench`, :mod:`~edgenas.fleet.predict`).
"""

from edgenas.device.fanout import DeviceResult, FanOut
from edgenas.fleet.common import FleetError

__all__ = ["DeviceResult", "FanOut", "FleetError"]
