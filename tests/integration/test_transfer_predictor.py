"""Few-shot latency predictors (edgenas.predictors.transfer) and adaptive measurement
(edgenas.measure.adaptive).

The prior is real: tests/support/data/transfer_tiny.json holds measurements taken on this repository's
test
profiles by benchmarks/predictor_transfer.py (mbv3-tiny subnets, the fastest run of each benchmark:
the host at 1 and 2 threads, int8, without XNNPACK, and emulated ARM boards).  They are stored
in a real workspace database as other devices' measurements; the transfer fit, the selection and
the CLI run on top of them.  `measure --adaptive` runs a real campaign on a local device.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom

from edgenas.measure.adaptive import log_det_information, select
from edgenas.measure.plan import sample_archs
from edgenas.predictors import transfer
from edgenas.predictors.latency import load_predictor
from edgenas.predictors.latency_fit import fit
from edgenas.records.store import open_store
from edgenas.space.spec import SearchSpace
from tests.support.cli_runner import Cli

SPACE = SearchSpace.load("mbv3-tiny")
DATA = json.loads((Path(__file__).parents[1] / "support" / "data" / "transfer_tiny.json").read_text())
PROFILES: dict[str, dict[str, float]] = DATA["profiles"]  # profile -> arch -> ms (min statistic)


def store_profile(home: Path, profile: str, archs: list[str], device: str | None = None) -> None:
    """Insert a profile's stored measurements as rows of a real workspace database."""
    dev, precision, threads = profile.split("/")
    with open_store(home) as store, store.transaction() as conn:
        for a in archs:
            ms = PROFILES[profile][a]
            conn.execute(
                "INSERT INTO measurements (device, arch, space, precision, threads, model_sha256, "
                "median_ms, min_ms, mean_ms, noisy, runtime, runtime_version, result_json, created_at) "
                "VALUES (?, ?, 'mbv3-tiny', ?, ?, 'sha', ?, ?, ?, 0, 'litert', '2.3.0', '{}', ?)",
                (device or dev, a, precision, int(threads[1:]), ms, ms, ms, time.time()))


def held_out(pred_fn, target: str, train: list[str]) -> dict:
    test = [a for a in PROFILES[target] if a not in set(train)]
    y = np.asarray([PROFILES[target][a] for a in test])
    return transfer.quality(y, pred_fn([SPACE.parse(a) for a in test]))


TARGET = DATA["test_target"]  # the host profile with the best noise floor
SOURCES = [p for p in DATA["test_sources"]]


def test_transfer_fit_from_stored_measurements_beats_the_per_device_fit_at_few_samples(tmp_path):
    archs = sorted(PROFILES[TARGET])
    train = [archs[i] for i in np.random.default_rng(0).permutation(len(archs))[:10]]
    for p in SOURCES:
        store_profile(tmp_path, p, sorted(PROFILES[p]))
    store_profile(tmp_path, TARGET, train, device="newdev")
    dev, precision, threads = TARGET.split("/")
    with open_store(tmp_path) as store:
        pred = fit(store, "newdev", precision, int(threads[1:]), statistic="min", save_to=tmp_path)
        own = fit(store, "newdev", precision, int(threads[1:]), statistic="min", method="per-device")
    assert pred.extra["method"] == "transfer", pred.extra
    assert pred.model_name == "transfer-stages"
    assert set(pred.extra["prior"]) == {f"{p.split('/')[0]}/{p.split('/')[1]}/{p.split('/')[2]}"
                                        for p in SOURCES}
    assert sum(w > 0 for w in pred.extra["prior"].values()) >= 1
    assert pred.quality["samples"] == 10 and "leave-one-out" in pred.quality["method"]
    saved = load_predictor(tmp_path, "newdev", precision, int(threads[1:]), statistic="min")
    q_transfer = held_out(lambda a: np.asarray([saved.predict(SPACE, x) for x in a]), TARGET, train)
    q_own = held_out(lambda a: own.predict_many(SPACE, a), TARGET, train)
    # From the same 10 measurements the transfer predicts unseen subnets far better than the
    # per-device fit (this profile was measured on a loaded shared machine: its own re-measurements
    # agree within ±10 % only ~90 % of the time, so neither reaches that here).
    assert q_transfer["within_10"] >= 0.6, q_transfer
    assert q_transfer["within_10"] > q_own["within_10"] + 0.15, (q_transfer, q_own)
    assert q_transfer["p90_rel_error"] < q_own["p90_rel_error"]
    assert q_transfer["spearman"] > 0.98


