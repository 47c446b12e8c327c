"""Hardware-aware search on the real fleet: one latency budget, two devices, two different answers.

The run's tiny mbv3-tiny supernet (tests/support/tiny.py; random weights: latency does not depend on
them) is measured on the fast SSH device ``ssh1`` and on the CPU-quota throttled ``slow`` in one
campaign (the run's shared export cache), a latency predictor is fitted per device, and an accuracy
predictor is fitted to a synthetic top-1 that grows with MACs (the assertions are about latency, so
any monotone accuracy does).  Searching both devices under the same budget — one the fast device
meets with every measured subnet, the slow one only with about half of them — must give the slow
device a smaller (or lower-resolution) subnet that, re-measured on the device, fits the budget.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgenas.cli import main
from edgenas.measure.bench import BenchSettings
from edgenas.measure.campaign import list_measurements, measure
from edgenas.measure.plan import sample_archs
from edgenas.predictors.accuracy import fit_accuracy_predictor, predictor_path, sample_for_accuracy
from edgenas.predictors.latency import predictor_path as latency_predictor_path
from edgenas.predictors.latency_fit import fit
from edgenas.records.store import open_store
from edgenas.search.job import run_search
from edgenas.search.problem import Constraints

pytestmark = [pytest.mark.fleet, pytest.mark.usefixtures("user_home")]

FAST, SLOW = "ssh1", "slow"
SAMPLES = 12
CAMPAIGN = BenchSettings(runs=15, min_secs=0.5, warmup_secs=0.1)  # the protocol, shortened


def register(home: Path, fleet, *names: str) -> None:
    for name in names:
        dev = fleet.ssh[name]
        result = CliRunner().invoke(main, [
            "--home", str(home), "device", "add", name, "--ssh", dev.target, "--key",
            str(dev.client_key), "--python", dev.python, "--accept-new-host-key"])
        assert result.exit_code == 0, result.output + repr(result.exception)


# Campaign tier (a campaign on the CPU-quota device, two searches verified on it: minutes).
# `make test` keeps the property "one budget, a subnet per device, verified there" through
# tests/integration/test_fleet_specialize.py (three classes of local devices).
@pytest.mark.campaign
def test_throttled_device_gets_a_smaller_arch_within_the_same_budget(fleet, workspace, tmp_path,
                                                                     tiny_supernet):
    ckpt, space, sha = tiny_supernet.ckpt, tiny_supernet.space, tiny_supernet.sha
    tiny_supernet.link_exports(workspace)  # the run's shared latency exports
    register(workspace, fleet, FAST, SLOW)

    with open_store(workspace) as store:
        report = measure(store, workspace, ckpt, [FAST, SLOW], SAMPLES, ["fp32"], 1, seed=0,
                         workers=2, progress=False, settings=CAMPAIGN)
        assert report.complete, report.to_dict()
        quality = {}
        # The throttled device's per-run times are quantised by the CFS period, so its median jumps
        # between modes; the mean amortises that (docs/measurement.md).  The predictors predict the
        # mean, and the search verifies on the mean of its measurements.
        ms = {d: {r["arch"]: r["mean_ms"] for r in list_measurements(store, d, "fp32", 1,
                                                                      space.name)}
              for d in (FAST, SLOW)}
        for d in (FAST, SLOW):
            assert len(ms[d]) == SAMPLES, (d, ms[d])
            pred = fit(store, d, "fp32", 1, space=space.name, statistic="mean", save_to=workspace)
            assert latency_predictor_path(workspace, d, "fp32", 1).is_file()
            assert pred.protocol is not None and pred.protocol["runs"] == CAMPAIGN.runs
            quality[d] = pred.quality

    # The budget: the slow device's median subnet (by mean run time).  The fast device meets it with
    # every subnet.
    budget = statistics.median(ms[SLOW].values())
    assert max(ms[FAST].values()) < budget, (ms[FAST], budget)
    assert min(ms[SLOW].values()) < budget < max(ms[SLOW].values()), (ms[SLOW], budget)
    assert quality[SLOW]["spearman"] > 0.7, quality  # held out: it ranks unmeasured subnets

    # Synthetic accuracy: monotone in MACs, so the best subnet is the biggest that fits.
    archs = sample_for_accuracy(space, 24, seed=0) + sample_archs(space, SAMPLES, seed=0)
    macs = {a.to_string(): space.macs(a, 10) for a in archs}
    lo, hi = min(macs.values()), max(macs.values())
    top1 = {a: 0.5 + 0.4 * (m - lo) / (hi - lo) for a, m in macs.items()}
    fit_accuracy_predictor(space, top1, sha, "digits").save(predictor_path(workspace, sha))

    chosen = {}
    with open_store(workspace) as store:
        for d in (FAST, SLOW):
            outcome = run_search(store, workspace, ckpt, [d], Constraints(latency_ms=budget),
                                 precision="fp32", objective="pareto", threads=1,
                                 out_dir=tmp_path / f"search-{d}", verify_top=4, population=16,
                                 generations=4, seed=0, progress=False)
            assert outcome.chosen is not None and outcome.path is not None and outcome.path.exists()
            chosen[d] = outcome.chosen
            assert outcome.result["chosen"]["statistic"] == {d: "mean"}
    fast, slow = chosen[FAST], chosen[SLOW]
    summary = {d: (c.arch.to_string(), c.macs, c.latency, c.measured) for d, c in chosen.items()}
    print(f"budget {budget:.2f} ms: {summary}; predictors: {quality}")

    assert fast.arch != slow.arch, summary
    assert slow.macs < fast.macs or slow.arch.resolution < fast.arch.resolution, summary
    # Verified on the devices: both measured within the budget (re-ranking on measured latency puts a
    # verified subnet that fits first).
    assert SLOW in slow.measured and FAST in fast.measured, summary
    assert slow.measured[SLOW] <= budget, summary
    assert fast.measured[FAST] <= budget, summary
