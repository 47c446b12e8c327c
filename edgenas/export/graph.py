"""A static subnet as the operator graph its TFLite model holds, runnable in torch.

The exporter writes TFLite directly from this graph (:mod:`edgenas.export.flatbuffer`) instead of
rebuilding the network in Keras and converting it: the graph is the converter's own output for
this network, operator for operator (a PAD only where TFLite's SAME padding is not torch's, batch
norm folded into the convolution, ReLU and ReLU6 fused, HARD_SWISH, the SE gate's
``relu6(x + 3) / 6`` as a convolution with ``+3`` in its bias and fused ReLU6 followed by a MUL by
1/6).  Because the same graph runs in
torch (:func:`run`), two things need no TensorFlow at all:

* the float parity check of the *graph* against the torch model (folding, padding, activations);
* int8 calibration: every activation tensor's range is recorded while torch runs the calibration
  images through the graph (:func:`activation_ranges`), the way TFLite's calibrator records the
  running min and max of every tensor, but at torch's speed and without a second interpreter
  holding every intermediate tensor.

Tensors are named; the output of every block is named ``block_<i>`` (``block_stem`` for the stem)
so a parity failure names the first block that diverged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgenas.core.threads import torch_threads
from edgenas.supernets.static import ConvBNAct, MBBlock, MobileNetV3

INPUT = "image"
OUTPUT = "logits"
# h-sigmoid(x) = relu6(x + 3) / 6: the +3 goes into the gate convolution's bias
HSIGMOID_SHIFT = 3.0
HSIGMOID_SCALE = 1.0 / 6.0


@dataclass
class Op:
    """One TFLite operator.  ``kind`` is its builtin name; ``inputs`` name activation tensors or
    constants (``Graph.constants``); ``act`` is the fused activation (NONE, RELU, RELU6)."""

    kind: str
    inputs: list[str]
    output: str
    stride: int = 1
    padding: str = "SAME"
    act: str = "NONE"


@dataclass
class Graph:
    """Operators in execution order, the constants they read and each activation's shape (NCHW
    channels and spatial size at batch 1; the batch dimension stays dynamic).

    Constants are kept in torch's layout (conv weights OIHW, depthwise ``C×1×kh×kw``, dense
    ``out×in``) as float32; the flatbuffer writer lays them out for TFLite.
    """

    resolution: int
    ops: list[Op] = field(default_factory=list)
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # NHWC, batch 1

    def const(self, name: str, value: np.ndarray) -> str:
        self.constants[name] = np.array(value, dtype=np.float32, order="C")  # 0-d stays 0-d
        return name

    def producer(self) -> dict[str, Op]:
        return {op.output: op for op in self.ops}


def fold_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight (OIHW) and bias with the following batch norm folded in, computed in float64.

    The graph always carries a bias: a conv without one gets zeros (what the converter emits too).
    """
    weight = conv.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(
        conv.out_channels, dtype=torch.float64)
    if bn is not None:
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        weight = weight * scale.reshape(-1, 1, 1, 1)
        bias = bias * scale + bn.bias.detach().double() - bn.running_mean.double() * scale
    return weight.numpy(), bias.numpy()


