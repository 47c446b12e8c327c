"""The emulated Raspberry Pis of the test fleet (tests/support/fleet/arm.py): what they cost to set up,
and what
their timings look like.  THESE TIMINGS DESCRIBE THE QEMU EMULATOR ON THIS HOST, NOT A RASPBERRY PI.

    .venv/bin/python benchmarks/arm_fleet.py [--launches 3] [--out benchmarks/results/arm_fleet.json]

1. Set-up: a cold build of all sysroots into a scratch cache (wall time, bytes), then the cached call.
2. mbv3-tiny's smallest subnet (random weights), exported by ``edgenas export`` as fp32 and int8, timed
   by the runner (``runner.pyz bench``) on pi64 (Cortex-A72), pi5 (Cortex-A76), pi32 (Cortex-A7) and on
   the host, ``--launches`` separate launches each: the median of the launch medians, and the
   launch-to-launch spread (largest deviation of one launch's median from that median).
The runner is launched through each device's wrapper directly, the same command its sshd runs.
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

from edgenas.device.app import build_runner_app  # noqa: E402
from tests.support.fleet import arm  # noqa: E402
from tests.system.test_arm_fleet import _build_models  # noqa: E402

NOTE = "emulated (qemu-user on an x86 host): these timings describe the emulator, not a Raspberry Pi"


def bench_once(python: str, runner: Path, model: Path, runs: int, min_secs: float) -> dict:
    out = subprocess.run([python, str(runner), "bench", "--runs", str(runs), "--min-secs", str(min_secs),
                          str(model)], capture_output=True, text=True, timeout=900, check=True).stdout
    doc = json.loads(out)
    runtime = f"{doc['runtime']['name']} {doc['runtime']['version']}"
    return {"median_ms": doc["median_ms"], "runtime": runtime, "runs": doc["count"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--launches", type=int, default=3)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--min-secs", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "arm_fleet.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=REPO / ".cache") as scratch:
        cold = arm.ensure_built(Path(scratch) / "arm-fleet")
        t0 = time.monotonic()
        arm.ensure_built(Path(scratch) / "arm-fleet")
        cached_s = time.monotonic() - t0
    print(f"set-up: cold build {cold.build_s:.1f} s, {cold.bytes / 1e6:.0f} MB; "
          f"cached call {cached_s:.3f} s")
    cache = arm.ensure_built()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _build_models(root)
        runner = build_runner_app(root / "runner").path
        models = {p: root / "mbv3" / p / "model.tflite" for p in ("fp32", "int8")}
        arch = json.loads((root / "mbv3" / "fp32" / "manifest.json").read_text())["arch"]
        pythons = {"host-litert": str(REPO / ".venv" / "bin" / "python"),
                   "host-tflite_runtime": str(REPO / ".venv-tflite" / "bin" / "python"),
                   **{b: str(cache.python(b)) for b in ("pi64", "pi5", "pi32")}}
        devices: dict[str, dict] = {}
        for name, python in pythons.items():
            board = arm.BOARDS.get(name)
            entry: dict = {"emulated": board is not None}
            if board:
                entry.update(qemu=board.qemu, cpu=board.cpu, machine=board.machine, model=board.model)
            for precision, model in models.items():
                launches = [bench_once(python, runner, model, args.runs, args.min_secs)
                            for _ in range(args.launches)]
                medians = [r["median_ms"] for r in launches]
                mid = statistics.median(medians)
                entry[precision] = {
                    "median_ms": round(mid, 4),
                    "launch_medians_ms": [round(m, 4) for m in medians],
                    "launch_spread_pct": round(100 * max(abs(m - mid) for m in medians) / mid, 1),
                    "runtime": launches[0]["runtime"],
                }
            entry["fp32_over_int8"] = round(entry["fp32"]["median_ms"] / entry["int8"]["median_ms"], 2)
            devices[name] = entry
            fp, i8 = entry["fp32"], entry["int8"]
            print(f"{name:<20} fp32 {fp['median_ms']:>9.3f} ms (±{fp['launch_spread_pct']}%)"
                  f"  int8 {i8['median_ms']:>9.3f} ms (±{i8['launch_spread_pct']}%)"
                  f"  fp32/int8 {entry['fp32_over_int8']:.2f}  {entry['fp32']['runtime']}"
                  + ("  [emulated, not a Pi]" if board else ""))

    host = devices["host-litert"]
    for name in ("pi64", "pi5", "pi32"):
        ref = host if name != "pi32" else devices["host-tflite_runtime"]
        devices[name]["slowdown_vs_host"] = {
            p: round(devices[name][p]["median_ms"] / ref[p]["median_ms"], 1) for p in ("fp32", "int8")}
    result = {
        "note": NOTE,
        "host": {"machine": platform.machine(), "processor": platform.processor() or None,
                 "qemu": subprocess.run(["qemu-aarch64", "--version"], capture_output=True,
                                        text=True).stdout.splitlines()[0]},
        "setup": {"cold_build_s": round(cold.build_s, 1), "bytes": cold.bytes,
                  "cached_call_s": round(cached_s, 3), "recipe": arm.recipe_hash()},
        "model": {"space": "mbv3-tiny", "arch": arch, "weights": "random (seed 0)"},
        "protocol": {"launches": args.launches, "runs": args.runs, "min_secs": args.min_secs,
                     "threads": 1},
        "devices": devices,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}  ({NOTE})")


if __name__ == "__main__":
    main()
