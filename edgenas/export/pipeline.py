"""The export pipeline: static subnet → parity-checked Keras model → TFLite + manifest.

The float parity check runs *before* any quantisation: if the Keras rebuild does not compute the
torch function (max abs logit difference ≤ 1e-4 on real images), no model is written and the error
names the first block that diverged.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgenas.core.files import sha256_file  # noqa: F401  (re-exported by edgenas.export)
from edgenas.export.convert import (
    ExportError,
    convert,
    io_details,
    load_tensorflow,
    make_interpreter,
    tflite_logits,
)
from edgenas.export.images import ImageStream, as_stream, channels_last, nhwc_strided
from edgenas.export.keras_model import build_keras_model, first_divergence
from edgenas.export.package import ModelPackage, PackageError
from edgenas.space.spec import Arch, SearchSpace
from edgenas.supernets.static import MobileNetV3

PARITY_TOLERANCE = 1e-4
PARITY_IMAGES = 16
PARITY_BATCH = 4
# Images per forward pass when validating: at 224 px the largest subnet's widest activation is
# 4.8 MB an image, so a batch of 256 held ≈1.2 GB per tensor; 32 runs as fast and holds 150 MB.
TORCH_BATCH = 32
TFLITE_BATCH = 16


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    model_path: Path
    manifest_path: Path
    manifest: dict[str, Any]




def _top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def parity_limit(logits: np.ndarray) -> float:
    """1e-4 absolute for logits of magnitude ≤ 1, relative beyond that.

    float32 carries ~7 significant digits, so logits in the thousands (an un-recalibrated
    subnet) cannot agree to 1e-4 absolute even between two correct implementations.
    """
    return PARITY_TOLERANCE * max(1.0, float(np.abs(logits).max()))


class Prepared:
    """A subnet's Keras graph, checked against torch once and frozen at most once: what every
    precision of one subnet shares (a campaign exports fp32 and int8 of it from one graph)."""

    def __init__(self, keras_model: Any, parity: float) -> None:
        self.keras_model = keras_model
        self.parity = parity
        self._frozen: Any | None = None

    def frozen(self) -> Any:
        if self._frozen is None:
            from edgenas.export.convert import captured_output, freeze

            with captured_output():
                self._frozen = freeze(self.keras_model)
        return self._frozen


def prepare(model: MobileNetV3, arch: Arch, calibration_nchw: np.ndarray | ImageStream
            ) -> Prepared:
    """Build the Keras graph of ``model`` and check its parity on the first
    :data:`PARITY_IMAGES` calibration images (raises on a mismatch)."""
    keras_model = build_keras_model(model.eval(), arch.resolution)
    parity = check_parity(keras_model, model, as_stream(calibration_nchw).take(0, PARITY_IMAGES))
    return Prepared(keras_model, parity)


def float_logits(model: MobileNetV3, images: ImageStream) -> np.ndarray:
    """The torch model's logits for every image of ``images``, :data:`TORCH_BATCH` at a time."""
    with torch.no_grad(), channels_last(model):
        return np.concatenate([model(nhwc_strided(x)).numpy()
                               for x in images.batches(TORCH_BATCH)])


def _threads() -> int:
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1))


def check_parity(keras_model: Any, model: MobileNetV3, images_nchw: np.ndarray) -> float:
    """Max abs logit difference Keras vs torch; raises naming the first diverging block."""
    with torch.no_grad():
        want = model.eval()(torch.from_numpy(images_nchw)).numpy()
    # a few images per eager call: Keras keeps every activation of a call alive until it returns
    got = np.concatenate([np.asarray(keras_model(np.ascontiguousarray(
        images_nchw[i:i + PARITY_BATCH].transpose(0, 2, 3, 1)), training=False))
        for i in range(0, len(images_nchw), PARITY_BATCH)])
    diff = float(np.abs(got - want).max())
    limit = parity_limit(want)
    if not np.isfinite(diff) or diff > limit:
        where = first_divergence(keras_model, model, images_nchw, PARITY_TOLERANCE)
        block = f"; first divergence at {where[0]} (max abs diff {where[1]:.3g})" if where else ""
        raise ExportError(
            f"float parity check failed: Keras and torch logits differ by {diff:.3g} "
            f"(limit {limit:.3g}){block}; nothing was written"
        )
    return diff


