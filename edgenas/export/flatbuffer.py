"""Write an operator :class:`~edgenas.export.graph.Graph` as a TFLite flatbuffer.

Precisions written here: ``fp32``; ``fp16`` (float16 constants, each read through a DEQUANTIZE
operator, as the converter's float16 models do); ``int8`` (full integer, int8 input and output).
The int8 scheme is TFLite's own (https://ai.google.dev/edge/litert/models/quantization_spec):

* weights: symmetric int8 in [-127, 127], one scale per output channel (depthwise: per channel
  of the last axis), zero point 0;
* biases: int32, scale = input scale × that channel's weight scale, zero point 0;
* activations: asymmetric int8 from the calibrated min and max, the range widened to hold 0 so
  that zero is exact (padding and ReLU need it); PAD and RESHAPE keep their input's parameters,
  as their int8 kernels require.

Operator versions are the ones the TFLite converter writes for the same operators and types, so
a runtime that runs the converter's models runs these.  The schema classes come from LiteRT's
package (``ai_edge_litert.schema_py_generated``, or TensorFlow's copy), so writing a model needs
neither TensorFlow nor its converter.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgenas.export.graph import INPUT, OUTPUT, Graph, Op

WRITABLE = ("fp32", "fp16", "int8")
BUFFER_ALIGNMENT = 16  # what the converter aligns constant buffers to
INT8_VERSIONS = {"PAD": 2, "CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "ADD": 2, "MEAN": 2, "MUL": 2,
                 "FULLY_CONNECTED": 4}
FP16_DEQUANTIZE_VERSION = 3
PADDING = {"SAME": 0, "VALID": 1}
ACTIVATION = {"NONE": 0, "RELU": 1, "RELU6": 3}


def schema() -> Any:
    """The TFLite schema module (generated flatbuffer classes)."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:  # pragma: no cover - depends on the environment
        from tensorflow.lite.python import schema_py_generated
    return schema_py_generated


def _aligned_buffer(S: Any, data: bytes) -> Any:  # noqa: N803 - the schema module
    """A ``BufferT`` whose bytes start on a :data:`BUFFER_ALIGNMENT` boundary (the generated
    ``Pack`` aligns a byte vector to one byte; float and int32 constants want their own)."""

    class Aligned(S.BufferT):  # type: ignore[misc, name-defined]
        def Pack(self, builder: Any) -> Any:  # noqa: N802 - the generated API's name
            builder.StartVector(1, len(data), BUFFER_ALIGNMENT)
            builder.head -= len(data)
            builder.Bytes[builder.head:builder.head + len(data)] = data
            builder.vectorNumElems = len(data)
            vector = builder.EndVector()
            S.BufferStart(builder)
            S.BufferAddData(builder, vector)
            return S.BufferEnd(builder)

    return Aligned()


def asymmetric(lo: float, hi: float) -> tuple[float, int]:
    """int8 scale and zero point for values in [lo, hi], the range widened to include 0."""
    lo, hi = min(0.0, float(lo)), max(0.0, float(hi))
    if hi == lo:
        return 1.0, 0
    scale = (hi - lo) / 255.0
    zero = int(np.clip(np.round(-128 - lo / scale), -128, 127))
    return float(scale), zero


