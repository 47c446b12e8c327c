"""The few-shot transfer's choice of how to mix its prior (edgenas.predictors.transfer): one weight per
known profile, or one per group of kinds, whichever cross-validates better on the new device's few
measurements.  Synthetic devices built from a real stored profile's costs, so the right answer is
known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgenas.measure.plan import sample_archs
from edgenas.predictors import transfer
from edgenas.space.spec import SearchSpace

SPACE = SearchSpace.load("mbv3-tiny")
DATA = json.loads((Path(__file__).parents[1] / "support" / "data" / "transfer_tiny.json").read_text())


def _source(profile: str) -> transfer.SourceProfile:
    v = DATA["profiles"][profile]
    return transfer.SourceProfile.fit(profile, SPACE, [SPACE.parse(a) for a in sorted(v)],
                                      np.asarray([v[a] for a in sorted(v)]))


def _device(source: transfer.SourceProfile, factor: dict[str, float], n: int, noise: float,
            seed: int) -> tuple[list, np.ndarray]:
    """``n`` subnets of a device whose costs are ``source``'s scaled per group, measured with
    multiplicative noise of relative spread ``noise``."""
    names = transfer.common_names(SPACE)
    costs = source.costs * np.asarray([factor[transfer.group_of(m)] for m in names])
    archs = sample_archs(SPACE, n, seed=seed)
    y = transfer.SourceProfile("truth", costs).predict_many(SPACE, archs)
    return archs, y * np.exp(np.random.default_rng(seed).normal(0.0, noise, n))


def test_one_prior_of_the_same_kind_is_mixed_with_one_weight():
    """A device that is the prior slowed down 20 % throughout, measured with 4 % noise: four group
    weights would only fit the noise, so the cross-validated choice is one weight, near 1.2."""
    src = _source("host/fp32/t1")
    chosen = []
    for seed in range(4):
        archs, y = _device(src, dict.fromkeys(transfer.GROUPS, 1.2), 16, 0.04, seed)
        fit = transfer.fit_transfer(SPACE, archs, y, [src], estimate=False)
        chosen.append(fit.grouped)
        if not fit.grouped:
            assert "one weight per profile" in fit.describe()
            weights = fit.group_weights[src.name]
            assert set(weights.values()) == {weights["pointwise"]}, weights
            assert abs(fit.weights[src.name] - 1.2) < 0.06, fit.weights
    assert chosen.count(False) >= 3, chosen


def test_groups_that_move_apart_are_mixed_per_group():
    """A second core: MACs twice as fast, per-operator overhead three times dearer.  One weight per
    profile cannot express that, and cross-validation sees it from 16 noisy measurements."""
    src = _source("host/fp32/t1")
    factor = {"overhead": 3.0, "elementwise": 1.0, "pointwise": 0.5, "depthwise": 0.5}
    archs, y = _device(src, factor, 16, 0.02, 7)
    fit = transfer.fit_transfer(SPACE, archs, y, [src], estimate=False)
    assert fit.grouped and "per group of kinds" in fit.describe(), fit.describe()
    test, y_test = _device(src, factor, 40, 0.0, 8)
    q = transfer.quality(y_test, fit.predict_many(SPACE, test))
    one = transfer.fit_transfer(SPACE, archs, y, [src], estimate=False, mixes=(False,))
    q_one = transfer.quality(y_test, one.predict_many(SPACE, test))
    assert q["mape"] < q_one["mape"], (q, q_one)
