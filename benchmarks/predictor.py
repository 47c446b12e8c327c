"""Latency predictor quality on the local device: measure subnets, fit, report held-out error.

    .venv/bin/python benchmarks/predictor.py [--space mbv3-w1.0] [--samples 100] [--precision fp32,int8]
                                             [--threads 1] [--home .edgenas/bench-predictor-<space>]
                                             [--slow-device] [--measure-only]
                                             [--out benchmarks/results/predictor.json]

1. Builds a supernet of ``--space`` (the full ImageNet-size space by default; random weights: latency
   does not depend on them, and the exports' parity check runs on random images), once.
2. Runs a measurement campaign on the host (`edgenas measure` machinery: stratified sampling, cached
   exports in worker processes, LiteRT benchmarks).  Re-running resumes: nothing is measured twice.
3. Fits the per-device × precision × threads latency predictor and reports its cross-validated quality
   (share within ±5 % / ±10 %, RMSE, Spearman, p90 relative error) next to a MACs-only baseline
   (latency = a + b · MACs, fitted the same way, evaluated on the same folds), for each run-time
   statistic a predictor can be fitted to: median (the default), min and mean.
With ``--slow-device`` it also stands up the test fleet's throttled SSH device (15 % of one core, as in
tests/conftest.py; needs root) and measures and fits it too (``--slow-precision``, default fp32), with
a protocol that suits a device 100× slower (``--slow-runs``, ``--slow-min-secs``), every subnet measured
``--slow-repeats`` times in successive passes (a CPU-capped device drifts for minutes at a time).

4. Re-measures ``--repeat`` subnets per precision into a scratch database: how far a second measurement
   of the same model lands from the first is the noise floor no predictor can beat.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


STATISTICS = ("median", "min", "mean")


def ensure_supernet(home: Path, space: str) -> Path:
    path = home / f"{space}-random.pt"
    if not path.exists():
        import torch

        from edgenas import build_supernet

        torch.manual_seed(0)
        net = build_supernet(space, 10)
        net.save(path)  # no data source: latency exports then skip BN re-calibration
    return path


def ensure_device(store, home: Path, name: str) -> None:
    from edgenas.device import registry

    if not any(d.name == name for d in registry.list_devices(store)):
        registry.add_device(store, registry.make_device(name, "local", home=home))


def noise_floor(store, home: Path, args, archs: list[str], precisions: list[str],
                ckpt: Path) -> dict:
    """Benchmark ``archs`` again (into a scratch database) and compare with the stored numbers."""
    import tempfile

    import numpy as np

    from edgenas.core.files import sha256_file
    from edgenas.device.registry import get_device
    from edgenas.export.package import ModelPackage
    from edgenas.measure.bench import BenchSettings, DeviceBencher
    from edgenas.measure.campaign import cached_export, export_cache_dir
    from edgenas.predictors.latency import measured_latency, quality
    from edgenas.records.store import open_store

    sha = sha256_file(ckpt)
    device = get_device(store, args.device)
    out = {}
    with tempfile.TemporaryDirectory() as tmp, open_store(Path(tmp)) as scratch, \
            DeviceBencher(home, device, BenchSettings(threads=args.threads)) as bencher:
        for precision in precisions:
            pairs: dict[str, tuple[list, list]] = {s: ([], []) for s in STATISTICS}
            for arch in archs:
                first = store.query("SELECT * FROM measurements WHERE device = ? AND "
                                    "arch = ? AND precision = ? AND threads = ? ORDER BY id LIMIT 1",
                                    (args.device, arch, precision, args.threads))
                if not first:
                    continue
                model = ModelPackage.open(cached_export(export_cache_dir(home), sha, arch, precision))
                again = bencher.bench(scratch, model, update_manifest=False)
                for stat in STATISTICS:
                    pairs[stat][0].append(measured_latency(first[0], stat))
                    pairs[stat][1].append(measured_latency(again, stat))
            for stat, (a, b) in pairs.items():
                if a:
                    out[f"{precision}/{stat}"] = quality(np.asarray(a), np.asarray(b))
    return out


def pass_agreement(store, device: str, precision: str, threads: int) -> dict:
    """How well a device's second measurement of a model (a later pass of a repeated campaign) agrees
    with its first: the noise floor of a device measured with ``--repeats``."""
    import numpy as np

    from edgenas.predictors.latency import measured_latency, quality

    rows = store.query("SELECT * FROM measurements WHERE device = ? AND precision = ? AND threads = ? "
                       "ORDER BY id", (device, precision, threads))
    by_arch: dict[str, list] = {}
    for r in rows:
        by_arch.setdefault(r["arch"], []).append(r)
    pairs = [v[:2] for v in by_arch.values() if len(v) >= 2]
    out = {}
    for stat in STATISTICS:
        if pairs:
            first = np.asarray([measured_latency(a, stat) for a, _ in pairs])
            second = np.asarray([measured_latency(b, stat) for _, b in pairs])
            out[f"{precision}/{stat}"] = quality(first, second)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="mbv3-w1.0")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--precision", default="fp32,int8")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--home", type=Path, default=None,
                    help="Workspace [default: .edgenas/bench-predictor-<space>]; re-runs resume.")
    ap.add_argument("--device", default="host")
    ap.add_argument("--measure-only", action="store_true")
    ap.add_argument("--repeat", type=int, default=15, help="Subnets re-measured for the noise floor.")
    ap.add_argument("--slow-device", action="store_true",
                    help="Also the fleet's throttled SSH device (root; see tests/conftest.py).")
    ap.add_argument("--slow-precision", default="fp32")
    ap.add_argument("--slow-samples", type=int, default=40,
                    help="Subnets measured on the slow device (each takes 5-20 s there).")
    ap.add_argument("--slow-repeats", type=int, default=3,
                    help="Passes over the slow device's subnets (edgenas measure --repeats).")
    ap.add_argument("--slow-runs", type=int, default=3)
    ap.add_argument("--slow-min-secs", type=float, default=1.5)
    ap.add_argument("--slow-retries", type=int, default=0,
                    help="Noisy re-runs per benchmark on the slow device (repeats replace them).")
    ap.add_argument("--slow-period-ms", type=float, default=None,
                    help="CFS period of the slow device's quota [default: the test fleet's 10 ms].")
    ap.add_argument("--slow-cpu", default="0",
                    help="The core the slow device is pinned to (its cpuset).")
    ap.add_argument("--isolate", action="store_true",
                    help="Pin this process and its export workers away from --slow-cpu while the "
                         "slow device is measured, so that only it runs on its core.")
    ap.add_argument("--slow-fresh", action="store_true",
                    help="Forget the slow device's earlier measurements (another device instance).")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "predictor.json")
    args = ap.parse_args()

    from edgenas.measure.bench import BenchSettings
    from edgenas.measure.campaign import measure
    from edgenas.records.store import open_store

    home = (args.home or REPO / ".edgenas" / f"bench-predictor-{args.space}").resolve()
    home.mkdir(parents=True, exist_ok=True)
    ckpt = ensure_supernet(home, args.space)
    precisions = args.precision.split(",")
    fleet = None
    try:
        with open_store(home) as store:
            ensure_device(store, home, args.device)
            t0 = time.monotonic()
            report = measure(store, home, ckpt, [args.device], args.samples, precisions,
                             args.threads, args.seed, args.workers)
            campaign_s = time.monotonic() - t0
            print(f"campaign: {json.dumps(report.to_dict()['devices'][args.device])}", file=sys.stderr)
            fits = [(args.device, p) for p in precisions]
            if args.slow_device:
                fleet = start_slow_device(store, home, args.slow_cpu, args.slow_period_ms)
                if args.isolate:
                    others = set(range(os.cpu_count() or 1)) - {int(args.slow_cpu)}
                    os.sched_setaffinity(0, others or {int(args.slow_cpu)})  # inherited by workers
                if args.slow_fresh:
                    with store.transaction() as conn:
                        conn.execute("DELETE FROM measurements WHERE device = 'slow'")
                slow = measure(store, home, ckpt, ["slow"], args.slow_samples,
                               args.slow_precision.split(","), args.threads, args.seed, args.workers,
                               settings=BenchSettings(threads=args.threads, runs=args.slow_runs,
                                                      min_secs=args.slow_min_secs,
                                                      retries=args.slow_retries),
                               repeats=args.slow_repeats)
                print(f"slow: {json.dumps(slow.to_dict()['devices']['slow'])}", file=sys.stderr)
                fits += [("slow", p) for p in args.slow_precision.split(",")]
            if args.measure_only:
                return
            results, noise = fit_all(store, home, args, fits, report, precisions, ckpt)
            if args.slow_device and args.slow_repeats > 1:
                for p in args.slow_precision.split(","):
                    slow_noise = pass_agreement(store, "slow", p, args.threads)
                    noise.update({f"slow:{k}": v for k, v in slow_noise.items()})
    finally:
        if fleet is not None:
            fleet.teardown()
    report_results(args, report, campaign_s, results, noise)


def start_slow_device(store, home: Path, cpu: str = "0", period_ms: float | None = None):
    """The fleet's throttled device, registered (host key trusted) in the benchmark workspace."""
    from edgenas.device import registry
    from edgenas.device.connect import known_hosts_path, open_transport
    from edgenas.device.transports.ssh import forget_known_host
    from tests.conftest import SLOW_QUOTA, TFLITE_PYTHON
    from tests.support.fleet import Fleet
    from tests.support.fleet.cgroups import PERIOD_US

    fleet = Fleet()
    try:
        period_us = int(period_ms * 1000) if period_ms is not None else PERIOD_US
        dev = fleet.add_ssh("slow", str(TFLITE_PYTHON), cpu_quota=SLOW_QUOTA, cpus=cpu,
                            period_us=period_us)
        # A fresh test device each run: its new host key replaces the one an earlier run recorded.
        forget_known_host(known_hosts_path(home), dev.host, dev.port)
        device = registry.make_device("slow", "ssh", home=home, host=dev.host, port=dev.port,
                                      user=dev.user, key_path=str(dev.client_key), python=dev.python)
        with open_transport(device, home, accept_new_host_key=True) as t:
            t.run(["true"], timeout=30)
        registry.add_device(store, device, replace_existing=True)
    except BaseException:
        fleet.teardown()
        raise
    return fleet