def symmetric_per_channel(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 values and per-channel scales of ``weight`` along ``axis`` (zero point 0)."""
    moved = np.moveaxis(weight.astype(np.float64), axis, 0)
    peak = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
    scale = np.where(peak > 0, peak / 127.0, 1.0)
    shape = [1] * weight.ndim
    shape[axis] = -1
    q = np.clip(np.round(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def _tflite_layout(op: Op, value: np.ndarray) -> tuple[np.ndarray, int]:
    """A weight constant in TFLite's layout and the axis its channels are on."""
    if op.kind == "CONV_2D":
        return value.transpose(0, 2, 3, 1), 0  # OIHW → OHWI
    if op.kind == "DEPTHWISE_CONV_2D":
        return value.transpose(1, 2, 3, 0), 3  # C·1·H·W → 1·H·W·C
    return value, 0  # dense: out × in


class _Writer:
    def __init__(self, graph: Graph, precision: str,
                 ranges: dict[str, tuple[float, float]] | None) -> None:
        if precision not in WRITABLE:
            raise ValueError(f"the TFLite writer writes {', '.join(WRITABLE)}, not {precision}")
        if precision == "int8" and not ranges:
            raise ValueError("an int8 model needs the calibrated activation ranges")
        self.S = schema()
        self.graph, self.precision, self.ranges = graph, precision, ranges or {}
        self.tensors: list[Any] = []
        self.index: dict[str, int] = {}
        self.buffers: list[Any] = [self.S.BufferT()]  # buffer 0: the empty one, by convention
        self.codes: list[Any] = []
        self.code_index: dict[tuple[str, int], int] = {}
        self.operators: list[Any] = []
        self.params: dict[str, tuple[float, int]] = {}

    # ------------------------------------------------------------------ tensors

    def _add(self, name: str, shape: tuple[int, ...] | list[int], dtype: int,
             data: np.ndarray | None = None, quant: Any = None, dynamic_batch: bool = False) -> int:
        buffer = 0
        if data is not None:
            self.buffers.append(_aligned_buffer(self.S, np.ascontiguousarray(data).tobytes()))
            buffer = len(self.buffers) - 1
        tensor = self.S.TensorT()
        tensor.name, tensor.type, tensor.buffer = name, dtype, buffer
        tensor.shape = [int(d) for d in shape]
        if dynamic_batch:
            tensor.shapeSignature = [-1, *tensor.shape[1:]]
        tensor.quantization = quant
        self.tensors.append(tensor)
        self.index[name] = len(self.tensors) - 1
        return self.index[name]

    def _quant(self, scale: np.ndarray | float, zero: np.ndarray | int, axis: int = 0) -> Any:
        q = self.S.QuantizationParametersT()
        q.scale = [float(v) for v in np.atleast_1d(scale)]
        q.zeroPoint = [int(v) for v in np.atleast_1d(zero)]
        q.quantizedDimension = axis
        return q

    def activation(self, name: str, source: str | None = None) -> int:
        """An activation tensor; ``source``: share that tensor's int8 parameters (PAD, RESHAPE)."""
        if name in self.index:
            return self.index[name]
        shape = self.graph.shapes[name]
        if self.precision != "int8":
            return self._add(name, shape, self.S.TensorType.FLOAT32, dynamic_batch=True)
        if source is not None:
            self.params[name] = self.params[source]
        else:
            if name not in self.ranges:
                raise ValueError(f"no calibrated range for tensor {name}")
            self.params[name] = asymmetric(*self.ranges[name])
        scale, zero = self.params[name]
        return self._add(name, shape, self.S.TensorType.INT8, quant=self._quant(scale, zero),
                         dynamic_batch=True)

    def index_const(self, name: str) -> int:
        value = self.graph.constants[name].astype(np.int32)
        return self._add(name, value.shape, self.S.TensorType.INT32, value)

    def float_const(self, name: str, value: np.ndarray) -> int:
        """A float constant; in fp16 models stored as float16 and read through DEQUANTIZE."""
        if self.precision != "fp16":
            return self._add(name, value.shape, self.S.TensorType.FLOAT32,
                             value.astype(np.float32))
        half = self._add(f"{name}/fp16", value.shape, self.S.TensorType.FLOAT16,
                         value.astype(np.float16))
        out = self._add(name, value.shape, self.S.TensorType.FLOAT32)
        self._operator("DEQUANTIZE", [half], [out], version=FP16_DEQUANTIZE_VERSION)
        return out

    def weight_and_bias(self, op: Op) -> tuple[int, int]:
        w_name, b_name = op.inputs[1], op.inputs[2]
        weight, axis = _tflite_layout(op, self.graph.constants[w_name])
        bias = self.graph.constants[b_name]
        if self.precision != "int8":
            return self.float_const(w_name, weight), self.float_const(b_name, bias)
        q, w_scale = symmetric_per_channel(weight, axis)
        in_scale = self.params[op.inputs[0]][0]
        b_scale = (in_scale * w_scale.astype(np.float64))
        qb = np.clip(np.round(bias / b_scale), -2**31, 2**31 - 1).astype(np.int32)
        zeros = np.zeros(len(w_scale), dtype=np.int64)
        w = self._add(w_name, q.shape, self.S.TensorType.INT8, q, self._quant(w_scale, zeros, axis))
        b = self._add(b_name, qb.shape, self.S.TensorType.INT32, qb,
                      self._quant(b_scale.astype(np.float32), zeros))
        return w, b

    def scalar(self, name: str) -> int:
        value = self.graph.constants[name]
        if self.precision != "int8":
            return self.float_const(name, value)
        scale, zero = asymmetric(float(value), float(value))
        q = np.array(np.clip(np.round(value / scale) + zero, -128, 127), dtype=np.int8)
        return self._add(name, q.shape, self.S.TensorType.INT8, q, self._quant(scale, zero))

    # ---------------------------------------------------------------- operators

    def _operator(self, kind: str, inputs: list[int], outputs: list[int], options: Any = None,
                  options_type: int = 0, version: int | None = None) -> None:
        if version is None:
            version = INT8_VERSIONS.get(kind, 1) if self.precision == "int8" else 1
        key = (kind, version)
        if key not in self.code_index:
            code = self.S.OperatorCodeT()
            code.builtinCode = getattr(self.S.BuiltinOperator, kind)
            code.deprecatedBuiltinCode = min(code.builtinCode, 127)
            code.version = version
            self.codes.append(code)
            self.code_index[key] = len(self.codes) - 1
        op = self.S.OperatorT()
        op.opcodeIndex = self.code_index[key]
        op.inputs, op.outputs = inputs, outputs
        op.builtinOptionsType, op.builtinOptions = options_type, options
        self.operators.append(op)

    def op(self, op: Op) -> None:
        S = self.S  # noqa: N806 - the schema module
        kind = op.kind
        x = self.activation(op.inputs[0])
        options, options_type = None, 0
        shares = kind in ("PAD", "RESHAPE")
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            w, b = self.weight_and_bias(op)
            inputs = [x, w, b]
            if kind == "CONV_2D":
                options, options_type = S.Conv2DOptionsT(), S.BuiltinOptions.Conv2DOptions
            else:
                options = S.DepthwiseConv2DOptionsT()
                options_type = S.BuiltinOptions.DepthwiseConv2DOptions
                options.depthMultiplier = 1
            options.padding = PADDING[op.padding]
            options.strideW = options.strideH = op.stride
            options.fusedActivationFunction = ACTIVATION[op.act]
        elif kind == "FULLY_CONNECTED":
            w, b = self.weight_and_bias(op)
            inputs = [x, w, b]
            options = S.FullyConnectedOptionsT()
            options_type = S.BuiltinOptions.FullyConnectedOptions
        elif kind in ("PAD", "MEAN", "RESHAPE"):
            inputs = [x, self.index_const(op.inputs[1])]
            if kind == "PAD":
                options, options_type = S.PadOptionsT(), S.BuiltinOptions.PadOptions
            elif kind == "MEAN":
                options, options_type = S.ReducerOptionsT(), S.BuiltinOptions.ReducerOptions
                options.keepDims = True
        elif kind in ("ADD", "MUL"):
            other = op.inputs[1]
            y = self.scalar(other) if other in self.graph.constants else self.activation(other)
            inputs = [x, y]
            if kind == "ADD":
                options, options_type = S.AddOptionsT(), S.BuiltinOptions.AddOptions
            else:
                options, options_type = S.MulOptionsT(), S.BuiltinOptions.MulOptions
        elif kind == "HARD_SWISH":
            inputs = [x]
        else:  # pragma: no cover - build_graph emits only the kinds above
            raise ValueError(f"the writer does not know {kind}")
        out = self.activation(op.output, source=op.inputs[0] if shares else None)
        self._operator(kind, inputs, [out], options, options_type)

    def write(self, signatures: bool) -> bytes:
        S = self.S  # noqa: N806
        import flatbuffers

        self.activation(INPUT)
        for op in self.graph.ops:
            self.op(op)
        subgraph = S.SubGraphT()
        subgraph.tensors, subgraph.operators = self.tensors, self.operators
        subgraph.inputs, subgraph.outputs = [self.index[INPUT]], [self.index[OUTPUT]]
        subgraph.name = "main"
        model = S.ModelT()
        model.version, model.description = 3, "edgenas"
        model.operatorCodes, model.subgraphs = self.codes, [subgraph]
        version = np.frombuffer(b"1.15.0".ljust(16, b"\0"), dtype=np.uint8)
        self.buffers.append(_aligned_buffer(S, version.tobytes()))
        meta = S.MetadataT()
        meta.name, meta.buffer = "min_runtime_version", len(self.buffers) - 1
        model.metadata = [meta]
        model.buffers = self.buffers
        if signatures:
            sig = S.SignatureDefT()
            sig.signatureKey, sig.subgraphIndex = "serving_default", 0
            sig.inputs = [_tensor_map(S, "image", self.index[INPUT])]
            sig.outputs = [_tensor_map(S, "output_0", self.index[OUTPUT])]
            model.signatureDefs = [sig]
        size = sum(len(getattr(b, "data", None) or b"") for b in self.buffers)
        builder = flatbuffers.Builder(max(1024, size + (1 << 20)))
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def _tensor_map(S: Any, name: str, index: int) -> Any:  # noqa: N803
    entry = S.TensorMapT()
    entry.name, entry.tensorIndex = name, index
    return entry


def write_tflite(graph: Graph, precision: str,
                 ranges: dict[str, tuple[float, float]] | None = None,
                 signatures: bool = True) -> bytes:
    """The TFLite flatbuffer of ``graph`` at ``precision`` (``int8`` needs ``ranges``, from
    :func:`edgenas.export.graph.activation_ranges`).  ``signatures`` adds the
    ``serving_default`` signature (input ``image``, output ``output_0``), as shipped models have."""
    return _Writer(graph, precision, ranges).write(signatures)
