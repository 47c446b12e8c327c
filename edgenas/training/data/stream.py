"""A streamed ImageFolder: DataLoader workers decode and augment each batch on the fly.

Used when the in-memory path would not fit (``load_data(..., mode="auto")`` weighs what each path
really costs against the memory left: :mod:`edgenas.training.data.memory`) or when asked for with
``mode="stream"``.  Memory then stays bounded by the batch size, the number of workers and their
prefetch depth, whatever the number of images.

Design points that keep training reproducible and resumable:

* The **order** of the training images is the trainer's own (:class:`BatchOrder`: one seeded
  permutation per epoch, each global batch split between the ranks of a ``torchrun`` job, the
  incomplete tail dropped), so a streamed run and an in-memory run visit the same images in the
  same order, and a resume from ``(epoch, position, step)`` continues exactly where the run stopped.
  It plays the role of ``DistributedSampler`` (disjoint shards per rank) but, unlike it, can start
  in the middle of an epoch.
* The **resolution** of every batch is decided in the sampler from the step number, with the same
  seeded draw the trainer uses, so elastic resolution survives the move into worker processes.
* Every image's **augmentation** is seeded from ``(run seed, step, image index)``, not from worker
  state, so results do not depend on the number of workers.
* JPEGs are decoded with Pillow's ``draft()`` at the smallest scale (1/2, 1/4, 1/8) that still
  covers the crop at the target resolution: a 500 px photo trained at 128 px decodes 4× fewer rows.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from edgenas.core.errors import DataError
from edgenas.training.data import transforms as T

NORMALIZATION_SAMPLE = 2000
NORMALIZATION_SIZE = 64


# ------------------------------------------------------------------------------------ decoding


def _open_rgb(path: str, draft: tuple[int, int] | None) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        if draft is not None and img.format == "JPEG":
            img.draft("RGB", draft)
        img = img.convert("RGB")
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: unreadable or truncated image ({exc})") from None
    if img.width == 0 or img.height == 0:
        raise DataError(f"{path}: empty image ({img.width}x{img.height})")
    return img


def decode_center(path: str, size: int) -> np.ndarray:
    """The centred square of ``path`` at ``size`` px, uint8 CHW (evaluation and calibration)."""
    from PIL import Image

    with Image.open(path) as probe:
        w, h = probe.size
    side = max(1, min(w, h))
    img = _open_rgb(path, (math.ceil(size * w / side), math.ceil(size * h / side)))
    w2, h2 = img.size
    s2 = min(w2, h2)
    box = ((w2 - s2) / 2, (h2 - s2) / 2, (w2 + s2) / 2, (h2 + s2) / 2)
    out = img.resize((size, size), Image.BILINEAR, box=box, reducing_gap=None)
    return np.array(out, dtype=np.uint8).transpose(2, 0, 1)


def decode_train(path: str, size: int, seed: int, scale: tuple[float, float],
                 flip: bool) -> np.ndarray:
    """A random-resized crop of ``path`` at ``size`` px (area ``scale``, aspect 3/4..4/3)."""
    from PIL import Image

    rng = random.Random(seed)
    area = rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    fw = min(1.0, math.sqrt(area * aspect))  # crop width as a fraction of the image width
    fh = min(1.0, math.sqrt(area / aspect))
    fx, fy = rng.uniform(0, 1 - fw), rng.uniform(0, 1 - fh)
    mirror = flip and rng.random() < 0.5
    img = _open_rgb(path, (math.ceil(size / fw), math.ceil(size / fh)))
    w, h = img.size
    box = (fx * w, fy * h, (fx + fw) * w, (fy + fh) * h)
    out = img.resize((size, size), Image.BILINEAR, box=box, reducing_gap=None)
    if mirror:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return np.array(out, dtype=np.uint8).transpose(2, 0, 1)


# ------------------------------------------------------------------------------- batch order


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (the trainer's step seeds use the same recipe)."""
    value = 0
    for p in parts:
        value = (value * 1_000_003 + p * 7_919 + 1) % (2**63 - 1)
    return value


