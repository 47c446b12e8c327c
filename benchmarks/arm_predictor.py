"""A measurement campaign on the emulated 64-bit Pi ``pi64`` (aarch64, ai-edge-litert 2.3, Cortex-A72)
and its latency predictor's held-out quality next to the device's own noise floor.
THESE TIMINGS DESCRIBE THE QEMU EMULATOR ON THIS HOST, NOT A RASPBERRY PI.

    .venv/bin/python benchmarks/arm_predictor.py [--samples 20] [--runs 5]
                                                 [--out benchmarks/results/arm_predictor.json]

1. ``edgenas measure`` (the library call) on mbv3-tiny (random weights: latency does not depend on
   them), fp32 and int8, ``--repeats 2``: every subnet is measured twice, in two passes over the list.
2. Noise floor: the two measurements of each subnet compared (|second - first| / first): the share
   within ±5 % and ±10 %.  A predictor cannot be judged more finely than the device repeats itself.
3. The per-device latency predictor (``predictor fit --method per-device``, median of the two) with its
   k-fold held-out quality, and the MACs-only baseline on the same folds.
4. The measured int8/fp32 ratio (XNNPACK's ARM int8 kernels are faster; on this x86 host they are not).

pi64 is registered as a *local* device whose ``python`` is the board's qemu wrapper (the same command
the test fleet's sshd runs), so nothing but the emulator stands between the runner and the numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgenas import build_supernet  # noqa: E402
from edgenas.device.registry import add_device, make_device  # noqa: E402
from edgenas.measure.bench import BenchSettings  # noqa: E402
from edgenas.measure.campaign import list_measurements, measure  # noqa: E402
from edgenas.predictors.latency import evaluate_baseline  # noqa: E402
from edgenas.predictors.latency_fit import fit  # noqa: E402
from edgenas.records.store import open_store  # noqa: E402
from edgenas.training.data import load_data  # noqa: E402
from tests.support.fleet import arm  # noqa: E402

NOTE = "emulated (qemu-user on an x86 host): these timings describe the emulator, not a Raspberry Pi"
DEVICE = "pi64"
PRECISIONS = ("fp32", "int8")


def noise_floor(rows: list[dict]) -> dict:
    """Agreement of each subnet's first and second measurement (in the order they were taken)."""
    by: dict[str, list[float]] = {}
    for r in sorted(rows, key=lambda r: r["id"]):
        by.setdefault(r["arch"], []).append(float(r["median_ms"]))
    rel = [abs(v[1] - v[0]) / v[0] for v in by.values() if len(v) >= 2]
    return {"pairs": len(rel),
            "within_5": round(sum(x <= 0.05 for x in rel) / len(rel), 3) if rel else None,
            "within_10": round(sum(x <= 0.10 for x in rel) / len(rel), 3) if rel else None,
            "median_rel_diff": round(statistics.median(rel), 4) if rel else None,
            "max_rel_diff": round(max(rel), 4) if rel else None}


