"""Issue 29's scenario on the wall clock: a second local device's few-shot predictor, judged by `bench`.

    nice .venv/bin/python benchmarks/few_shot_wallclock.py [--home .edgenas/bench-few-shot]
        [--code DIR] [--label after] [--samples 20] [--unseen 15]
        [--out benchmarks/results/few_shot_wallclock-LABEL.json]

As a new user meets it, on this host (local devices):

1. device ``a``: a random-weight ``mbv3-tiny`` supernet's 60 subnets (sampled as ``edgenas measure``
   samples them) measured at 1 thread with the full protocol — the one prior profile (cached in
   ``--home``: a rerun measures it only once);
2. a new local device ``b-<label>-<n>``: ``measure --adaptive --samples 20`` at 2 threads (trimmed
   protocol allowed, a cold export cache: every export is paid for as a new user pays for it), then
   ``predictor fit`` (method auto: a transfer from ``a``);
3. 15 subnets neither device has seen (``edgenas arch sample -n 15 --seed 11``) exported, then
   benchmarked on ``b`` in four interleaved passes — full, trimmed, full, trimmed — so load affects
   both protocols alike; the predictor is judged against the mean of the two full benchmarks, the
   device's noise floor is the share of second full benchmarks within ±10 % of the first, and the
   trimmed/full ratio on the same subnets says whether the trimmed protocol reads differently;
4. the diagnostics of the cause: the campaign's own subnets benchmarked again alone with the full
   protocol (no export beside them) and ``b``'s predictor fitted from those instead; each campaign
   subnet's campaign reading over its alone reading; the one prior fitted from ``a``'s medians vs
   its minima (``a`` cached in ``--home`` was measured on a busy host: its medians carry the load);
   and the transfer from one prior profile vs several (``a`` plus the stored profiles of
   tests/support/data/transfer_tiny.json) on the same campaign data.

``--code DIR`` imports edgenas from DIR instead of this checkout (``git archive HEAD edgenas | tar -x
-C DIR`` gives the code before a change): the before/after of a fix on the same workspace and prior.
Prints a table and writes JSON to benchmarks/results/.
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


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=REPO / ".edgenas" / "bench-few-shot")
    ap.add_argument("--code", type=Path, default=REPO, help="Import edgenas from here.")
    ap.add_argument("--label", default="after")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--unseen", type=int, default=15)
    ap.add_argument("--prior", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    return ap.parse_args()


ARGS = _args() if __name__ == "__main__" else None
sys.path.insert(0, str((ARGS.code if ARGS else REPO).resolve()))
sys.path.insert(1, str(REPO))

import numpy as np  # noqa: E402


def _within(a: np.ndarray, b: np.ndarray, tol: float = 0.10) -> float:
    return float(np.mean(np.abs(a / b - 1) <= tol)) if len(a) else float("nan")


def setup(home: Path, prior: int) -> Path:
    """The supernet and device ``a``'s prior profile (measured once, then cached in ``home``)."""
    import torch

    from edgenas.device import registry
    from edgenas.measure.bench import BenchSettings
    from edgenas.measure.campaign import measure, sample_archs
    from edgenas.records.store import open_store
    from edgenas.space.spec import SearchSpace
    from edgenas.supernets import build_supernet

    home.mkdir(parents=True, exist_ok=True)
    ckpt = home / "mbv3-tiny-random.pt"
    if not ckpt.exists():
        torch.manual_seed(0)
        build_supernet("mbv3-tiny", 10).save(ckpt)
    with open_store(home) as store:
        names = {d.name for d in registry.list_devices(store)}
        for n in ("a",):
            if n not in names:
                registry.add_device(store, registry.make_device(n, "local", home=home))
        pool = [a.to_string() for a in sample_archs(SearchSpace.load("mbv3-tiny"), prior, seed=0)]
        t0 = time.monotonic()
        rep = measure(store, home, ckpt, ["a"], prior, ["fp32"], 1, 0, 2, progress=False,
                      settings=BenchSettings(threads=1), archs=pool)
        print(f"prior a: {prior} subnets, {time.monotonic() - t0:.0f} s, complete {rep.complete}",
              file=sys.stderr)
    return ckpt


