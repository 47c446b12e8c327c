"""The few-shot transfer's pooled correction (edgenas.predictors.transfer): the new device's few
measurements fitted together with a known profile's own, carried over by the mix.  Synthetic devices
built from a real stored profile's per-stage costs, so the right answer is known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgenas.measure.plan import sample_archs
from edgenas.predictors import transfer
from edgenas.space.spec import SearchSpace

SPACE = SearchSpace.load("mbv3-tiny")
DATA = json.loads((Path(__file__).parents[1] / "support" / "data" / "transfer_tiny.json").read_text())


def _truth() -> transfer.SourceProfile:
    """This host's 1-thread costs as its 60 stored subnets fit them (the per-stage set)."""
    v = DATA["profiles"]["host/fp32/t1"]
    return transfer.SourceProfile.fit("truth", SPACE, [SPACE.parse(a) for a in sorted(v)],
                                      np.asarray([v[a] for a in sorted(v)]))


def _known(truth: transfer.SourceProfile, n: int, load: float, seed: int) -> transfer.SourceProfile:
    """A known profile of the same device measured on ``n`` subnets under load: each latency slower
    by an exponentially distributed share of mean ``load`` (interference only ever adds time)."""
    archs = sample_archs(SPACE, n, seed=100 + seed)
    y = truth.predict_many(SPACE, archs) * (1 + np.random.default_rng(seed).exponential(load, n))
    return transfer.SourceProfile.fit("known", SPACE, archs, y)


def test_a_known_profiles_own_measurements_correct_what_its_per_kind_fit_lost():
    """A known profile of 30 loaded measurements affords its own fit few per-stage costs; the new
    device (the same costs 20 % slower, 16 quiet measurements) gets them back from the known
    profile's rows pooled with its own, where the ridge toward the known costs cannot.  Held out on
    100 unseen subnets, six seeds."""
    truth = _truth()
    pooled, ridge = [], []
    for seed in range(6):
        known = _known(truth, 30, 0.05, seed)
        archs = sample_archs(SPACE, 16, seed=200 + seed)
        noise = np.exp(np.random.default_rng(50 + seed).normal(0.0, 0.02, len(archs)))
        y = 1.2 * truth.predict_many(SPACE, archs) * noise
        test = sample_archs(SPACE, 100, seed=300 + seed)
        y_test = 1.2 * truth.predict_many(SPACE, test)
        fit = transfer.fit_transfer(SPACE, archs, y, [known], estimate=False)
        old = transfer.fit_transfer(SPACE, archs, y, [known], estimate=False, pool_weights=())
        pooled.append(transfer.quality(y_test, fit.predict_many(SPACE, test))["within_10"])
        ridge.append(transfer.quality(y_test, old.predict_many(SPACE, test))["within_10"])
        assert old.pooled == 0 and "pooled" not in old.describe()
        if fit.pooled:
            assert fit.pooled_rows == 30 and fit.lam is None, fit
            assert "pooled with their 30 measurements" in fit.describe(), fit.describe()
    assert np.mean(pooled) >= 0.93 and np.mean(pooled) >= np.mean(ridge) + 0.04, (pooled, ridge)
    assert min(np.subtract(pooled, ridge)) >= -0.02, (pooled, ridge)


def test_a_saved_predictor_lends_its_costs_only():
    """A known profile from a saved predictor has no measurements to pool: the correction is the
    ridge's, as before."""
    truth = _truth()
    known = _known(truth, 30, 0.05, 0)
    costs_only = transfer.SourceProfile(known.name, known.costs, known.samples, known.feature_set)
    archs = sample_archs(SPACE, 16, seed=200)
    y = 1.2 * truth.predict_many(SPACE, archs)
    fit = transfer.fit_transfer(SPACE, archs, y, [costs_only], estimate=False)
    assert fit.pooled == 0 and fit.pooled_rows == 0, fit
