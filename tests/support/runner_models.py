"""Tiny real TFLite models for the runner tests.

The runner is only worth testing against files the real converter wrote, so these helpers build a
small Keras conv net (with hard-swish, the op that makes int8 slow under XNNPACK) and convert it twice:
float32, and full-integer int8 with int8 input and output calibrated on a representative data set.
Building needs TensorFlow (~10 s), so the result is cached on disk keyed by the hash of this file; a
change here rebuilds.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from tests.support.cache import build_once

INPUT_SIZE = 16
NUM_CLASSES = 5
LABELS = ["zero", "one", "two", "three", "four"]
MEAN = [0.5, 0.4, 0.3]
STD = [0.25, 0.2, 0.3]
SEED = 1234


def source_hash() -> str:
    """The cache key: models are rebuilt whenever this file changes."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def _keras_model():
    import tensorflow as tf

    tf.keras.utils.set_random_seed(SEED)
    inp = tf.keras.Input((INPUT_SIZE, INPUT_SIZE, 3), batch_size=1)
    x = tf.keras.layers.Conv2D(8, 3, strides=2, padding="same")(inp)
    x = tf.keras.layers.Activation("hard_swish")(x)
    x = tf.keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = tf.keras.layers.ReLU()(x)
    x = tf.keras.layers.Conv2D(16, 1)(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    out = tf.keras.layers.Dense(NUM_CLASSES)(x)
    return tf.keras.Model(inp, out)


def _calibration(n: int = 32) -> np.ndarray:
    """Normalised images, as the exporter would feed them (pixels in 0..1, then mean/std)."""
    rng = np.random.default_rng(SEED)
    pixels = rng.random((n, 1, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.float32)
    return ((pixels - np.float32(MEAN)) / np.float32(STD)).astype(np.float32)


def _manifest(precision: str) -> dict:
    return {
        "arch": "runner-test",
        "labels": LABELS,
        "input": {"size": INPUT_SIZE, "layout": "NHWC", "mean": MEAN, "std": STD},
        "precision": precision,
    }


def build(out_dir: Path) -> dict[str, Path]:
    """Write fp32/ and int8/ (each model.tflite + manifest.json) under out_dir; return model paths."""
    import tensorflow as tf

    model = _keras_model()
    paths: dict[str, Path] = {}
    calib = _calibration()

    def representative():
        for sample in calib:
            yield [sample]

    for precision in ("fp32", "int8"):
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        if precision == "int8":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = representative
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
        blob = conv.convert()
        d = out_dir / precision
        d.mkdir(parents=True, exist_ok=True)
        (d / "model.tflite").write_bytes(blob)
        (d / "manifest.json").write_text(json.dumps(_manifest(precision), indent=2))
        paths[precision] = d / "model.tflite"
    return paths


def cached_models(cache_root: Path) -> dict[str, Path]:
    """Build once per version of this file (once for both test workers); later sessions reuse the
    files without importing TF."""
    root = build_once(cache_root / source_hash(), build)
    return {p: root / p / "model.tflite" for p in ("fp32", "int8")}
