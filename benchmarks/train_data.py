"""Data-set size vs peak memory and training images/s, in-memory against streamed.

For each size, a folder of small JPEGs (48×48, 10 classes) is written once; then, for each data
mode, a fresh child process loads it for the w1.0 space (stored at 224 px in memory) and trains a
few steps of the first phase (largest subnet, elastic resolution 128–224), batch 16, one torch
thread, one decoding worker.  Reported: load seconds (decode everything, or scan + normalisation
sample), peak RSS of the trainer, of its decoding worker, and training images/s after the first
step.  Writes ``benchmarks/results/train_data.json``.

Run: ``.venv/bin/python benchmarks/train_data.py [--sizes 2000,8000,20000] [--steps 6]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from edgenas.cli.common import table

CHILD = r"""
import json, resource, sys, time
root, out, mode, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
import torch
from edgenas.training.data import load_data
from edgenas.training.train import TrainConfig, TrainingInterrupted, train_supernet
t0 = time.perf_counter()
data = load_data(root, 224, mode=mode, workers=1)
load_s = time.perf_counter() - t0
marks = []
def stop(trainer):
    marks.append((time.perf_counter(), trainer.images))
    if trainer.global_step >= steps:
        trainer.stop_requested = True
cfg = TrainConfig(out=out, space="mbv3-w1.0", data=root, epochs=1, batch_size=16, workers=1,
                  data_mode=mode)
try:
    train_supernet(cfg, data=data, progress=False, handle_signals=False, on_step=stop, threads=1)
except TrainingInterrupted:
    pass
(t1, i1), (t2, i2) = marks[0], marks[-1]
print(json.dumps({"load_s": round(load_s, 1), "img_s": round((i2 - i1) / (t2 - t1), 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  "worker_peak_rss_mb":
                      round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
                  "mode": data.describe()["mode"]}))
"""


def make_folder(root: Path, n: int, classes: int = 10) -> None:
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 255, (64, 48, 48, 3), dtype=np.uint8)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = tiles[i % 64].copy()
        img[..., (i % classes) % 3] = 200
        Image.fromarray(img).save(root / f"c{i % classes}" / f"{i:06d}.jpg", quality=85)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="2000,8000,20000")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--modes", default="memory,stream")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_data.json"))
    args = ap.parse_args()
    rows, results = [], []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            root = Path(tmp) / f"imgs{n}"
            make_folder(root, n)
            for mode in args.modes.split(","):
                proc = subprocess.run([sys.executable, "-c", CHILD, str(root),
                                       str(Path(tmp) / f"{mode}{n}.pt"), mode, str(args.steps)],
                                      capture_output=True, text=True, env=env,
                                      cwd=Path(__file__).parent.parent)
                if proc.returncode != 0:
                    raise SystemExit(proc.stderr[-2000:])
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                r.update(images=n, in_memory_gb=round(n * 3 * 224 * 224 / 1e9, 2))
                results.append(r)
                rows.append([n, mode, r["in_memory_gb"], r["load_s"], r["peak_rss_mb"],
                             r["worker_peak_rss_mb"] if mode == "stream" else "-", r["img_s"]])
                print(rows[-1], flush=True)
    print(table(["images", "mode", "decoded GB", "load s", "peak RSS MB", "worker RSS MB",
                 "img/s"], rows))
    out = Path(args.out)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"space": "mbv3-w1.0", "batch": 16, "threads": 1, "workers": 1,
                               "steps": args.steps, "cpus": os.cpu_count(),
                               "loadavg": os.getloadavg(), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
