"""The export pipeline: static subnet → operator graph → parity-checked TFLite + manifest.

The subnet becomes an operator graph (:mod:`edgenas.export.graph`) that is written straight to a
TFLite flatbuffer (:mod:`edgenas.export.flatbuffer`); int8 ranges are calibrated by running that
graph in torch.  The float parity check runs *before* any quantisation: if the fp32 TFLite model
does not compute the torch function (max abs logit difference ≤ 1e-4 on real images), no model
is written and the error names the first block that diverged.  Only the ``dynamic`` precision
(int8 weights, float activations) still goes through a Keras rebuild and TensorFlow's converter.
"""

from __future__ import annotations

import platform
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgenas.core.files import sha256_file  # noqa: F401  (re-exported by edgenas.export)
from edgenas.core.progress import Reporter
from edgenas.core.threads import torch_threads, usable_cores
from edgenas.export.convert import (
    PRECISIONS,
    ExportError,
    TFLiteLogits,
    convert,
    io_details,
    make_interpreter,
    tflite_logits,
)
from edgenas.export.flatbuffer import WRITABLE, write_tflite
from edgenas.export.graph import (
    Graph,
    activation_ranges,
    build_graph,
    logits_runner,
    run,
)
from edgenas.export.images import ImageStream, as_stream, nhwc_strided
from edgenas.export.package import ModelPackage, PackageError
from edgenas.space.spec import Arch, SearchSpace
from edgenas.supernets.static import MobileNetV3

PARITY_TOLERANCE = 1e-4
PARITY_IMAGES = 16
TFLITE_BATCH = 16
CALIBRATION_BATCH = 16  # images per torch pass when calibrating int8 ranges


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
    """A subnet's operator graph, checked against torch once, with its int8 ranges calibrated at
    most once: what every precision of one subnet shares (a campaign exports fp32 and int8)."""

    def __init__(self, model: MobileNetV3, graph: Graph, parity: float) -> None:
        self.model, self.graph, self.parity = model, graph, parity
        self._ranges: tuple[ImageStream, dict[str, tuple[float, float]]] | None = None
        self._keras: Any | None = None

    def ranges(self, calibration: ImageStream) -> dict[str, tuple[float, float]]:
        """Every activation's min and max over the calibration images (computed once)."""
        if self._ranges is None or self._ranges[0] is not calibration:  # held: no id reuse
            with torch.no_grad():
                self._ranges = (calibration, activation_ranges(
                    self.graph, (nhwc_strided(b) for b in calibration.batches(CALIBRATION_BATCH)),
                    workers=usable_cores(4)))
        return self._ranges[1]

    def keras_model(self, calibration: ImageStream) -> Any:
        """The Keras rebuild (``dynamic`` precision only), parity-checked on first use."""
        if self._keras is None:
            from edgenas.export.keras_model import build_keras_model, check_keras_parity

            self._keras = build_keras_model(self.model, self.graph.resolution)
            check_keras_parity(self._keras, self.model,
                               calibration.take(0, PARITY_IMAGES), parity_limit)
        return self._keras


def prepare(model: MobileNetV3, arch: Arch, calibration_nchw: np.ndarray | ImageStream
            ) -> Prepared:
    """Build the operator graph of ``model`` and check the parity of its fp32 TFLite model on
    the first :data:`PARITY_IMAGES` calibration images (raises on a mismatch)."""
    model = model.eval()
    graph = build_graph(model, arch.resolution)
    parity = check_parity(graph, model, as_stream(calibration_nchw).take(0, PARITY_IMAGES))
    return Prepared(model, graph, parity)


