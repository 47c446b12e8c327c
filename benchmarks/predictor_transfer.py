"""Few-shot latency predictors: leave one device profile out, fit it from K measurements.

    .venv/bin/python benchmarks/predictor_transfer.py [--pool 60] [--profiles all] [--collect-only]
                                                      [--home .edgenas/bench-transfer]
                                                      [--out benchmarks/results/predictor_transfer.json]

1. **Collect** (cached: a rerun measures only what is missing).  One random-weight ``mbv3-tiny``
   supernet, a pool of ``--pool`` subnets sampled as ``edgenas measure`` samples them, exported once
   (fp32 and int8), measured on every *profile* = (device, precision, threads):

   ============  =============================================================================
   host-fp32-t1  the host, LiteRT 2.3 + XNNPACK, 1 thread
   host-fp32-t2  the same, 2 threads
   host-int8-t1  int8 models (XNNPACK does not take int8 h-swish: a different cost structure)
   noxnn-fp32    the host without XNNPACK (LiteRT's builtin kernels; ``--no-xnnpack``)
   pi64-fp32/int8  emulated Raspberry Pi 4 (aarch64, LiteRT, qemu-user cortex-a72)
   pi32-fp32/int8  emulated armv7l board (tflite-runtime 2.14, qemu-arm)
   ============  =============================================================================

   The ARM boards run as *local* devices whose Python is the board's qemu wrapper
   (tests/support/fleet/arm.py builds and caches the sysroots): the same runner and on-device Python as
   the
   ``arm_fleet`` fixture's SSH devices, without an sshd in between.  The first ``--noise`` subnets
   of the pool are measured a second time (a later pass): the profile's own noise floor.
2. **Evaluate**: for each profile P, the other profiles are the prior; P's predictor is fitted from
   K = 5, 10, 20, 40 of its measurements (chosen at random ``--splits`` times, and by the adaptive
   campaign of edgenas.measure.adaptive replayed round by round on the stored latencies, ``--replays``
   times: on the whole pool, then on random 80 % sub-pools) and scored on P's subnets it did not
   see.  Methods: today's
   per-device fit (NNLS on per-kind features, edgenas.predictors.latency), the transfer prior alone
   (a non-negative combination of the other profiles' predictors) and the transfer predictor
   (combination + a correction shrunk toward it; edgenas.predictors.transfer).  Also printed: the
   predictor's own leave-one-out estimate at K (what `edgenas measure --adaptive` sees) and the
   minutes of measurement to a ±10 % predictor.
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

# profile -> (device, precision, threads, board or None, xnnpack)
PROFILES: dict[str, tuple[str, str, int, str | None, bool]] = {
    "host-fp32-t1": ("host", "fp32", 1, None, True),
    "host-fp32-t2": ("host", "fp32", 2, None, True),
    "host-int8-t1": ("host", "int8", 1, None, True),
    "noxnn-fp32": ("noxnn", "fp32", 1, None, False),
    "pi64-int8": ("pi64", "int8", 1, "pi64", True),
    "pi32-int8": ("pi32", "int8", 1, "pi32", True),
    "pi64-fp32": ("pi64", "fp32", 1, "pi64", True),
    "pi32-fp32": ("pi32", "fp32", 1, "pi32", True),
}
KS = (5, 10, 20, 40)


def ensure_supernet(home: Path) -> Path:
    path = home / "mbv3-tiny-random.pt"
    if not path.exists():
        import torch

        from edgenas import build_supernet

        torch.manual_seed(0)
        build_supernet("mbv3-tiny", 10).save(path)  # no data source: no BN re-calibration
    return path


def ensure_devices(store, home: Path, names: set[str]) -> None:
    from edgenas.device import registry

    have = {d.name for d in registry.list_devices(store)}
    for name in sorted(names - have):
        kw: dict = {}
        if name in ("pi64", "pi32"):
            from tests.support.fleet import arm

            kw["python"] = str(arm.ensure_built().python(name))
        if name == "noxnn":
            kw["xnnpack"] = False
        try:
            dev = registry.make_device(name, "local", home=home, workdir=str(home / "dev" / name), **kw)
        except TypeError:  # a registry without the per-device xnnpack setting
            kw.pop("xnnpack", None)
            dev = registry.make_device(name, "local", home=home, workdir=str(home / "dev" / name), **kw)
        registry.add_device(store, dev)


def settings_for(profile: str):
    from edgenas.measure.bench import BenchSettings

    device, _, threads, board, xnnpack = PROFILES[profile]
    if board:  # emulated: every run costs 5-100 ms, the runner's start seconds
        return BenchSettings(threads=threads, runs=10, min_secs=0.5, warmup_runs=1, warmup_secs=0.2,
                             max_secs=60, xnnpack=xnnpack)
    return BenchSettings(threads=threads, runs=30, min_secs=0.5, warmup_secs=0.2, xnnpack=xnnpack)


def collect(store, home: Path, ckpt: Path, pool: list[str], profiles: list[str], noise: int,
            workers: int, arm_pool: int) -> dict[str, float]:
    """Measure every profile on the pool (cached), then the noise subset a second time."""
    from edgenas.measure.campaign import measure

    minutes: dict[str, float] = {}
    ensure_devices(store, home, {PROFILES[p][0] for p in profiles})
    for profile in profiles:
        device, precision, threads, board, _ = PROFILES[profile]
        archs = pool[:arm_pool] if board else pool  # a prefix of the pool is a sample of it too
        t0 = time.monotonic()
        rep = measure(store, home, ckpt, [device], len(archs), [precision], threads, 0, workers,
                      archs=archs, settings=settings_for(profile), progress=True)
        if noise:
            measure(store, home, ckpt, [device], noise, [precision], threads, 0, workers,
                    archs=archs[:noise], settings=settings_for(profile), repeats=2, progress=False)
        d = rep.devices[device]
        if d.measured:  # minutes per subnet, end to end (this campaign's exports included)
            minutes[profile] = rep.seconds / 60 / d.measured
        print(f"{profile}: {json.dumps(rep.to_dict()['devices'][device])} "
              f"({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    return minutes


def noise_floor(by_arch: dict[str, list[float]]) -> dict | None:
    """How a subnet's second measurement (or count) agrees with its first, over the repeated ones."""
    import numpy as np

    from edgenas.predictors.latency import quality

    pairs = [v[:2] for v in by_arch.values() if len(v) >= 2]
    return quality(np.asarray([a for a, _ in pairs]), np.asarray([b for _, b in pairs])) if pairs \
        else None


