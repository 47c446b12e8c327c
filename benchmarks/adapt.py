"""Adapting a pretrained supernet to new classes (``supernet train --init``) against training from
scratch: the accuracy-vs-time curve of both and the time to reach the from-scratch accuracy.

The target is digits 5-9 (``B``), written with digits 0-4 (``A``) as PNG ImageFolders from the
embedded digits' own stratified split, so every run reads images the way a user's data is read.
The pretraining set (``--source``) stands in for the published ImageNet supernet:

* ``glyphs`` (default): a large, varied set of other classes -- 37 letter shapes in every
  TrueType font of this machine, slanted, rotated and thickened at random, imaged the way the
  UCI digits were (a 32x32 bitmap counted into 8x8 blocks of 0..16, upsampled);
* ``digits``: digits 0-4 only (721 images of 5 classes; a small, narrow body).

A ``mbv3-tiny`` supernet is pretrained on the source (its cost is not counted: users download
it); then B is trained

* **from scratch** (progressive shrinking) for the reference budget ``--epochs`` and for
  fractions of it, and
* **adapted** (``init`` = the pretrained supernet: body kept, new 5-way head, the trainer's
  adaptation schedule) for fractions of it.

Every point of a curve is its own complete run, once per seed (``--seeds``: one run's accuracy
on 179 validation images moves by a point or two between seeds): the whole schedule compressed
into that budget, then the trainer's own final evaluation (smallest and largest subnet, BN
recalibrated, on B's validation images) -- the accuracy a user who trained that long would get,
not a snapshot taken mid-schedule.  A run's accuracy is the mean of its smallest and largest
subnets' top-1.  Budgets are epochs, so the step plan does not depend on the load of the shared
machine; the time of a run is its process CPU seconds from the call to the last training step
(start-up and the init checkpoint's loading included, final evaluation excluded), with wall
seconds of the training loop beside it.  The two schedules sample different numbers of subnets
per step, so an epoch costs differently in each: CPU seconds, not epochs, are the ratio that
counts.

The headline: the first adapted budget whose mean accuracy over the seeds reaches the
from-scratch mean accuracy at the full budget, and its time as a fraction of the scratch run's
time (the goal is <= 0.2).  The scratch arm runs first (its shorter budgets, which only draw the
curve, at the first seed); the adapted arm then runs its budgets in ascending order and stops at
the first that reaches it (the rest would only cost time).

``--pretrained CKPT`` skips pretraining (a supernet made by an earlier run from the same source);
``--reuse RESULT.json`` keeps the rows of an earlier result file and runs only the missing
budgets (the output names the file it extended; its machine and load are the same only if it was
measured here shortly before).

Run: ``nice -n 19 .venv/bin/python benchmarks/adapt.py [--source glyphs] [--epochs 36]
[--pretrain-epochs N] [--threads 1] [--pretrained P.pt] [--reuse results/adapt-glyphs.json]``.
Writes ``benchmarks/results/adapt-SOURCE.json``; the pretrained supernet is kept with
``--keep DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from edgenas.cli.common import table
from edgenas.supernets.mbv3 import load_supernet
from edgenas.training.data.sources import load_digits_data
from edgenas.training.data.transforms import square_uint8
from edgenas.training.schedule import ADAPT_SCHEDULE
from edgenas.training.train import TrainConfig, Trainer, train_supernet

SPACE = "mbv3-tiny"
SCRATCH_FRACTIONS = (0.1, 0.2, 0.5, 1.0)
ADAPT_FRACTIONS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5)
PRETRAIN_SETS = {"glyphs": "letters rendered from this machine's fonts (imaged like the digits)",
                 "digits": "digits 0-4"}


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


FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "/System/Library/Fonts")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrt"  # lower case only where it differs in shape


def _fonts() -> list[Path]:
    found = sorted(p for d in FONT_DIRS if Path(d).is_dir() for p in Path(d).rglob("*.ttf"))
    if not found:
        raise SystemExit("--source glyphs needs TrueType fonts (none under " + ", ".join(FONT_DIRS)
                         + "); install fonts-dejavu-core or use --source digits")
    return found


def _glyph(ch: str, font: Path, rng: random.Random) -> np.ndarray:
    """One letter imaged the way the UCI digits were: a binary 32x32 bitmap of the character,
    size-normalised and centred, then the ink pixels of each 4x4 block counted (0..16)."""
    face = ImageFont.truetype(str(font), 96)
    canvas = Image.new("L", (224, 224), 0)
    ImageDraw.Draw(canvas).text((112, 112), ch, font=face, fill=255, anchor="mm")
    slant = rng.uniform(-0.3, 0.3)  # as handwriting leans; about the centre
    canvas = canvas.transform(canvas.size, Image.AFFINE, (1, slant, -slant * 112, 0, 1, 0),
                              resample=Image.BILINEAR)
    canvas = canvas.rotate(rng.uniform(-12, 12), resample=Image.BILINEAR)
    for _ in range(rng.choice((0, 0, 1, 2))):
        canvas = canvas.filter(ImageFilter.MaxFilter(5))  # a broader pen
    ink = np.asarray(canvas) > 127
    ys, xs = np.nonzero(ink)
    box = canvas.crop((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    h = rng.randint(22, 32)
    w = max(3, min(32, round(box.size[0] * h / box.size[1] * rng.uniform(0.8, 1.2))))
    bitmap = Image.new("L", (32, 32), 0)
    bitmap.paste(box.resize((w, h), Image.BILINEAR), ((32 - w) // 2, (32 - h) // 2))
    bits = (np.asarray(bitmap) > 127).astype(np.int64)
    return bits.reshape(8, 4, 8, 4).sum(axis=(1, 3))


def write_glyphs(root: Path, size: int, per_class: int, seed: int = 0) -> dict[str, int]:
    """A large, varied pretraining set from this machine's fonts: every letter of ``LETTERS`` in
    every font, slanted, rotated and thickened at random, imaged like the digits (8x8, 17 grey
    levels, upsampled to ``size``) into ``root/train`` and ``root/val`` (one in ten)."""
    fonts = _fonts()
    rng = random.Random(seed)
    counts = {"glyphs_train": 0, "glyphs_val": 0}
    for ch in LETTERS:
        name = f"{ch}{'_' if ch.islower() else ''}"  # case-insensitive file systems
        cells = [_glyph(ch, fonts[i % len(fonts)], rng) for i in range(per_class)]
        grey = torch.from_numpy((np.stack(cells) * (255.0 / 16.0)).round().astype(np.uint8))
        images = square_uint8(grey.unsqueeze(1).repeat(1, 3, 1, 1), size)
        for i, x in enumerate(images):
            split = "val" if i % 10 == 0 else "train"
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
            counts[f"glyphs_{split}"] += 1
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


def described(checkpoint: Path) -> dict[str, Any]:
    """What a pretrained supernet says of its own training (its checkpoint's meta)."""
    meta = load_supernet(checkpoint).meta
    training = meta.get("training") or {}
    dataset = meta.get("dataset") or {}
    top1 = meta.get("val_top1") or {}
    return {"checkpoint": str(checkpoint), "classes": dataset.get("classes"),
            "images": dataset.get("train"), "epochs": training.get("epochs"),
            "steps": training.get("steps"), "wall_s": training.get("seconds"),
            "top1_min": top1.get("min"), "top1_max": top1.get("max")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=float, default=36.0,
                    help="the from-scratch reference budget on B (total epochs, all phases)")
    ap.add_argument("--source", choices=("glyphs", "digits"), default="glyphs",
                    help="pretraining set: letters rendered from this machine's fonts, or digits 0-4")
    ap.add_argument("--glyphs-per-class", type=int, default=300)
    ap.add_argument("--pretrain-epochs", type=float, default=None,
                    help="pretraining budget [default: 8 on glyphs, 36 on digits 0-4]")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pretrain-threads", type=int, default=None,
                    help="threads for pretraining, which is not timed [default: --threads]")
    ap.add_argument("--seed", type=int, default=0, help="the first seed")
    ap.add_argument("--seeds", type=int, default=3,
                    help="seeds of the reference and of every adapted budget (their means count)")
    ap.add_argument("--pretrained", type=Path, default=None,
                    help="a supernet pretrained on A by an earlier run (skips pretraining)")
    ap.add_argument("--reuse", type=Path, default=None,
                    help="an earlier result file: keep its rows, run only the missing budgets")
    ap.add_argument("--keep", type=Path, default=None,
                    help="copy the split and the pretrained supernet here")
    ap.add_argument("--out", default=None, help="[default: results/adapt-SOURCE.json]")
    args = ap.parse_args()
    if args.pretrain_epochs is None:
        args.pretrain_epochs = 8.0 if args.source == "glyphs" else 36.0
    if args.out is None:
        args.out = str(Path(__file__).parent / "results" / f"adapt-{args.source}.json")
    load_start = os.getloadavg()
    started = time.monotonic()
    earlier = json.loads(args.reuse.read_text()) if args.reuse else None
    done = {(r["run"], r["fraction"], r.get("seed", 0)): r
            for r in (earlier or {}).get("runs", earlier.get("rows", []) if earlier else [])}
    seeds = list(range(args.seed, args.seed + args.seeds))
    runs: list[dict[str, Any]] = []
    curves: dict[str, list[dict[str, Any]]] = {"scratch": [], "adapted": []}
    with tempfile.TemporaryDirectory(prefix="edgenas-adapt-") as tmp:
        root = Path(tmp)
        counts = write_split(root, 32)
        if args.source == "glyphs" and args.pretrained is None:
            counts.update(write_glyphs(root / "G", 32, args.glyphs_per_class, args.seed))
        print(f"images: {counts}", flush=True)
        if args.pretrained is not None:
            pretrained = args.pretrained
            pre = described(pretrained)
        else:
            pretrained = root / "A.pt"
            source = root / ("G" if args.source == "glyphs" else "A")
            pre = run(pretrained, source, args.pretrain_epochs,
                      args.pretrain_threads or args.threads, seed=args.seed)
        print(f"pretrained on {args.source}: {pre}", flush=True)
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            shutil.copy2(pretrained, args.keep / f"{args.source}.pt")

        def point(kind: str, f: float, its_seeds: list[int]) -> dict[str, Any]:
            """One budget of one arm, run once per seed; the seeds' means."""
            mine = []
            for seed in its_seeds:
                one = done.get((kind, f, seed))
                if one is None:
                    one = {"run": kind, "fraction": f, "seed": seed,
                           **run(root / f"{kind}-{f}-{seed}.pt", root / "B", args.epochs * f,
                                 args.threads, init=pretrained if kind == "adapted" else None,
                                 seed=seed)}
                print(f"  {kind:8s} {one}", flush=True)
                mine.append(one)
            runs.extend(mine)
            mean = {k: round(sum(r[k] for r in mine) / len(mine), 4)
                    for k in ("cpu_s", "wall_s", "top1_min", "top1_max", "top1")}
            return {"run": kind, "fraction": f, "epochs": mine[0]["epochs"],
                    "steps": mine[0]["steps"], "seeds": len(mine), **mean,
                    "top1_each": [r["top1"] for r in mine]}

        for f in SCRATCH_FRACTIONS:  # the curve at one seed; the reference at every seed
            curves["scratch"].append(point("scratch", f, seeds if f == 1.0 else seeds[:1]))
        target = curves["scratch"][-1]
        for f in ADAPT_FRACTIONS:
            curves["adapted"].append(point("adapted", f, seeds))
            if curves["adapted"][-1]["top1"] >= target["top1"]:
                break  # the larger budgets would only cost time
    reached = next((p for p in curves["adapted"] if p["top1"] >= target["top1"]), None)
    ratio_cpu = reached["cpu_s"] / target["cpu_s"] if reached else None
    ratio_wall = reached["wall_s"] / target["wall_s"] if reached else None
    ratio_epochs = reached["epochs"] / target["epochs"] if reached else None
    rows = []
    for kind in ("scratch", "adapted"):
        for p in curves[kind]:
            rows.append([kind, p["epochs"], p["seeds"], p["steps"], p["cpu_s"], p["wall_s"],
                         f"{p['top1_min']:.1%}", f"{p['top1_max']:.1%}", f"{p['top1']:.1%}",
                         " ".join(f"{a:.1%}" for a in p["top1_each"])])
    print(table(["run", "epochs", "seeds", "steps", "cpu s", "wall s", "min", "max", "mean",
                 "each seed"], rows))
    if reached:
        print(f"adapted reaches the from-scratch accuracy ({target['top1']:.1%} after "
              f"{target['cpu_s']:.0f} CPU s, mean of {target['seeds']} seeds) after "
              f"{reached['cpu_s']:.0f} CPU s: {ratio_cpu:.3f}x the time (wall {ratio_wall:.3f}x, "
              f"epochs {ratio_epochs:.3f}x)")
    else:
        print(f"adapted did not reach the from-scratch accuracy {target['top1']:.1%} within "
              f"{max(ADAPT_FRACTIONS):.0%} of its budget")
    load_end = os.getloadavg()
    result = {
        "what": (f"mbv3-tiny pretrained on {PRETRAIN_SETS[args.source]}, adapted to digits 5-9 "
                 "with train --init (its default adaptation schedule), against "
                 "training from scratch on 5-9: each row is one budget, run once per seed (the "
                 "from-scratch curve's shorter budgets at the first seed only), its columns the "
                 "seeds' means; top1 is the mean of the smallest and largest subnets' "
                 "BN-recalibrated top-1 on the 179 validation images of 5-9; cpu_s is process CPU "
                 "seconds to the last step"),
        "space": SPACE, "source": args.source, "schedule": [asdict(p) for p in ADAPT_SCHEDULE],
        "data": "digits split by class into ImageFolders", "images": counts,
        "threads": args.threads, "reference_epochs": args.epochs,
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
        "seeds": seeds,
        "rows": [p for kind in ("scratch", "adapted") for p in curves[kind]],
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
