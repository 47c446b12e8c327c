"""Rebuild a static edgenas subnet in Keras (NHWC), layer by layer, with the weights copied.

Used for the ``dynamic`` precision, which TensorFlow's converter writes (every other precision is
written directly from the operator graph, :mod:`edgenas.export.graph`), and by
``benchmarks/export.py`` to compare the converter's models with the writer's.

Why a rebuild and not a generic converter: the network is small and regular, so an explicit
rebuild gives full control over the three details that break parity (see docs/export.md):

* layout: torch conv weights are OIHW, Keras wants HWIO; depthwise OIHW → HW·C·1; dense W.T;
* batch norm: folded into the preceding convolution here (torch's eps, 1e-5), so the converter sees
  a conv with bias and int8 calibration quantises the folded weights;
* padding: torch pads ``k//2`` on every side; TF's 'same' pads (0, 1) at stride 2, so stride-2
  convolutions get an explicit ``ZeroPadding2D`` and 'valid' padding.

Every block output carries a layer name (``block_<i>``) so a parity failure can be traced to the
first block that diverges.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from edgenas.export.graph import fold_conv
from edgenas.supernets.static import ConvBNAct, MBBlock, MobileNetV3


class _Builder:
    """Holds the Keras module and emits layers with stable names."""

    def __init__(self) -> None:
        import keras

        self.keras = keras
        self.layers = keras.layers

    def act(self, x: Any, name: str | None, where: str) -> Any:
        if name is None:
            return x
        if name == "relu":
            return self.layers.ReLU(name=f"{where}_relu")(x)
        if name == "h_swish":
            return self.layers.Activation("hard_swish", name=f"{where}_hswish")(x)
        raise ValueError(f"unknown activation {name}")

    def pad(self, x: Any, kernel: int, stride: int, where: str) -> tuple[Any, str]:
        """Symmetric torch padding: 'same' is identical at stride 1, explicit at stride 2."""
        if stride == 1 or kernel == 1:
            return x, "same"
        return self.layers.ZeroPadding2D(kernel // 2, name=f"{where}_pad")(x), "valid"

    def conv(self, x: Any, block: ConvBNAct | nn.Conv2d, where: str, act: str | None) -> Any:
        conv, bn = (block[0], block[1]) if isinstance(block, ConvBNAct) else (block, None)
        weight, bias = fold_conv(conv, bn)
        kernel, stride = conv.kernel_size[0], conv.stride[0]
        x, padding = self.pad(x, kernel, stride, where)
        if conv.groups == 1:
            layer = self.layers.Conv2D(conv.out_channels, kernel, stride, padding=padding,
                                       name=f"{where}_conv")
            layer.build(tuple(x.shape))
            values = [weight.transpose(2, 3, 1, 0)]
        else:
            if conv.groups != conv.in_channels or conv.out_channels != conv.in_channels:
                raise ValueError(f"{where}: only depthwise grouped convolutions are supported")
            layer = self.layers.DepthwiseConv2D(kernel, stride, padding=padding,
                                                name=f"{where}_dw")
            layer.build(tuple(x.shape))
            values = [weight.transpose(2, 3, 0, 1)]
        values.append(bias)
        layer.set_weights([v.astype(np.float32) for v in values])
        return self.act(layer(x), act, where)

    def block(self, x: Any, block: MBBlock, index: int) -> Any:
        where = f"b{index}"
        plan = block.plan
        y = x
        if block.expand is not None:
            y = self.conv(y, block.expand, f"{where}_expand", plan.act)
        y = self.conv(y, block.depthwise, f"{where}_depthwise", plan.act)
        if block.se is not None:
            s = self.layers.GlobalAveragePooling2D(keepdims=True, name=f"{where}_se_pool")(y)
            s = self.conv(s, block.se.reduce, f"{where}_se_reduce", "relu")
            s = self.conv(s, block.se.expand, f"{where}_se_expand", None)
            s = self.layers.Activation("hard_sigmoid", name=f"{where}_se_gate")(s)
            y = self.layers.Multiply(name=f"{where}_se_scale")([y, s])
        y = self.conv(y, block.project, f"{where}_project", None)
        if block.residual:
            y = self.layers.Add(name=f"{where}_add")([x, y])
        return self.layers.Identity(name=f"block_{index}")(y)


def build_keras_model(model: MobileNetV3, resolution: int) -> Any:
    """A Keras functional model computing the same function as ``model`` (NHWC input)."""
    b = _Builder()
    layers = b.layers
    model = model.eval()
    inputs = b.keras.Input((resolution, resolution, 3), name="image")
    x = b.conv(inputs, model.stem, "stem", "h_swish")
    x = layers.Identity(name="block_stem")(x)
    for i, block in enumerate(model.blocks):
        x = b.block(x, block, i)
    x = b.conv(x, model.head_expand, "head_expand", "h_swish")
    x = layers.GlobalAveragePooling2D(keepdims=True, name="head_pool")(x)
    x = b.conv(x, model.feature_mix, "head_feature", "h_swish")
    x = layers.Flatten(name="head_flatten")(x)
    dense = layers.Dense(model.classifier.out_features, name="logits")
    dense.build(tuple(x.shape))
    dense.set_weights([model.classifier.weight.detach().numpy().T.astype(np.float32),
                       model.classifier.bias.detach().numpy().astype(np.float32)])
    outputs = dense(x)
    return b.keras.Model(inputs, outputs, name="edgenas_subnet")


def check_keras_parity(keras_model: Any, model: MobileNetV3, images_nchw: np.ndarray,
                       limit_of: Any) -> float:
    """Max abs logit difference Keras vs torch (``limit_of(logits)`` is the allowed one); raises
    :class:`~edgenas.export.convert.ExportError` past it, nothing written."""
    from edgenas.export.convert import ExportError

    with torch.no_grad():
        want = model.eval()(torch.from_numpy(images_nchw)).numpy()
    got = np.concatenate([np.asarray(keras_model(np.ascontiguousarray(
        images_nchw[i:i + 4].transpose(0, 2, 3, 1)), training=False))
        for i in range(0, len(images_nchw), 4)])  # Keras holds every activation of a call
    diff = float(np.abs(got - want).max())
    if not np.isfinite(diff) or diff > limit_of(want):
        raise ExportError(f"float parity check failed: Keras and torch logits differ by "
                          f"{diff:.3g} (limit {limit_of(want):.3g}); nothing was written")
    return diff
