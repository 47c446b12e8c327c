"""The exporter's TFLite writer against TensorFlow's converter on the same ``mbv3-w1.0`` subnets
(issue #26): the operators each model holds, the host latency of each (LiteRT + XNNPACK, next to
the host's own noise floor) and what making each int8 model costs.

For each subnet (the largest and smallest at their resolutions, and random ones):

* ``writer``: :func:`edgenas.export.graph.build_graph` → int8 ranges calibrated in torch →
  :func:`edgenas.export.flatbuffer.write_tflite`;
* ``converter``: the Keras rebuild → ``TFLiteConverter`` full-integer int8, calibrated on the same
  images (``edgenas.export.convert.convert``).

Cost is process CPU-seconds (load-independent).  Latency: both models run interleaved in rounds
on one thread, each round a median of ``--runs`` invokes; the noise floor is the spread of one
model's own rounds (the 90th percentile of |round / median − 1| over both models).  Prints a
table, writes ``benchmarks/results/export_paths.json``.

    .venv/bin/python benchmarks/export_paths.py --subnets 6
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RESULT = REPO / "benchmarks" / "results" / "export_paths.json"
GLUE = ("SHAPE", "STRIDED_SLICE", "PACK")  # the converter's dynamic-batch reshape arithmetic


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _ops(blob: bytes) -> Counter[str]:
    from ai_edge_litert.interpreter import Interpreter

    return Counter(op["op_name"] for op in Interpreter(model_content=blob)._get_ops_details())


def _latency(blobs: dict[str, bytes], rounds: int, runs: int, rng: np.random.Generator
             ) -> dict[str, list[float]]:
    """Per model, the median invoke time (ms) of each round; models interleaved round by round."""
    from edgenas.export.convert import make_interpreter

    interpreters = {}
    for name, blob in blobs.items():
        it = make_interpreter(blob, threads=1)
        inp = it.get_input_details()[0]
        it.set_tensor(inp["index"], rng.integers(-128, 127, inp["shape"], dtype=np.int8))
        for _ in range(3):  # warm-up: XNNPACK packs the weights at the first invoke
            it.invoke()
        interpreters[name] = it
    out: dict[str, list[float]] = {name: [] for name in blobs}
    for _ in range(rounds):
        for name, it in interpreters.items():
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                it.invoke()
                times.append((time.perf_counter() - start) * 1000)
            out[name].append(float(np.median(times)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subnets", type=int, default=6, help="subnets (largest, smallest, "
                        "then random) [default: 6]")
    parser.add_argument("--calibration", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()

    import torch

    from edgenas import build_supernet
    from edgenas.cli.common import table
    from edgenas.export.convert import convert
    from edgenas.export.flatbuffer import write_tflite
    from edgenas.export.graph import activation_ranges, build_graph
    from edgenas.export.keras_model import build_keras_model

    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    net = build_supernet("mbv3-w1.0", 10).eval()
    archs = [net.space.largest(), net.space.smallest(),
             *net.space.sample_many(max(0, args.subnets - 2), seed=7)][:args.subnets]
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    for arch in archs:
        model = net.extract(arch).eval()
        r = arch.resolution
        calib = rng.standard_normal((args.calibration, 3, r, r)).astype(np.float32)
        cpu = _cpu()
        graph = build_graph(model, r)
        ranges = activation_ranges(graph, [calib[i:i + 16] for i in range(0, len(calib), 16)])
        written = write_tflite(graph, "int8", ranges, signatures=False)
        writer_cpu = _cpu() - cpu
        cpu = _cpu()
        converted = convert(build_keras_model(model, r), "int8", calib.transpose(0, 2, 3, 1),
                            signatures=False)
        converter_cpu = _cpu() - cpu
        ops_w, ops_c = _ops(written), _ops(converted)
        compute_w = {k: v for k, v in ops_w.items() if k not in GLUE}
        compute_c = {k: v for k, v in ops_c.items() if k not in GLUE}
        lat = _latency({"writer": written, "converter": converted}, args.rounds, args.runs, rng)
        med = {k: float(np.median(v)) for k, v in lat.items()}
        spread = [abs(x / med[k] - 1) for k, v in lat.items() for x in v]
        row = {"arch": arch.to_string(), "resolution": r,
               "macs_m": round(net.space.macs(arch, 10) / 1e6, 1),
               "same_compute_ops": compute_w == compute_c,
               "ops_writer": sum(ops_w.values()), "ops_converter": sum(ops_c.values()),
               "writer_ms": round(med["writer"], 2), "converter_ms": round(med["converter"], 2),
               "latency_ratio": round(med["writer"] / med["converter"], 3),
               "noise_floor_pct": round(100 * float(np.percentile(spread, 90)), 2),
               "writer_cpu_s": round(writer_cpu, 2), "converter_cpu_s": round(converter_cpu, 2),
               "rounds_ms": {k: [round(x, 3) for x in v] for k, v in lat.items()},
               "op_counts": {"writer": dict(sorted(ops_w.items())),
                             "converter": dict(sorted(ops_c.items()))}}
        rows.append(row)
        print(f"{row['arch']}: writer {row['writer_ms']} ms / converter {row['converter_ms']} ms, "
              f"noise ±{row['noise_floor_pct']} %, export {writer_cpu:.1f} / {converter_cpu:.1f} "
              "CPU-s", flush=True)
    cols = ["arch", "macs_m", "same_compute_ops", "writer_ms", "converter_ms", "latency_ratio",
            "noise_floor_pct", "writer_cpu_s", "converter_cpu_s"]
    print(table(cols, [[str(r[c]) for c in cols] for r in rows]))
    record = {"benchmark": "int8 models of the same mbv3-w1.0 subnets: edgenas's TFLite writer vs "
                           "TensorFlow's converter (operators, host latency on 1 thread, export "
                           f"CPU-seconds with {args.calibration} calibration images)",
              "host": {"machine": platform.machine(), "cpus": os.cpu_count(),
                       "python": platform.python_version(), "loadavg_before": list(load_before),
                       "loadavg_after": list(os.getloadavg())},
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "rows": rows}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
