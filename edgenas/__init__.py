"""edgenas: hardware-aware neural architecture search for edge devices.

Train a once-for-all MobileNetV3 supernet once, measure its subnets on real devices, search per
device, and deploy int8 TFLite models to a fleet.
"""

from edgenas.errors import ArchError, CheckpointError, EdgeNASError, SpecError
from edgenas.space import Arch, SearchSpace, make_divisible
from edgenas.supernets import MobileNetV3, MobileNetV3Supernet, build_supernet, load_supernet
from edgenas.supernets.ofa_import import import_ofa

__version__ = "0.1.0"

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
