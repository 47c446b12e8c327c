"""Accuracy predictor: feature encoding, k-fold ridge quality, stored resumable evaluations."""

from __future__ import annotations

import numpy as np
import pytest

from edgenas import SearchSpace, build_supernet
from edgenas.data import load_data
from edgenas.predictors.accuracy import (
    AccuracyPredictor,
    PredictorError,
    arch_features,
    evaluate_into_store,
    fit_accuracy_predictor,
    sample_for_accuracy,
    spearman,
    stored_evaluations,
)
from edgenas.store import open_store

SPACE = SearchSpace.load("mbv3-tiny")


def test_features_encode_active_blocks_only() -> None:
    small, large = SPACE.smallest(), SPACE.largest()
    fs, fl = arch_features(SPACE, small), arch_features(SPACE, large)
    assert fs.shape == fl.shape
    per_stage = SPACE.max_depth * 6 + 3
    # smallest: 2 active blocks per stage, each one-hot k and e -> 4 ones + a depth one-hot
    assert fs[:per_stage].sum() == 2 * 2 + 1 and fl[:per_stage].sum() == 4 * 2 + 1
    assert fs[-1] == 0.0 and fl[-1] == 1.0


def test_ridge_recovers_a_learnable_signal_and_round_trips(tmp_path) -> None:
    rng = np.random.default_rng(0)
    true_w = rng.normal(0, 0.02, arch_features(SPACE, SPACE.smallest()).shape[0])
    archs = sample_for_accuracy(SPACE, 120, seed=1)
    results = {a.to_string(): float(0.7 + arch_features(SPACE, a) @ true_w
                                    + rng.normal(0, 0.002)) for a in archs}
    pred = fit_accuracy_predictor(SPACE, results, "f" * 64, "digits")
    assert pred.quality["spearman"] > 0.9 and pred.rmse < 0.02
    unseen = SPACE.sample_many(30, seed=77)
    truth = [0.7 + arch_features(SPACE, a) @ true_w for a in unseen]
    assert spearman(pred.predict_many(SPACE, unseen), truth) > 0.9
    loaded = AccuracyPredictor.load(pred.save(tmp_path / "p.json"))
    assert np.allclose(loaded.predict_many(SPACE, unseen), pred.predict_many(SPACE, unseen))
    with pytest.raises(PredictorError, match="at least 8"):
        fit_accuracy_predictor(SPACE, dict(list(results.items())[:3]), "f" * 64, "digits")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PredictorError, match="corrupt"):
        AccuracyPredictor.load(tmp_path / "bad.json")


def test_evaluations_are_stored_and_never_repeated(tmp_path) -> None:
    data = load_data("digits", size=32, limit=200)
    net = build_supernet(SPACE, 10, data.labels, data.normalization)
    archs = sample_for_accuracy(SPACE, 4, seed=3)
    calls: list[str] = []
    with open_store(tmp_path) as store:
        first = evaluate_into_store(store, net, "a" * 64, data, archs[:3],
                                    lambda i, n, a, top1: calls.append(a.to_string()))
        assert len(calls) == 3 and all(0.0 <= v <= 1.0 for v in first.values())
        again = evaluate_into_store(store, net, "a" * 64, data, archs,
                                    lambda i, n, a, top1: calls.append(a.to_string()))
        assert calls[3:] == [archs[3].to_string()]  # only the new arch was evaluated
        assert len(again) == 4
        assert stored_evaluations(store, "a" * 64, "digits") == again
        assert stored_evaluations(store, "b" * 64, "digits") == {}