def test_selection_is_informative_covers_the_range_and_never_repeats():
    pool = [SPACE.parse(a) for a in sorted(PROFILES[TARGET])]
    sources = [transfer.SourceProfile.fit(p, SPACE, [SPACE.parse(a) for a in sorted(PROFILES[p])],
                                          np.asarray([PROFILES[p][a] for a in sorted(PROFILES[p])]))
               for p in SOURCES]
    measured = pool[:3]
    chosen = select(SPACE, pool, sources, 12, measured=measured, total=15)
    assert len(chosen) == len(set(chosen)) == 12
    assert not set(chosen) & {0, 1, 2}  # the measured ones are not picked again
    assert chosen == select(SPACE, pool, sources, 12, measured=measured, total=15)  # deterministic
    # Covers the latency range: the chosen span most of the pool's (true) latency range.
    y = np.log([PROFILES[TARGET][pool[i].to_string()] for i in range(len(pool))])
    span = (y[chosen].max() - y[chosen].min()) / (y.max() - y.min())
    assert span > 0.8, span
    # More informative (the D-optimal criterion) than 90 % of random sets of the same size, although
    # the range is covered too; without the coverage bins, more than any of them.
    def info(idx) -> float:
        return log_det_information(SPACE, [pool[i] for i in idx] + measured, sources, pool)

    rng = np.random.default_rng(0)
    randoms = [info(rng.choice(np.arange(3, len(pool)), 12, replace=False)) for _ in range(40)]
    assert info(chosen) > np.quantile(randoms, 0.9), (info(chosen), sorted(randoms))
    free = select(SPACE, pool, sources, 12, measured=measured, total=2)  # 2 bins: hardly a constraint
    assert info(free) > max(randoms), (info(free), max(randoms))
    # Without a prior it still spreads over the range of the space (MAC-like work as the guess).
    big = sample_archs(SPACE, 120, seed=3)
    alone = select(SPACE, big, [], 8)
    macs = np.log([SPACE.macs(big[i], 10) for i in alone])
    all_macs = np.log([SPACE.macs(a, 10) for a in big])
    assert len(set(alone)) == 8 and (macs.max() - macs.min()) > 0.6 * (all_macs.max() - all_macs.min())


def _sources() -> list[transfer.SourceProfile]:
    return [transfer.SourceProfile.fit(p, SPACE, [SPACE.parse(a) for a in sorted(PROFILES[p])],
                                       np.asarray([PROFILES[p][a] for a in sorted(PROFILES[p])]))
            for p in SOURCES]


def test_the_mix_weighs_each_group_of_kinds_on_its_own():
    """A device whose MACs cost twice a known profile's while its per-operator overhead is a third
    (a second core: faster arithmetic, more synchronisation) is one mix per group, not one per
    profile: the grouped prior alone recovers it from 8 subnets, and says so in its weights."""
    sources = _sources()
    names = transfer.common_names(SPACE)
    factor = {"overhead": 1 / 3, "elementwise": 1.0, "pointwise": 2.0, "depthwise": 2.0}
    costs = sources[0].costs * np.asarray([factor[transfer.group_of(n)] for n in names])
    truth = transfer.SourceProfile("truth", costs)
    pool = sample_archs(SPACE, 60, seed=5)
    y = truth.predict_many(SPACE, pool)
    train, test = pool[:8], pool[8:]
    fit = transfer.fit_transfer(SPACE, train, y[:8], sources, correction=False, estimate=False)
    q = transfer.quality(y[8:], fit.predict_many(SPACE, test))
    assert q["within_5"] == 1.0, q
    weights = fit.group_weights[sources[0].name]
    assert weights["pointwise"] == pytest.approx(2.0, rel=0.05), fit.group_weights
    assert weights["overhead"] < 0.6, fit.group_weights
    assert "transfer from" in fit.describe() and sources[0].name in fit.describe()
    # One weight per profile cannot express it: the same fit with the groups merged is worse.
    merged = transfer.split_by_group
    try:
        transfer.split_by_group = lambda space, c: (np.atleast_2d(c),
                                                    [(j, "all") for j in range(len(c))])
        one = transfer.fit_transfer(SPACE, train, y[:8], sources, correction=False, estimate=False)
    finally:
        transfer.split_by_group = merged
    q_one = transfer.quality(y[8:], one.predict_many(SPACE, test))
    assert q_one["mape"] > 3 * q["mape"], (q_one, q)


