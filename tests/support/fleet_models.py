"""Model folders for the fleet tests: the runner tests' tiny real TFLite models (tests/runner_models.py,
built once with TensorFlow and cached) wrapped in edgenas-format manifests, optionally padded.

Padding: bytes appended after a flatbuffer are ignored by every TFLite runtime (checked with LiteRT 2.3
and tflite-runtime 2.14), so a padded copy is a real, loadable model that takes long enough to upload
for a test to kill a device halfway through.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from tests.support import runner_models


def make_model_dir(out: Path, source: Path, *, name: str, precision: str, pad_bytes: int = 0,
                   seed: int = 0, extra: dict | None = None) -> Path:
    """``out/model.tflite`` (``source`` + ``pad_bytes`` of seeded random bytes) and a manifest."""
    out.mkdir(parents=True, exist_ok=True)
    blob = source.read_bytes()
    if pad_bytes:
        blob += random.Random(seed).randbytes(pad_bytes)
    (out / "model.tflite").write_bytes(blob)
    manifest = {
        "format": "edgenas-model",
        "version": 1,
        "name": name,
        "arch": f"runner-test-{precision}",
        "space": "runner-test",
        "precision": precision,
        "labels": runner_models.LABELS,
        "input": {"size": runner_models.INPUT_SIZE, "layout": "NHWC", "channels": 3,
                  "mean": runner_models.MEAN, "std": runner_models.STD},
        "model": {"file": "model.tflite", "sha256": hashlib.sha256(blob).hexdigest(),
                  "bytes": len(blob)},
        "accuracy": {},
        "latency": {},
        **(extra or {}),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def model_set(root: Path, cache: Path, big_bytes: int = 4 * 1024 * 1024) -> dict[str, Path]:
    """v1 (fp32), v2 (int8), big1/big2 (fp32/int8 padded to about ``big_bytes``), all named "net"."""
    src = runner_models.cached_models(cache)
    return {
        "v1": make_model_dir(root / "v1", src["fp32"], name="net", precision="fp32"),
        "v2": make_model_dir(root / "v2", src["int8"], name="net", precision="int8"),
        "big1": make_model_dir(root / "big1", src["fp32"], name="net", precision="fp32",
                               pad_bytes=big_bytes, seed=1),
        "big2": make_model_dir(root / "big2", src["int8"], name="net", precision="int8",
                               pad_bytes=big_bytes, seed=2),
    }


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