def export_model(model: MobileNetV3, arch: Arch, space: SearchSpace, labels: list[str],
                 normalization: dict[str, list[float]], precision: str, out_dir: str | Path,
                 calibration_nchw: np.ndarray | ImageStream,
                 validation: tuple[np.ndarray | ImageStream, np.ndarray] | None,
                 provenance: dict[str, Any] | None = None,
                 search: dict[str, Any] | None = None, signatures: bool = True,
                 prepared: Prepared | None = None) -> ExportResult:
    """Export ``model`` (the static subnet for ``arch``) and write ``model.tflite`` + manifest.

    ``calibration_nchw`` are normalised real images at ``arch.resolution`` (an NCHW array, or an
    :class:`~edgenas.export.images.ImageStream` that makes them batch by batch): they drive the
    parity check and int8 calibration.  ``validation`` (images, labels) gives float and exported
    top-1; its images too may be a stream.
    ``search`` is what the search promised for this arch (predicted latency per device and the
    predictors' error), kept so ``fleet bench`` can flag devices that miss the promise.
    ``signatures=False`` converts without the signature table, ≈3× faster (see :func:`convert`);
    measurement campaigns use it, models that ship keep their ``serving_default`` signature.
    ``prepared`` (:func:`prepare`, for this ``model``): its Keras graph, parity-checked and frozen
    once, reused for every precision of the subnet.
    """
    tf, keras = load_tensorflow()
    out_dir = Path(out_dir)
    model = model.eval()
    start = time.perf_counter()
    if prepared is None:
        prepared = prepare(model, arch, calibration_nchw)
    keras_model, parity = prepared.keras_model, prepared.parity
    calibration = as_stream(calibration_nchw)
    blob = convert(keras_model, precision, calibration if precision == "int8" else None,
                   signatures=signatures, frozen=None if signatures else prepared.frozen())

    details = io_details(make_interpreter(blob))
    accuracy: dict[str, Any] = {}
    if validation is not None:
        images, targets = as_stream(validation[0]), np.asarray(validation[1])
        exported_logits = tflite_logits(blob, images.nhwc_batches(TFLITE_BATCH), _threads())
        accuracy = {"split": "validation", "samples": int(len(targets)),
                    "float_top1": _top1(float_logits(model, images), targets),
                    "exported_top1": _top1(exported_logits, targets)}

    manifest = {
        "arch": arch.to_string(),
        "arch_json": arch.to_json(),
        "space": space.name,
        "precision": precision,
        "labels": list(labels),
        "input": {"size": arch.resolution, "layout": "NHWC", "channels": 3,
                  "mean": [float(v) for v in normalization["mean"]],
                  "std": [float(v) for v in normalization["std"]],
                  "pixel_range": [0.0, 1.0], **details["input"]},
        "output": details["output"],
        "model": {"file": "model.tflite"},  # sha256 and bytes: computed by ModelPackage.write
        "macs": space.macs(arch, len(labels)),
        "params": space.params(arch, len(labels)),
        "accuracy": accuracy,
        "parity": {"max_abs_logit_diff": parity, "limit": PARITY_TOLERANCE,
                   "images": int(min(PARITY_IMAGES, len(calibration)))},
        "calibration": {"images": int(len(calibration))} if precision == "int8" else {},
        "signatures": signatures,
        "latency": {},
        "search": dict(search or {}),
        "provenance": dict(provenance or {}),
        "tools": {"torch": torch.__version__, "tensorflow": tf.__version__,
                  "keras": keras.__version__, "python": platform.python_version()},
        "export_seconds": round(time.perf_counter() - start, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        package = ModelPackage.write(out_dir, manifest, model=blob)
    except PackageError as exc:  # a bug in the exporter, not user input: say what broke the rules
        raise ExportError(f"the exported manifest breaks the package rules: {exc}") from None
    return ExportResult(out_dir, package.model_path, package.manifest_path, package.data)


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of an exported model folder as a JSON object, checked by the package rules
    (:meth:`edgenas.export.package.ModelPackage.load`: model name, TFL3, sha256, typed fields)."""
    try:
        return ModelPackage.load(directory).data
    except PackageError as exc:
        raise ExportError(str(exc)) from None