def _same_is_symmetric(size: int, kernel: int, stride: int) -> bool:
    """Whether TFLite's SAME padding of ``size`` pads ``kernel // 2`` on both sides, as torch does
    (always at stride 1; at stride 2 only for odd sizes).  The converter fuses such a PAD away."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2 == kernel // 2 and total - total // 2 == kernel // 2


class _Builder:
    def __init__(self, resolution: int) -> None:
        self.graph = Graph(resolution)
        self.graph.shapes[INPUT] = (1, resolution, resolution, 3)

    def emit(self, op: Op, shape: tuple[int, ...]) -> str:
        self.graph.ops.append(op)
        self.graph.shapes[op.output] = shape
        return op.output

    def conv(self, x: str, block: ConvBNAct | nn.Conv2d, where: str, act: str | None,
             bias_shift: float = 0.0) -> str:
        conv, bn = (block[0], block[1]) if isinstance(block, ConvBNAct) else (block, None)
        assert isinstance(conv, nn.Conv2d)
        weight, bias = fold_conv(conv, bn)  # type: ignore[arg-type]
        kernel, stride = conv.kernel_size[0], conv.stride[0]
        _, h, w, c = self.graph.shapes[x]
        padding = "SAME"
        if not _same_is_symmetric(h, kernel, stride) or not _same_is_symmetric(w, kernel, stride):
            # torch pads k//2 on every side; TF's SAME pads the extra row at the end only
            pad = kernel // 2
            x = self.emit(Op("PAD", [x, self.graph.const(f"{where}/paddings", np.array(
                [[0, 0], [pad, pad], [pad, pad], [0, 0]]))], f"{where}/pad"),
                (1, h + 2 * pad, w + 2 * pad, c))
            h, w, padding = h + 2 * pad, w + 2 * pad, "VALID"
        out_h = -(-h // stride) if padding == "SAME" else (h - kernel) // stride + 1
        out_w = -(-w // stride) if padding == "SAME" else (w - kernel) // stride + 1
        depthwise = conv.groups > 1
        if depthwise and (conv.groups != conv.in_channels or conv.out_channels != conv.in_channels):
            raise ValueError(f"{where}: only depthwise grouped convolutions are supported")
        fused = {None: "NONE", "relu": "RELU", "relu6": "RELU6"}.get(act, "NONE")
        out = self.emit(Op("DEPTHWISE_CONV_2D" if depthwise else "CONV_2D",
                           [x, self.graph.const(f"{where}/weight", weight),
                            self.graph.const(f"{where}/bias", bias + bias_shift)],
                           f"{where}/conv", stride, padding, fused),
                        (1, out_h, out_w, conv.out_channels))
        if act == "h_swish":
            out = self.emit(Op("HARD_SWISH", [out], f"{where}/hswish"), self.graph.shapes[out])
        elif act not in (None, "relu", "relu6"):
            raise ValueError(f"unknown activation {act}")
        return out

    def mean(self, x: str, where: str) -> str:
        _, _, _, c = self.graph.shapes[x]
        axes = self.graph.const(f"{where}/axes", np.array([1, 2]))
        return self.emit(Op("MEAN", [x, axes], f"{where}/mean"), (1, 1, 1, c))

    def block(self, x: str, block: MBBlock, index: int) -> str:
        where = f"b{index}"
        plan = block.plan
        y = x
        if block.expand is not None:
            y = self.conv(y, block.expand, f"{where}/expand", plan.act)
        y = self.conv(y, block.depthwise, f"{where}/depthwise", plan.act)
        if block.se is not None:
            s = self.mean(y, f"{where}/se")
            s = self.conv(s, block.se.reduce, f"{where}/se_reduce", "relu")
            s = self.conv(s, block.se.expand, f"{where}/se_expand", "relu6",
                          bias_shift=HSIGMOID_SHIFT)
            sixth = self.graph.const(f"{where}/se_sixth", np.array(HSIGMOID_SCALE))
            s = self.emit(Op("MUL", [s, sixth], f"{where}/se_gate"), self.graph.shapes[s])
            y = self.emit(Op("MUL", [y, s], f"{where}/se_scale"), self.graph.shapes[y])
        y = self.conv(y, block.project, f"{where}/project", None)
        if block.residual:
            y = self.emit(Op("ADD", [x, y], f"{where}/add"), self.graph.shapes[y])
        return self.rename(y, f"block_{index}")

    def rename(self, tensor: str, name: str) -> str:
        """Give the last op's output a stable name (used to trace a parity failure)."""
        op = self.graph.ops[-1]
        assert op.output == tensor
        self.graph.shapes[name] = self.graph.shapes.pop(tensor)
        op.output = name
        return name


def build_graph(model: MobileNetV3, resolution: int) -> Graph:
    """The operator graph computing the same function as ``model`` (eval mode) on NHWC input."""
    model = model.eval()
    b = _Builder(resolution)
    x = b.rename(b.conv(INPUT, model.stem, "stem", "h_swish"), "block_stem")
    for i, block in enumerate(model.blocks):
        x = b.block(x, block, i)
    x = b.conv(x, model.head_expand, "head/expand", "h_swish")
    x = b.mean(x, "head/pool")
    x = b.conv(x, model.feature_mix, "head/feature", "h_swish")
    features = b.graph.shapes[x][-1]
    x = b.emit(Op("RESHAPE", [x, b.graph.const("head/flat_shape", np.array([-1, features]))],
                  "head/flatten"), (1, features))
    fc = model.classifier
    b.emit(Op("FULLY_CONNECTED", [x, b.graph.const("logits/weight", fc.weight.detach().numpy()),
                                  b.graph.const("logits/bias", fc.bias.detach().numpy())],
              OUTPUT), (1, fc.out_features))
    return b.graph