def load_profile(store, profile: str, statistic: str):
    """(archs, latency per arch (median of repeats), noise-floor quality) for one profile."""
    import numpy as np

    from edgenas.predictors.latency import measured_latency

    device, precision, threads, _, _ = PROFILES[profile]
    rows = store.query("SELECT * FROM measurements WHERE device = ? AND precision = ? AND threads = ? "
                       "AND space = 'mbv3-tiny' ORDER BY id", (device, precision, threads))
    by_arch: dict[str, list[float]] = {}
    for r in rows:
        by_arch.setdefault(r["arch"], []).append(measured_latency(r, statistic))
    return {a: float(np.median(v)) for a, v in by_arch.items()}, noise_floor(by_arch), rows


def sha_dir(home: Path) -> str:
    """The export cache's folder for the benchmark's supernet (``<home>/cache/exports/<this>``)."""
    from edgenas.core.files import sha256_file

    return sha256_file(ensure_supernet(home))[:12]


def evaluate(args, data: dict, device_of: dict[str, str], minutes_per: dict[str, float]) -> dict:
    """Leave each profile of ``data`` (profile -> (cost per arch, noise floor, stored rows or None))
    out in turn; ``device_of`` names each profile's device (the other-devices-only prior)."""
    import numpy as np

    from edgenas.measure.adaptive import replay
    from edgenas.predictors import transfer
    from edgenas.space.spec import SearchSpace

    space = SearchSpace.load("mbv3-tiny")
    profiles = list(data)
    results: dict = {}
    for target in profiles:
        lat, floor, rows = data[target]
        ks = [k for k in KS if k <= len(lat) - 10]  # at least 10 held-out subnets per split
        if not ks:
            print(f"{target}: only {len(lat)} subnets measured, skipped", file=sys.stderr)
            continue
        sources = []
        for p in profiles:
            if p == target or len(data[p][0]) < 20:
                continue
            s_lat = data[p][0]
            a = sorted(s_lat)
            sources.append(transfer.SourceProfile.fit(p, space, [space.parse(x) for x in a],
                                                      np.asarray([s_lat[x] for x in a])))
        # Stricter: a device none of whose profiles is known yet (only other devices as the prior).
        others = [s for s in sources if device_of[s.name] != device_of[target]]
        archs = sorted(lat)
        y = np.asarray([lat[a] for a in archs])
        parsed = [space.parse(a) for a in archs]
        out: dict = {"noise_floor": floor, "subnets": len(archs), "sources": [s.name for s in sources],
                     "k": {}}
        for k in ks:
            per: dict[str, list] = {}
            splits = [np.random.default_rng(1000 * k + s).permutation(len(archs))[:k]
                      for s in range(args.splits)]
            n_random = len(splits)
            if sources:  # the adaptive campaign, round by round, on the subnets this profile has:
                for r in range(args.replays):  # the whole pool, then random 80 % sub-pools of it
                    cand = (np.arange(len(archs)) if r == 0 else np.sort(
                        np.random.default_rng(r).permutation(len(archs))[:int(0.8 * len(archs))]))
                    splits.append(cand[replay(space, [parsed[i] for i in cand], y[cand], sources,
                                              k)])
            for si, train in enumerate(splits):
                test = np.setdiff1d(np.arange(len(archs)), train)
                tag = "adaptive" if si >= n_random else "random"
                tr = [parsed[i] for i in train]
                te = [parsed[i] for i in test]
                fits = {"per-device": transfer.fit_per_device(space, tr, y[train])}
                if sources:
                    fits["prior only"] = transfer.fit_transfer(space, tr, y[train], sources,
                                                               correction=False, estimate=False)
                    fits["transfer"] = transfer.fit_transfer(space, tr, y[train], sources,
                                                             estimate=si in (0, n_random))
                    if others and tag == "random":
                        fits["transfer, other devices only"] = transfer.fit_transfer(
                            space, tr, y[train], others, estimate=False)
                for name, model in fits.items():
                    q = transfer.quality(y[test], model.predict_many(space, te))
                    if model.estimate is not None:
                        q["estimate"] = model.estimate
                    per.setdefault(f"{name}/{tag}", []).append(q)
            out["k"][k] = {key: _mean_quality(qs) for key, qs in per.items()}
        out["minutes_per_subnet"] = minutes_per.get(target) or (_minutes_from_rows(rows) if rows
                                                                 else None)
        results[target] = out
    return results


