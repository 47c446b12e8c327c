"""Accuracy predictor: feature encoding, k-fold ridge quality, stored resumable evaluations."""

from __future__ import annotations

import numpy as np
import pytest

from edgenas import SearchSpace, build_supernet
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
from edgenas.records.store import open_store
from edgenas.training.data import load_data
from tests.integration.test_data_stream import make_folder

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


@pytest.mark.slow
def test_fit_accuracy_under_torchrun_splits_resumes_and_gathers(tmp_path) -> None:
    """A single-process run stores 8 evaluations; `torchrun --nproc-per-node 2` asked for 12
    evaluates only the 4 missing ones, 2 per rank, and rank 0 writes the predictor."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from click.testing import CliRunner

    from edgenas.cli import main
    from edgenas.core.files import sha256_file
    from edgenas.predictors.accuracy import predictor_path

    # A 36-image folder: the split, the resume and the gather do not depend on the data's size, and
    # an evaluation on it takes a fraction of a second where one on the digits takes seconds.
    source = str(make_folder(tmp_path / "images", classes=3, per_class=12, size=(32, 32)))
    data = load_data(source, size=32)
    net = build_supernet(SPACE, len(data.labels), data.labels, data.normalization)
    ckpt = net.save(tmp_path / "sn.pt", {"data": source})
    home = tmp_path / "home"
    first = CliRunner().invoke(main, ["--home", str(home), "predictor", "fit-accuracy", str(ckpt),
                                      "--samples", "8"])
    assert first.exit_code == 0, first.output
    sha = sha256_file(ckpt)
    with open_store(home) as store:
        before = stored_evaluations(store, sha, source)
    assert len(before) == 8
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    edgenas = shutil.which("edgenas", path=str(Path(sys.executable).parent)) or "edgenas"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", edgenas, "--home",
                           str(home), "predictor", "fit-accuracy", str(ckpt), "--samples", "12"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "evaluated in 2 processes: 2+2 new subnets" in proc.stdout
    assert proc.stdout.count("accuracy predictor from 12 subnets") == 1  # rank 0 reports
    with open_store(home) as store:
        after = stored_evaluations(store, sha, source)
    assert len(after) == 12 and all(after[k] == v for k, v in before.items())
    saved = AccuracyPredictor.load(predictor_path(home, sha))
    assert saved.samples == 12
