"""Training-step speed of edgenas's supernet against the original once-for-all code, side by side.

Both implementations run in this one process, alternately (the order flips every round), so a
shared, noisy machine slows both the same way; the reported figure is the median over rounds of
each configuration's step time, and the ratio is ``ofa / edgenas`` (> 1: edgenas is faster).
A configuration is a w1.0 subnet (largest or smallest) at 128 or 160 px; a step is forward +
backward + Nesterov SGD through the *supernet* (``set_active`` then ``net(x)``), batch 64,
1000 classes, dropout 0.1, train mode.

The original code is the ``ofa`` package from PyPI, run as its authors run it (NCHW); the
``ofa-cl`` column also gives it channels-last inputs and weights, so the table separates the
memory-layout gain from the rest.  Its package ``__init__`` imports torchvision and horovod, which
cannot be installed beside torch 2.13 here; empty stand-in modules satisfy those imports only
(the network code is unmodified).

Wall-clock ratios are the headline; the ratio of process CPU seconds is given beside them because
it is far less sensitive to other jobs on a shared machine.

Run: ``.venv/bin/python benchmarks/train_vs_ofa.py [--rounds 5] [--steps 2] [--threads 2]``.
Writes ``benchmarks/results/train_vs_ofa.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from edgenas.cli.common import table
from edgenas.space.spec import Arch, SearchSpace
from edgenas.supernets import build_supernet

CL = torch.channels_last


def _stub_unavailable_imports() -> None:
    """Empty torchvision/horovod stand-ins: the ``ofa`` package imports them at module level."""
    if "torchvision" in sys.modules:
        return
    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    transforms.RandomResizedCrop = type("RandomResizedCrop", (), {})  # type: ignore[attr-defined]
    transforms.functional = functional  # type: ignore[attr-defined]
    tv.transforms = transforms  # type: ignore[attr-defined]
    datasets = types.ModuleType("torchvision.datasets")
    tv.datasets = datasets  # type: ignore[attr-defined]
    sys.modules.update({"torchvision": tv, "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional,
                        "torchvision.datasets": datasets})


def make_ofa() -> torch.nn.Module:
    _stub_unavailable_imports()
    from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3

    return OFAMobileNetV3(n_classes=1000, bn_param=(0.1, 1e-5), dropout_rate=0.1,
                          width_mult=1.0, ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6],
                          depth_list=[2, 3, 4]).train()


Step = Callable[[], None]


def _stepper(net: torch.nn.Module, select: Callable[[], None], res: int, batch: int,
             channels_last: bool) -> Step:
    x = torch.randn(batch, 3, res, res, generator=torch.Generator().manual_seed(1))
    if channels_last:
        x = x.contiguous(memory_format=CL)
    y = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(2))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                          weight_decay=3e-5)

    def step() -> None:
        select()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    return step


def build_steps(arch: Arch, res: int, batch: int, space: SearchSpace) -> dict[str, Step]:
    ours = build_supernet(space, 1000).to(memory_format=CL).train()
    ofa = make_ofa()
    ofa_cl = make_ofa().to(memory_format=CL)
    # OFA takes per-block lists over all 20 blocks; blocks beyond a stage's depth are skipped
    pad = space.max_depth
    ks_all = [stage[min(j, len(stage) - 1)][0] for stage in arch.blocks for j in range(pad)]
    es_all = [stage[min(j, len(stage) - 1)][1] for stage in arch.blocks for j in range(pad)]

    def select_ofa(net: torch.nn.Module) -> Callable[[], None]:
        return lambda: net.set_active_subnet(ks=ks_all, e=es_all, d=list(arch.depths))

    return {
        "edgenas": _stepper(ours, lambda: ours.set_active(arch), res, batch, True),
        "ofa": _stepper(ofa, select_ofa(ofa), res, batch, False),
        "ofa-cl": _stepper(ofa_cl, select_ofa(ofa_cl), res, batch, True),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per run (after 1 warm-up)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--res", default="128,160")
    ap.add_argument("--impls", default="edgenas,ofa,ofa-cl")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_vs_ofa.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    space = SearchSpace.load("mbv3-w1.0")
    impls = args.impls.split(",")
    configs = []
    for which in ("largest", "smallest"):
        base = getattr(space, which)()
        for res in (int(r) for r in args.res.split(",")):
            arch = Arch(res, base.blocks)
            configs.append((which, res, arch))
    load_start = os.getloadavg()
    times: dict[tuple[str, int, str], list[float]] = {}
    cpu: dict[tuple[str, int, str], list[float]] = {}  # process CPU seconds: robust to waiting
    for which, res, arch in configs:
        steps = build_steps(arch, res, args.batch, space)
        for rnd in range(args.rounds):
            order = impls if rnd % 2 == 0 else impls[::-1]
            for impl in order:
                steps[impl]()  # warm-up (allocator, oneDNN primitive cache)
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(args.steps):
                    steps[impl]()
                dt = (time.perf_counter() - t0) / args.steps
                times.setdefault((which, res, impl), []).append(dt)
                cpu.setdefault((which, res, impl), []).append(
                    (time.process_time() - c0) / args.steps)
            print(f"  {which} r{res} round {rnd + 1}: " + ", ".join(
                f"{i} {times[(which, res, i)][-1]:.3f}s" for i in impls), flush=True)
    load_end = os.getloadavg()
    rows, results = [], []
    for which, res, _ in configs:
        med = {i: statistics.median(times[(which, res, i)]) for i in impls}
        spread = {i: (min(times[(which, res, i)]), max(times[(which, res, i)])) for i in impls}
        entry: dict[str, object] = {"subnet": which, "resolution": res,
                                    "median_step_s": {i: round(v, 4) for i, v in med.items()},
                                    "min_max_step_s": {i: [round(a, 4), round(b, 4)]
                                                       for i, (a, b) in spread.items()},
                                    "all_step_s": {i: [round(t, 4) for t in times[(which, res, i)]]
                                                   for i in impls},
                                    "median_cpu_s": {i: round(statistics.median(cpu[(which, res, i)]), 4)
                                                     for i in impls}}
        row: list[object] = [which, res] + [round(med[i], 3) for i in impls]
        if "edgenas" in med:
            for i in impls:
                if i != "edgenas":
                    ratio = med[i] / med["edgenas"]
                    entry[f"speedup_vs_{i}"] = round(ratio, 3)
                    cpu_ratio = (statistics.median(cpu[(which, res, i)])
                                 / statistics.median(cpu[(which, res, "edgenas")]))
                    entry[f"cpu_speedup_vs_{i}"] = round(cpu_ratio, 3)
                    row.append(f"{ratio:.2f}x ({cpu_ratio:.2f}x)")
        rows.append(row)
        results.append(entry)
    others = [i for i in impls if i != "edgenas"] if "edgenas" in impls else []
    print(table(["subnet", "px"] + [f"{i} s/step" for i in impls]
                + [f"vs {i} wall (cpu)" for i in others], rows))
    print(f"batch {args.batch}, threads {torch.get_num_threads()}, {args.rounds} rounds x "
          f"{args.steps} steps, medians; load average {load_start[0]:.1f} -> {load_end[0]:.1f}")
    out = Path(args.out)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "batch": args.batch, "threads": torch.get_num_threads(), "rounds": args.rounds,
        "steps_per_round": args.steps, "machine": platform.machine(), "cpus": os.cpu_count(),
        "torch": torch.__version__, "loadavg_start": load_start, "loadavg_end": load_end,
        "results": results,
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