def _minutes_from_rows(rows) -> float | None:
    """Median time between consecutive stored rows of one pass: the cost of one measurement."""
    import numpy as np

    t = [float(r["created_at"]) for r in rows if r["created_at"] is not None]
    gaps = np.diff(t)
    gaps = gaps[(gaps > 0) & (gaps < 600)]
    return float(np.median(gaps) / 60) if len(gaps) else None


def _mean_quality(qs: list[dict]) -> dict:
    keys = ("within_5", "within_10", "spearman", "p90_rel_error")
    out = {k: float(sum(q[k] for q in qs) / len(qs)) for k in keys}
    out["worst_within_10"] = float(min(q["within_10"] for q in qs))
    est = [q["estimate"] for q in qs if "estimate" in q]
    if est:
        out["estimate"] = {k: est[0][k] for k in ("within_10", "p90_rel_error") if k in est[0]}
    out["splits"] = len(qs)
    return out


def write_test_data(store, args, profiles: list[str], results: dict) -> None:
    """The stored latencies of the profiles, keyed ``device/precision/t<threads>``, for the tests:
    real measurements as the prior, a host profile with the best noise floor as the target."""
    out = {}
    for p in profiles:
        lat, _, _ = load_profile(store, p, args.statistic)
        device, precision, threads, _, _ = PROFILES[p]
        out[f"{device}/{precision}/t{threads}"] = {a: round(v, 5) for a, v in sorted(lat.items())}
    host = [p for p in profiles if p.startswith("host") and p in results]

    def floor(p: str) -> float:
        f = results[p]["noise_floor"]
        return f["within_10"] if f else 0.0

    target = max(host, key=floor)
    key = {p: "/".join([PROFILES[p][0], PROFILES[p][1], f"t{PROFILES[p][2]}"]) for p in profiles}
    data = {"statistic": args.statistic, "source": "benchmarks/predictor_transfer.py",
            "test_target": key[target],
            "test_sources": [key[p] for p in profiles if p != target and p in results][:3],
            "profiles": out}
    args.test_data.parent.mkdir(parents=True, exist_ok=True)
    args.test_data.write_text(json.dumps(data, indent=1, sort_keys=True))


def print_table(headers: list[str], lines: list[list]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *lines)]
    for line in [headers, ["-" * w for w in widths], *lines]:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)))


