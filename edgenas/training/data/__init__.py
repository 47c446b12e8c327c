"""Training data: the embedded digits, ImageFolder and CIFAR-10 sources behind one interface.

``load_data(source, size)`` returns an :class:`ImageData` holding uint8 images in memory, its
normalisation, augmented training batches at any resolution, validation batches and a seeded
calibration sample (for BN recalibration and int8 export) — or, for an ImageFolder too large to
hold (or ``mode="stream"``), a :class:`StreamedImageData` with the same interface whose images
are decoded on demand by DataLoader workers.
"""

from edgenas.core.errors import DataError
from edgenas.training.data.dataset import (
    CALIBRATION_IMAGES,
    DATA_MODES,
    ImageData,
    load_data,
)
from edgenas.training.data.stream import StreamedImageData
from edgenas.training.data.transforms import compute_normalization

AnyImageData = ImageData | StreamedImageData

__all__ = ["CALIBRATION_IMAGES", "DATA_MODES", "AnyImageData", "DataError", "ImageData",
           "StreamedImageData", "compute_normalization", "load_data"]
