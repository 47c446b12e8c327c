"""Training data: the embedded digits, ImageFolder and CIFAR-10 sources behind one interface.

``load_data(source, size)`` returns an :class:`ImageData` holding uint8 images in memory, its
normalisation, augmented training batches at any resolution, validation batches and a seeded
calibration sample (for BN recalibration and int8 export).
"""

from edgenas.data.dataset import CALIBRATION_IMAGES, ImageData, compute_normalization, load_data
from edgenas.errors import DataError

__all__ = ["CALIBRATION_IMAGES", "DataError", "ImageData", "compute_normalization", "load_data"]
