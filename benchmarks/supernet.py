"""Supernet throughput on this CPU: forward+backward images/s through the supernet and extraction time.

Prints a table and writes ``benchmarks/results/supernet.json``.  Run: ``.venv/bin/python
benchmarks/supernet.py [--space mbv3-w1.0] [--batch 64] [--steps 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from edgenas import build_supernet
from edgenas.cli.common import table


def fwd_bwd_rate(net, arch, resolution: int, batch: int, steps: int) -> float:
    net.train().set_active(arch)
    x = torch.randn(batch, 3, resolution, resolution)
    y = torch.randint(0, net.num_classes, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()
    loss_fn(net(x), y).backward()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        net.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
    return batch * steps / (time.perf_counter() - start)


def extract_seconds(net, arch, repeats: int = 5) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        net.extract(arch)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--space", default="mbv3-w1.0")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--resolutions", default="32,128")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "supernet.json"))
    args = parser.parse_args()

    net = build_supernet(args.space, num_classes=1000)
    space = net.space
    rows, records = [], []
    for name, arch in (("largest", space.largest()), ("smallest", space.smallest())):
        for res in (int(r) for r in args.resolutions.split(",")):
            rate = fwd_bwd_rate(net, arch, res, args.batch, args.steps)
            ext = extract_seconds(net, arch)
            rows.append([name, res, args.batch, round(rate, 1), round(ext * 1000, 1)])
            records.append({"subnet": name, "arch": arch.to_string(), "resolution": res,
                            "batch": args.batch, "fwd_bwd_img_per_s": rate,
                            "extract_ms": ext * 1000})
    print(f"supernet {space.name}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cpus ({platform.processor() or platform.machine()})")
    print(table(["subnet", "resolution", "batch", "fwd+bwd img/s", "extract ms"], rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"space": space.name, "torch": torch.__version__,
                               "threads": torch.get_num_threads(), "results": records}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
