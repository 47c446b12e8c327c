"""Fleet deployment: push a model to many devices safely, see what runs where, roll back, and
benchmark or smoke-test the rollout on every device.

The on-device layout and its atomicity rules are in :mod:`edgenas.fleet.state`; each verb is its own
module (:mod:`~edgenas.fleet.push`, :mod:`~edgenas.fleet.status`, :mod:`~edgenas.fleet.rollback`,
:mod:`~edgenas.fleet.bench`, :mod:`~edgenas.fleet.predict`).
"""

from edgenas.fleet.common import DeviceResult, FanOut, FleetError
from edgenas.fleet.model import LocalModel, load_model_dir

__all__ = ["DeviceResult", "FanOut", "FleetError", "LocalModel", "load_model_dir"]
