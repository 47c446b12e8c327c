"""A search under a memory budget on a real local device (issue 27): the subnets are exported and
benchmarked by the real runner, whose peak memory is what the memory predictor is fitted on, and the
search's verification measures its candidates again; the chosen subnet's *measured* peak memory must
be within the budget.  The predictor logic itself is tested in tests/unit/test_memory_budget.py.

Exporting a subnet costs TensorFlow seconds of CPU, and what is tested here is the measurement, not
the export: the supernet is the run's shared tiny one and the 8 subnets the predictors are fitted on
are those the campaign tests measure (``sample_archs(space, 8, 0)``), exported once for the run into
its shared export cache (tests/support/tiny.py); every test benchmarks them again on its device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgenas.records.store import open_store
from edgenas.space.spec import SearchSpace

SPACE = SearchSpace.load("mbv3-tiny")


@pytest.mark.usefixtures("user_home")
def test_a_search_under_a_memory_budget_returns_a_subnet_measured_within_it(tmp_path: Path,
                                                                            tiny_supernet):
    from edgenas.device import registry
    from edgenas.measure.bench import BenchSettings
    from edgenas.measure.campaign import measure
    from edgenas.measure.plan import sample_archs
    from edgenas.predictors import memory
    from edgenas.predictors.accuracy import AccuracyPredictor, arch_features, predictor_path
    from edgenas.predictors.latency_fit import fit
    from edgenas.records.measurements import find
    from edgenas.search.job import run_search
    from edgenas.search.problem import Constraints

    home = tmp_path
    tiny_supernet.link_exports(home)  # the campaign's and the search's exports: the run's shared cache
    ckpt = tiny_supernet.ckpt
    # Accuracy grows with every choice the largest subnet makes, so without a memory budget the
    # search would pick a subnet near the largest: the budget is what holds it back.
    AccuracyPredictor("mbv3-tiny", tiny_supernet.sha, "synthetic",
                      list(0.01 * arch_features(SPACE, SPACE.largest())), 0.3, {"rmse": 0.01},
                      0).save(predictor_path(home, tiny_supernet.sha))
    archs = sample_archs(SPACE, 8, 0)  # 8: the minimum; the smallest and the largest among them
    trimmed = BenchSettings(runs=3, min_secs=0.0, warmup_runs=1, warmup_secs=0.0)
    with open_store(home) as store:
        registry.add_device(store, registry.make_device("here", "local", home=home))
        measure(store, home, ckpt, ["here"], 0, ["fp32"], 1, 0, workers=0, progress=False,
                archs=archs, settings=trimmed)
        rows = find(store, device="here")
        peaks = {m.arch: m.memory_kib / 1024 for m in rows}
        assert len(peaks) == len(archs) and min(peaks.values()) > 0, peaks
        # the runner's own high-water mark, not ru_maxrss (this 1 GB pytest process's, across exec)
        assert all(m.result["memory"]["hwm_kib"] - m.result["memory"]["rss_before_kib"]
                   == m.memory_kib < m.result["memory"]["peak_rss_kib"] for m in rows)
        fit(store, "here", "fp32", 1, save_to=home, method="per-device")
        pred = memory.fit(store, "here", "fp32", 1, save_to=home)
        assert pred.samples == len(archs) and np.isfinite(pred.error)
        budget = float(np.median(list(peaks.values())))
        assert peaks[SPACE.largest().to_string()] > budget
        outcome = run_search(store, home, ckpt, ["here"], Constraints(max_memory_mb=budget),
                             precision="fp32", verify_top=2, population=16, generations=3,
                             progress=False)
    chosen, result = outcome.chosen, outcome.result
    assert chosen is not None and chosen.memory_mb is not None and chosen.memory_mb <= budget
    assert chosen.measured_memory["here"] <= budget, (chosen.to_json(), budget)
    assert result["chosen"]["measured_within_memory_budget"] is True
    assert result["constraints"]["max_memory_mb"] == budget
    assert result["predictors"]["memory"]["here"]["p90_rel_error"] == pred.error
