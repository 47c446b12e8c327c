"""Where training memory goes at 224 px, and what the in-memory data path really costs.

Part 1, **training memory by batch size and resolution**: for each (batch, resolution) a fresh child
process builds the ``mbv3-w1.0`` supernet for 10 classes (its space pinned to that one resolution),
holds ``2 × batch`` synthetic uint8 images in memory (negligible), and trains 2 steps of the
``expand-2`` phase (3 subnets per step, one of them the smallest, distillation from the full
network), one torch thread.  Reported: the process's peak RSS, its RSS just before training, and
the difference (what training itself takes: activations, teacher, gradients, optimizer state).
Variants, each in its own process:

* ``before`` — the code of commit 74b38d9 (``--before DIR``: a tree holding that commit's
  ``edgenas`` package, e.g. ``git archive 74b38d9 edgenas supernets | tar -x -C DIR``): all
  subnets of a step in one autograd graph, teacher under ``no_grad``;
* ``after`` — the current code: one backward per subnet (its activations freed before the next
  subnet runs), teacher under ``inference_mode``;
* ``after+ckpt`` — the current code with ``activation_checkpointing`` (elastic blocks recomputed
  in the backward pass).

Part 2, **auto mode's estimate against the measured peak**: folders of 64 px JPEGs, decoded at
224 px for ``mbv3-w1.0``; a child trains them with ``--data-mode auto`` (a few steps through every
phase, then the final BN-recalibrated evaluation of the smallest and largest subnets) and reports
the peak RSS against the estimate ``load_data`` printed when it chose the in-memory path.

Writes ``benchmarks/results/train_memory.json`` and prints both tables.

Run: ``.venv/bin/python benchmarks/train_memory.py --before /tmp/before``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TRAIN_CHILD = r"""
import json, os, resource, sys
batch, res, ckpt = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
import torch
torch.set_num_threads(1)
from edgenas.space.spec import SearchSpace
from edgenas.training.data import ImageData
from edgenas.training.schedule import DEFAULT_SCHEDULE
from edgenas.training.train import TrainConfig, TrainingInterrupted, train_supernet
from dataclasses import asdict, replace
import edgenas.training.train as tr

spec = SearchSpace.load("mbv3-w1.0").to_json()
spec["name"] = f"mbv3-w1.0-r{res}"
spec["resolution"] = {"min": res, "max": res, "step": 4}
path = os.path.join(sys.argv[4], f"space-{res}.json")
json.dump(spec, open(path, "w"))
g = torch.Generator().manual_seed(0)
n = 2 * batch
x = torch.randint(0, 256, (n, 3, res, res), dtype=torch.uint8, generator=g)
y = torch.arange(n) % 10
data = ImageData("synthetic", "synthetic", [str(i) for i in range(10)], x, y, x[:20], y[:20],
                 normalization={"mean": [0.5] * 3, "std": [0.25] * 3})
phase = replace(DEFAULT_SCHEDULE[-1], share=1.0)
kw = {"activation_checkpointing": True} if ckpt else {}
cfg = TrainConfig(out=os.path.join(sys.argv[4], "m.pt"), space=path, epochs=100, batch_size=batch,
                  schedule=[asdict(phase)], **kw)
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
base = rss()
steps = []
def stop(trainer):
    steps.append(trainer.global_step)
    if trainer.global_step >= 2:
        trainer.stop_requested = True
try:
    train_supernet(cfg, data=data, progress=False, handle_signals=False, on_step=stop, threads=1)
except TrainingInterrupted:
    pass
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"batch": batch, "resolution": res, "base_mb": round(base / 2**20),
                  "peak_mb": round(peak / 2**20), "train_mb": round((peak - base) / 2**20),
                  "steps": len(steps)}))
