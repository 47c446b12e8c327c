"""The real-use path end to end, through the CLI: a published once-for-all state dict (made by the
authors' ``ofa`` package) → ``supernet import-ofa`` → ``supernet train --init`` on an ImageFolder
with the user's own labels → ``measure`` + ``predictor fit`` + ``search`` on a local device →
int8 export at ≥ 160 px → ``bench`` on the device.

Every step runs at its smallest honest size (a few images, one step per training phase, the
predictor's minimum of 8 measured subnets, a short bench protocol): the test checks that the
pieces fit together on the flagship ``mbv3-w1.0`` space at ImageNet resolutions, not how good the
result is.  Each step's own behaviour is tested elsewhere (``test_ofa_import``,
``test_train_init``, ``test_export``, ``test_measure_resume``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgenas.export.pipeline import read_manifest
from edgenas.space.spec import Arch
from edgenas.supernets.mbv3 import load_supernet
from tests.support.cli_runner import Cli
from tests.unit.test_ofa_import import _make_ofa

LABELS = ["bolt", "nut", "washer"]
EXPORT_PX = 160  # the smallest input a real camera pipeline on a Pi is given here
FAST_BENCH = ["--runs", "3", "--min-secs", "0", "--warmup-secs", "0"]  # still one warm-up run
pytestmark = pytest.mark.usefixtures("user_home")


def _folder(root: Path, per_class: int = 6) -> None:
    """Three colour-coded classes of small PNGs: enough to train, calibrate and validate on."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(LABELS):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 80, (48, 48, 3), dtype=np.uint8)
            img[..., c] += 150
            Image.fromarray(img).save(root / name / f"{i}.png")


@pytest.mark.slow
def test_pretrained_supernet_to_your_classes_to_your_device(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "ws")
    src = tmp_path / "ofa_mbv3_d234_e346_k357_w1.0"
    torch.save({"state_dict": _make_ofa(1.0).state_dict()}, src)
    imported = tmp_path / "imported.pt"
    cli("supernet", "import-ofa", str(src), "--space", "mbv3-w1.0", "--out", str(imported))

    images = tmp_path / "parts"
    _folder(images)
    adapted = tmp_path / "adapted.pt"
    cli("supernet", "train", "--init", str(imported), "--data", str(images), "--out", str(adapted),
        "--epochs", "0.01", "--batch-size", "4", "--threads", "1", "--quiet")  # a step a phase
    net = load_supernet(adapted)
    assert net.space.name == "mbv3-w1.0" and net.labels == LABELS
    assert net.meta["init"]["head"] == "replaced" and net.meta["init"]["old_labels"] == 1000

    cli("device", "add", "here", "--local", "--workdir", str(tmp_path / "device"),
        "--python", sys.executable)
    cli("measure", str(adapted), "--device", "here", "--samples", "8", "--precision", "fp32",
        *FAST_BENCH, "--workers", "2", "--quiet")
    cli("predictor", "fit", "--device", "here", "--precision", "fp32")
    # The bench below measures the exported model on the device, so the search's own verification
    # (an export in worker processes) is left out here; test_quickstart covers it.
    search_dir = tmp_path / "search"
    cli("search", str(adapted), "--device", "here", "--latency-ms", "1000", "--precision", "fp32",
        "--accuracy", "supernet", "--strategy", "random", "--budget", "2", "--verify-top", "0",
        "--out", str(search_dir))
    found = json.loads((search_dir / "search.json").read_text())
    chosen = net.space.parse(found["chosen"]["arch"])
    assert found["chosen"]["latency_ms"]["here"] > 0  # predicted for this device

    # The chosen blocks at the camera's resolution when the search picked a smaller one.
    arch = Arch(max(chosen.resolution, EXPORT_PX), chosen.blocks)
    model = tmp_path / "model"
    cli("export", str(adapted), "--arch", arch.to_string(), "--precision", "int8",
        "--calibration-samples", "8", "--out", str(model))
    manifest = read_manifest(model)
    assert manifest["arch"] == arch.to_string() and manifest["precision"] == "int8"
    assert manifest["input"]["size"] >= EXPORT_PX and manifest["input"]["dtype"] == "int8"
    assert manifest["labels"] == LABELS

    record = cli.json("bench", str(model), "--device", "here", *FAST_BENCH)
    assert record["median_ms"] > 0
    assert read_manifest(model)["latency"]["here"]["median_ms"] == pytest.approx(
        record["median_ms"])