def test_replay_plays_the_adaptive_campaign_round_by_round():
    """The benchmark scores the design as `measure --adaptive` runs it: a first round, then rounds
    of 4 placed by the predictor refitted after each — on stored latencies instead of a device."""
    from edgenas.measure.adaptive import first_round_size, next_round, replay

    pool = [SPACE.parse(a) for a in sorted(PROFILES[TARGET])]
    y = np.asarray([PROFILES[TARGET][a.to_string()] for a in pool])
    sources = _sources()
    chosen = replay(SPACE, pool, y, sources, 18)
    assert len(chosen) == len(set(chosen)) == 18
    assert chosen == replay(SPACE, pool, y, sources, 18)  # deterministic
    first = first_round_size(18)
    assert first == 9
    # The first round is what the campaign picks with nothing measured; the second what it picks
    # after fitting those (the same functions measure_adaptive calls).
    assert [pool[i] for i in chosen[:first]] == next_round(SPACE, pool, [], sources, first, 18, None)
    fitted = transfer.fit_transfer(SPACE, [pool[i] for i in chosen[:first]], y[chosen[:first]],
                                   sources, estimate=False)
    second = next_round(SPACE, pool, [pool[i] for i in chosen[:first]], sources, 4, 18, fitted)
    assert [pool[i] for i in chosen[first:first + 4]] == second
    # And the latencies matter: the same pool with other latencies is played differently.
    assert replay(SPACE, pool, y[::-1], sources, 18) != chosen


def test_predictor_fit_says_which_method_it_used(tmp_path):
    cli = Cli(tmp_path)
    archs = sorted(PROFILES[TARGET])
    store_profile(tmp_path, TARGET, archs[:12], device="solo")
    out = cli("predictor", "fit", "--device", "solo", "--statistic", "min",
              *_prec_threads(TARGET))
    assert "method: per-device fit (no other device profiles" in out
    for p in SOURCES:
        store_profile(tmp_path, p, sorted(PROFILES[p]))
    out = cli("predictor", "fit", "--device", "solo", "--statistic", "min", *_prec_threads(TARGET))
    assert "method: transfer from" in out and "transfer-stages" in out, out
    data = cli.json("predictor", "fit", "--device", "solo", "--statistic", "min", "--method",
                    "per-device", *_prec_threads(TARGET))
    assert data["extra"]["method"] == "per-device" and data["model"].startswith("nnls-")
    cli("predictor", "fit", "--device", "solo", "--method", "bogus", code=2)


def _prec_threads(profile: str) -> list[str]:
    _, precision, threads = profile.split("/")
    return ["--precision", precision, "--threads", threads[1:]]


def local_device_with_prior(home: Path) -> Path:
    """A workspace with a local device ``here`` (no measurements) and the stored source profiles as
    its prior; returns a random-weight mbv3-tiny checkpoint."""
    import torch

    from edgenas.device import registry
    from edgenas.supernets import build_supernet

    torch.manual_seed(0)
    ckpt = build_supernet("mbv3-tiny", 10).save(home / "tiny.pt")
    with open_store(home) as store:
        registry.add_device(store, registry.make_device("here", "local", home=home))
    for p in SOURCES:
        store_profile(home, p, sorted(PROFILES[p]))
    return ckpt


