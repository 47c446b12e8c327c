"""Fleet deployment costs on the test fleet: wall time to push a 5 MB model to 1, 4 and 8 devices, and
the time of one fleet benchmark over all 8.

    .venv/bin/python benchmarks/fleet.py [--repeats 3] [--out benchmarks/results/fleet.json]

Stands up 8 devices (6 SSH devices in network namespaces, 2 ADB emulators behind the real adb server;
needs root, as the test fleet does).  Each push measured is a real one: a fresh 5 MB model (a tiny real
TFLite model padded with random bytes) per repeat, so every device uploads, checks and switches; the
runner is already on the devices (pushed once before timing).  The goal is 8 devices <= 2x one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgenas import registry  # noqa: E402
from edgenas.fleet.model import load_model_dir  # noqa: E402
from edgenas.fleet.push import push  # noqa: E402
from edgenas.store import open_store  # noqa: E402
from tests import runner_models  # noqa: E402

MODEL_BYTES = 5 * 1024 * 1024
SIZES = (1, 4, 8)
SSH_DEVICES = 6
ADB_DEVICES = 2


def model_dir(root: Path, source: Path, seed: int) -> Path:
    """A loadable 5 MB model: the runner tests' fp32 model padded with seeded random bytes."""
    out = root / f"m{seed}"
    out.mkdir(parents=True)
    blob = source.read_bytes()
    blob += random.Random(seed).randbytes(MODEL_BYTES - len(blob))
    (out / "model.tflite").write_bytes(blob)
    manifest = {"format": "edgenas-model", "version": 1, "name": "bench", "arch": "runner-test",
                "precision": "fp32", "labels": runner_models.LABELS,
                "input": {"size": runner_models.INPUT_SIZE, "mean": runner_models.MEAN,
                          "std": runner_models.STD},
                "model": {"file": "model.tflite", "sha256": hashlib.sha256(blob).hexdigest(),
                          "bytes": len(blob)}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def cpu_seconds() -> tuple[float, float]:
    """(this process's CPU seconds, the whole machine's busy CPU seconds): where the time goes."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return usage.ru_utime + usage.ru_stime, (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def register(home: Path, fleet) -> list[str]:
    """Register the fleet's devices through the CLI (trust on first use records the host keys)."""
    from click.testing import CliRunner

    from edgenas.cli import main

    runner, names = CliRunner(), []
    for dev in fleet.ssh.values():
        res = runner.invoke(main, ["--home", str(home), "device", "add", dev.name, "--ssh", dev.target,
                                   "--key", str(dev.client_key), "--python", dev.python,
                                   "--accept-new-host-key"])
        assert res.exit_code == 0, res.output
        names.append(dev.name)
    for adev in fleet.adb.values():
        res = runner.invoke(main, ["--home", str(home), "device", "add", adev.name, "--adb",
                                   adev.serial, "--python", adev.python, "--workdir",
                                   str(adev.root / "edgenas")])
        assert res.exit_code == 0, res.output
        names.append(adev.name)
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bench-runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fleet.json")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the fleet benchmark needs the test fleet: run it as root")
    from tests.fleet import Fleet

    work = Path(tempfile.mkdtemp(prefix="edgenas-fleet-bench-"))
    cache = REPO / ".pytest_cache" / "d" / "runner_models"
    source = runner_models.cached_models(cache)["fp32"]
    litert = str(REPO / ".venv" / "bin" / "python")
    tflite = str(REPO / ".venv-tflite" / "bin" / "python")
    fleet = Fleet()
    try:
        for i in range(SSH_DEVICES):  # order: d1 ssh, then a mix, so 4 devices include an ADB one
            fleet.add_ssh(f"s{i + 1}", litert if i % 2 == 0 else tflite)
        for i in range(ADB_DEVICES):
            fleet.add_adb(f"a{i + 1}", tflite)
        assert fleet.adb_server is not None
        os.environ["ANDROID_ADB_SERVER_PORT"] = str(fleet.adb_server.port)
        home = work / "ws"
        names = register(home, fleet)
        order = ["s1", "s2", "s3", "a1", "s4", "s5", "s6", "a2"]
        assert sorted(order) == sorted(names)
        results: dict[str, object] = {"model_bytes": MODEL_BYTES, "repeats": args.repeats,
                                      "devices": order, "push": {}}
        with open_store(home) as store:
            devices = {d.name: d for d in registry.list_devices(store)}
            warm = load_model_dir(model_dir(work, source, 0))
            out = push(store, home, [devices[n] for n in order], warm, "bench")  # runner + first model
            assert out.ok, [r.reason for r in out.results if r.failed]
            seed = 1
            phases: dict[str, list] = {}
            for n in SIZES:
                walls, own_cpu, all_cpu = [], [], []
                for _ in range(args.repeats):
                    model = load_model_dir(model_dir(work, source, seed))
                    seed += 1
                    t0, (c0, m0) = time.perf_counter(), cpu_seconds()
                    out = push(store, home, [devices[d] for d in order[:n]], model, "bench")
                    walls.append(time.perf_counter() - t0)
                    c1, m1 = cpu_seconds()
                    own_cpu.append(c1 - c0)
                    all_cpu.append(m1 - m0)
                    phases.setdefault(str(n), []).append(
                        {r.device: r.extra.get("phases_s") for r in out.results})
                    assert out.ok and all(r.status == "ok" for r in out.results), out.results
                results["push"][str(n)] = {"median_s": round(statistics.median(walls), 3),
                                           "min_s": round(min(walls), 3),
                                           "all_s": [round(w, 3) for w in walls],
                                           "host_process_cpu_s": round(statistics.median(own_cpu), 3),
                                           "machine_cpu_s": round(statistics.median(all_cpu), 3)}
        results["phases_s"] = phases
        push_res = results["push"]
        ratio = push_res["8"]["median_s"] / push_res["1"]["median_s"]
        results["ratio_8_to_1"] = round(ratio, 2)
        results["goal_met"] = ratio <= 2.0

        from edgenas.fleet.bench import fleet_bench

        t0 = time.perf_counter()
        rows, outcome = fleet_bench(home, [devices[d] for d in order], None, "bench",
                                    runs=args.bench_runs, min_secs=0.2)
        results["fleet_bench"] = {
            "devices": len(order), "runs": args.bench_runs, "min_secs": 0.2,
            "wall_s": round(time.perf_counter() - t0, 2), "failures": outcome.failures,
            "median_ms": {r["device"]: r.get("median_ms") for r in rows},
        }
        results["host"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                           "machine": platform.machine()}
    finally:
        fleet.teardown()

    print(f"push of a {MODEL_BYTES / 2**20:.0f} MiB model (median of {args.repeats})")
    print(f"{'devices':>8}{'wall s':>9}{'min s':>8}{'vs 1':>7}{'edgenas cpu s':>15}{'all cpu s':>11}")
    for n in SIZES:
        r = results["push"][str(n)]
        print(f"{n:>8}{r['median_s']:>9.3f}{r['min_s']:>8.3f}"
              f"{r['median_s'] / results['push']['1']['median_s']:>7.2f}"
              f"{r['host_process_cpu_s']:>15.3f}{r['machine_cpu_s']:>11.3f}")
    print(f"goal 8 devices <= 2x one: {'met' if results['goal_met'] else 'NOT met'} "
          f"({results['ratio_8_to_1']}x)")
    fb = results["fleet_bench"]
    print(f"fleet bench over {fb['devices']} devices ({fb['runs']} runs, >= {fb['min_secs']} s each): "
          f"{fb['wall_s']} s, {fb['failures']} failures")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
