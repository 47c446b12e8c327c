"""One in-memory data set behind one interface, whatever its source.

Images stay ``uint8`` in memory (4× smaller than float, and a batch is converted on demand), which
is what makes DataLoader-free batching fast enough on a 2-core CPU.  Resolution is a property of the
*batch*, not of the data set: elastic-resolution training asks for each batch at the size of the
subnets it will train, and evaluation asks for the subnet's own resolution.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from edgenas.core.errors import DataError
from edgenas.training.data import transforms as T
from edgenas.training.data.memory import MemoryPlan, plan_memory
from edgenas.training.data.sources import (
    SPLIT_SEED,
    RawData,
    decode_folder,
    is_cifar_dir,
    load_cifar10,
    load_digits_data,
    scan_image_folder,
)
from edgenas.training.data.stream import StreamedImageData, default_workers, streamed_folder

if TYPE_CHECKING:
    from edgenas.space.spec import SearchSpace

log = logging.getLogger(__name__)
CALIBRATION_IMAGES = 2000
CACHE_BYTES = 64 << 20  # float tensors kept between calls only below this size
VAL_PIXELS = 500 * 64 * 64  # images × pixels of one validation batch (500 at 64 px, 40 at 224)


def val_batch_size(resolution: int, requested: int | None = None) -> int:
    """Validation batch: ``requested``, or as many images as keep its feature maps bounded (eval
    mode, so the batch size does not change the result)."""
    if requested is not None:
        return requested
    return max(25, min(500, VAL_PIXELS // (resolution * resolution)))


@dataclass
class ImageData:
    """Train/val images, labels, normalisation and the augmentations that suit them."""

    source: str
    name: str
    labels: list[str]
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    flip: bool = False
    crop_scale: tuple[float, float] = (0.35, 1.0)
    normalization: dict[str, list[float]] = field(default_factory=dict)
    memory_plan: MemoryPlan | None = None
    _cache: dict[tuple[str, int, int], torch.Tensor] = field(default_factory=dict, repr=False)

    streamed = False

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def num_train(self) -> int:
        return int(self.train_x.shape[0])

    @property
    def num_val(self) -> int:
        return int(self.val_x.shape[0])

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.tensor(self.normalization["mean"]), torch.tensor(self.normalization["std"]))

    def prepare(self, images: torch.Tensor, resolution: int) -> torch.Tensor:
        """uint8 images → normalised float at ``resolution`` (no augmentation)."""
        mean, std = self._stats()
        return T.normalize(T.resize(T.to_float(images), resolution), mean, std)

    def sample_images(self, n: int, resolution: int) -> torch.Tensor:
        """The first ``n`` training images, normalised, at ``resolution`` (timing probes)."""
        return self.prepare(self.train_x[:n], resolution)

    # ---- training
    def train_batch(self, indices: torch.Tensor, resolution: int,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented, normalised training batch at ``resolution`` (random-resized-crop, flip)."""
        mean, std = self._stats()
        x = T.to_float(self.train_x[indices])
        x = T.random_resized_crop(x, resolution, generator, self.crop_scale, flip=self.flip)
        return T.normalize(x, mean, std), self.train_y[indices]

    # ---- evaluation
    def val_batches(self, resolution: int, batch_size: int | None = None
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Validation images at ``resolution``, converted batch by batch from the uint8 set (a
        float copy of the whole set is kept between calls only when it is small)."""
        batch_size = val_batch_size(resolution, batch_size)
        key = ("val", resolution, self.num_val)
        if key not in self._cache and 4 * self.val_x[:1].numel() * self.num_val * (
                resolution / max(1, self.val_x.shape[-1])) ** 2 <= CACHE_BYTES:
            self._cache[key] = self.prepare(self.val_x, resolution)
        cached = self._cache.get(key)
        for i in range(0, self.num_val, batch_size):
            x = cached[i:i + batch_size] if cached is not None else \
                self.prepare(self.val_x[i:i + batch_size], resolution)
            yield x, self.val_y[i:i + batch_size]

    def calibration_indices(self, n: int = CALIBRATION_IMAGES, seed: int = SPLIT_SEED
                            ) -> torch.Tensor:
        """A fixed, seeded choice of ``n`` training images (all of them when there are fewer)."""
        if n >= self.num_train:
            return torch.arange(self.num_train)
        g = torch.Generator().manual_seed(seed)
        return torch.randperm(self.num_train, generator=g)[:n].sort().values

    def calibration_images(self, n: int = CALIBRATION_IMAGES, resolution: int | None = None,
                           seed: int = SPLIT_SEED) -> torch.Tensor:
        """Normalised float NCHW calibration images (BN recalibration, int8 export); cached when
        small (see :meth:`calibration_batches` for a bounded-memory way through them).

        Un-augmented so the statistics match what the subnet sees at inference.
        """
        resolution = resolution or int(self.train_x.shape[-1])
        key = (f"cal{seed}", resolution, n)
        if key in self._cache:
            return self._cache[key]
        x = self.prepare(self.train_x[self.calibration_indices(n, seed)], resolution)
        if x.numel() * 4 <= CACHE_BYTES:
            self._cache[key] = x
        return x

    def calibration_batches(self, n: int = CALIBRATION_IMAGES, resolution: int | None = None,
                            seed: int = SPLIT_SEED, batch_size: int = 250
                            ) -> Iterator[torch.Tensor]:
        """The calibration images of :meth:`calibration_images`, normalised one batch at a time
        (the same values; only one batch is ever float)."""
        resolution = resolution or int(self.train_x.shape[-1])
        key = (f"cal{seed}", resolution, n)
        if key in self._cache or n * 3 * resolution * resolution * 4 <= CACHE_BYTES:
            images = self.calibration_images(n, resolution, seed)
            for i in range(0, images.shape[0], batch_size):
                yield images[i:i + batch_size]
            return
        idx = self.calibration_indices(n, seed)
        for i in range(0, len(idx), batch_size):
            yield self.prepare(self.train_x[idx[i:i + batch_size]], resolution)

    def describe(self) -> dict[str, object]:
        return {"source": self.source, "name": self.name, "classes": self.num_classes,
                "train": self.num_train, "val": self.num_val,
                "size": int(self.train_x.shape[-1]), "normalization": self.normalization,
                "mode": "memory",
                "memory": self.memory_plan.to_json() if self.memory_plan is not None else None}


DATA_MODES = ("auto", "memory", "stream")


def load_data(source: str | Path, size: int = 32, *, limit: int | None = None,
              val_fraction: float = 0.2, mode: str = "auto",
              workers: int | None = None, space: SearchSpace | None = None,
              batch_size: int = 64) -> ImageData | StreamedImageData:
    """Load ``digits``, an ImageFolder root, or a CIFAR-10 folder, stored at ``size`` px.

    ``size`` is the storage size (use the space's largest resolution); batches are resized to each
    subnet's resolution later.  ``limit`` keeps the first ``limit`` training images (quick trials).

    ``mode``: ``memory`` decodes every image once and keeps it (fastest per step); ``stream``
    decodes each batch on the fly in ``workers`` DataLoader processes (ImageFolder only; memory
    bounded whatever the size); ``auto`` keeps an ImageFolder in memory when what that path
    really costs — decoded set, load and augmentation transients, and (given ``space`` and
    ``batch_size``) training and evaluation of the largest subnet — fits the memory left, and
    streams it otherwise (:func:`edgenas.training.data.memory.plan_memory`).  The decision and its
    reasons are in the returned data's ``memory_plan`` (and logged).
    """
    if mode not in DATA_MODES:
        raise DataError(f"data mode must be one of {', '.join(DATA_MODES)}, got {mode!r}")
    text = str(source)
    if limit is not None and limit < 2:
        raise DataError(f"limit must be at least 2 images, got {limit}")
    raw: RawData
    plan: MemoryPlan | None = None
    if mode == "stream" and (text == "digits" or text.startswith("cifar10:")):
        raise DataError(f"{text}: only an ImageFolder can be streamed (this source is small and "
                        "always held in memory); use --data-mode auto or memory")
    if text == "digits":
        raw = load_digits_data(size, val_fraction)
    else:
        kind, _, rest = text.partition(":")
        if kind in ("folder", "cifar10") and rest:
            path = Path(rest).expanduser()
        else:
            kind, path = "", Path(text).expanduser()
        if not path.exists():
            raise DataError(f"{path}: no such data set (give 'digits', an ImageFolder directory "
                            "or a CIFAR-10 python directory)")
        if kind == "cifar10" or (not kind and is_cifar_dir(path)):
            if mode == "stream":
                raise DataError(f"{path}: only an ImageFolder can be streamed (CIFAR-10 is held "
                                "in memory, 180 MB); use --data-mode auto or memory")
            raw = load_cifar10(path, size)
        else:
            files = scan_image_folder(path, val_fraction)
            if limit is not None:
                files.train_files, files.train_y = files.train_files[:limit], files.train_y[:limit]
            n_workers = workers if workers is not None else default_workers()
            plan = plan_memory(len(files.train_files) + len(files.val_files), size, space=space,
                               batch=batch_size, num_classes=len(files.labels),
                               workers=n_workers, requested=mode)
            log.info("%s: %s", path, plan.describe())
            if plan.mode == "stream":
                if not files.val_files:
                    raise DataError(f"{text}: no validation images (too few images per class "
                                    "to split)")
                data = streamed_folder(text, files.name, files.labels,
                                       (files.train_files, files.train_y),
                                       (files.val_files, files.val_y), size, workers)
                data.memory_plan = plan
                return data
            raw = decode_folder(files, size)  # already limited: the rest is never decoded
    if limit is not None:
        raw.train_x, raw.train_y = raw.train_x[:limit], raw.train_y[:limit]
    if raw.train_x.shape[0] == 0:
        raise DataError(f"{text}: no training images")
    if raw.val_x.shape[0] == 0:
        raise DataError(f"{text}: no validation images (too few images per class to split)")
    if plan is None and space is not None:  # digits, CIFAR: held in memory; the estimate all the same
        stored = int(raw.train_x.shape[-1])  # CIFAR stays at 32 px
        plan = plan_memory(raw.train_x.shape[0] + raw.val_x.shape[0], stored, space=space,
                           batch=batch_size, num_classes=len(raw.labels), workers=0,
                           requested="memory", can_stream=False)
        plan.baseline -= plan.memory_parts["data"]  # already decoded: counted once, as data
        plan.reason = "this source is always held in memory"
    return ImageData(text, raw.name, raw.labels, raw.train_x.contiguous(), raw.train_y,
                     raw.val_x.contiguous(), raw.val_y, raw.flip, raw.crop_scale,
                     T.compute_normalization(raw.train_x), memory_plan=plan)
