"""edgenas: hardware-aware neural architecture search for edge devices.

Train a once-for-all MobileNetV3 supernet once, measure its subnets on real devices, search per
device, and deploy int8 TFLite models to a fleet.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgenas.core.errors import ArchError, CheckpointError, EdgeNASError, SpecError
from edgenas.space.channels import make_divisible
from edgenas.space.spec import Arch, SearchSpace

__version__ = "0.1.0"

# The torch-backed names load on first use (PEP 562), not on ``import edgenas``: every ``edgenas.x``
# import runs this file, and verbs that touch no model (``device list``, ``fleet status``) must not
# pay torch's start-up for it.
_LAZY = {
    "MobileNetV3": "edgenas.supernets",
    "MobileNetV3Supernet": "edgenas.supernets",
    "build_supernet": "edgenas.supernets",
    "load_supernet": "edgenas.supernets",
    "import_ofa": "edgenas.supernets.ofa_import",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgenas' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

__all__ = [
    "Arch",
    "ArchError",
    "CheckpointError",
    "EdgeNASError",
    "MobileNetV3",
    "MobileNetV3Supernet",
    "SearchSpace",
    "SpecError",
    "__version__",
    "build_supernet",
    "import_ofa",
    "load_supernet",
    "make_divisible",
]
