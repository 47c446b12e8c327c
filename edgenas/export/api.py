"""``edgenas.export(...)``: from a checkpoint and an arch to ``DIR/model.tflite`` + manifest.

It loads the source (a supernet checkpoint, a supernet object, or a fine-tuned subnet checkpoint),
extracts the subnet, re-estimates its BN statistics on real training images (a supernet's running
stats fit no single subnet), and hands real calibration and validation images to the pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgenas.core.progress import ProgressFn, reporter
from edgenas.core.threads import usable_cores
from edgenas.export.convert import ExportError
from edgenas.export.images import ImageStream, channels_last, nhwc_strided
from edgenas.export.pipeline import ExportResult, export_model, sha256_file
from edgenas.space.spec import Arch, SearchSpace
from edgenas.supernets.checkpoint import read_torch_file
from edgenas.supernets.mbv3 import MobileNetV3Supernet
from edgenas.supernets.static import MobileNetV3
from edgenas.training.data import ImageData, StreamedImageData, load_data
from edgenas.training.evaluate import recalibrate_bn

DEFAULT_CALIBRATION = 500
# BN re-estimation images: the int8 calibration images are the first of them (one seeded choice),
# so with equal counts the export decodes one set.  500 re-estimate as well as the whole training
# split did on digits (benchmarks/bn_images.py); fewer start to cost accuracy.
BN_CALIBRATION = 500
DEFAULT_VALIDATION = 1000
SOURCE = "export"
BN_BATCH = 32  # images per BN-recalibration pass: at 224 px, 250 held several GB of activations


@dataclass
class _Source:
    model: MobileNetV3
    arch: Arch
    space: SearchSpace
    labels: list[str]
    normalization: dict[str, list[float]]
    data_source: str | None
    provenance: dict[str, Any]
    needs_bn_recalibration: bool


def training_data_source(meta: dict[str, Any] | None) -> str | None:
    """The data set a checkpoint was trained on: ``meta["data"]`` as written by training
    (a source string) or ``{"source": ...}``."""
    data = (meta or {}).get("data")
    if isinstance(data, dict):
        data = data.get("source")
    return str(data) if data else None


def _from_supernet(net: MobileNetV3Supernet, arch: Arch | str, provenance: dict[str, Any]
                   ) -> _Source:
    arch = net.space.parse(arch) if isinstance(arch, str) else net.space.validate(arch)
    source = training_data_source(net.meta)
    return _Source(net.extract(arch).eval(), arch, net.space, list(net.labels),
                   dict(net.normalization), source, provenance, True)


def _load_source(source: str | Path | MobileNetV3Supernet, arch: Arch | str | None) -> _Source:
    if isinstance(source, MobileNetV3Supernet):
        return _from_supernet(source, arch or "max", {"supernet": "in-memory"})
    path = Path(source)
    raw = read_torch_file(path)
    kind = raw.get("format") if isinstance(raw, dict) else None
    provenance = {"source": str(path), "source_sha256": sha256_file(path), "source_format": kind}
    if kind == "edgenas-supernet":
        from edgenas.supernets.mbv3 import load_supernet

        return _from_supernet(load_supernet(path), arch or "max", provenance)
    if kind == "edgenas-subnet":
        from edgenas.supernets.subnet_ckpt import load_subnet

        sub = load_subnet(path)
        if arch is not None and str(arch) not in ("max", sub.arch.to_string()):
            raise ExportError(f"{path} is a fine-tuned subnet of arch {sub.arch}; "
                              f"it cannot be exported as {arch}")
        return _Source(sub.model.eval(), sub.arch, sub.space, list(sub.labels),
                       dict(sub.normalization), training_data_source(sub.meta), provenance,
                       False)
    raise ExportError(f"{path}: not an edgenas supernet or subnet checkpoint")


def _pick(data: ImageData | StreamedImageData, split: str, indices: torch.Tensor | None,
          resolution: int) -> ImageStream:
    """Normalised images of ``split`` (``indices`` of it, or all) as a stream: uint8 images or
    file names stay the source; each batch is resized (or decoded) and normalised when read."""
    count = len(indices) if indices is not None else (
        data.num_train if split == "train" else data.num_val)

    def rows(start: int, stop: int) -> torch.Tensor | list[int]:
        return indices[start:stop] if indices is not None else list(range(start, stop))

    if isinstance(data, StreamedImageData):
        files = data.train_files if split == "train" else data.val_files

        def load(start: int, stop: int) -> torch.Tensor:
            picked = [files[int(i)] for i in rows(start, stop)]
            return data.normalize(data.decode(picked, resolution))
    else:
        stored = data.train_x if split == "train" else data.val_x

        def load(start: int, stop: int) -> torch.Tensor:
            if indices is None:
                return data.prepare(stored[start:stop], resolution)
            return data.prepare(stored[indices[start:stop]], resolution)

    return ImageStream(count, resolution, load)


def calibration_stream(data: ImageData | StreamedImageData, n: int, resolution: int
                       ) -> ImageStream:
    """The ``n`` seeded, un-augmented training images ``data.calibration_images`` gives, as a
    stream (the same images, never held as float at once)."""
    return _pick(data, "train", data.calibration_indices(n), resolution)


def _validation(data: ImageData | StreamedImageData, resolution: int, samples: int
                ) -> tuple[ImageStream, np.ndarray]:
    """The validation split, or a seeded choice of ``samples`` of its images when it is larger:
    float and exported top-1 are measured on the same images, so their difference (what the
    export cost) stays sharp on a sample even where the absolute accuracy gets noisier."""
    if samples >= data.num_val:
        return _pick(data, "val", None, resolution), data.val_y.numpy()
    g = torch.Generator().manual_seed(0)
    picked = torch.randperm(data.num_val, generator=g)[:samples].sort().values
    return _pick(data, "val", picked, resolution), data.val_y[picked].numpy()


class _Batches:
    """A stream as ``recalibrate_bn`` reads its images: batches of ``size`` torch tensors when
    iterated, or tensor-like slices (``shape`` and ``[a:b]``)."""

    def __init__(self, stream: ImageStream, size: int) -> None:
        self.stream, self.size, self.shape = stream, size, stream.shape

    def __getitem__(self, index: slice) -> torch.Tensor:
        return nhwc_strided(self.stream[index])

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (nhwc_strided(b) for b in self.stream.batches(self.size))


def _recalibrate(model: MobileNetV3, data: ImageData | StreamedImageData, resolution: int,
                 samples: int = BN_CALIBRATION) -> None:
    """BN statistics re-estimated on ``samples`` training images, read :data:`BN_BATCH` at a time
    (``recalibrate_bn``'s cumulative average is exact whatever the batch size)."""
    images = _Batches(calibration_stream(data, samples, resolution), BN_BATCH)
    with channels_last(model):
        recalibrate_bn(model, images, batch_size=BN_BATCH,  # type: ignore[arg-type]
                       workers=usable_cores(4))


def export(source: str | Path | MobileNetV3Supernet, arch: Arch | str | None = None,
           precision: str = "int8", out_dir: str | Path = "model",
           data: str | Path | ImageData | None = None,
           calibration_samples: int = DEFAULT_CALIBRATION,
           search: str | Path | dict[str, Any] | None = None, *,
           bn_samples: int = BN_CALIBRATION, validation_samples: int = DEFAULT_VALIDATION,
           progress: bool | ProgressFn | None = None) -> ExportResult:
    """Export one subnet to ``out_dir`` as ``model.tflite`` + ``manifest.json``.

    ``arch`` is an :class:`Arch`, an id, or ``min``/``max`` (default ``max``; a fine-tuned
    subnet checkpoint already fixes it).  ``data`` defaults to the data set the checkpoint was
    trained on; images from it calibrate BN (``bn_samples`` training images, for a subnet of a
    supernet) and int8 (``calibration_samples``), and measure float and exported top-1 on
    ``validation_samples`` validation images (0: none).  ``search`` (a ``search.json`` path or its
    dict) records the search's latency promise for this arch.  ``progress``: True prints each
    phase, a callback gets the events, None logs them.
    """
    say = reporter(progress)
    src = _load_source(source, arch)
    if data is None:
        data = src.data_source
    if data is None:
        raise ExportError("this checkpoint does not record its data set; pass --data "
                          "(digits, an ImageFolder directory or a CIFAR-10 folder)")
    if not isinstance(data, ImageData):
        data = load_data(data, size=src.space.resolutions[-1])
    if data.num_classes != len(src.labels):
        raise ExportError(f"data set has {data.num_classes} classes but the model "
                          f"{len(src.labels)}; export with the data it was trained on")
    data.normalization = dict(src.normalization)  # the model's own normalisation wins
    res = src.arch.resolution
    bn_samples = min(bn_samples, data.num_train)
    if src.needs_bn_recalibration:
        say(SOURCE, f"BN statistics of {src.arch} on {bn_samples} training images")
        _recalibrate(src.model, data, res, bn_samples)
    calibration = calibration_stream(data, calibration_samples, res)
    provenance = {**src.provenance, "data": data.describe(), "bn_recalibrated":
                  src.needs_bn_recalibration}
    if src.needs_bn_recalibration:
        provenance["bn_images"] = bn_samples
    validation = _validation(data, res, validation_samples) if validation_samples > 0 else None
    return export_model(src.model, src.arch, src.space, src.labels, src.normalization, precision,
                        out_dir, calibration, validation, provenance,
                        search_promise(search, src.arch, precision), say=say)


def search_promise(search: str | Path | dict[str, Any] | None, arch: Arch,
                   precision: str) -> dict[str, Any]:
    """The search's prediction for ``arch`` (latency per device ± error) from ``search.json``."""
    if search is None:
        return {}
    if not isinstance(search, dict):
        try:
            search = json.loads(Path(search).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ExportError(f"cannot read the search result {search}: {exc}") from None
    wanted = arch.to_string()
    pool = [search.get("chosen") or {}] + list(search.get("verified") or []) \
        + list(search.get("front") or [])
    match = next((c for c in pool if c and c.get("arch") == wanted), None)
    if match is None:
        raise ExportError(f"arch {wanted} is not among the search's candidates; export the "
                          "chosen arch or drop --search")
    errors = (search.get("predictors") or {}).get("latency") or {}
    by_device = search.get("precision") or {}
    return {"arch": wanted, "accuracy": match.get("accuracy"),
            "latency_ms": {d: ms for d, ms in (match.get("latency_ms") or {}).items()
                           if by_device.get(d, precision) == precision},
            "error": {d: e.get("p90_rel_error") for d, e in errors.items()},
            "statistic": {d: e.get("statistic", "median") for d, e in errors.items()},
            "constraints": search.get("constraints"), "supernet_sha256":
            search.get("supernet_sha256")}