def validation_logits(graph: Graph, blob: bytes, images: ImageStream
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Logits of the float network and of the exported model ``blob`` on ``images``, each batch
    made once for both.

    The float network runs as its operator graph in torch (batch norm folded; equal to the torch
    module within :data:`PARITY_TOLERANCE`, checked by :func:`prepare`).  The exported model runs
    on TFLite's built-in kernels, not the XNNPACK delegate: its int8 arithmetic is the reference
    one whatever CPU validates it, and on x86 XNNPACK's int8 runs the largest subnets at half that
    speed (7×7 depthwise layers) while it wins only on small ones, which cost little either way.
    Neither scales well past one thread at these sizes, so each core runs its own one-thread
    jobs — a batch through the graph, or a batch through that core's own interpreter — taken from
    one queue: the cores stay busy until the last batch whichever model is slower."""
    cores = usable_cores(4)
    floats = logits_runner(graph)
    local = threading.local()

    def exported(batch: np.ndarray) -> np.ndarray:
        if not hasattr(local, "run"):  # an interpreter is not shared between threads
            local.run = TFLiteLogits(blob, threads=1, builtin=True)
        return local.run(batch)

    def float_job(batch: np.ndarray) -> np.ndarray:
        # an NHWC array seen as NCHW: channels-last strides, no copy
        return floats(torch.from_numpy(batch).permute(0, 3, 1, 2))

    results: list[tuple[Future[np.ndarray], Future[np.ndarray]]] = []
    with torch.no_grad(), torch_threads(1), ThreadPoolExecutor(cores) as pool:
        for batch in images.nhwc_batches(TFLITE_BATCH):
            # at most two batches per core in flight: the images are made as they are consumed
            if len(results) >= 2 * cores:
                wait(results[-2 * cores])
            results.append((pool.submit(float_job, batch), pool.submit(exported, batch)))
        return (np.concatenate([f.result() for f, _ in results]),
                np.concatenate([e.result() for _, e in results]))


def check_parity(graph: Graph, model: MobileNetV3, images_nchw: np.ndarray) -> float:
    """Max abs logit difference between the graph's fp32 TFLite model and torch; raises naming
    the first diverging block."""
    with torch.no_grad():
        want = model.eval()(torch.from_numpy(images_nchw)).numpy()
    blob = write_tflite(graph, "fp32", signatures=False)
    got = tflite_logits(blob, [np.ascontiguousarray(images_nchw.transpose(0, 2, 3, 1))])
    diff = float(np.abs(got - want).max())
    limit = parity_limit(want)
    if not np.isfinite(diff) or diff > limit:
        where = first_divergence(graph, blob, model, images_nchw)
        block = f"; first divergence at {where[0]} (max abs diff {where[1]:.3g})" if where else ""
        raise ExportError(
            f"float parity check failed: the TFLite model and torch differ by {diff:.3g} "
            f"(limit {limit:.3g}){block}; nothing was written"
        )
    return diff


def torch_block_outputs(model: MobileNetV3, x: torch.Tensor) -> dict[str, np.ndarray]:
    """The torch model's per-block outputs (NCHW), keyed like the graph's ``block_*`` tensors."""
    outs: dict[str, np.ndarray] = {}
    with torch.no_grad():
        y = model.stem(x)
        outs["block_stem"] = y.numpy()
        for i, block in enumerate(model.blocks):
            y = block(y)
            outs[f"block_{i}"] = y.numpy()
        outs["logits"] = model(x).numpy()
    return outs


def first_divergence(graph: Graph, blob: bytes, model: MobileNetV3, x_nchw: np.ndarray
                     ) -> tuple[str, float] | None:
    """Name and error of the first block whose output differs from torch's: in the graph run
    by torch (a wrong weight or fold), else in the written TFLite model (a wrong layout)."""
    want = torch_block_outputs(model, torch.from_numpy(x_nchw))
    names = list(want)
    graph_out = run(graph, x_nchw, keep=names)
    interpreter = make_interpreter(blob, preserve=True)
    inp = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inp["index"], list(x_nchw.shape[:1]) + list(inp["shape"][1:]))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1)))
    interpreter.invoke()
    by_name = {d["name"]: d["index"] for d in interpreter.get_tensor_details()}
    for source in ("graph", "tflite"):
        for name in names:
            if source == "graph":
                got = graph_out[name]
            elif name in by_name:
                got = interpreter.get_tensor(by_name[name])
                got = got.transpose(0, 3, 1, 2) if got.ndim == 4 else got
            else:
                continue
            err = float(np.abs(got - want[name]).max())
            if not np.isfinite(err) or err > PARITY_TOLERANCE * max(1.0, float(
                    np.abs(want[name]).max())):
                return name, err
    return None


def serialize(prepared: Prepared, precision: str, calibration: ImageStream,
              signatures: bool = True) -> bytes:
    """The TFLite flatbuffer of a prepared subnet at ``precision``."""
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision in WRITABLE:
        if precision == "int8" and len(calibration) == 0:
            raise ExportError("int8 export needs calibration images from the data set")
        ranges = prepared.ranges(calibration) if precision == "int8" else None
        return write_tflite(prepared.graph, precision, ranges, signatures)
    return convert(prepared.keras_model(calibration), precision, None, signatures=signatures)


def export_model(model: MobileNetV3, arch: Arch, space: SearchSpace, labels: list[str],
                 normalization: dict[str, list[float]], precision: str, out_dir: str | Path,
                 calibration_nchw: np.ndarray | ImageStream,
                 validation: tuple[np.ndarray | ImageStream, np.ndarray] | None,
                 provenance: dict[str, Any] | None = None,
                 search: dict[str, Any] | None = None, signatures: bool = True,
                 prepared: Prepared | None = None, say: Reporter | None = None) -> ExportResult:
    """Export ``model`` (the static subnet for ``arch``) and write ``model.tflite`` + manifest.

    ``calibration_nchw`` are normalised real images at ``arch.resolution`` (an NCHW array, or an
    :class:`~edgenas.export.images.ImageStream` that makes them batch by batch): they drive the
    parity check and int8 calibration.  ``validation`` (images, labels) gives float and exported
    top-1; its images too may be a stream.
    ``search`` is what the search promised for this arch (predicted latency per device and the
    predictors' error), kept so ``fleet bench`` can flag devices that miss the promise.
    ``signatures=False`` writes no signature table (measurement campaigns, which nobody calls by
    signature); models that ship keep their ``serving_default`` signature.
    ``prepared`` (:func:`prepare`, for this ``model``): its graph, parity-checked and calibrated
    once, reused for every precision of the subnet.  ``say`` reports each phase.
    """
    say = say or Reporter()
    out_dir = Path(out_dir)
    model = model.eval()
    start = time.perf_counter()
    if prepared is None:
        say("export", "operator graph and fp32 parity check")
        prepared = prepare(model, arch, calibration_nchw)
    parity = prepared.parity
    calibration = as_stream(calibration_nchw)
    if precision == "int8":
        say("export", f"calibrating int8 ranges on {len(calibration)} images")
    blob = serialize(prepared, precision, calibration, signatures)

    details = io_details(make_interpreter(blob))
    accuracy: dict[str, Any] = {}
    if validation is not None:
        images, targets = as_stream(validation[0]), np.asarray(validation[1])
        say("export", f"top-1 of the float and the {precision} model on {len(targets)} "
            "validation images")
        floats, exported = validation_logits(prepared.graph, blob, images)
        accuracy = {"split": "validation", "samples": int(len(targets)),
                    "float_top1": _top1(floats, targets),
                    "exported_top1": _top1(exported, targets)}

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
        "tools": {"torch": torch.__version__, "writer": _writer(precision),
                  "python": platform.python_version()},
        "export_seconds": round(time.perf_counter() - start, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        package = ModelPackage.write(out_dir, manifest, model=blob)
    except PackageError as exc:  # a bug in the exporter, not user input: say what broke the rules
        raise ExportError(f"the exported manifest breaks the package rules: {exc}") from None
    return ExportResult(out_dir, package.model_path, package.manifest_path, package.data)


def _writer(precision: str) -> str:
    """What wrote the flatbuffer: edgenas's writer, or TensorFlow's converter (``dynamic``)."""
    if precision in WRITABLE:
        return "edgenas.export.flatbuffer"
    from edgenas.export.convert import load_tensorflow

    return f"tensorflow {load_tensorflow()[0].__version__}"


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of an exported model folder as a JSON object, checked by the package rules
    (:meth:`edgenas.export.package.ModelPackage.load`: model name, TFL3, sha256, typed fields)."""
    try:
        return ModelPackage.load(directory).data
    except PackageError as exc:
        raise ExportError(str(exc)) from None
