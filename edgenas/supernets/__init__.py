"""Elastic MobileNetV3 supernet, its static subnets, checkpoints and the OFA importer."""

from edgenas.supernets.mbv3 import MobileNetV3Supernet, build_supernet, load_supernet
from edgenas.supernets.static import MobileNetV3

__all__ = ["MobileNetV3", "MobileNetV3Supernet", "build_supernet", "load_supernet"]