@pytest.mark.usefixtures("user_home")
def test_measure_adaptive_on_a_local_device_stops_early(tmp_path):
    """A real campaign on this host: rounds of chosen subnets, a held-out estimate and the noise floor
    per round, and a stop as soon as the estimate holds the target — before the budget is spent.
    What is tested is the stopping rule, so the target is one any estimate meets: whether a real
    target is reachable depends on the machine's own noise floor (a CI machine held 21 % within
    ±10 % at K = 14 where a quiet host holds 90 %; benchmarks/predictor_transfer.py measures it)."""
    from edgenas.measure.adaptive import measure_adaptive
    from edgenas.measure.bench import BenchSettings

    ckpt = local_device_with_prior(tmp_path)
    with open_store(tmp_path) as store:
        rep = measure_adaptive(store, tmp_path, ckpt, "here", 14, "fp32", 1, workers=0,
                               statistic="min", progress=False, first_round=5, round_size=3,
                               min_samples=8, target_within_10=0.0, target_p90=float("inf"),
                               settings=BenchSettings(runs=20, min_secs=0.1, warmup_secs=0.05))
        n = store.query("SELECT COUNT(DISTINCT arch) AS n FROM measurements "
                        "WHERE device = 'here'")[0]["n"]
    # Round 1 (K = 5) is under min_samples, so it goes on; round 2 reaches it and stops there.
    # Two of the 14 (one in five) are random subnets the design did not choose, measured in round 1
    # and never fitted: every round scores its predictor on them too, and prints it.
    assert rep.complete and [r.k for r in rep.rounds] == [5, 8], rep.to_dict()
    assert rep.rounds[0].method == "transfer" and all(r.estimate for r in rep.rounds)
    assert all(r.unseen and r.unseen["samples"] == 2 for r in rep.rounds), rep.to_dict()
    assert rep.stopped.startswith("held-out estimate good enough at K=8"), rep.to_dict()
    last = rep.rounds[-1]
    assert n == last.k + 2 == 10 and 0.0 <= last.estimate["within_10"] <= 1.0
    assert last.noise_pairs >= 1 and "noise floor: re-measured" in last.line()
    assert "unseen (not chosen by the design) ±10 %" in last.line()
    # The CLI flag: the same device asked for no more than it has stops at once and says so.
    out = Cli(tmp_path)("measure", str(ckpt), "--device", "here", "--adaptive", "--samples", str(n),
                        "--quiet")
    assert f"stopped: {n} subnets measured" in out


@pytest.mark.usefixtures("user_home")
def test_measure_adaptive_trims_the_protocol_until_the_device_disagrees_with_itself(tmp_path):
    """A campaign may start with the trimmed protocol; the first round already re-measures one of its
    subnets *with the full protocol* (the one the predictor is judged by), and once that moves by
    more than the tolerance (0 here: any move) from the trimmed reading the rest of the campaign runs
    the full protocol.  The stored rows carry the protocol each one ran.  Both
    rounds export in one export worker, started once (torch and TensorFlow imported once)."""
    from edgenas.measure.adaptive import TRIMMED, measure_adaptive
    from edgenas.measure.bench import BenchSettings

    ckpt = local_device_with_prior(tmp_path)
    full = BenchSettings(runs=7, min_secs=0.05, warmup_secs=0.05)
    with open_store(tmp_path) as store:
        rep = measure_adaptive(store, tmp_path, ckpt, "here", 5, "fp32", 1, workers=1,
                               progress=False, first_round=3, round_size=2, min_samples=99,
                               settings=full, trim=True, trim_tolerance=0.0)
        rows = store.query("SELECT arch, protocol_runs, protocol_min_secs FROM measurements "
                           "WHERE device = 'here' ORDER BY id")
    assert rep.complete and [r.k for r in rep.rounds] == [3, 5], rep.to_dict()
    assert rep.export_worker_starts == 1, rep.to_dict()
    first, second = rep.rounds
    assert first.protocol == "trimmed" and first.noise_pairs == 1, rep.to_dict()
    assert "protocol trimmed" in first.line()
    assert second.protocol == "full" and second.noise_pairs == 2
    runs = [r["protocol_runs"] for r in rows]
    # Round 1: three subnets trimmed and the first of them again, full; round 2: two new ones and
    # the second subnet of round 1 again (one full measurement completes its pair), all full.
    assert runs == [TRIMMED["runs"]] * 3 + [full.runs] * 4, rows
    assert rows[3]["arch"] == rows[0]["arch"] and rows[6]["arch"] == rows[1]["arch"], rows


