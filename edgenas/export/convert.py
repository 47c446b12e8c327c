"""TensorFlow's converter (Keras model → TFLite, kept for ``dynamic``), and running a TFLite model.

Precisions: ``fp32``; ``fp16`` (weights stored as float16); ``dynamic`` (int8 weights, float
activations); ``int8`` (full-integer: int8 weights and activations, int8 input and output,
activation ranges calibrated on real images from the data set).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from edgenas.core.errors import EdgeNASError
from edgenas.export.images import ImageStream

# TensorFlow's C++ start-up chatter (oneDNN, CPU features) is noise for a CLI user; set before any
# module of this package imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PRECISIONS = ("fp32", "fp16", "int8", "dynamic")
# Images per calibration step (see representative_dataset).  The calibrating interpreter keeps
# every intermediate float tensor: at 224 px that is ≈0.1 GB an image for the largest subnet.
CALIBRATION_BATCH = 4


class ExportError(EdgeNASError):
    """Export failed: parity check, conversion, or an unusable model."""


def load_tensorflow() -> tuple[Any, Any]:
    """Import TensorFlow and Keras with their start-up log lines (absl, oneDNN) swallowed.

    Those lines go straight to file descriptor 2 from C++, before any Python logging setting can
    apply; they would otherwise interleave with every progress line of a CLI command.
    """
    if "tensorflow" not in sys.modules:
        with captured_output():
            import keras  # noqa: F401
            import tensorflow  # noqa: F401
    import keras
    import tensorflow as tf

    return tf, keras


def convert(keras_model: Any, precision: str,
            calibration_nhwc: np.ndarray | ImageStream | None = None, *,
            signatures: bool = True) -> bytes:
    """Convert the Keras model to a TFLite flatbuffer of ``precision`` with TensorFlow's converter.

    The exporter uses it for the ``dynamic`` precision only (the others are written directly, see
    :mod:`edgenas.export.flatbuffer`); ``benchmarks/export.py`` uses it to compare both paths.
    ``signatures``: keep the ``serving_default`` signature (``from_keras_model``, by way of a
    SavedModel written and read back); without it the traced function is frozen and converted as
    a graph, the same operators and outputs without the round trip.
    """
    import tensorflow as tf

    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if signatures:
        converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    else:
        with captured_output():  # absl warns that a graph without its Keras object is converted
            converter = _frozen_graph_converter(tf, keras_model)
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif precision == "int8":
        if calibration_nhwc is None or len(calibration_nhwc) == 0:
            raise ExportError("int8 export needs calibration images from the data set")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset(calibration_nhwc)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with captured_output() as log:
        try:
            return bytes(converter.convert())
        except Exception as exc:  # the converter raises many unrelated types
            detail = log.read().strip()[-2000:]
            raise ExportError(f"TFLite conversion ({precision}) failed: {exc}"
                              + (f"\nconverter output:\n{detail}" if detail else "")) from exc


def representative_dataset(images: np.ndarray | ImageStream,
                           batch: int | None = None) -> Callable[[], Iterator[list[np.ndarray]]]:
    """The converter's calibration feed: float32 NHWC batches of ``batch`` images, made on demand.

    ``images``: an NHWC array, or an :class:`ImageStream` (NCHW, normalised batch by batch);
    ``batch`` defaults to :data:`CALIBRATION_BATCH`.
    The calibrator keeps each tensor's running min and max over every value it sees
    (``calibration_logger.cc``), so a batch of ``batch`` images records the same ranges as those
    images one at a time, and the interpreter runs a batch far faster than its images one by one.
    The input is resized once, to the first batch's shape: a short last batch is filled up with
    images already seen, which leaves every min and max unchanged.
    """
    stream = images if isinstance(images, ImageStream) else None
    count = len(images)
    batch = max(1, min(CALIBRATION_BATCH if batch is None else batch, count))

    def nhwc(start: int, stop: int) -> np.ndarray:
        if stream is not None:
            return stream.take(start, stop).transpose(0, 2, 3, 1)
        return np.asarray(images[start:stop], dtype=np.float32)

    def generate() -> Iterator[list[np.ndarray]]:
        for start in range(0, count, batch):
            chunk = nhwc(start, start + batch)
            if len(chunk) < batch:  # repeat images already seen: ranges stay exactly the same
                chunk = np.concatenate([chunk, nhwc(0, batch - len(chunk))])
            yield [np.ascontiguousarray(chunk, dtype=np.float32)]

    return generate


def freeze(keras_model: Any) -> Any:
    """The model's inference function, traced once and frozen to constants (a concrete function)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = tf.TensorSpec(keras_model.inputs[0].shape, tf.float32, name="input")  # batch as shipped
    traced = tf.function(lambda x: keras_model(x, training=False), input_signature=[spec])
    return convert_variables_to_constants_v2(traced.get_concrete_function())


