"""Top-1 of an *exported* model on the validation split, on the host or on a device.

The exporter records float and exported accuracy at export time; this re-measures a model folder
later — on the host through LiteRT, or on a device through the runner's ``predict`` — so the int8
loss on the hardware that will run it is a measured number, not an assumption.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgenas.core.errors import EdgeNASError
from edgenas.device.registry import get_device
from edgenas.device.session import DeviceSession
from edgenas.export.convert import run_tflite
from edgenas.export.package import ModelPackage
from edgenas.fleet.predict import input_file, predict_package
from edgenas.records.store import open_store
from edgenas.training.data import load_data


def _validation(package: ModelPackage, data: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    manifest, typed = package.data, package.manifest
    source = data or (manifest.get("provenance") or {}).get("data", {}).get("source")
    if not source:
        raise EdgeNASError("the manifest does not record its data set; pass --data")
    height, size = typed.input.size
    if height != size:
        raise EdgeNASError(f"input size {list(typed.input.size)} is not square; evaluate takes square "
                           "inputs")
    # Load at the storage size used at export (the space's largest resolution) and resize from
    # there, so the pixels are exactly the ones the recorded accuracy saw.
    stored = (manifest.get("provenance") or {}).get("data", {}).get("size") or size
    ds = load_data(source, size=int(stored))
    if ds.labels != list(typed.labels):
        raise EdgeNASError(f"data set {source} has labels {ds.labels[:5]}..., the model "
                           f"{list(typed.labels[:5])}...; evaluate on the data it was trained for")
    mean, std = typed.input.normalisation()  # per channel, for pixels on the 0..1 scale
    ds.normalization = {"mean": mean, "std": std}
    xs, ys = zip(*ds.val_batches(size))
    return torch.cat(xs).numpy().transpose(0, 2, 3, 1), torch.cat(ys).numpy(), str(source)


def evaluate_model_dir(directory: Path, data: str | None = None, *, home: Path | None = None,
                       device: str | None = None, timeout: float = 600.0) -> dict[str, Any]:
    """Top-1 of ``directory/model.tflite`` over the validation split (host, or ``device``)."""
    package = ModelPackage.load(directory)  # PackageError (an EdgeNASError) names the bad field
    manifest = package.data
    images, labels, source = _validation(package, data)
    if device is None:
        # the kernels the export's own validation used: the recorded top-1 is reproduced exactly
        predicted = run_tflite(str(package.model_path), images, builtin=True).argmax(1)
        where = "host"
    else:
        predicted = _predict_on_device(directory, manifest, images, home, device, timeout)
        where = device
    top1 = float((predicted == labels).mean())
    return {"model": str(directory), "arch": manifest.get("arch"),
            "precision": manifest.get("precision"), "where": where, "data": source,
            "images": int(len(labels)), "top1": top1,
            "recorded_exported_top1": (manifest.get("accuracy") or {}).get("exported_top1")}


def _predict_on_device(directory: Path, manifest: dict[str, Any], images: np.ndarray,
                       home: Path | None, device: str, timeout: float) -> np.ndarray:

    if home is None:
        raise EdgeNASError("evaluating on a device needs the workspace (--home)")
    with open_store(home) as store:
        dev = get_device(store, device)
    package = ModelPackage.load(directory)
    with tempfile.TemporaryDirectory() as tmp, DeviceSession(home, dev) as session:
        batch = Path(tmp) / "val.npy"
        np.save(batch, images.astype(np.float32))  # already normalised: the runner passes it
        result = predict_package(session, package.model_path, package.sha256, package.manifest_path,
                                 input_file(batch), top_k=1, timeout=timeout)
    preds = result.get("predictions") or []
    if len(preds) != len(images):
        raise EdgeNASError(f"{device}: runner returned {len(preds)} predictions for "
                           f"{len(images)} images")
    return np.asarray([p["top_k"][0]["index"] for p in preds])