# A shorter full protocol than `bench`'s default (1 s, 0.5 s warm-up); the campaign learns from it
# (and from the trimmed one while that agrees) and is judged by it.
JUDGED = {"runs": 30, "min_secs": 0.4, "warmup_secs": 0.2,
          # One attempt per benchmark, no retry above 5 % CV: the CV of a sub-millisecond model is
          # its per-run jitter, which a retry re-measures without making the median repeat better
          # (the retry never changes how a run is timed).  The campaign learns from the same
          # settings it is judged by.
          "retries": 0}
UNSEEN = 20  # subnets neither device has seen: the noise floor and the judgement each from 20 pairs
# The judgement is a one-sided binomial test: the predictor fails when its count of unseen subnets
# within ±10 % is significantly (at ALPHA) below the device's own floor less 10 points.  Asking
# "count ≥ floor − 10 points" outright (9 of 10 at a 100 % floor) fails a predictor that holds 93 %
# of all subnets one run in five — the one-prior transfer's replayed average here (16-subnet
# campaigns on 128 idly measured subnets) — and 20 or 30 subnets would not change that.
ALPHA = 0.05
# The one prior: this host's 1-thread profile as benchmarks/few_shot_wallclock.py measured it while
# other work ran — 60 subnets, every row's CV above the 5 % threshold, medians up to 2.4× the minimum.
LOADED = json.loads((Path(__file__).parents[1] / "support" / "data"
                     / "transfer_loaded_host.json").read_text())


def runnable_tasks(seconds: float = 1.0) -> float:
    """The mean number of runnable tasks on this host (``procs_running`` in /proc/stat) over
    ``seconds``, this process's own sampling excluded: what a benchmark started now competes with.
    Unlike the load average it does not remember the minute before."""
    samples = []
    for _ in range(10):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("procs_running"):
                samples.append(int(line.split()[1]) - 1)
        time.sleep(seconds / 10)
    return float(np.mean(samples)) if samples else 0.0


def store_loaded_prior(home: Path, device: str = "a") -> None:
    """The loaded host's profile as the rows it was stored as: noisy, each with its own statistics."""
    with open_store(home) as store, store.transaction() as conn:
        for a, r in LOADED["rows"].items():
            conn.execute(
                "INSERT INTO measurements (device, arch, space, precision, threads, model_sha256, "
                "median_ms, min_ms, mean_ms, p90_ms, cv, noisy, runtime, runtime_version, result_json, "
                "created_at) VALUES (?, ?, 'mbv3-tiny', 'fp32', 1, 'sha', ?, ?, ?, ?, ?, 1, 'litert', "
                "'2.3.0', '{}', ?)",
                (device, a, r["median_ms"], r["min_ms"], r["mean_ms"], r["p90_ms"], r["cv"],
                 time.time()))


