"""Training throughput per progressive-shrinking phase, and peak memory, on this machine.

For each phase of the default schedule, runs a few real training steps (the trainer's own step:
augmentation, teacher, subnets, optimizer) on the embedded digits and reports data images/s and
subnet-images/s; also the plain largest-subnet rate at the largest resolution.  Writes
``benchmarks/results/train.json``.  Run: ``.venv/bin/python benchmarks/train.py [--steps 8]
[--threads 1] [--batch 64]``.

``--device cuda`` instead times the training step on the GPU (float16 autocast + gradient scaling,
channels-last, as the trainer runs it) for the largest and smallest w1.0 subnets at 224 px and
prints images/s next to the original once-for-all code on the same GPU (as shipped: float32,
NCHW; and given the same AMP + channels-last treatment).  Writes
``benchmarks/results/train_cuda.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from edgenas.cli.common import table
from edgenas.core.progress import JsonLog
from edgenas.space.spec import SearchSpace
from edgenas.supernets import build_supernet
from edgenas.training.data import load_data
from edgenas.training.schedule import DEFAULT_SCHEDULE, PhasePlan
from edgenas.training.train import DistInfo, TrainConfig, Trainer


def largest_rate(space_name: str, batch: int, steps: int) -> float:
    """Forward+backward+SGD images/s of the largest subnet at the largest resolution."""
    space = SearchSpace.load(space_name)
    net = build_supernet(space, 10).to(memory_format=torch.channels_last).train()
    net.set_active(space.largest())
    r = space.resolutions[-1]
    x = torch.randn(batch, 3, r, r).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return batch * steps / (time.perf_counter() - start)


def _cuda_rate(net: torch.nn.Module, select: object, res: int, batch: int, steps: int,
               amp: bool, channels_last: bool) -> float:
    """Images/s of forward + backward + SGD through ``net`` on the GPU (synchronised timing)."""
    dev = torch.device("cuda")
    net = net.to(dev).train()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, res, res, device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=dev)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    for i in range(steps + 3):
        if i == 3:
            torch.cuda.synchronize()
            start = time.perf_counter()
        select()  # type: ignore[operator]
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            loss = F.cross_entropy(net(x).float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def cuda_main(batch: int, steps: int) -> None:
    """edgenas vs the original OFA code on the GPU, largest and smallest w1.0 subnet at 224 px."""
    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available on this machine")
    from train_vs_ofa import make_ofa  # benchmarks/ is on sys.path when run as a script

    from edgenas.space.spec import Arch

    space = SearchSpace.load("mbv3-w1.0")
    rows, results = [], []
    for which in ("largest", "smallest"):
        base = getattr(space, which)()
        arch = Arch(224, base.blocks)
        ks = [stage[min(j, len(stage) - 1)][0] for stage in arch.blocks
              for j in range(space.max_depth)]
        es = [stage[min(j, len(stage) - 1)][1] for stage in arch.blocks
              for j in range(space.max_depth)]
        ours = build_supernet(space, 1000)
        rate = {"edgenas (amp, cl)": _cuda_rate(ours, lambda n=ours, a=arch: n.set_active(a),
                                                224, batch, steps, True, True)}
        for label, amp, cl in (("ofa (fp32, nchw)", False, False), ("ofa (amp, cl)", True, True)):
            ofa = make_ofa()
            rate[label] = _cuda_rate(
                ofa, lambda o=ofa, k=ks, e=es, d=list(arch.depths): o.set_active_subnet(
                    ks=k, e=e, d=d),
                224, batch, steps, amp, cl)
        results.append({"subnet": which, "resolution": 224, "img_s": {k: round(v, 1)
                                                                       for k, v in rate.items()}})
        rows.append([which] + [round(v) for v in rate.values()])
    print(table(["subnet @224"] + list(results[0]["img_s"]), rows))
    print(f"{torch.cuda.get_device_name()}, batch {batch}, {steps} timed steps")
    out = Path(__file__).parent / "results" / "train_cuda.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "batch": batch,
                               "steps": steps, "torch": torch.__version__,
                               "results": results}, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--space", default="mbv3-tiny")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = ap.parse_args()
    if args.device == "cuda":
        cuda_main(args.batch, max(args.steps, 10))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    space = SearchSpace.load(args.space)
    data = load_data("digits", space.resolutions[-1])
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(out=str(Path(tmp) / "bench.pt"), space=args.space, batch_size=args.batch)
        net = build_supernet(space, data.num_classes, data.labels, data.normalization)
        plans = [PhasePlan(p, args.steps + 1, p.lr) for p in DEFAULT_SCHEDULE]
        marks: list[tuple[int, float, float]] = []
        trainer = Trainer(cfg, data, net, plans, DistInfo(),  # no progress: silent
                          log=JsonLog(None), save_seconds=1e9,
                          on_step=lambda t: marks.append((t.phase, time.perf_counter(),
                                                          time.process_time())))
        trainer.run()
    rows, results = [], []
    for i, plan in enumerate(plans):
        times = [t for p, t, _ in marks if p == i]
        cpus = [c for p, _, c in marks if p == i]
        seconds = (times[-1] - times[0]) / (len(times) - 1)  # first step of a phase is warm-up
        cpu_seconds = (cpus[-1] - cpus[0]) / (len(cpus) - 1)  # steadier on a shared machine
        img_s = args.batch / seconds
        results.append({"phase": plan.phase.name, "step_seconds": round(seconds, 4),
                        "step_cpu_seconds": round(cpu_seconds, 4), "img_s": round(img_s, 1),
                        "subnet_img_s": round(img_s * plan.phase.subnets, 1)})
        rows.append([plan.phase.name, plan.phase.subnets, round(seconds, 3),
                     round(cpu_seconds, 3), round(img_s), round(img_s * plan.phase.subnets)])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    largest = largest_rate(args.space, args.batch, max(3, args.steps // 2))
    print(table(["phase", "subnets/step", "s/step", "cpu s/step", "img/s", "subnet img/s"], rows))
    print(f"largest subnet at {space.resolutions[-1]} px: {largest:.0f} img/s (train step)")
    print(f"peak RSS {peak_mb:.0f} MB; threads {torch.get_num_threads()}; batch {args.batch}")
    out = Path(__file__).parent / "results" / "train.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "space": args.space, "batch": args.batch, "threads": torch.get_num_threads(),
        "machine": platform.machine(), "cpus": torch.get_num_threads(),
        "phases": results, "largest_img_s": round(largest, 1), "peak_rss_mb": round(peak_mb),
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
