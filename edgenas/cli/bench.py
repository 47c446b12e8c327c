"""``edgenas bench DIR --device NAME``: measure an exported model on a device and store the result."""

from __future__ import annotations

from pathlib import Path

import click

from edgenas.cli.common import CV_THRESHOLD, WARMUP_SECS, Workspace, cpu_set, echo, echo_json, table
from edgenas.measure.bench import bench_model
from edgenas.records.store import open_store


@click.command("bench")
@click.argument("model_dir", type=click.Path(exists=True, path_type=Path))
@click.option("--device", "device_name", required=True, help="A registered device.")
@click.option("--threads", type=click.IntRange(min=0), default=1, show_default=True,
              help="Interpreter threads (0: the runtime's default).")
@click.option("--runs", type=click.IntRange(min=1), default=50, show_default=True,
              help="At least this many timed runs.")
@click.option("--min-secs", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="And at least this many seconds of timed runs.")
@WARMUP_SECS
@CV_THRESHOLD
@click.option("--cpus", default=None, metavar="SET", callback=cpu_set,
              help="Pin the benchmark to these CPUs (4-7, 0,2-3): big.LITTLE cores run a model 2-4x "
              "apart. The set is stored with the row and makes another device class [default: the "
              "device's own set, else unpinned].")
@click.option("--json", "as_json", is_flag=True, help="Print the stored record as JSON.")
@click.pass_obj
def bench_cmd(ws: Workspace, model_dir: Path, device_name: str, threads: int, runs: int,
              min_secs: float, warmup_secs: float, cv_threshold: float, cpus: str | None,
              as_json: bool) -> None:
    """Benchmark the model in MODEL_DIR (model.tflite + manifest.json) on a device.

    The runner and the model are copied only when the device does not already have them (by
    sha256); one benchmark runs at a time per device; the result is stored in the workspace with
    its provenance and written into the manifest's "latency" section.
    """

    with open_store(ws.ensure()) as store:
        rec = bench_model(store, ws.home, device_name, model_dir, threads=threads, runs=runs,
                          min_secs=min_secs, warmup_secs=warmup_secs, cv_threshold=cv_threshold,
                          cpus=cpus)
    if as_json:
        echo_json({k: v for k, v in rec.items() if k != "result_json"})
        return
    runtime = f"{rec['runtime']} {rec['runtime_version'] or ''}".strip()
    # the model's own peak (edgenas.records.memory): what a --memory-budget-mb is compared with
    mem = f"{rec['memory_kib'] / 1024:.1f} MiB" if rec.get("memory_kib") is not None else "-"
    echo(table(
        ["device", "runtime", "precision", "threads", "median ms", "p90 ms", "CV", "model memory"],
        [[rec["device"], runtime, rec["precision"], rec["threads"], rec["median_ms"], rec["p90_ms"],
          f"{100 * (rec['cv'] or 0):.1f} %" + (" noisy" if rec["noisy"] else ""), mem]],
    ))
    sent = ", ".join(rec["uploaded"]) or "nothing (already on the device)"
    pin = f"  CPUs {rec['cpus']}" if rec.get("cpus") else ""
    echo(f"arch {rec['arch']}  model {rec['model_sha256'][:12]}  class {rec['device_class']}{pin}  "
         f"uploaded: {sent}")