# Quiet: a wall-clock judgement against the host's own noise floor, so it runs alone after the
# parallel pass, never beside another worker's tests.  One thread: on a 2-core host a 2-thread
# benchmark competes with everything else on the machine, a 1-thread one has a core to itself.  Its
# pass records (pytest -rP) and its skips are in the issue 29 notes; benchmarks/few_shot_wallclock.py
# runs the issue's own scenario.
@pytest.mark.quiet
@pytest.mark.usefixtures("user_home")
def test_a_second_local_device_from_16_adaptive_measurements_holds_its_own_noise_floor(tmp_path):
    """Issue 29: a second local profile learnt by an adaptive campaign of 16 measurements with one
    prior profile — this host's, measured on a busy day — then 20 subnets neither has seen
    benchmarked twice each with the full protocol.  The predictor must hold the device's own
    repeatability less 10 points (one-sided binomial test at ALPHA, see UNSEEN).  It did not while
    the prior was fitted from the loaded profile's medians (they carry the load, unevenly by subnet:
    a 16-subnet transfer held 13 of 15 unseen subnets, ±10 % misses up to 16 %); it is fitted from
    the profile's minima now, one prior of the same kind of device is mixed with one weight where
    four (one per group of kinds) only fit noise, and the correction may pool the prior's own
    measurements with the new ones (the per-stage costs its per-kind fit lost; 96.6 % of unseen
    subnets within ±10 % in replays, 92.9 % without).  On a host busy with other work (more
    runnable tasks than cores), or one whose own re-benchmarks agree less than half the time, it
    skips: no predictor can be judged there."""
    import torch

    from edgenas.device import registry
    from edgenas.measure.adaptive import measure_adaptive
    from edgenas.measure.bench import BenchSettings
    from edgenas.measure.campaign import ExportWorkers, measure
    from edgenas.supernets import build_supernet

    cores = os.cpu_count() or 1

    def busy() -> bool:  # more runnable work than cores: the benchmark waits its turn
        return runnable_tasks() > cores

    if busy():
        pytest.skip(f"{runnable_tasks():.1f} runnable tasks on {cores} cores: a benchmark's median "
                    "here measures the scheduler")
    home = tmp_path
    torch.manual_seed(0)
    ckpt = build_supernet("mbv3-tiny", 10).save(home / "tiny.pt")
    with open_store(home) as store:
        for name in ("b", "x"):
            registry.add_device(store, registry.make_device(name, "local", home=home))
    store_loaded_prior(home)  # the one prior profile
    full = BenchSettings(threads=1, **JUDGED)
    candidates = [a.to_string() for a in SPACE.sample_many(4 * UNSEEN, 11)]
    with open_store(home) as store, ExportWorkers() as workers:
        rep = measure_adaptive(store, home, ckpt, "b", 16, "fp32", 1, workers=2, settings=full,
                               trim=True, progress=False, statistic="median",
                               export_workers=workers)
        pred = fit(store, "b", "fp32", 1, statistic="median")
        unseen = [a for a in dict.fromkeys(candidates) if a not in set(rep.measured)][:UNSEEN]
        # exported first (on x, one cheap run each), then benchmarked alone as `bench` does
        measure(store, home, ckpt, ["x"], len(unseen), ["fp32"], 1, 0, 2, progress=False,
                settings=BenchSettings(runs=1, min_secs=0.0, warmup_secs=0.0), archs=unseen,
                export_workers=workers)
        done = measure(store, home, ckpt, ["b"], len(unseen), ["fp32"], 1, 0, 2, progress=False,
                       settings=full, archs=unseen, repeats=2, export_workers=workers)
        rows = store.query("SELECT arch, median_ms FROM measurements WHERE device = 'b' "
                           f"AND arch IN ({','.join('?' * len(unseen))}) ORDER BY id", unseen)
    assert rep.complete and done.complete, (rep.to_dict(), done.to_dict())
    assert len(set(rep.measured)) <= 20 and pred.extra["method"] == "transfer", pred.extra
    assert list(pred.extra["prior"]) == ["a/fp32/t1"], pred.extra
    assert rep.rounds[-1].unseen is not None, rep.to_dict()  # its own estimate on unseen subnets
    by: dict[str, list[float]] = {}
    for r in rows:
        by.setdefault(r["arch"], []).append(float(r["median_ms"]))
    assert len(unseen) == UNSEEN and all(len(by[a]) == 2 for a in unseen), (unseen, by)
    first = np.asarray([by[a][0] for a in unseen])
    second = np.asarray([by[a][1] for a in unseen])
    floor = float(np.mean(np.abs(second / first - 1) <= 0.10))
    if floor < 0.5 or busy():  # a host this loaded repeats no benchmark: nothing can be judged
        pytest.skip(f"this host's own re-benchmarks agree within ±10 % only {100 * floor:.0f} % "
                    f"({runnable_tasks():.1f} runnable tasks on {cores} cores)")
    y = (first + second) / 2
    yhat = pred.predict_many(SPACE, [SPACE.parse(a) for a in unseen])
    hits = int(np.sum(np.abs(yhat / y - 1) <= 0.10))
    target = max(floor - 0.10, 0.0)
    # How likely a predictor that truly holds the floor less 10 points scores this few or fewer.
    p_value = float(binom.cdf(hits, UNSEEN, target))
    detail = [(a, round(float(p), 3), by[a]) for a, p in zip(unseen, yhat)]
    print(f"judged: {hits}/{UNSEEN} within ±10 % at a {100 * floor:.0f} % floor, "
          f"P = {p_value:.3f}; {pred.extra['describe']}")  # the pass record (pytest -rP)
    assert p_value >= ALPHA, (f"{hits}/{UNSEEN} within ±10 % at a {100 * floor:.0f} % floor: "
                              f"P(≤ {hits} | {100 * target:.0f} %) = {p_value:.3f}",
                              pred.extra["describe"], detail, [r.line() for r in rep.rounds])
