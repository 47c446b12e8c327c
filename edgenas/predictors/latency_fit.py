"""Which latency predictor a device gets: its own fit, or a transfer from the other devices' profiles.

The choice lives here, above both fits, because the transfer fit (:mod:`edgenas.predictors.transfer`)
is built from per-device fits (:mod:`edgenas.predictors.latency`): the dispatcher needs both, and
neither needs the dispatcher.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edgenas.predictors.latency import (
    LatencyPredictor,
    LatencyPredictorError,
    class_key,
    fit_per_device,
)
from edgenas.predictors.transfer import fit_from_store
from edgenas.records.store import Store

METHODS = ("auto", "transfer", "per-device")


def fit(store: Store, device: str, precision: str = "fp32", threads: int = 1, *,
        space: str | None = None, save_to: Path | None = None, statistic: str = "median",
        feature_sets: Sequence[str] | None = None, xnnpack: bool | None = None,
        method: str = "auto") -> LatencyPredictor:
    """Fit (and, with ``save_to`` = the workspace home, save) the predictor for one device setting.

    ``auto`` transfers from the workspace's other device profiles when there are any and that
    cross-validates at least as well, ``transfer`` insists, ``per-device`` never transfers;
    ``extra["method"]`` says which was used.  Explicit ``feature_sets`` ask for a per-device fit.
    """
    if method not in METHODS:
        raise LatencyPredictorError(f"unknown fit method {method!r} (auto, transfer or per-device)")
    compared = None
    if method != "per-device" and not feature_sets:
        found = fit_from_store(store, class_key(store, device), precision, threads, space=space,
                               statistic=statistic, home=save_to, method=method, xnnpack=xnnpack)
        if found is not None and found[0] is not None:
            if save_to is not None:
                found[0].save(save_to)
            return found[0]
        compared = found[1] if found is not None else None  # transfer lost to the per-device fit
    return fit_per_device(store, device, precision, threads, space=space, save_to=save_to,
                          statistic=statistic, feature_sets=feature_sets, xnnpack=xnnpack,
                          compared=compared)


__all__ = ["METHODS", "fit"]
