"""Adapting a pretrained supernet to new classes (``supernet train --init``) against training from
scratch: the accuracy-vs-time curve of both and the time to reach the from-scratch accuracy.

The embedded digits are split by class into two ImageFolders written as PNG files (``A``: digits
0-4, ``B``: digits 5-9, each with ``train/`` and ``val/`` from the data set's own stratified
split), so both runs read images the way a user's data is read.  A ``mbv3-tiny`` supernet is
pretrained on A; then B is trained

* **from scratch** for the reference budget ``--epochs`` and for fractions of it, and
* **adapted** (``init`` = the A supernet: body kept, new 5-way head) for fractions of it.

Every point of a curve is its own complete run: the whole progressive-shrinking schedule
compressed into that budget, then the trainer's own final evaluation (smallest and largest
subnet, BN recalibrated, on B's validation images) -- the accuracy a user who trained that long
would get, not a snapshot taken mid-schedule.  A run's accuracy is the mean of its smallest and
largest subnets' top-1.  Budgets are epochs, so the step plan does not depend on the load of the
shared machine; the time of a run is its process CPU seconds from the call to the last training
step (start-up and the init checkpoint's loading included, final evaluation excluded), with wall
seconds of the training loop beside it.  Both kinds of run take identical steps (same space, data
size, batch and schedule), so the CPU-seconds ratio and the epochs ratio agree up to noise.

The headline: the first adapted budget whose accuracy reaches the from-scratch accuracy at the
full budget, and its time as a fraction of the scratch run's time (the goal is <= 0.2).  The
scratch arm runs first; the adapted arm then runs its budgets in ascending order and stops at the
first that reaches it (the rest would only cost time).

``--pretrained CKPT`` skips pretraining (a supernet made by an earlier run on the same split);
``--reuse RESULT.json`` keeps the rows of an earlier result file and runs only the missing
budgets (the output names the file it extended; its machine and load are the same only if it was
measured here shortly before).

Run: ``nice -n 19 .venv/bin/python benchmarks/adapt.py [--epochs 36] [--pretrain-epochs 36]
[--threads 1] [--pretrained A.pt] [--reuse results/adapt.json]``.  Writes
``benchmarks/results/adapt.json``; the split and the pretrained supernet are kept with
``--keep DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from edgenas.cli.common import table
from edgenas.training.data.sources import load_digits_data
from edgenas.training.train import TrainConfig, Trainer, train_supernet

SPACE = "mbv3-tiny"
SCRATCH_FRACTIONS = (0.1, 0.2, 0.5, 1.0)
ADAPT_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.5)


def write_split(root: Path, size: int) -> dict[str, int]:
    """Digits 0-4 to ``root/A``, 5-9 to ``root/B`` (train/ and val/ each); image counts."""
    raw = load_digits_data(size)
    counts: dict[str, int] = {}
    for split, xs, ys in (("train", raw.train_x, raw.train_y), ("val", raw.val_x, raw.val_y)):
        for i, (x, y) in enumerate(zip(xs, ys.tolist())):
            part = "A" if y < 5 else "B"
            folder = root / part / split / str(y)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
            counts[f"{part}_{split}"] = counts.get(f"{part}_{split}", 0) + 1
    return counts


def run(out: Path, data: Path, epochs: float, threads: int, init: Path | None = None,
        seed: int = 0) -> dict[str, Any]:
    """One complete training run; its budget, time and final accuracy."""
    last_cpu = [0.0]

    def on_step(_: Trainer) -> None:
        last_cpu[0] = time.process_time()

    cpu0 = time.process_time()
    result = train_supernet(TrainConfig(out=str(out), space=SPACE, data=str(data), epochs=epochs,
                                        seed=seed, init=str(init) if init else None),
                            progress=False, threads=threads, on_step=on_step)
    acc = (result.val_top1["min"] + result.val_top1["max"]) / 2
    return {"epochs": round(epochs, 3), "steps": result.steps,
            "cpu_s": round(last_cpu[0] - cpu0, 1), "wall_s": round(result.seconds, 1),
            "top1_min": round(result.val_top1["min"], 4),
            "top1_max": round(result.val_top1["max"], 4), "top1": round(acc, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=float, default=36.0,
                    help="the from-scratch reference budget on B (total epochs, all phases)")
    ap.add_argument("--pretrain-epochs", type=float, default=36.0, help="pretraining on A")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pretrained", type=Path, default=None,
                    help="a supernet pretrained on A by an earlier run (skips pretraining)")
    ap.add_argument("--reuse", type=Path, default=None,
                    help="an earlier result file: keep its rows, run only the missing budgets")
    ap.add_argument("--keep", type=Path, default=None,
                    help="copy the split and the pretrained supernet here")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "adapt.json"))
    args = ap.parse_args()
    load_start = os.getloadavg()
    started = time.monotonic()
    earlier = json.loads(args.reuse.read_text()) if args.reuse else None
    done = {(r["run"], r["fraction"]): r for r in (earlier or {}).get("rows", [])}
    curves: dict[str, list[dict[str, Any]]] = {"scratch": [], "adapted": []}
    with tempfile.TemporaryDirectory(prefix="edgenas-adapt-") as tmp:
        root = Path(tmp)
        counts = write_split(root, 32)
        print(f"digits split: {counts}", flush=True)
        if args.pretrained is not None:
            pretrained = args.pretrained
            pre = (earlier or {}).get("pretrain") or {"checkpoint": str(pretrained)}
        else:
            pretrained = root / "A.pt"
            pre = run(pretrained, root / "A", args.pretrain_epochs, args.threads, seed=args.seed)
        print(f"pretrained on 0-4: {pre}", flush=True)
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            shutil.copy2(pretrained, args.keep / "A.pt")
        target: dict[str, Any] | None = None
        for kind, fractions in (("scratch", SCRATCH_FRACTIONS), ("adapted", ADAPT_FRACTIONS)):
            for f in fractions:
                point = done.get((kind, f))
                if point is None:
                    point = run(root / f"{kind}-{f}.pt", root / "B", args.epochs * f,
                                args.threads, init=pretrained if kind == "adapted" else None,
                                seed=args.seed)
                    point = {"run": kind, "fraction": f, **point}
                curves[kind].append(point)
                print(f"  {kind:8s} {point}", flush=True)
                if kind == "adapted" and target is not None and point["top1"] >= target["top1"]:
                    break
            if kind == "scratch":
                target = curves["scratch"][-1]
    assert target is not None
    reached = next((p for p in curves["adapted"] if p["top1"] >= target["top1"]), None)
    ratio_cpu = reached["cpu_s"] / target["cpu_s"] if reached else None
    ratio_wall = reached["wall_s"] / target["wall_s"] if reached else None
    ratio_epochs = reached["epochs"] / target["epochs"] if reached else None
    rows = []
    for kind in ("scratch", "adapted"):
        for p in curves[kind]:
            rows.append([kind, p["epochs"], p["steps"], p["cpu_s"], p["wall_s"],
                         f"{p['top1_min']:.1%}", f"{p['top1_max']:.1%}", f"{p['top1']:.1%}"])
    print(table(["run", "epochs", "steps", "cpu s", "wall s", "min", "max", "mean"], rows))
    if reached:
        print(f"adapted reaches the from-scratch accuracy ({target['top1']:.1%} after "
              f"{target['cpu_s']:.0f} CPU s) after {reached['cpu_s']:.0f} CPU s: "
              f"{ratio_cpu:.3f}x the time (wall {ratio_wall:.3f}x, epochs {ratio_epochs:.3f}x)")
    else:
        print(f"adapted did not reach the from-scratch accuracy {target['top1']:.1%} within "
              f"{max(ADAPT_FRACTIONS):.0%} of its budget")
    load_end = os.getloadavg()
    result = {
        "what": ("mbv3-tiny pretrained on digits 0-4, adapted to 5-9 with train --init, against "
                 "training from scratch on 5-9: each row is one complete run at that budget; top1 "
                 "is the mean of the smallest and largest subnets' BN-recalibrated top-1 on the "
                 "5-9 validation images; cpu_s is process CPU seconds to the last step"),
        "space": SPACE, "data": "digits split by class into ImageFolders", "images": counts,
        "threads": args.threads, "seed": args.seed, "reference_epochs": args.epochs,
        "pretrain": pre, "scratch_top1": target["top1"], "scratch_cpu_s": target["cpu_s"],
        "adapted_reaches_at_cpu_s": reached["cpu_s"] if reached else None,
        "time_ratio_cpu": round(ratio_cpu, 4) if ratio_cpu is not None else None,
        "time_ratio_wall": round(ratio_wall, 4) if ratio_wall is not None else None,
        "time_ratio_epochs": round(ratio_epochs, 4) if ratio_epochs is not None else None,
        "goal_ratio": 0.2, "wall_s_this_run": round(time.monotonic() - started, 1),
        "extends": None if earlier is None else {
            "file": str(args.reuse), "created": earlier.get("created"),
            "rows": len(done), "load_avg_at_start": earlier.get("load_avg_at_start")},
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(),
                 "python": platform.python_version()},
        "torch": torch.__version__, "load_avg_at_start": list(load_start),
        "load_avg_at_end": list(load_end),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": [p for kind in ("scratch", "adapted") for p in curves[kind]],
    }
    out = Path(args.out)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