@dataclass
class BatchOrder:
    """Which images each rank trains on at each step: the single implementation of data order.

    ``perm(epoch)`` is the epoch's seeded permutation; :meth:`next` cuts the next global batch,
    drops an incomplete tail (tiny last batches upset batch norm) and returns this rank's share.
    """

    num_train: int
    global_batch: int
    world: int
    rank: int
    perm: Callable[[int], torch.Tensor]

    def next(self, epoch: int, pos: int, order: torch.Tensor
             ) -> tuple[torch.Tensor, int, int, torch.Tensor, bool]:
        """(this rank's indices, epoch, pos, order after the batch, epoch just ended)."""
        gb = min(self.global_batch, self.num_train)
        idx = order[pos:pos + gb]
        pos += gb
        ended = pos + gb > self.num_train
        if ended:
            epoch += 1
            pos = 0
            order = self.perm(epoch)
        share = max(1, len(idx) // self.world)
        return idx[self.rank * share:(self.rank + 1) * share], epoch, pos, order, ended


class StepBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Endless batches of ``(image index, resolution, augmentation seed)`` from a given step on."""

    def __init__(self, order: BatchOrder, epoch: int, pos: int, step: int,
                 resolution: Callable[[int], int], seed: int) -> None:
        self.order, self.epoch, self.pos, self.step = order, epoch, pos, step
        self.resolution, self.seed = resolution, seed

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        epoch, pos, step = self.epoch, self.pos, self.step
        perm = self.order.perm(epoch)
        while True:
            idx, epoch, pos, perm, _ = self.order.next(epoch, pos, perm)
            res = self.resolution(step)
            yield [(int(i), res, mix_seed(self.seed, step, int(i))) for i in idx]
            step += 1

    def __len__(self) -> int:  # endless; DataLoader only needs it for len(loader)
        return 1 << 62


class _TrainSet(Dataset):
    def __init__(self, files: Sequence[str], labels: torch.Tensor, scale: tuple[float, float],
                 flip: bool) -> None:
        self.files, self.labels, self.scale, self.flip = files, labels, scale, flip

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int, int]) -> tuple[torch.Tensor, int, int, int]:
        i, res, seed = item
        x = decode_train(self.files[i], res, seed, self.scale, self.flip)
        return torch.from_numpy(x), int(self.labels[i]), i, res


class _EvalSet(Dataset):
    def __init__(self, files: Sequence[str], labels: torch.Tensor, size: int) -> None:
        self.files, self.labels, self.size = files, labels, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(decode_center(self.files[i], self.size)), int(self.labels[i])


def _collate_train(items: list[tuple[torch.Tensor, int, int, int]]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    x = torch.stack([it[0] for it in items])
    y = torch.tensor([it[1] for it in items], dtype=torch.int64)
    idx = torch.tensor([it[2] for it in items], dtype=torch.int64)
    return x, y, idx, items[0][3]


def _private_generator() -> torch.Generator:
    """A DataLoader draws its workers' base seed from this generator; without one it would draw
    from torch's global RNG and shift the dropout masks of whichever step started the loader,
    which would make a resumed run differ from an uninterrupted one."""
    return torch.Generator().manual_seed(0)


def default_workers() -> int:
    """Decoding workers: the cores torch is not using for the step, at least one, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, (cores or 2) - 1))


# --------------------------------------------------------------------------------- the data set


