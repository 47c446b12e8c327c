"""How many training images a subnet's BN re-estimation needs before export (issue #26).

A supernet's running BN statistics fit no single subnet, so ``edgenas export`` re-estimates them on
training images before writing a subnet (``--bn-samples``); on the largest ``mbv3-w1.0`` subnet at
224 px every image costs a full forward pass.  This measures the top-1 of subnets of a trained
supernet after re-estimation on N images, against re-estimation on the whole training split, on
the same validation images.  Prints a table, writes ``benchmarks/results/bn_images.json``.

    .venv/bin/edgenas supernet train --space mbv3-tiny --data digits --epochs 15 --out /tmp/s.pt
    .venv/bin/python benchmarks/bn_images.py --supernet /tmp/s.pt
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RESULT = REPO / "benchmarks" / "results" / "bn_images.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--supernet", required=True, help="a trained supernet checkpoint")
    parser.add_argument("--data", default=None, help="[default: the checkpoint's data set]")
    parser.add_argument("--subnets", type=int, default=20)
    parser.add_argument("--counts", default="64,125,250,500")
    args = parser.parse_args()

    import torch

    from edgenas.cli.common import table
    from edgenas.export.api import training_data_source
    from edgenas.supernets.mbv3 import load_supernet
    from edgenas.training.data import load_data
    from edgenas.training.evaluate import recalibrate_bn

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    net = load_supernet(args.supernet)
    data = load_data(args.data or training_data_source(net.meta) or "digits",
                     size=net.space.resolutions[-1])
    counts = [int(c) for c in args.counts.split(",")] + [data.num_train]
    archs = [net.space.smallest(), net.space.largest(),
             *net.space.sample_many(max(0, args.subnets - 2), seed=3)][:args.subnets]
    top1: dict[int, list[float]] = {n: [] for n in counts}
    for arch in archs:
        r = arch.resolution
        xs, ys = zip(*data.val_batches(r))
        vx, vy = torch.cat(xs), torch.cat(ys)
        for n in counts:
            model = net.extract(arch).eval()
            recalibrate_bn(model, data.calibration_images(n, r), batch_size=32)
            with torch.no_grad():
                top1[n].append(float((model(vx).argmax(1) == vy).float().mean()))
    every = np.array(top1[data.num_train])
    rows = []
    for n in counts:
        diff = 100 * (np.array(top1[n]) - every)
        rows.append({"bn_images": n, "mean_top1_pct": round(100 * float(np.mean(top1[n])), 2),
                     "vs_whole_split_mean_pts": round(float(diff.mean()), 2),
                     "vs_whole_split_worst_pts": round(float(diff.min()), 2),
                     "vs_whole_split_best_pts": round(float(diff.max()), 2)})
    cols = list(rows[0])
    print(table(cols, [[str(r[c]) for c in cols] for r in rows]))
    record = {"benchmark": f"top-1 of {len(archs)} subnets of {Path(args.supernet).name} "
                           f"({net.space.name}) after BN re-estimation on N training images, "
                           f"against the whole training split ({data.num_train} images); "
                           f"{data.num_val} validation images",
              "host": {"machine": platform.machine(), "cpus": os.cpu_count(),
                       "python": platform.python_version()},
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
