"""Images for an export, made batch by batch instead of held as one float array.

At 224 px one normalised float image is 0.6 MB: 2000 BN-recalibration images, 500 calibration
images and the validation split held as float NCHW arrays (and copied again as NHWC for the
converter and the interpreter) were most of an export's peak memory.  An :class:`ImageStream` keeps
only what its source keeps (uint8 images, or file names) and normalises one batch at a time; the
exporter asks for batches of the size each consumer runs best at.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch


class ImageStream:
    """``count`` normalised float32 NCHW images at ``resolution``, made on demand.

    ``load(start, stop)`` returns images ``start`` to ``stop`` (exclusive) as a float32 NCHW array
    or tensor.  :meth:`from_array` wraps an array already in memory (batches are views of it).
    """

    def __init__(self, count: int, resolution: int,
                 load: Callable[[int, int], np.ndarray | torch.Tensor]) -> None:
        self.count = int(count)
        self.resolution = int(resolution)
        self._load = load

    @classmethod
    def from_array(cls, images_nchw: np.ndarray | torch.Tensor) -> ImageStream:
        array = images_nchw.numpy() if isinstance(images_nchw, torch.Tensor) else images_nchw
        return cls(len(array), int(array.shape[-1]), lambda a, b: array[a:b])

    def __len__(self) -> int:
        return self.count

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.count, 3, self.resolution, self.resolution)

    def take(self, start: int, stop: int) -> np.ndarray:
        """Images ``start:stop`` as one float32 NCHW array."""
        batch = self._load(start, min(stop, self.count))
        if isinstance(batch, torch.Tensor):
            batch = batch.numpy()
        return np.asarray(batch, dtype=np.float32)

    def batches(self, size: int, limit: int | None = None) -> Iterator[np.ndarray]:
        """Consecutive float32 NCHW batches of at most ``size`` images (the first ``limit``)."""
        stop = self.count if limit is None else min(limit, self.count)
        for start in range(0, stop, size):
            yield self.take(start, min(start + size, stop))

    def nhwc_batches(self, size: int, limit: int | None = None) -> Iterator[np.ndarray]:
        """The same batches as contiguous NHWC (what TFLite consumes)."""
        for batch in self.batches(size, limit):
            yield np.ascontiguousarray(batch.transpose(0, 2, 3, 1))

    def __getitem__(self, index: slice) -> torch.Tensor:
        """``stream[a:b]`` as a torch tensor: lets BN recalibration read the stream like a tensor."""
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("an ImageStream is read in contiguous slices")
        start, stop, _ = index.indices(self.count)
        return torch.from_numpy(self.take(start, stop))


def as_stream(images: Any) -> ImageStream:
    """An :class:`ImageStream` over ``images`` (a stream already, or an NCHW array/tensor)."""
    return images if isinstance(images, ImageStream) else ImageStream.from_array(images)


@contextlib.contextmanager
def channels_last(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` with its weights in channels-last order while inside: on a CPU, oneDNN runs the
    depthwise and 1×1 convolutions of a MobileNet ≈1.5–2× faster that way (feed it NHWC-strided
    batches: :func:`nhwc_strided`).  The weights' values do not change; their layout is restored."""
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)


def nhwc_strided(batch: np.ndarray | torch.Tensor) -> torch.Tensor:
    """An NCHW batch as a torch tensor stored channels-last (same values and shape)."""
    tensor = torch.from_numpy(batch) if isinstance(batch, np.ndarray) else batch
    return tensor.contiguous(memory_format=torch.channels_last)
