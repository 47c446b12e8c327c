"""Few-shot latency predictors on a cost that repeats exactly: instructions per inference.

    .venv/bin/python benchmarks/instruction_counts.py [--home .edgenas/bench-transfer]
                                                      [--profiles all] [--no-collect] [--out F.json]

Why: ``benchmarks/predictor_transfer.py`` can only check a predictor to ±10 % against measurements
that themselves repeat to ±10 %.  On a shared VM (vCPUs whose hyper-thread siblings belong to other
tenants, no hardware performance counters exposed) the wall-clock of a 0.1–3 ms subnet does not: the
noise floors there were 8–67 %, so the issue's floor (≥ 90 % within ±10 % at K = 20) had no profile to
apply to.  The *method* — the transfer prior, the correction, the adaptive picks — can still be
checked on a per-subnet cost that each profile defines and that repeats: the number of instructions
one ``invoke()`` executes, counted by valgrind's callgrind.  Every profile is the runner's own code
path (``devices/edgenas_device/runtimes.py``: runtime choice, threads, XNNPACK on or off), so the
profiles differ the way the real ones do: XNNPACK or the builtin kernels, fp32 or int8, LiteRT 2.3 or
tflite-runtime 2.14 (another runtime version, other kernels).  It is not latency: memory stalls,
SIMD width and cache misses cost instructions nothing.  Read it as the predictor's accuracy with the
device's noise taken away, next to predictor_transfer.py's wall-clock table.

1. **Collect** (cached in ``<home>/instructions.json``): the pool of predictor_transfer.py (its
   ``--pool`` subnets, exported by its collection into ``<home>/cache/exports``; run that first), one
   valgrind process per profile and ``--jobs``-th of the pool, in parallel (the counts do not depend
   on load).  Per subnet: load, allocate, one warm-up ``invoke()`` (XNNPACK packs weights there), then
   ``--invokes`` counted ones; the count per invoke is stored.  The first ``--noise`` subnets are
   counted again in a later process: the profile's noise floor.
2. **Evaluate**: predictor_transfer.py's leave-one-profile-out evaluation, unchanged, on millions of
   instructions instead of milliseconds.

Profiles (all on this host, 1 thread unless named): litert-xnn-fp32, litert-xnn-int8,
litert-builtin-fp32, litert-builtin-int8, tfl214-fp32, tfl214-int8 (tflite-runtime 2.14 in
``.venv-tflite``, its XNNPACK).  Left out: 2 threads (valgrind runs threads one at a time and
pthreadpool's spin-waits would be counted as work) and the emulated ARM boards (valgrind would count
qemu's translator, not the board).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import predictor_transfer as pt

REPO = pt.REPO
LITERT = REPO / ".venv" / "bin" / "python"
TFLITE = REPO / ".venv-tflite" / "bin" / "python"

# profile -> (python, precision, threads, xnnpack); the "device" of a profile (for the stricter
# other-devices-only prior) is its python + XNNPACK setting.
PROFILES: dict[str, tuple[Path, str, int, bool]] = {
    "litert-xnn-fp32": (LITERT, "fp32", 1, True),
    "litert-xnn-int8": (LITERT, "int8", 1, True),
    "litert-builtin-fp32": (LITERT, "fp32", 1, False),
    "litert-builtin-int8": (LITERT, "int8", 1, False),
    "tfl214-fp32": (TFLITE, "fp32", 1, True),
    "tfl214-int8": (TFLITE, "int8", 1, True),
}

SHIM = r"""
#include <valgrind/callgrind.h>
void cg_start(void) { CALLGRIND_START_INSTRUMENTATION; }
void cg_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; }
void cg_zero(void) { CALLGRIND_ZERO_STATS; }
void cg_dump(const char *label) { CALLGRIND_DUMP_STATS_AT(label); }
"""

# Runs under valgrind in the profile's Python: the runner's own interpreter set-up, then one
# callgrind dump per model, labelled with its index in argv.
PROBE = r"""
import ctypes, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from edgenas_device.runtimes import make_interpreter, select_runtime
shim = ctypes.CDLL(sys.argv[2])
threads, xnnpack, invokes = int(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[5])
rt = select_runtime("auto")
for i, path in enumerate(sys.argv[6:]):
    interp, _ = make_interpreter(rt, path, threads, xnnpack)
    inp = interp.get_input_details()[0]
    x = np.random.default_rng(0).random(inp["shape"]).astype(inp["dtype"])
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    shim.cg_zero(); shim.cg_start()
    for _ in range(invokes):
        interp.invoke()
    shim.cg_stop()
    shim.cg_dump(str(i).encode())