def _frozen_graph_converter(tf: Any, keras_model: Any) -> Any:
    """A converter for the model's frozen inference function.

    The frozen graph is handed over as a GraphDef with its input and output names: given the
    concrete function instead, the converter freezes it a second time (variable lifting and pruning
    over a graph that has no variables left), which was half of every conversion's time.  The input
    keeps its unknown batch dimension (-1), as in the shipped model; operators, tensor shapes and
    outputs are the same (tests/integration/test_export.py compares them with the signed conversion).
    """
    frozen = freeze(keras_model)
    graph_def = frozen.graph.as_graph_def()
    inputs = [(t.name.split(":")[0], [-1 if d is None else int(d) for d in t.shape.as_list()])
              for t in frozen.inputs]
    outputs = [t.name.split(":")[0] for t in frozen.outputs]
    return tf.compat.v1.lite.TFLiteConverter(graph_def, None, None, input_arrays_with_shape=inputs,
                                             output_arrays=outputs)


@contextlib.contextmanager
def captured_output() -> Iterator[Any]:
    """Capture what the converter prints (Python and C++ alike, at the fd level).

    Keras' exporter prints the traced signature and the MLIR quantiser logs to stderr; a CLI user
    should see them only when conversion fails, so they are kept and attached to the error.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    log = tempfile.TemporaryFile(mode="w+")
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield _Rewinding(log)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        log.close()


class _Rewinding:
    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def read(self) -> str:
        self.handle.flush()
        self.handle.seek(0)
        return str(self.handle.read())


def make_interpreter(model: bytes | str, threads: int = 1, preserve: bool = False,
                     builtin: bool = False) -> Any:
    """LiteRT's interpreter when installed, else TensorFlow's (never tflite_runtime beside TF).

    ``preserve`` keeps every intermediate tensor readable after ``invoke`` (tracing a parity
    failure to its block).  ``builtin`` runs TFLite's own kernels without the default XNNPACK
    delegate: deterministic reference arithmetic whatever XNNPACK build or CPU runs it."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - depends on the environment
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806
    kwargs: dict[str, Any] = {"num_threads": threads}
    if preserve:
        kwargs["experimental_preserve_all_tensors"] = True
    if builtin:
        kwargs["experimental_op_resolver_type"] = _builtin_resolver(Interpreter)
    if isinstance(model, bytes):
        kwargs["model_content"] = model
    else:
        kwargs["model_path"] = model
    with captured_output():  # "INFO: Created TensorFlow Lite XNNPACK delegate" on fd 2
        interpreter = Interpreter(**kwargs)
        interpreter.allocate_tensors()
    return interpreter


def _builtin_resolver(interpreter_cls: Any) -> Any:
    """``OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`` of the interpreter's own module."""
    module = sys.modules[interpreter_cls.__module__]
    return module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES


def io_details(interpreter: Any) -> dict[str, Any]:
    """Input/output dtype, shape and quantisation in manifest form."""

    def describe(detail: dict[str, Any]) -> dict[str, Any]:
        scale, zero = detail["quantization"]
        return {"shape": [int(v) for v in detail["shape"]],
                "dtype": np.dtype(detail["dtype"]).name,
                "quantization": {"scale": float(scale), "zero_point": int(zero)}}

    return {"input": describe(interpreter.get_input_details()[0]),
            "output": describe(interpreter.get_output_details()[0])}


def run_tflite(model: bytes | str, images_nhwc: np.ndarray, batch: int = 64,
               builtin: bool = False) -> np.ndarray:
    """Float logits of a TFLite model for normalised NHWC float images (quantising as needed)."""
    return tflite_logits(model, (images_nhwc[start:start + batch]
                                 for start in range(0, len(images_nhwc), batch)), builtin=builtin)


class TFLiteLogits:
    """One interpreter fed normalised NHWC float batches: resized to each new batch size,
    input quantised and output dequantised as the model's own tensors say."""

    def __init__(self, model: bytes | str, threads: int = 1, builtin: bool = False) -> None:
        self.interpreter = make_interpreter(model, threads, builtin=builtin)
        self.inp = self.interpreter.get_input_details()[0]
        self.out = self.interpreter.get_output_details()[0]
        self.batch: int | None = None

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        chunk = np.asarray(chunk, dtype=np.float32)
        if self.batch != len(chunk):
            self.interpreter.resize_tensor_input(self.inp["index"], [len(chunk), *chunk.shape[1:]])
            with captured_output():
                self.interpreter.allocate_tensors()
            self.batch = len(chunk)
        self.interpreter.set_tensor(self.inp["index"], quantize(chunk, self.inp))
        self.interpreter.invoke()
        return dequantize(self.interpreter.get_tensor(self.out["index"]), self.out)


def tflite_logits(model: bytes | str, batches: Iterable[np.ndarray], threads: int = 1,
                  builtin: bool = False) -> np.ndarray:
    """Float logits of a TFLite model for an iterable of normalised NHWC float batches
    (``builtin``: TFLite's own kernels, as an export's validation runs them)."""
    run = TFLiteLogits(model, threads, builtin=builtin)
    return np.concatenate([run(chunk) for chunk in batches])


def quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return x.astype(dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    # round(x / scale) + zero point, as TFLite's quantizer and the on-device runner do (rounding
    # after adding an odd zero point would break ties the other way).
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def dequantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if np.dtype(detail["dtype"]).kind == "f":
        return x.astype(np.float32)
    scale, zero = detail["quantization"]
    return (x.astype(np.float32) - zero) * scale