"""

AUTO_CHILD = r"""
import json, resource, sys, time
root, out, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
import torch
from edgenas.training.train import TrainConfig, train_supernet
t0 = time.perf_counter()
cfg = TrainConfig(out=out, space="mbv3-w1.0", data=root, epochs=0.01, batch_size=batch)
res = train_supernet(cfg, progress=False, handle_signals=False, threads=1)
start = [json.loads(l) for l in open(out + ".log.jsonl") if '"start"' in l][-1]
print(json.dumps({"decision": start["data"].get("memory"),
                  "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  "seconds": round(time.perf_counter() - t0, 1), "steps": res.steps}))
"""


def make_folder(root: Path, n: int, classes: int = 10, side: int = 64) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 255, (64, side, side, 3), dtype=np.uint8)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = tiles[i % 64].copy()
        img[..., (i % classes) % 3] = 200
        Image.fromarray(img).save(root / f"c{i % classes}" / f"{i:06d}.jpg", quality=85)


def _run(code: str, args: list[str], pythonpath: Path, timeout: float = 900) -> dict:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    try:
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                              text=True, env=env, cwd=str(pythonpath), timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "?"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", type=Path, default=None,
                    help="a tree with the edgenas package of commit 74b38d9 (the 'before' column)")
    ap.add_argument("--batches", default="8,16",
                    help='batch sizes of part 1 ("": skip it and keep the table already written)')
    ap.add_argument("--resolutions", default="128,224")
    ap.add_argument("--folders", default="1500", help="image counts for part 2 (0: skip)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/train_memory.json")
    args = ap.parse_args()
    from edgenas.cli.common import table

    result: dict = {"space": "mbv3-w1.0", "phase": "expand-2 (3 subnets + teacher)",
                    "threads": 1, "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
                    "training": [], "auto": []}
    variants = [("after", ROOT, "0"), ("after+ckpt", ROOT, "1")]
    if args.before is not None:
        variants.insert(0, ("before", args.before.resolve(), "0"))
    with tempfile.TemporaryDirectory() as tmp:
        for batch in [int(b) for b in args.batches.split(",") if b]:
            for res in map(int, args.resolutions.split(",")):
                row: dict = {"batch": batch, "resolution": res}
                for name, tree, ckpt in variants:
                    r = _run(TRAIN_CHILD, [str(batch), str(res), ckpt, tmp], tree)
                    row[name] = r
                    print(name, batch, res, r, flush=True)
                result["training"].append(row)
        for n in [int(v) for v in args.folders.split(",") if int(v) > 0]:
            folder = Path(tmp) / f"f{n}"
            make_folder(folder, n)
            r = _run(AUTO_CHILD, [str(folder), str(Path(tmp) / f"a{n}.pt"), "16"], ROOT)
            r["images"] = n
            print("auto", n, r, flush=True)
            result["auto"].append(r)
    result["loadavg_end"] = os.getloadavg()
    if not result["training"] and args.out.exists():  # --batches "": keep the earlier table
        earlier = json.loads(args.out.read_text())
        result["training"] = earlier.get("training", [])
        result["loadavg_training"] = earlier.get("loadavg_start")
        names_present = set().union(*(r.keys() for r in result["training"])) if \
            result["training"] else set()
        if "before" in names_present and not any(v[0] == "before" for v in variants):
            variants.insert(0, ("before", ROOT, "0"))
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    names = [v[0] for v in variants]
    rows = []
    for row in result["training"]:
        cells = [row["batch"], row["resolution"]]
        for name in names:
            r = row[name]
            cells.append(f"{r['peak_mb']} ({r['train_mb']})" if "peak_mb" in r else r["error"][:30])
        rows.append(cells)
    print("\npeak RSS MB (of which training) — mbv3-w1.0, expand-2 phase, 1 thread")
    print(table(["batch", "px"] + names, rows))
    if result["auto"]:
        print("\nauto mode: estimate printed vs measured peak (w1.0, 224 px storage, batch 16)")
        arows = []
        for r in result["auto"]:
            d = r.get("decision") or {}
            est = d.get("estimate_mb")
            arows.append([r["images"], d.get("mode", "?"), est, r.get("peak_mb"),
                          f"{r['peak_mb'] / est - 1:+.0%}" if est and r.get("peak_mb") else "-"])
        print(table(["images", "mode", "estimate MB", "peak MB", "peak vs est"], arows))


if __name__ == "__main__":
    main()