"""


def tools(home: Path) -> Path:
    """The callgrind client-request shim, compiled once into the home."""
    if not shutil.which("valgrind") or not Path("/usr/include/valgrind/callgrind.h").exists():
        sys.exit("valgrind (with its headers) is needed: apt-get install valgrind")
    lib = home / "instructions" / "libcgshim.so"
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        src = lib.with_suffix(".c")
        src.write_text(SHIM)
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    (lib.parent / "probe.py").write_text(PROBE)
    return lib


def count(home: Path, lib: Path, profile: str, models: list[Path], invokes: int) -> list[float]:
    """Instructions per invoke of each model, from one valgrind process."""
    python, _, threads, xnnpack = PROFILES[profile]
    with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
        out = Path(tmp) / "cg.out"
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
               str(python), str(lib.parent / "probe.py"), str(REPO / "devices"), str(lib),
               str(threads), "1" if xnnpack else "0", str(invokes), *map(str, models)]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        if proc.returncode != 0:
            raise RuntimeError(f"{profile}: valgrind exited {proc.returncode}: {proc.stderr[-2000:]}")
        totals: dict[int, float] = {}
        for dump in Path(tmp).glob("cg.out.*"):
            label, total = None, None
            for line in dump.read_text().splitlines():
                if line.startswith("desc: Trigger: Client Request: "):
                    label = int(line.rsplit(":", 1)[1])
                elif line.startswith("totals: "):
                    total = float(line.split()[1])
            if label is not None and total is not None:
                totals[label] = total / invokes
    if sorted(totals) != list(range(len(models))):
        raise RuntimeError(f"{profile}: {len(totals)} of {len(models)} dumps read")
    return [totals[i] for i in range(len(models))]


def collect(home: Path, archs: list[str], profiles: list[str], noise: int, invokes: int,
            jobs: int) -> dict:
    """Counts per profile and arch (a list: first pass, then the noise pass), cached and resumable."""
    cache = home / "instructions.json"
    data: dict = json.loads(cache.read_text()) if cache.exists() else {}
    lib = tools(home)
    sha = pt.sha_dir(home)
    for profile in profiles:
        precision = PROFILES[profile][1]
        have = data.setdefault(profile, {})
        models = {a: home / "cache" / "exports" / sha / a / precision / "model.tflite" for a in archs}
        missing = [a for a, m in models.items() if not m.exists()]
        if missing:
            sys.exit(f"{len(missing)} {precision} exports missing (e.g. {missing[0]}): run "
                     f"predictor_transfer.py --collect-only --home {home} first")
        for first in (True, False):  # the pool, then (a later process) its noise subset again
            todo = ([a for a in archs if not have.get(a)] if first
                    else [a for a in archs[:noise] if len(have.get(a, [])) == 1])
            if not todo:
                continue
            t0 = time.monotonic()
            parts = [todo[i::jobs] for i in range(jobs)]
            with ThreadPoolExecutor(jobs) as ex:
                futures = [ex.submit(count, home, lib, profile, [models[a] for a in part], invokes)
                           for part in parts if part]
                counts = [f.result() for f in futures]
            for a, c in zip([a for p in parts for a in p], [c for n in counts for c in n]):
                have.setdefault(a, []).append(c)
            cache.write_text(json.dumps(data, indent=1))
            print(f"[{profile}] {len(todo)} subnets counted in {time.monotonic() - t0:.0f} s",
                  file=sys.stderr)
    return data


def as_profiles(data: dict, profiles: list[str]) -> dict:
    """predictor_transfer.evaluate's input: millions of instructions per arch, the noise floor."""
    out = {}
    for p in profiles:
        counts = data.get(p, {})
        out[p] = ({a: v[0] / 1e6 for a, v in counts.items() if v}, pt.noise_floor(counts), None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=int, default=60)
    ap.add_argument("--noise", type=int, default=12, help="Subnets counted twice per profile.")
    ap.add_argument("--invokes", type=int, default=2, help="Counted invokes per subnet.")
    ap.add_argument("--jobs", type=int, default=2,
                    help="valgrind processes at once (the counts do not depend on load).")
    ap.add_argument("--profiles", default="all", help=f"Comma list of {', '.join(PROFILES)}.")
    ap.add_argument("--splits", type=int, default=10, help="Random training sets per K.")
    ap.add_argument("--replays", type=int, default=5)
    ap.add_argument("--no-collect", action="store_true", help="Evaluate what is stored.")
    ap.add_argument("--home", type=Path, default=REPO / ".edgenas" / "bench-transfer")
    ap.add_argument("--out", type=Path,
                    default=REPO / "benchmarks" / "results" / "predictor_transfer_instructions.json")
    args = ap.parse_args()

    from edgenas.measure.plan import sample_archs
    from edgenas.space.spec import SearchSpace

    home = args.home.resolve()
    profiles = list(PROFILES) if args.profiles == "all" else args.profiles.split(",")
    archs = [a.to_string() for a in sample_archs(SearchSpace.load("mbv3-tiny"), args.pool, seed=0)]
    if args.no_collect:
        data = json.loads((home / "instructions.json").read_text())
    else:
        data = collect(home, archs, profiles, args.noise, args.invokes, args.jobs)
    # A profile's "device": what runs it (runtime and kernels); thread counts share a device.
    device_of = {p: f"{PROFILES[p][0].parent.parent.name}-{PROFILES[p][3]}" for p in profiles}
    results = pt.evaluate(args, as_profiles(data, profiles), device_of, {})
    pt.report(results, args)
    pt.write_json(args.out, {
        "benchmark": "predictor_transfer_instructions", "space": "mbv3-tiny", "pool": args.pool,
        "cost": "instructions per invoke (millions), callgrind", "invokes": args.invokes,
        "splits": args.splits, "replays": args.replays, "ks": list(pt.KS),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count()},
        "profiles": {p: {"python": str(v[0].relative_to(REPO)), "precision": v[1], "threads": v[2],
                         "xnnpack": v[3]} for p, v in PROFILES.items()},
        "results": results})


if __name__ == "__main__":
    main()