@dataclass
class StreamedImageData:
    """The :class:`~edgenas.training.data.ImageData` interface over files decoded on demand."""

    source: str
    name: str
    labels: list[str]
    train_files: list[str]
    train_y: torch.Tensor
    val_files: list[str]
    val_y: torch.Tensor
    size: int
    flip: bool = True
    crop_scale: tuple[float, float] = (0.35, 1.0)
    normalization: dict[str, list[float]] = field(default_factory=dict)
    workers: int = field(default_factory=default_workers)
    memory_plan: Any = None  # the MemoryPlan that chose streaming (edgenas.training.data.memory)
    _cache: dict[tuple[str, int, int], torch.Tensor] = field(default_factory=dict, repr=False)

    streamed = True

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def num_train(self) -> int:
        return len(self.train_files)

    @property
    def num_val(self) -> int:
        return len(self.val_files)

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.tensor(self.normalization["mean"]), torch.tensor(self.normalization["std"]))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 batch at its final size → normalised float."""
        mean, std = self._stats()
        return T.normalize(T.to_float(images), mean, std)

    def prepare(self, images: torch.Tensor, resolution: int) -> torch.Tensor:
        mean, std = self._stats()
        return T.normalize(T.resize(T.to_float(images), resolution), mean, std)

    def decode(self, files: Sequence[str], resolution: int) -> torch.Tensor:
        """Centre crops of ``files`` at ``resolution`` as uint8 NCHW (in this process)."""
        return torch.from_numpy(np.stack([decode_center(f, resolution) for f in files]))

    def sample_images(self, n: int, resolution: int) -> torch.Tensor:
        """The first ``n`` training images, normalised, at ``resolution`` (timing probes)."""
        return self.normalize(self.decode(self.train_files[:n], resolution))

    def train_batch(self, indices: torch.Tensor, resolution: int,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One augmented batch decoded in this process (callers without a loader: fine-tuning)."""
        base = int(torch.randint(0, 2**62, (1,), generator=generator))
        x = torch.from_numpy(np.stack([
            decode_train(self.train_files[int(i)], resolution, mix_seed(base, int(i)),
                         self.crop_scale, self.flip) for i in indices]))
        return self.normalize(x), self.train_y[indices]

    def train_loader(self, sampler: StepBatchSampler, workers: int | None = None,
                     pin_memory: bool = False) -> DataLoader:
        """Batches ``(uint8 x, y, indices, resolution)`` decoded by worker processes.

        ``pin_memory`` (for CUDA) puts each batch in page-locked memory so the copy to the GPU can
        overlap the previous step.
        """
        workers = self.workers if workers is None else workers
        return DataLoader(_TrainSet(self.train_files, self.train_y, self.crop_scale, self.flip),
                          batch_sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                          collate_fn=_collate_train, generator=_private_generator(),
                          prefetch_factor=2 if workers > 0 else None)

    def val_batches(self, resolution: int, batch_size: int | None = None
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Validation images at ``resolution``, decoded by workers as they are consumed."""
        batch_size = batch_size or max(25, min(250, 500 * 64 * 64 // (resolution * resolution)))
        loader = DataLoader(_EvalSet(self.val_files, self.val_y, resolution),
                            batch_size=batch_size, num_workers=self.workers,
                            generator=_private_generator(),
                            prefetch_factor=2 if self.workers > 0 else None)
        for x, y in loader:
            yield self.normalize(x), y

    def calibration_indices(self, n: int = 2000, seed: int = 0) -> torch.Tensor:
        if n >= self.num_train:
            return torch.arange(self.num_train)
        g = torch.Generator().manual_seed(seed)
        return torch.randperm(self.num_train, generator=g)[:n].sort().values

    def _calibration_uint8(self, n: int, resolution: int, seed: int) -> torch.Tensor:
        key = (f"cal{seed}", resolution, n)
        if key not in self._cache:
            files = [self.train_files[int(i)] for i in self.calibration_indices(n, seed)]
            loader = DataLoader(_EvalSet(files, torch.zeros(len(files), dtype=torch.int64),
                                         resolution), batch_size=250, num_workers=self.workers,
                                generator=_private_generator())
            self._cache[key] = torch.cat([x for x, _ in loader])
        return self._cache[key]

    def calibration_images(self, n: int = 2000, resolution: int | None = None,
                           seed: int = 0) -> torch.Tensor:
        """Seeded un-augmented training images, normalised (cached as uint8, per resolution)."""
        return self.normalize(self._calibration_uint8(n, resolution or self.size, seed))

    def calibration_batches(self, n: int = 2000, resolution: int | None = None, seed: int = 0,
                            batch_size: int = 250) -> Iterator[torch.Tensor]:
        """:meth:`calibration_images`, normalised one batch at a time (bounded float memory)."""
        images = self._calibration_uint8(n, resolution or self.size, seed)
        for i in range(0, images.shape[0], batch_size):
            yield self.normalize(images[i:i + batch_size])

    def describe(self) -> dict[str, object]:
        return {"source": self.source, "name": self.name, "classes": self.num_classes,
                "train": self.num_train, "val": self.num_val, "size": self.size,
                "normalization": self.normalization, "mode": "stream",
                "memory": self.memory_plan.to_json() if self.memory_plan is not None else None}


def streamed_folder(source: str, name: str, labels: list[str], train: tuple[list[str], torch.Tensor],
                    val: tuple[list[str], torch.Tensor], size: int,
                    workers: int | None = None) -> StreamedImageData:
    """A :class:`StreamedImageData`, its normalisation measured on a seeded sample of images."""
    data = StreamedImageData(source, name, labels, train[0], train[1], val[0], val[1], size,
                             normalization={"mean": [0.0] * 3, "std": [1.0] * 3})
    if workers is not None:
        data.workers = workers
    idx = data.calibration_indices(NORMALIZATION_SAMPLE, seed=1)
    files = [data.train_files[int(i)] for i in idx]
    loader = DataLoader(_EvalSet(files, torch.zeros(len(files), dtype=torch.int64),
                                 min(size, NORMALIZATION_SIZE)),
                        batch_size=250, num_workers=data.workers, generator=_private_generator())
    sample = torch.cat([x for x, _ in loader])
    data.normalization = T.compute_normalization(sample)
    return data
