"""Export cost and what precision buys on this host.

For the smallest, a middle and the largest subnet of a trained supernet: export time and model
size per precision, fp32-TFLite vs torch parity, float vs exported top-1, and host latency (the
on-device runner, LiteRT) at 1 and 2 threads.  Prints a table, writes
``benchmarks/results/export.json``.

    .venv/bin/python benchmarks/export.py --ckpt .edgenas/quickstart/supernet.pt
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from edgenas import load_supernet
from edgenas.cli.common import table
from edgenas.export.api import export

REPO = Path(__file__).resolve().parent.parent
RUNNER = REPO / "devices" / "runner.py"


def host_latency(model: Path, threads: int) -> dict:
    proc = subprocess.run([sys.executable, str(RUNNER), "bench", str(model), "--threads",
                           str(threads), "--runs", "50", "--min-secs", "1"],
                          capture_output=True, text=True, timeout=600, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ckpt", default=str(REPO / ".edgenas" / "quickstart" / "supernet.pt"))
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "export"))
    parser.add_argument("--precisions", default="fp32,fp16,dynamic,int8")
    args = parser.parse_args()

    net = load_supernet(args.ckpt)
    space = net.space
    archs = {"min": space.smallest(), "mid": space.sample(7), "max": space.largest()}
    rows, records = [], []
    for name, arch in archs.items():
        for precision in args.precisions.split(","):
            start = time.perf_counter()
            result = export(args.ckpt, arch, precision, Path(args.out) / name / precision,
                            args.data, calibration_samples=500)
            seconds = time.perf_counter() - start
            m = result.manifest
            lat = {t: host_latency(result.model_path, t) for t in (1, 2)}
            acc = m["accuracy"]
            rows.append([name, precision, round(seconds, 1), round(m["model"]["bytes"] / 1024),
                         f"{m['parity']['max_abs_logit_diff']:.1e}",
                         f"{acc['float_top1']:.2%}", f"{acc['exported_top1']:.2%}",
                         f"{lat[1]['median_ms']:.3f}", f"{lat[2]['median_ms']:.3f}"])
            records.append({"subnet": name, "arch": arch.to_string(), "precision": precision,
                            "export_seconds": seconds, "bytes": m["model"]["bytes"],
                            "parity": m["parity"], "accuracy": acc,
                            "host_median_ms": {t: lat[t]["median_ms"] for t in lat},
                            "host_cv": {t: lat[t]["cv"] for t in lat},
                            "runtime": lat[1]["runtime"]})
    print(f"export of {space.name} subnets from {args.ckpt}")
    print(table(["subnet", "precision", "export s", "KiB", "parity", "float top-1",
                 "exported top-1", "ms (1 thr)", "ms (2 thr)"], rows))
    out = REPO / "benchmarks" / "results" / "export.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
