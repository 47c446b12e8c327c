"""``--data-mode auto`` under a hard memory limit: it streams a folder whose in-memory path would
not fit, and training runs to its saved checkpoint inside the limit.

A child process caps its data segment (``RLIMIT_DATA``, what ``ulimit -d`` sets: heap and anonymous
mappings, so every tensor) at what it already uses plus 2.7 GB.  The folder holds 10 000 small
JPEGs (9 800 in train/, 200 in val/), 1.4 GB once decoded at the space's 224 px; with the final BN
recalibration (a batch of 250 images at 224 px, 1.2 GB, on top of training's 0.35 GB) the in-memory
path needs about 2.9 GB and cannot fit; streaming (about 2.2 GB) can.  The recalibration takes one
such batch (``calib_images=250``, `supernet train --calib`), not the default 2000 images' eight:
the peak is the same, the wind-down an eighth.  A narrow space (the MobileNetV3 layout
with small widths, 192–224 px) and a small val/ folder keep the run cheap — every phase, the final
BN recalibration and evaluation, the checkpoint; if the trainer held more than the limit it would
die with a MemoryError.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

IMAGES = 10_000
# In a val/ folder of their own: the memory arithmetic counts train and val images alike, and the
# final evaluation (two subnets at 224 px) runs over val alone, a 20 % split of one folder otherwise.
VAL_IMAGES = 200
HEADROOM = 2_700_000_000

SPACE = {
    "name": "mbv3-narrow-224", "description": "test: small widths at 192-224 px",
    "stem": {"width": 8, "kernel": 3, "stride": 2, "act": "h_swish"},
    "first_block": {"width": 8, "kernel": 3, "act": "relu"},
    "stages": [{"width": 8, "stride": 2, "act": "relu", "se": False},
               {"width": 16, "stride": 2, "act": "relu", "se": True},
               {"width": 16, "stride": 2, "act": "h_swish", "se": False},
               {"width": 24, "stride": 1, "act": "h_swish", "se": True},
               {"width": 24, "stride": 2, "act": "h_swish", "se": True}],
    "head": {"expand": 64, "feature": 128},
    "kernel_choices": [3, 5, 7], "expand_choices": [2, 3, 4], "depth_choices": [2, 3, 4],
    "resolution": {"min": 192, "max": 224, "step": 32},
    "se_reduction": 4, "divisor": 8, "dropout": 0.1,
}

CHILD = r"""
import json, resource, sys
root, out, space, headroom = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
import torch
from edgenas.training.train import TrainConfig, train_supernet
def vm(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
limit = vm("VmData") + headroom
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
cfg = TrainConfig(out=out, space=space, data=root, epochs=0.005, batch_size=8, workers=1,
                  calib_images=250)
result = train_supernet(cfg, progress=False, handle_signals=False, threads=1)
start = [json.loads(l) for l in open(out + ".log.jsonl") if '"start"' in l][-1]
from edgenas.supernets.mbv3 import load_supernet
calib = load_supernet(out).meta["val_calib_images"]
print(json.dumps({"steps": result.steps, "val": result.val_top1, "data": start["data"], "calib": calib,
                  "limit_growth": headroom,
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def _make_jpegs(root: Path, n: int, classes: int = 4, first: int = 0) -> None:
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 255, (32, 32, 32, 3), dtype=np.uint8)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
    for i in range(first, first + n):
        img = tiles[i % 32].copy()
        img[..., i % classes % 3] = 60 * (i % classes)
        Image.fromarray(img).save(root / f"c{i % classes}" / f"{i:05d}.jpg", quality=80)


@pytest.mark.slow
def test_auto_streams_a_folder_that_does_not_fit_and_trains_within_the_limit(
        tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    _make_jpegs(root / "train", IMAGES - VAL_IMAGES)
    _make_jpegs(root / "val", VAL_IMAGES, first=IMAGES - VAL_IMAGES)
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root), str(tmp_path / "n.pt"),
                           str(space), str(HEADROOM)], capture_output=True, text=True,
                          timeout=420, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print("memory-limit test:", result)
    data = result["data"]
    assert data["mode"] == "stream"
    plan = data["memory"]
    assert plan["left_source"].startswith("RLIMIT_DATA")
    need = plan["memory_mb"]["data"] + max(plan["memory_mb"]["load"], plan["memory_mb"]["eval"],
                                           plan["memory_mb"]["batch"] + plan["memory_mb"]["model"])
    assert need > HEADROOM / 2**20  # holding it decoded cannot fit
    assert "streaming" in plan["reason"] and plan["reason"].endswith("and fits")
    assert (tmp_path / "n.pt").exists() and result["steps"] >= 6
    assert result["calib"] == 250  # one recalibration batch: the peak above, an eighth of the time
