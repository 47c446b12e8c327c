"""Fleet deployment costs on the test fleet: wall time to push a 5 MB model to 1, 4 and 8 devices, the
time of one fleet benchmark over all 8, and the edgenas process's own CPU cost per device for push,
status and bench.

    .venv/bin/python benchmarks/fleet.py [--repeats 3] [--out benchmarks/results/fleet.json]

Stands up 8 devices (6 SSH devices in network namespaces, 2 ADB emulators behind the real adb server;
needs root, as the test fleet does).  Each push measured is a real one: a fresh 5 MB model (a tiny real
TFLite model padded with random bytes) per repeat, so every device uploads, checks and switches; the
runner is already on the devices (pushed once before timing).  The goal is 8 devices <= 2x one.

CPU cost: user+sys CPU seconds of this process and its children (``resource.getrusage``; the devices'
own work runs in their sshd and adb processes, not here), divided by the devices reached.  From it,
what 1,000 devices would take from one 2-core host if CPU were the only limit (issue 12's floor:
<= 20 ms per device per push; 45.9 ms before uploads left SFTP, 15.8 after).  ``--profile`` writes a
cProfile of one SSH device's push (this thread only: paramiko's transport thread, which decrypts
what the device sends, is not in it; yappi sees both).
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

from edgenas.device import registry  # noqa: E402
from edgenas.export.package import ModelPackage  # noqa: E402
from edgenas.fleet.push import push, push_one  # noqa: E402
from edgenas.records.store import open_store  # noqa: E402
from tests.support import runner_models  # noqa: E402

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
    """(CPU seconds of this process and its reaped children, the whole machine's busy CPU seconds)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime,
            (sum(fields) - idle) / os.sysconf("SC_CLK_TCK"))


HOST_CORES = 2
FLEET_SIZE = 1000


def per_device(cpu_s: float, devices: int) -> dict[str, float]:
    """CPU ms per device and the extrapolation to FLEET_SIZE devices on HOST_CORES cores."""
    ms = 1000 * cpu_s / devices
    total = ms * FLEET_SIZE / 1000
    return {"cpu_ms_per_device": round(ms, 2), f"cpu_s_for_{FLEET_SIZE}": round(total, 1),
            f"wall_s_for_{FLEET_SIZE}_on_{HOST_CORES}_cores": round(total / HOST_CORES, 1)}


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
    parser.add_argument("--profile", type=Path, default=None,
                        help="Write a cProfile (pstats) of one SSH device's push here.")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the fleet benchmark needs the test fleet: run it as root")
    from tests.support.fleet import Fleet

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
            warm = ModelPackage.open(model_dir(work, source, 0))
            out = push(store, home, [devices[n] for n in order], warm, "bench")  # runner + first model
            assert out.ok, [r.reason for r in out.results if r.failed]
            seed = 1
            phases: dict[str, list] = {}
            for n in SIZES:
                walls, own_cpu, all_cpu = [], [], []
                for _ in range(args.repeats):
                    model = ModelPackage.open(model_dir(work, source, seed))
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
            if args.profile is not None:
                import cProfile

                prof = cProfile.Profile()
                model = ModelPackage.open(model_dir(work, source, seed))
                # push_one in this thread: cProfile sees only its own thread, not fan_out's workers
                prof.runcall(push_one, devices["s1"], home, model, "bench")
                prof.dump_stats(str(args.profile))
            from edgenas.fleet.status import status_rows

            walls, own_cpu = [], []
            for _ in range(args.repeats):
                t0, (c0, _m) = time.perf_counter(), cpu_seconds()
                got, _fan = status_rows(store, home, [devices[d] for d in order], "bench")
                walls.append(time.perf_counter() - t0)
                own_cpu.append(cpu_seconds()[0] - c0)
                assert all(not r.get("error") for r in got), got
            results["status"] = {"devices": len(order), "median_s": round(statistics.median(walls), 3),
                                 "host_process_cpu_s": round(statistics.median(own_cpu), 3)}
        results["phases_s"] = phases
        push_res = results["push"]
        ratio = push_res["8"]["median_s"] / push_res["1"]["median_s"]
        results["ratio_8_to_1"] = round(ratio, 2)
        results["goal_met"] = ratio <= 2.0

        from edgenas.fleet.bench import fleet_bench
        from edgenas.measure.bench import BenchSettings

        t0, (c0, _m) = time.perf_counter(), cpu_seconds()
        rows, outcome = fleet_bench(home, [devices[d] for d in order], None, "bench",
                                    settings=BenchSettings(runs=args.bench_runs, min_secs=0.2))
        bench_cpu = cpu_seconds()[0] - c0
        results["fleet_bench"] = {
            "devices": len(order), "runs": args.bench_runs, "min_secs": 0.2,
            "wall_s": round(time.perf_counter() - t0, 2), "failures": outcome.failures,
            "host_process_cpu_s": round(bench_cpu, 3),
            "median_ms": {r["device"]: r.get("median_ms") for r in rows},
        }
        n = len(order)
        push_n, push_1 = (results["push"][k]["host_process_cpu_s"] for k in (str(n), "1"))
        results["cpu_per_device"] = {
            "push": {**per_device(push_n, n),
                     "marginal_ms": round(1000 * (push_n - push_1) / (n - 1), 2)},
            "status": per_device(results["status"]["host_process_cpu_s"], n),
            "bench": per_device(bench_cpu, n),
            "floor_push_ms": 20.0,
        }
        results["cpu_per_device"]["push"]["floor_met"] = \
            results["cpu_per_device"]["push"]["cpu_ms_per_device"] <= 20.0
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
    print(f"edgenas CPU per device (this process + children, {len(results['devices'])} devices), "
          f"and {FLEET_SIZE} devices from one {HOST_CORES}-core host")
    print(f"{'verb':>8}{'ms/device':>11}{f'cpu s/{FLEET_SIZE}':>14}{f'wall s/{FLEET_SIZE}':>15}")
    for verb, r in results["cpu_per_device"].items():
        if isinstance(r, dict):
            print(f"{verb:>8}{r['cpu_ms_per_device']:>11.1f}{r[f'cpu_s_for_{FLEET_SIZE}']:>14.1f}"
                  f"{r[f'wall_s_for_{FLEET_SIZE}_on_{HOST_CORES}_cores']:>15.1f}")
    push_cpu = results["cpu_per_device"]["push"]
    print(f"push floor <= 20 ms/device: {'met' if push_cpu['floor_met'] else 'NOT met'} "
          f"({push_cpu['cpu_ms_per_device']} ms; marginal {push_cpu['marginal_ms']} ms)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