class _Runner:
    """Runs a graph in torch (NCHW, channels-last storage), constants converted once."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        # 4-D weights channels-last, like the NHWC-strided activations: oneDNN then runs the
        # convolutions without reordering every call
        self.tensors = {name: torch.from_numpy(value).contiguous(
            memory_format=torch.channels_last) if value.ndim == 4 else torch.from_numpy(value)
            for name, value in graph.constants.items()}

    def op(self, op: Op, values: dict[str, torch.Tensor]) -> torch.Tensor:
        args = [values[n] if n in values else self.tensors[n] for n in op.inputs]
        kind = op.kind
        if kind == "PAD":
            p = self.graph.constants[op.inputs[1]].astype(int)
            y = F.pad(args[0], (int(p[2, 0]), int(p[2, 1]), int(p[1, 0]), int(p[1, 1])))
        elif kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            weight = args[1]
            groups = weight.shape[0] if kind == "DEPTHWISE_CONV_2D" else 1
            pad = weight.shape[-1] // 2 if op.padding == "SAME" else 0
            y = F.conv2d(args[0], weight, args[2], op.stride, pad, groups=groups)
            if op.act == "RELU":
                y = F.relu(y, inplace=True)
            elif op.act == "RELU6":
                y = F.hardtanh(y, 0.0, 6.0, inplace=True)
        elif kind == "HARD_SWISH":
            y = F.hardswish(args[0])
        elif kind == "MEAN":
            y = args[0].mean((2, 3), keepdim=True)
        elif kind == "MUL":
            y = args[0] * args[1]
        elif kind == "ADD":
            y = args[0] + args[1]
        elif kind == "RESHAPE":
            y = args[0].flatten(1)
        elif kind == "FULLY_CONNECTED":
            y = F.linear(args[0], args[1], args[2])
        else:  # pragma: no cover - build_graph emits only the kinds above
            raise ValueError(f"unknown op {kind}")
        return y

    @torch.no_grad()
    def __call__(self, x_nchw: torch.Tensor, keep: Iterable[str] = (),
                 ranges: dict[str, list[float]] | None = None) -> dict[str, torch.Tensor]:
        """Outputs named in ``keep`` (and the logits); ``ranges`` gets each tensor's min and max
        folded in.  Intermediate tensors are dropped as soon as nothing later reads them."""
        keep = set(keep) | {OUTPUT}
        last_use = {n: i for i, op in enumerate(self.graph.ops) for n in op.inputs}
        values = {INPUT: x_nchw.contiguous(memory_format=torch.channels_last)}
        if ranges is not None:
            _fold_range(ranges, INPUT, values[INPUT])
        for i, op in enumerate(self.graph.ops):
            values[op.output] = self.op(op, values)
            if ranges is not None:
                _fold_range(ranges, op.output, values[op.output])
            for name in op.inputs:
                if last_use.get(name) == i and name not in keep and name in values:
                    del values[name]
        return {n: v for n, v in values.items() if n in keep}


def _fold_range(ranges: dict[str, list[float]], name: str, value: torch.Tensor) -> None:
    if value.dim() == 4 and value.is_contiguous(memory_format=torch.channels_last):
        value = value.permute(0, 2, 3, 1)  # a contiguous view: no copy for the reduction
    lo_t, hi_t = torch.aminmax(value.reshape(-1))
    lo, hi = float(lo_t), float(hi_t)
    if name in ranges:
        ranges[name][0] = min(ranges[name][0], lo)
        ranges[name][1] = max(ranges[name][1], hi)
    else:
        ranges[name] = [lo, hi]


def run(graph: Graph, x_nchw: torch.Tensor | np.ndarray, keep: Iterable[str] = ()
        ) -> dict[str, np.ndarray]:
    """The graph's logits (and the tensors named in ``keep``) for NCHW float images, as NCHW/2-D
    numpy arrays."""
    x = torch.from_numpy(x_nchw) if isinstance(x_nchw, np.ndarray) else x_nchw
    return {n: v.numpy() for n, v in _Runner(graph)(x, keep).items()}


def logits_runner(graph: Graph) -> Callable[[torch.Tensor], np.ndarray]:
    """The graph's logits for NCHW float batches, constants converted once: a float model that
    runs faster than the torch module it was built from (batch norm folded).  Safe to call from
    several threads at once (each call holds its own tensors)."""
    runner = _Runner(graph)
    return lambda x: runner(x)[OUTPUT].numpy()


def activation_ranges(graph: Graph, batches: Iterable[np.ndarray | torch.Tensor],
                      workers: int = 1) -> dict[str, tuple[float, float]]:
    """Min and max of every activation tensor (the input included) over all ``batches`` of NCHW
    images: what int8 calibration needs.  A batch gives the same extremes as its images one at a
    time, so the batch size is a speed choice only.

    ``workers`` > 1 runs that many batches at once, each on one torch thread with its own
    min/max table, merged at the end (min and max do not care about order): torch's own
    threads scale poorly on these small per-layer ops, whole batches per core do not."""
    runner = _Runner(graph)
    tables: list[dict[str, list[float]]] = []
    local = threading.local()

    def one(batch: np.ndarray | torch.Tensor) -> None:
        if not hasattr(local, "ranges"):
            local.ranges = {}
            tables.append(local.ranges)
        x = torch.from_numpy(batch) if isinstance(batch, np.ndarray) else batch
        runner(x, ranges=local.ranges)

    if workers <= 1:
        for batch in batches:
            one(batch)
    else:
        with torch_threads(1), ThreadPoolExecutor(workers) as pool:
            pending: list[Future[None]] = []
            for batch in batches:  # at most two batches per worker made ahead
                if len(pending) >= 2 * workers:
                    pending.pop(0).result()
                pending.append(pool.submit(one, batch))
            for future in pending:
                future.result()
    if not tables:
        raise ValueError("no calibration images")
    merged = {name: list(bounds) for name, bounds in tables[0].items()}
    for table in tables[1:]:
        for name, (lo, hi) in table.items():
            merged[name][0] = min(merged[name][0], lo)
            merged[name][1] = max(merged[name][1], hi)
    return {name: (lo, hi) for name, (lo, hi) in merged.items()}