def _q(q: dict) -> dict:
    keys = ("samples", "within_5", "within_10", "mape", "p90_rel_error", "spearman")
    return {k: (round(q[k], 4) if isinstance(q[k], float) else q[k]) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--min-secs", type=float, default=0.1)
    ap.add_argument("--workers", type=int, default=2, help="export processes")
    ap.add_argument("--home", type=Path, default=None, help="workspace [default: a temporary one]")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "arm_predictor.json")
    args = ap.parse_args()

    cache = arm.ensure_built()
    tmp = tempfile.TemporaryDirectory(prefix="arm-predictor-")
    home = args.home or Path(tmp.name) / "ws"
    home.mkdir(parents=True, exist_ok=True)
    settings = BenchSettings(runs=args.runs, min_secs=args.min_secs, warmup_secs=0.2,
                             cv_threshold=0.10)
    import torch

    torch.manual_seed(0)
    data = load_data("digits", size=32)
    net = build_supernet("mbv3-tiny", 10, labels=data.labels, normalization=data.normalization)
    ckpt = home / "tiny.pt"
    if not ckpt.is_file():  # a re-run in the same --home resumes the campaign (same supernet sha)
        net.save(ckpt, meta={"data": {"source": "digits"}})

    with open_store(home) as store:
        if not any(True for _ in store.query("SELECT 1 FROM devices WHERE name = ?", (DEVICE,))):
            add_device(store, make_device(DEVICE, "local", home=home, workdir=str(home / "pi64-wd"),
                                          python=str(cache.python(DEVICE))))
        t0 = time.monotonic()
        report = measure(store, home, ckpt, [DEVICE], args.samples, list(PRECISIONS), 1, seed=0,
                         workers=args.workers, progress=True, settings=settings, repeats=2)
        campaign_s = time.monotonic() - t0
        if not report.complete:
            raise SystemExit(f"campaign incomplete: {json.dumps(report.to_dict())[:2000]}")
        result: dict = {}
        for precision in PRECISIONS:
            rows = list_measurements(store, DEVICE, precision, 1, "mbv3-tiny")
            pred = fit(store, DEVICE, precision, 1, space="mbv3-tiny", method="per-device")
            base = evaluate_baseline(store, DEVICE, precision, 1, space="mbv3-tiny")
            ms = [float(r["median_ms"]) for r in rows]
            result[precision] = {
                "measurements": len(rows), "latency_ms": [round(min(ms), 3), round(max(ms), 3)],
                "runtime": pred.runtime, "noise_floor": noise_floor(rows),
                "predictor": {"model": pred.model_name, **_q(pred.quality)},
                "macs_baseline": _q(base)}
        pairs = {}
        for precision in PRECISIONS:
            for r in list_measurements(store, DEVICE, precision, 1, "mbv3-tiny"):
                pairs.setdefault(r["arch"], {}).setdefault(precision, []).append(r["median_ms"])
        ratios = [statistics.median(v["int8"]) / statistics.median(v["fp32"]) for v in pairs.values()
                  if "int8" in v and "fp32" in v]

    board = arm.BOARDS[DEVICE]
    out = {
        "note": NOTE,
        "device": {"name": DEVICE, "qemu": board.qemu, "cpu": board.cpu, "machine": board.machine,
                   "model": board.model, "emulated": True},
        "host": {"machine": platform.machine(),
                 "qemu": subprocess.run([board.qemu, "--version"], capture_output=True,
                                        text=True).stdout.splitlines()[0]},
        "campaign": {"space": "mbv3-tiny", "weights": "random (seed 0)", "samples": args.samples,
                     "repeats": 2, "threads": 1, "runs": args.runs, "min_secs": args.min_secs,
                     "seconds": round(campaign_s, 1)},
        "int8_over_fp32_median": round(statistics.median(ratios), 3) if ratios else None,
        "precisions": result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")

    print(f"\n{DEVICE} ({board.cpu} under {board.qemu}; {NOTE})")
    print(f"{'precision':<9} {'latency ms':>15} {'noise ±5%':>9} {'noise ±10%':>10} "
          f"{'pred ±5%':>8} {'pred ±10%':>9} {'pred p90':>8} {'Spearman':>8} {'MACs ±10%':>9}")
    for precision, r in result.items():
        nf, p, b = r["noise_floor"], r["predictor"], r["macs_baseline"]
        lo, hi = r["latency_ms"]
        print(f"{precision:<9} {lo:>7.2f}-{hi:<7.2f} {100 * nf['within_5']:>8.0f}% "
              f"{100 * nf['within_10']:>9.0f}% {100 * p['within_5']:>7.0f}% "
              f"{100 * p['within_10']:>8.0f}% "
              f"{100 * p['p90_rel_error']:>7.1f}% {p['spearman']:>8.3f} {100 * b['within_10']:>8.0f}%")
    print(f"int8/fp32 (median over subnets): {out['int8_over_fp32_median']}; campaign "
          f"{campaign_s:.0f} s; wrote {args.out}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
