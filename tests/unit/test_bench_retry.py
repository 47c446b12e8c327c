"""The bench's re-run policy (edgenas.measure.bench.steadiest), on canned runner answers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from edgenas.measure.bench import BenchSettings, steadiest


def runs(*cvs: float | None) -> tuple[Iterator[dict[str, Any]], list[int]]:
    calls: list[int] = []

    def gen() -> Iterator[dict[str, Any]]:
        for i, cv in enumerate(cvs):
            calls.append(i)
            yield {"run": i, "cv": cv}

    return gen(), calls


def test_a_steady_run_is_kept_as_it_is() -> None:
    it, calls = runs(0.01, 0.0)
    best, attempts = steadiest(lambda: next(it), BenchSettings())
    assert best["run"] == 0 and len(attempts) == 1 and calls == [0]


def test_a_noisy_run_is_repeated_once_and_the_steadier_kept() -> None:
    it, _ = runs(0.30, 0.04, 0.0)
    best, attempts = steadiest(lambda: next(it), BenchSettings())  # retries=1: at most two runs
    assert [a["run"] for a in attempts] == [0, 1] and best["run"] == 1
    it, _ = runs(0.30, 0.50)
    best, attempts = steadiest(lambda: next(it), BenchSettings())
    assert len(attempts) == 2 and best["run"] == 0  # both noisy: the less noisy one


def test_threshold_and_retries_are_the_settings() -> None:
    it, _ = runs(0.30, 0.20, 0.10, 0.02)
    best, attempts = steadiest(lambda: next(it), BenchSettings(cv_threshold=0.05, retries=3))
    assert len(attempts) == 4 and best["run"] == 3
    it, _ = runs(0.30, 0.0)
    best, attempts = steadiest(lambda: next(it), BenchSettings(cv_threshold=1.0))
    assert len(attempts) == 1 and best["run"] == 0  # under a loose threshold nothing is repeated


def test_a_run_without_a_cv_is_not_repeated_nor_preferred() -> None:
    it, _ = runs(None)
    best, attempts = steadiest(lambda: next(it), BenchSettings())
    assert len(attempts) == 1 and best["run"] == 0
    it, _ = runs(0.30, None)
    best, _ = steadiest(lambda: next(it), BenchSettings())
    assert best["run"] == 0
