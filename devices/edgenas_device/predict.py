"""``predict``: classify an image or a ``.npy`` array with the model package's own preprocessing.

The manifest is read by :mod:`edgenas_device.manifest`, the same strict rules the host's export, bench
and fleet use: a manifest the host would refuse is refused here too (exit 3 ``manifest_invalid``), labels
are a list in the manifest (never a file the runner would read and return), and the model given must
be the one the manifest vouches for (its sha256).  Python >= 3.8; numpy imported when the command runs.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from edgenas_device.contract import (
    EXIT_DEPENDENCY,
    EXIT_FILE,
    EXIT_USAGE,
    RunnerError,
    log,
    runner_facts,
)
from edgenas_device.manifest import MANIFEST_FILE, ManifestError, read_manifest_file
from edgenas_device.runtimes import check_load_in_child, make_interpreter, select_runtime
from edgenas_device.timing import check_model, threads_arg

# What predict uses when the model has no manifest: no normalisation, labels are class indices.
NO_MANIFEST: dict[str, Any] = {
    "labels": None,
    "size": None,
    "layout": None,
    "channels": None,
    "mean": None,
    "std": None,
    "npy_normalized": True,
    "output_is_probabilities": False,
    "precision": None,
}


def load_manifest(model_path: str, explicit: str | None) -> tuple[dict[str, Any], str | None, Any]:
    """``(preprocessing, manifest path or None, Manifest or None)`` for the model.

    The default is ``manifest.json`` beside the model; a missing default means no manifest (with a
    warning), a missing ``--manifest`` is an error.  Any manifest found is validated strictly."""
    path = explicit or os.path.join(os.path.dirname(os.path.abspath(model_path)), MANIFEST_FILE)
    if not os.path.exists(path):
        if explicit:
            raise RunnerError("manifest not found: " + path, "manifest_invalid", EXIT_FILE, path=path)
        log("no manifest.json beside the model: no normalisation, labels are class indices")
        return dict(NO_MANIFEST), None, None
    try:
        manifest = read_manifest_file(path)
    except ManifestError as exc:
        raise RunnerError(
            "manifest " + path + ": " + exc.field + ": " + exc.reason,
            "manifest_invalid",
            EXIT_FILE,
            path=path,
            field=exc.field,
        ) from None
    return manifest.preprocessing(), os.path.abspath(path), manifest


def model_layout(shape: list[int], manifest_layout: str | None) -> str:
    if manifest_layout in ("NHWC", "NCHW"):
        return manifest_layout
    if len(shape) == 4 and shape[-1] not in (1, 3) and shape[1] in (1, 3):
        return "NCHW"
    return "NHWC"


def _normalise(pixels: Any, pre: dict[str, Any]) -> Any:
    """(pixels in 0..1 - mean) / std, per channel, on an NHWC float array."""
    import numpy as np

    x = pixels.astype(np.float32)
    if pre["mean"] is not None:
        x = x - np.asarray(pre["mean"], dtype=np.float32)[: x.shape[-1]]
    if pre["std"] is not None:
        x = x / np.asarray(pre["std"], dtype=np.float32)[: x.shape[-1]]
    return x


def read_input(
    path: str, hw: tuple[int, int], channels: int, pre: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """Return a float NHWC batch ready for quantization, and a note of what was done to get it."""
    import numpy as np

    if not os.path.isfile(path):
        raise RunnerError("input file not found: " + path, "input_unreadable", EXIT_FILE, path=path)
    note: dict[str, Any] = {"path": os.path.abspath(path)}
    if path.lower().endswith(".npy"):
        try:
            arr = np.load(path, allow_pickle=False, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise RunnerError(
                "input " + path + " is not a readable .npy array: " + str(exc),
                "input_unreadable",
                EXIT_FILE,
            ) from exc
        note["kind"] = "npy"
        note["given_shape"] = list(arr.shape)
        note["given_dtype"] = str(arr.dtype)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise RunnerError(
                "input " + path + " has shape " + str(list(arr.shape)) + "; expected HWC or NHWC",
                "input_invalid",
                EXIT_FILE,
            )
        if arr.shape[-1] != channels and arr.shape[1] == channels:
            arr = arr.transpose(0, 2, 3, 1)
            note["transposed_from"] = "NCHW"
        if tuple(arr.shape[1:3]) != tuple(hw) or arr.shape[-1] != channels:
            raise RunnerError(
                "input "
                + path
                + " has shape "
                + str(note["given_shape"])
                + " but the model takes "
                + str([hw[0], hw[1], channels])
                + " (HWC); .npy inputs are not resized",
                "input_invalid",
                EXIT_FILE,
            )
        arr = np.asarray(arr)
        if arr.dtype == np.uint8:
            note["preprocessing"] = "uint8 pixels / 255, then mean/std"
            return _normalise(arr / 255.0, pre), note
        if arr.dtype.kind != "f":
            raise RunnerError(
                "input " + path + " has dtype " + str(arr.dtype) + "; give float or uint8",
                "input_invalid",
                EXIT_FILE,
            )
        if not pre["npy_normalized"]:
            note["preprocessing"] = "0..1 pixels (manifest), then mean/std"
            return _normalise(arr, pre), note
        note["preprocessing"] = "none (taken as already normalised)"
        return arr.astype(np.float32), note

    try:
        from PIL import Image  # type: ignore[import-not-found]
    except ImportError as exc:
        raise RunnerError(
            "Pillow is not installed, so images cannot be decoded: pass a .npy array (float NHWC,"
            " already normalised) instead, or pip install Pillow",
            "pillow_missing",
            EXIT_DEPENDENCY,
            hint="pip install Pillow",
        ) from exc
    try:
        with Image.open(path) as img:
            note["given_size"] = [img.height, img.width]
            rgb = img.convert("RGB").resize((hw[1], hw[0]), Image.BILINEAR)
            pixels = np.asarray(rgb, dtype=np.float32) / 255.0
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise RunnerError(
            "input " + path + " is neither .npy nor an image Pillow can read: " + str(exc),
            "input_unreadable",
            EXIT_FILE,
        ) from exc
    note["kind"] = "image"
    note["preprocessing"] = f"RGB, bilinear resize to {hw[0]}x{hw[1]}, /255, then mean/std"
    if channels == 1:
        pixels = pixels.mean(axis=-1, keepdims=True)
    return _normalise(pixels[None], pre), note


def quantize(x: Any, detail: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    """Float -> the input's integer type with the interpreter's own scale/zero-point (authoritative)."""
    import numpy as np

    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if dtype.kind == "f":
        return x.astype(dtype), None
    if dtype.kind not in "iu" or not scale:
        raise RunnerError(
            "model input dtype " + str(dtype) + " has no quantization scale; cannot feed float data",
            "unsupported_model",
            EXIT_FILE,
        )
    info = np.iinfo(dtype)
    q = np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)
    return q, {"scale": float(scale), "zero_point": int(zero_point), "dtype": str(dtype)}


def dequantize(y: Any, detail: dict[str, Any]) -> tuple[Any, bool]:
    import numpy as np

    scale, zero_point = detail.get("quantization", (0.0, 0))
    if np.dtype(detail["dtype"]).kind in "iu" and scale:
        return (y.astype(np.float32) - zero_point) * scale, True
    return y.astype(np.float32), False


def softmax(z: Any) -> Any:
    import numpy as np

    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def cmd_predict(args: argparse.Namespace) -> dict[str, Any]:
    """Classify one input (or a batch in a .npy) with the manifest's preprocessing; top-k as JSON."""
    if args.top_k < 1:
        raise RunnerError("--top-k must be at least 1", "usage", EXIT_USAGE)
    if not os.path.exists(args.model):
        check_model(args.model)  # raises "model file not found", before any manifest is looked for
    pre, man_path, manifest = load_manifest(args.model, args.manifest)
    if manifest is not None:  # the model given must be the one the manifest vouches for
        model = check_model(args.model, manifest.model.sha256, manifest.model.bytes)
    else:
        model = check_model(args.model)
    rt = select_runtime(args.runtime)
    import numpy as np

    check_load_in_child(rt, args.model, threads_arg(args.threads), True)
    interp, _ = make_interpreter(rt, args.model, threads_arg(args.threads), True)
    in_details = interp.get_input_details()
    if len(in_details) != 1:
        raise RunnerError(
            f"predict handles single-input models; this one has {len(in_details)} inputs",
            "unsupported_model",
            EXIT_FILE,
        )
    ind = in_details[0]
    shape = [int(s) for s in ind["shape"]]
    if len(shape) != 4:
        raise RunnerError(
            f"model input shape {shape} is not an image batch", "unsupported_model", EXIT_FILE
        )
    layout = model_layout(shape, pre["layout"])
    h, w, c = (shape[1], shape[2], shape[3]) if layout == "NHWC" else (shape[2], shape[3], shape[1])
    if pre["size"] is not None and pre["size"] != [h, w]:
        log(
            "manifest input size {} differs from the model's {}; using the model's".format(
                pre["size"], [h, w]
            )
        )

    x, note = read_input(args.input, (h, w), c, pre)
    outd = interp.get_output_details()[0]
    results = []
    quant_note = None
    dequantized = False
    labels = pre["labels"]
    for sample in x:
        batch = sample[None]
        if layout == "NCHW":
            batch = batch.transpose(0, 3, 1, 2)
        q, quant_note = quantize(batch, ind)
        interp.set_tensor(ind["index"], q)
        interp.invoke()
        raw = interp.get_tensor(outd["index"])
        y, dequantized = dequantize(raw, outd)
        logits = y.reshape(-1)
        probs = logits if pre["output_is_probabilities"] else softmax(logits)
        k = min(args.top_k, probs.size)
        order = np.argsort(-probs, kind="stable")[:k]
        results.append(
            {
                "top_k": [
                    {
                        "index": int(i),
                        "label": labels[i] if labels is not None and i < len(labels) else None,
                        "probability": float(probs[i]),
                        "score": float(logits[i]),
                    }
                    for i in order
                ]
            }
        )
    classes = int(np.prod(outd["shape"][1:]))
    if labels is not None and len(labels) != classes:
        log(f"manifest has {len(labels)} labels but the model outputs {classes} classes")
    return {
        "command": "predict",
        "runner": runner_facts(),
        "model": model,
        "manifest": man_path,
        "precision": pre["precision"],
        "runtime": rt.describe(),
        "input": dict(
            note,
            layout=layout,
            model_shape=shape,
            quantization=quant_note,
            mean=pre["mean"],
            std=pre["std"],
        ),
        "output": {
            "shape": [int(s) for s in outd["shape"]],
            "dtype": getattr(outd["dtype"], "__name__", str(outd["dtype"])),
            "dequantized": dequantized,
            "softmax_applied": not pre["output_is_probabilities"],
        },
        "batch": len(results),
        "predictions": results,
        "top1": results[0]["top_k"][0] if results else None,
    }