def workspace_with_prior(base: Path, home: Path) -> None:
    """``home``: a workspace whose database is ``base``'s with device ``a`` alone (its profile the
    only prior), the supernet's runner cache left to be rebuilt."""
    import sqlite3

    home.mkdir(mode=0o700, parents=True)
    with sqlite3.connect(base / "edgenas.db") as src, sqlite3.connect(home / "edgenas.db") as dst:
        src.backup(dst)
        dst.execute("DELETE FROM measurements WHERE device != 'a'")
        dst.execute("DELETE FROM devices WHERE name != 'a'")


def run(args: argparse.Namespace) -> dict:
    import edgenas
    from edgenas.core.files import sha256_file
    from edgenas.device import registry
    from edgenas.export.package import ModelPackage
    from edgenas.measure import adaptive
    from edgenas.measure.bench import BenchSettings, open_bencher
    from edgenas.measure.campaign import cached_export, measure
    from edgenas.predictors import latency as lat
    from edgenas.predictors import latency_fit, transfer
    from edgenas.records.store import open_store
    from edgenas.space.spec import SearchSpace

    print(f"edgenas from {Path(edgenas.__file__).parent}", file=sys.stderr)
    base = args.home.resolve()
    ckpt = setup(base, args.prior)
    space = SearchSpace.load("mbv3-tiny")
    sha = sha256_file(ckpt)
    t = args.threads
    full = BenchSettings(threads=t)
    trim = adaptive.trimmed(full)
    n = 1
    while (base / "runs" / f"{args.label}-{n}").exists():
        n += 1
    dev = f"b-{args.label}-{n}"
    home = base / "runs" / f"{args.label}-{n}"
    workspace_with_prior(base, home)  # a's measurements and nothing else: the one prior profile
    exports = home / "cache" / "exports-cold"  # every export paid for, as a new user pays
    with open_store(home) as store:
        for name in (dev, "x"):
            registry.add_device(store, registry.make_device(name, "local", home=home))
        # 2. the adaptive campaign as `measure --adaptive` starts it (trimmed unless told otherwise)
        kw = {"statistic": "median", "export_cache": exports, "trim": True,
              "settings": full, "workers": args.workers, "progress": True}
        load0 = os.getloadavg()[0]
        t0 = time.monotonic()
        rep = adaptive.measure_adaptive(store, home, ckpt, dev, args.samples, "fp32", t, **kw)
        campaign_s = time.monotonic() - t0
        pred = latency_fit.fit(store, dev, "fp32", t, save_to=home, statistic="median")
        ts = lat.training_set(store, dev, "fp32", t, statistic="median")
    campaign = [a.to_string() for a in ts.archs]
    y_campaign = ts.latency_ms
    # 3. unseen subnets: exported (on device x, 1 thread, trimmed: only the exports matter), then
    # benchmarked on b in interleaved passes: full, trimmed, full, trimmed.
    unseen = [a.to_string() for a in space.sample_many(args.unseen, 11)]
    unseen = [a for a in dict.fromkeys(unseen) if a not in set(campaign) and a not in set(rep.measured)]
    with open_store(home) as store:
        measure(store, home, ckpt, ["x"], len(unseen), ["fp32"], 1, 0, args.workers, progress=False,
                settings=BenchSettings(threads=1, runs=1, min_secs=0.0, warmup_secs=0.0),
                archs=unseen + campaign, export_cache=exports)
    cache = exports
    judge: dict[str, dict[str, list[float]]] = {a: {"full": [], "trimmed": []} for a in unseen}
    alone: dict[str, list[float]] = {a: [] for a in campaign}
    loads = []
    with open_store(home) as store, open_bencher(home, "x", full) as bencher:
        # benchmarked as device x at b's threads: the same host; b's own profile stays what it learnt
        for p, (proto, s) in enumerate([("full", full), ("trimmed", trim)] * 2):
            order = unseen if p % 2 == 0 else unseen[::-1]
            for a in order:
                loads.append(os.getloadavg()[0])
                pkg = ModelPackage.open(cached_export(cache, sha, a, "fp32"))
                judge[a][proto].append(bencher.bench(store, pkg, settings=s,
                                                     update_manifest=False)["median_ms"])
        # 4. the campaign's own subnets, alone, full protocol (what it should have learnt)
        for a in campaign:
            pkg = ModelPackage.open(cached_export(cache, sha, a, "fp32"))
            alone[a].append(bencher.bench(store, pkg, settings=full, update_manifest=False)["median_ms"])
    f1 = np.asarray([judge[a]["full"][0] for a in unseen])
    f2 = np.asarray([judge[a]["full"][1] for a in unseen])
    tr = np.asarray([np.mean(judge[a]["trimmed"]) for a in unseen])
    y = (f1 + f2) / 2
    ua = [space.parse(a) for a in unseen]
    yhat = pred.predict_many(space, ua)
    big = y > 0.6
    # the diagnostics: b's predictor from the campaign subnets measured alone (full protocol), and
    # the transfer from one prior vs several, on the campaign's own data
    y_alone = np.asarray([np.median(alone[a]) for a in campaign])
    with open_store(home) as store:
        src_a = transfer.sources_from_store(store, space, (dev, "fp32", t), "median", None)
        src_a = [s for s in src_a if s.name.startswith("a/")]
    # the one prior fitted from a's medians and from its minima, whichever the code under test uses
    with open_store(home) as store:
        by_stat = {}
        for stat in ("median", "min"):
            ts_a = lat.training_set(store, "a", "fp32", 1, statistic=stat)
            by_stat[stat] = [transfer.SourceProfile.fit("a/fp32/t1", space, ts_a.archs,
                                                        ts_a.latency_ms)]
    data = json.loads((REPO / "tests" / "support" / "data" / "transfer_tiny.json").read_text())
    extra = [transfer.SourceProfile.fit(p, space, [space.parse(a) for a in sorted(v)],
                                        np.asarray([v[a] for a in sorted(v)]))
             for p, v in data["profiles"].items() if p != "host/fp32/t2"]
    ca = [space.parse(a) for a in campaign]

    def score(fit: transfer.TransferFit) -> dict:
        q = transfer.quality(y, fit.predict_many(space, ua))
        return {"within_10": q["within_10"], "p90": q["p90_rel_error"],
                "bias_above_0.6ms": float(np.median(fit.predict_many(space, ua)[big] / y[big] - 1))
                if big.any() else None}

    diag = {
        "campaign_reading_over_alone_full": float(np.median(y_campaign / y_alone)),
        "campaign_reading_over_alone_full_above_0.6ms":
            float(np.median((y_campaign / y_alone)[y_alone > 0.6])) if (y_alone > 0.6).any() else None,
        "fit_campaign_data_one_prior": score(transfer.fit_transfer(space, ca, y_campaign, src_a)),
        "fit_alone_full_data_one_prior": score(transfer.fit_transfer(space, ca, y_alone, src_a)),
        "fit_campaign_data_prior_from_a_medians":
            score(transfer.fit_transfer(space, ca, y_campaign, by_stat["median"])),
        "fit_campaign_data_prior_from_a_minima":
            score(transfer.fit_transfer(space, ca, y_campaign, by_stat["min"])),
        "fit_campaign_data_several_priors":
            score(transfer.fit_transfer(space, ca, y_campaign, src_a + extra)),
        # the one prior mixed per group of kinds only (the code before 87122b6 had no choice)
        **({"fit_campaign_data_one_prior_groups_only":
            score(transfer.fit_transfer(space, ca, y_campaign, src_a, mixes=(True,)))}
           if hasattr(transfer, "MIXES") else {}),
        # the one prior's correction by the ridge alone (the code before the pooled correction)
        **({"fit_campaign_data_one_prior_no_pooling":
            score(transfer.fit_transfer(space, ca, y_campaign, src_a, pool_weights=()))}
           if hasattr(transfer, "POOL_WEIGHTS") else {}),
        "fit_alone_full_data_several_priors":
            score(transfer.fit_transfer(space, ca, y_alone, src_a + extra)),
    }
    q = transfer.quality(y, yhat)
    return {
        "label": args.label, "code": str(args.code), "device": dev, "threads": t,
        "campaign": {"subnets": len(rep.measured), "rounds": [r.line() for r in rep.rounds],
                     "stopped": rep.stopped, "seconds": round(campaign_s, 1),
                     "load_at_start": load0},
        "predictor": {"method": pred.extra.get("method"), "describe": pred.extra.get("describe")},
        "unseen": {"subnets": len(unseen), "within_10": q["within_10"], "within_5": q["within_5"],
                   "p90": q["p90_rel_error"], "spearman": q["spearman"],
                   "bias_above_0.6ms": float(np.median(yhat[big] / y[big] - 1)) if big.any() else None,
                   "above_0.6ms": int(big.sum())},
        "noise_floor_within_10": _within(f2, f1),
        "trimmed_over_full": float(np.median(tr / y)),
        "trimmed_over_full_above_0.6ms": float(np.median(tr[big] / y[big])) if big.any() else None,
        "load_avg_during_judging": [float(np.min(loads)), float(np.max(loads))],
        "diagnostics": diag,
        "rows": [{"arch": a, "predicted": float(p), "full": judge[a]["full"],
                  "trimmed": judge[a]["trimmed"]} for a, p in zip(unseen, yhat)],
    }


