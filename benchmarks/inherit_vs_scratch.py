"""Inherited weights vs fine-tuning vs training from scratch, for the same budget, for three archs.

The honest test of a supernet: its subnets' accuracy as inherited (BN recalibrated only), after a
short fine-tune, and the same architecture trained from scratch for the same wall-clock budget.
Writes ``benchmarks/results/inherit_vs_scratch.json``.  Run:
``.venv/bin/python benchmarks/inherit_vs_scratch.py CKPT [--minutes 0.5] [--arch ID ...]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from edgenas.cli.common import table
from edgenas.supernets import load_supernet
from edgenas.training.data import load_data
from edgenas.training.evaluate import evaluate_archs
from edgenas.training.finetune import train_subnet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("ckpt")
    ap.add_argument("--minutes", type=float, default=0.5, help="budget per fine-tune / scratch run")
    ap.add_argument("--arch", action="append", default=None,
                    help="arch id, min or max (default: min, a middle one, max)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    net = load_supernet(args.ckpt)
    data = load_data(net.meta["data"], net.space.resolutions[-1])
    ids = args.arch or ["min", net.space.sample_many(1, seed=7)[0].to_string(), "max"]
    archs = [net.space.parse(a) for a in ids]
    inherited = evaluate_archs(net, archs, data)
    rows, results = [], []
    for arch, inh in zip(archs, inherited):
        tuned = train_subnet(net, arch, data, minutes=args.minutes, progress=False)
        scratch = train_subnet(net, arch, data, minutes=args.minutes, from_scratch=True,
                               progress=False)
        results.append({"arch": arch.to_string(), "inherited": inh.top1, "fine_tuned": tuned.top1,
                        "scratch": scratch.top1, "steps": tuned.steps,
                        "scratch_steps": scratch.steps, "minutes": args.minutes})
        rows.append([arch.to_string(), f"{inh.top1:.2%}", f"{tuned.top1:.2%}",
                     f"{scratch.top1:.2%}", tuned.steps])
    print(table(["arch", "inherited", "fine-tuned", "scratch", "steps"], rows))
    out = Path(__file__).parent / "results" / "inherit_vs_scratch.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"checkpoint": str(args.ckpt), "data": data.source,
                               "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