def write_json(path: Path, data: dict) -> None:
    """The result file, stamped with when it was made."""
    data = {**data, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    print(f"wrote {path}")


def report(results: dict, args) -> None:
    headers = ["profile", "floor ±10%", "method", *[f"K={k} ±10%" for k in KS], "K=20 ±5%",
               "K=20 p90", "K=20 rho", "K=20 own estimate ±10%", "min to ±10%"]
    lines = []
    for profile, r in results.items():
        floor = r["noise_floor"]
        fl = f"{100 * floor['within_10']:.0f} %" if floor else "?"
        for method in ("per-device/random", "prior only/random", "transfer/random",
                       "transfer, other devices only/random", "transfer/adaptive"):
            if method not in r["k"][20]:
                continue
            cells = [f"{100 * r['k'][k][method]['within_10']:.0f} %" if k in r["k"] else "-"
                     for k in KS]
            k20 = r["k"][20][method]
            need = next((k for k in KS if k in r["k"] and r["k"][k][method]["within_10"] >= 0.9),
                        None)
            mins = (f"{need * r['minutes_per_subnet']:.1f} (K={need})"
                    if need and r["minutes_per_subnet"] else "-")
            est = k20.get("estimate")
            lines.append([profile, fl, method, *cells, f"{100 * k20['within_5']:.0f} %",
                          f"{100 * k20['p90_rel_error']:.1f} %", f"{k20['spearman']:.3f}",
                          f"{100 * est['within_10']:.0f} %" if est else "", mins])
            r.setdefault("minutes_to_10pct", {})[method] = (
                need * r["minutes_per_subnet"] if need and r["minutes_per_subnet"] else None)
    print_table(headers, lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=int, default=60)
    ap.add_argument("--noise", type=int, default=12, help="Subnets measured twice per profile.")
    ap.add_argument("--arm-pool", type=int, default=30,
                    help="Subnets of the pool measured on the emulated boards (the first N).")
    ap.add_argument("--profiles", default="all", help=f"Comma list of {', '.join(PROFILES)}.")
    ap.add_argument("--splits", type=int, default=10, help="Random training sets per K.")
    ap.add_argument("--replays", type=int, default=5,
                    help="Adaptive campaigns replayed per K: on the whole pool, then on random 80 %% "
                         "sub-pools of it.")
    ap.add_argument("--statistic", default="median", choices=("median", "min", "mean"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--collect-only", action="store_true")
    ap.add_argument("--no-collect", action="store_true", help="Evaluate what is stored.")
    ap.add_argument("--home", type=Path, default=REPO / ".edgenas" / "bench-transfer")
    ap.add_argument("--test-data", type=Path, default=None,
                    help="Also write the stored latencies (this statistic) for the tests, e.g. "
                         "tests/support/data/transfer_tiny.json.")
    ap.add_argument("--out", type=Path,
                    default=REPO / "benchmarks" / "results" / "predictor_transfer.json")
    args = ap.parse_args()

    from edgenas.measure.plan import sample_archs
    from edgenas.records.store import open_store
    from edgenas.space.spec import SearchSpace

    home = args.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    ckpt = ensure_supernet(home)
    profiles = list(PROFILES) if args.profiles == "all" else args.profiles.split(",")
    archs = [a.to_string() for a in sample_archs(SearchSpace.load("mbv3-tiny"), args.pool, seed=0)]
    load = os.getloadavg()
    with open_store(home) as store:
        minutes = {} if args.no_collect else collect(store, home, ckpt, archs, profiles, args.noise,
                                                     args.workers, args.arm_pool)
        if args.collect_only:
            return
        data = {p: load_profile(store, p, args.statistic) for p in profiles}
        results = evaluate(args, data, {p: PROFILES[p][0] for p in profiles}, minutes)
        if args.test_data:
            write_test_data(store, args, profiles, results)
    report(results, args)
    out = {"benchmark": "predictor_transfer", "space": "mbv3-tiny", "pool": args.pool,
           "statistic": args.statistic, "splits": args.splits, "replays": args.replays,
           "ks": list(KS),
           "load_avg_at_start": load, "load_avg_at_end": os.getloadavg(),
           "host": {"machine": platform.machine(), "cpus": os.cpu_count()},
           "profiles": {p: {"device": v[0], "precision": v[1], "threads": v[2],
                            "emulated": bool(v[3]), "xnnpack": v[4]} for p, v in PROFILES.items()},
           "results": results}
    write_json(args.out, out)


if __name__ == "__main__":
    main()