def fit_all(store, home: Path, args, fits, report, precisions, ckpt):
    from edgenas.predictors.latency import evaluate_baseline
    from edgenas.predictors.latency_fit import fit

    results = []
    for device, precision in fits:
        for statistic in STATISTICS:
            pred = fit(store, device, precision, args.threads, statistic=statistic)
            q = pred.quality
            base = evaluate_baseline(store, device, precision, args.threads, statistic=statistic)
            results.append({"device": device, "precision": precision,
                            "threads": args.threads, "statistic": statistic,
                            "samples": q["samples"], "model": pred.model_name, "predictor": q,
                            "macs_baseline": base})
    noise = noise_floor(store, home, args, report.archs[: args.repeat], precisions, ckpt)
    return results, noise


def report_results(args, report, campaign_s: float, results: list, noise: dict) -> None:
    rows = []
    for r in results:
        for name, q in (("predictor (" + r["model"] + ")", r["predictor"]),
                        ("MACs-only baseline", r["macs_baseline"])):
            rows.append([r["device"], r["precision"], r["statistic"], name, q["samples"],
                         f"{100 * q['within_5']:.1f} %", f"{100 * q['within_10']:.1f} %",
                         f"{q['rmse_ms']:.4f}", f"{q['spearman']:.4f}",
                         f"{100 * q['p90_rel_error']:.1f} %"])
    for key, q in noise.items():
        device, _, key = key.rpartition(":")
        precision, statistic = key.split("/")
        rows.append([device or args.device, precision, statistic, "re-measurement (noise floor)",
                     q["samples"],
                     f"{100 * q['within_5']:.1f} %", f"{100 * q['within_10']:.1f} %",
                     f"{q['rmse_ms']:.4f}", f"{q['spearman']:.4f}", f"{100 * q['p90_rel_error']:.1f} %"])
    headers = ["device", "precision", "predicts", "model", "n", "within ±5 %", "within ±10 %", "RMSE ms",
               "Spearman", "p90 |err|"]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    for line in [headers, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)))
    out = {"benchmark": "predictor", "space": args.space, "device": args.device,
           "host": {"machine": platform.machine(), "python": platform.python_version()},
           "campaign": report.to_dict(), "campaign_seconds": round(campaign_s, 1),
           "results": results, "noise_floor": noise,
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