def table(r: dict) -> None:
    u, d, c = r["unseen"], r["diagnostics"], r["campaign"]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:+.0f} %"

    big = "above 0.6 ms"
    lines = [
        ("code", r["code"]),
        ("campaign", f"{c['subnets']} subnets, {c['seconds']:.0f} s; {c['stopped']}"),
        ("predictor", f"{r['predictor']['method']}: {r['predictor']['describe']}"),
        ("device noise floor (2nd full bench ±10 % of 1st)",
         f"{100 * r['noise_floor_within_10']:.0f} %"),
        ("unseen within ±10 % (mean of 2 full benches)",
         f"{100 * u['within_10']:.0f} % of {u['subnets']}"),
        ("unseen p90 error", f"{100 * u['p90']:.1f} %"),
        (f"bias on unseen {big}", f"{pct(u['bias_above_0.6ms'])} ({u['above_0.6ms']})"),
        ("trimmed / full on unseen, interleaved",
         f"{r['trimmed_over_full']:.3f} ({big} {r['trimmed_over_full_above_0.6ms']})"),
        ("campaign reading / alone full reading",
         f"{d['campaign_reading_over_alone_full']:.3f} "
         f"({big} {d['campaign_reading_over_alone_full_above_0.6ms']})"),
    ]
    for k in ("fit_campaign_data_one_prior", "fit_campaign_data_one_prior_groups_only",
              "fit_campaign_data_prior_from_a_medians",
              "fit_campaign_data_prior_from_a_minima", "fit_alone_full_data_one_prior",
              "fit_campaign_data_several_priors", "fit_alone_full_data_several_priors"):
        if k not in d:
            continue
        s = d[k]
        lines.append((k.replace("_", " "),
                      f"±10 % {100 * s['within_10']:.0f} %, p90 {100 * s['p90']:.1f} %, "
                      f"bias {big} {pct(s['bias_above_0.6ms'])}"))
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k:<{width}}  {v}")


def main() -> None:
    assert ARGS is not None
    started = time.monotonic()
    result = run(ARGS)
    result["seconds"] = round(time.monotonic() - started, 1)
    result["cpus"] = os.cpu_count()
    result["host"] = platform.node()
    result["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    table(result)
    out = ARGS.out or REPO / "benchmarks" / "results" / f"few_shot_wallclock-{ARGS.label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
