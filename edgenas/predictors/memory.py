"""Memory predictor per device class × precision × threads, fitted like the latency predictor.

What is predicted is the model's peak memory as every benchmark stores it (``measurements.memory_kib``,
:mod:`edgenas.records.memory`): what loading and running the model adds to the process's resident
memory at its peak.  That is, to first order, a fixed cost (the interpreter, the stem and head), the
weights (mapped from the file and, for XNNPACK, packed again into its own layout — at a cost per
weight that differs by operator kind: depthwise weights are packed into the tiles of a microkernel per
kernel size and cost several times what a 1×1 convolution's do), per-operator state and the tensor
arena, whose size is set by the largest set of activations alive at once — a *maximum* over the
layers, not a sum.  Those are this module's features; which of them matter on a device, and by how
much, is learned from its stored measurements by non-negative least squares weighted by 1/memory (so
that relative error is what is minimised), exactly as :mod:`edgenas.predictors.latency` learns its
per-operator costs.

Quality is held-out (k-fold cross-validation), printed by ``predictor fit`` beside the device's own
repeatability: subnets measured more than once give the noise floor no predictor can beat.
Predictors are plain JSON beside the latency predictors:
``<home>/predictors/memory-<class>-<precision>-t<threads>.json``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgenas.core.errors import EdgeNASError
from edgenas.core.files import atomic_write_json
from edgenas.predictors.latency import _folds, _nnls_fit, _nnls_predict, class_key, device_xnnpack
from edgenas.records.measurements import Measurement, for_predictor
from edgenas.records.store import Store
from edgenas.space.plan import net_plan
from edgenas.space.spec import Arch, SearchSpace

log = logging.getLogger(__name__)

FORMAT = "edgenas-memory-predictor"
VERSION = 1
MIN_SAMPLES = 8
FOLDS = 5
# What a saved predictor may name (``dw<k>_params``: any kernel size of its space).
_FEATURE = re.compile(r"fixed|pw_params|se_params|dw[1-9][0-9]?_params|ops|peak_act_elems|act_elems")


class MemoryPredictorError(EdgeNASError):
    """A memory predictor cannot be fitted (too few measurements with a peak memory) or loaded."""


# ------------------------------------------------------------------------------------------ features


def features(space: SearchSpace, arch: Arch, num_classes: int = 10) -> dict[str, float]:
    """The memory-relevant sizes of ``arch``: its weights by kind — pointwise (1×1) convolutions,
    depthwise convolutions per kernel size, squeeze-excite — because a runtime stores each kind
    differently (XNNPACK packs depthwise weights into tiles of its microkernel, which costs far more
    per weight than a 1×1 convolution's, and more for 7×7 than for 3×3), the operators, the
    largest set of activations alive at once (elements; a block's input stays alive through it when
    it has a residual) and all activation elements.  The stem, head and classifier are the same in
    every subnet of a space and go into ``fixed``."""
    del num_classes  # the classifier is the same for every subnet of one predictor: in ``fixed``
    plan = net_plan(space, arch)
    f: dict[str, float] = {"fixed": 1.0, "pw_params": 0.0, "se_params": 0.0}
    for k in space.kernel_choices:
        f[f"dw{k}_params"] = 0.0
    stem_out = plan.stem_size**2 * plan.stem_ch
    live = [arch.resolution**2 * 3 + stem_out]
    total = float(arch.resolution**2 * 3 + stem_out)
    ops = 1.0
    for block in plan.blocks:
        x_in = block.in_size**2 * block.in_ch
        expanded = block.in_size**2 * block.mid_ch if block.expand != 1 else 0
        dw_out = block.out_size**2 * block.mid_ch
        out = block.out_size**2 * block.out_ch
        keep = x_in if block.residual else 0
        # each operator's input and output are alive while it runs; a residual input throughout
        live += [x_in + expanded, max(expanded, x_in) + dw_out + keep, dw_out + out + keep]
        total += expanded + dw_out + out
        ops += (2 if block.expand != 1 else 1) + 1 + (3 if block.se_ch else 0) + int(block.residual)
        f["pw_params"] += (block.in_ch * block.mid_ch if block.expand != 1 else 0) \
            + block.mid_ch * block.out_ch
        key = f"dw{block.kernel}_params"
        f[key] = f.get(key, 0.0) + block.mid_ch * block.kernel**2
        if block.se_ch:
            f["se_params"] += 2 * block.mid_ch * block.se_ch
    head = plan.head_size**2 * plan.head_in
    head_exp = plan.head_size**2 * plan.head_expand
    live.append(head + head_exp)
    total += head_exp
    f.update(ops=ops + 4, peak_act_elems=float(max(live)), act_elems=total)
    return f


def feature_names(space: SearchSpace) -> list[str]:
    """Every name :func:`features` produces for ``space``, in a fixed order."""
    return list(features(space, space.smallest()))


def _matrix(space: SearchSpace, archs: Sequence[Arch], names: Sequence[str],
            num_classes: int) -> np.ndarray:
    rows = []
    for a in archs:
        f = features(space, a, num_classes)
        rows.append([f.get(n, 0.0) for n in names])
    return np.asarray(rows, dtype=np.float64)


def quality(y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """Held-out error summary of predicted peak memories ``pred`` for measured ``y`` (MiB)."""
    from edgenas.predictors.latency import spearman

    rel = np.abs(pred - y) / y
    return {
        "samples": int(len(y)),
        "within_5": float(np.mean(rel <= 0.05)),
        "within_10": float(np.mean(rel <= 0.10)),
        "rmse_mib": float(np.sqrt(np.mean((pred - y) ** 2))),
        "mape": float(np.mean(rel)),
        "p90_rel_error": float(np.quantile(rel, 0.9)),
        "max_rel_error": float(rel.max()),
        "spearman": spearman(y, pred),
    }


def repeatability(pairs: Sequence[tuple[float, float]]) -> dict[str, Any] | None:
    """The device's own noise floor from subnets measured twice: how far a second reading lands from
    the first (the same summary as :func:`quality`, for the second reading "predicted" by the
    first).  None without any pair."""
    if not pairs:
        return None
    first = np.asarray([a for a, _ in pairs], dtype=np.float64)
    second = np.asarray([b for _, b in pairs], dtype=np.float64)
    out = quality(second, first)
    out["pairs"] = out.pop("samples")
    return out


# ------------------------------------------------------------------------------------------ predictor


@dataclass
class MemoryPredictor:
    """A fitted predictor: ``predict(space, arch)`` in MiB; ``error`` its held-out p90 relative
    error.  ``device``: the device class it serves (as for the latency predictor)."""

    device: str
    precision: str
    threads: int
    space: str
    names: list[str]
    coef: list[float]
    scale: list[float]
    num_classes: int
    quality: dict[str, Any]
    runtime: str | None = None
    samples: int = 0
    fitted_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def error(self) -> float:
        """Held-out p90 relative error (0.03 = 90 % of held-out subnets were within ±3 %)."""
        return float(self.quality.get("p90_rel_error", float("nan")))

    @property
    def noise(self) -> dict[str, Any] | None:
        """The device's repeatability at fit time (:func:`repeatability`), if it measured repeats."""
        value = self.extra.get("repeatability")
        return dict(value) if isinstance(value, dict) else None

    def predict(self, space: SearchSpace, arch: Arch | str) -> float:
        """Predicted peak memory of the model in MiB on this device class."""
        arch = space.parse(arch) if isinstance(arch, str) else arch
        return float(self.predict_many(space, [arch])[0])

    def predict_many(self, space: SearchSpace, archs: Sequence[Arch]) -> np.ndarray:
        if space.name != self.space:
            raise MemoryPredictorError(
                f"this predictor was fitted on {self.space} subnets, not {space.name}")
        x = _matrix(space, list(archs), self.names, self.num_classes)
        return _nnls_predict(x, np.asarray(self.coef), np.asarray(self.scale))

    def describe(self, mib: float) -> str:
        """``12.3 MiB ±2.1 %``: a prediction always carries the predictor's measured error."""
        return f"{mib:.4g} MiB ±{100 * self.error:.1f} %"

    def contributions(self) -> dict[str, float]:
        """Fitted MiB per unit of each feature (per parameter, per activation element, ...)."""
        return {n: c / s for n, c, s in zip(self.names, self.coef, self.scale)}

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "device": self.device,
                "precision": self.precision, "threads": self.threads, "space": self.space,
                "features": self.names, "coef": self.coef, "scale": self.scale,
                "num_classes": self.num_classes, "quality": self.quality,
                "error": {"p90_rel": self.error}, "runtime": self.runtime, "samples": self.samples,
                "fitted_at": self.fitted_at, **({"extra": self.extra} if self.extra else {})}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MemoryPredictor:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise MemoryPredictorError("not an edgenas memory predictor file")
        if int(data.get("version", 0)) > VERSION:
            raise MemoryPredictorError(f"memory predictor format {data.get('version')} is newer "
                                       "than this edgenas understands; upgrade edgenas")
        try:
            names = [str(n) for n in data["features"]]
            unknown = sorted(n for n in names if not _FEATURE.fullmatch(n))
            if unknown:
                raise ValueError(f"unknown features {', '.join(unknown)}")
            return cls(data["device"], data["precision"], int(data["threads"]), data["space"], names,
                       [float(c) for c in data["coef"]], [float(s) for s in data["scale"]],
                       int(data["num_classes"]), dict(data["quality"]), data.get("runtime"),
                       int(data.get("samples", 0)), float(data.get("fitted_at", 0.0)),
                       dict(data.get("extra") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise MemoryPredictorError(f"memory predictor file is incomplete ({exc})") from None

    def save(self, home: Path) -> Path:
        path = predictor_path(home, self.device, self.precision, self.threads)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_json(path, self.to_json(), indent=2)


def predictor_path(home: Path, device_class: str, precision: str, threads: int) -> Path:
    """Where a class's memory predictor (one setting) is saved, beside its latency predictor."""
    return Path(home) / "predictors" / f"memory-{device_class}-{precision}-t{threads}.json"


def load_predictor(home: Path, device: str, precision: str = "fp32",
                   threads: int = 1) -> MemoryPredictor:
    """The memory predictor of a device class (``device``: the class key) for one setting."""
    path = predictor_path(home, device, precision, threads)
    try:
        return MemoryPredictor.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise MemoryPredictorError(
            f"no memory predictor for {device} ({precision}, {threads} thread(s)): run "
            f"`edgenas predictor fit --device {device} --precision {precision} --threads {threads}` "
            "after measuring it with this edgenas (every benchmark stores the model's peak memory)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MemoryPredictorError(f"{path}: corrupt memory predictor file ({exc})") from None


def list_predictors(home: Path, device: str | None = None) -> list[tuple[Path, MemoryPredictor]]:
    """The saved memory predictors (of one device class, or all), as ``predictor show`` lists them
    beside the latency ones.  A file this edgenas cannot read is skipped with a warning rather than
    failing the listing: one stale file must not hide the others."""
    out = []
    for path in sorted((Path(home) / "predictors").glob("memory-*.json")):
        try:
            pred = MemoryPredictor.from_json(json.loads(path.read_text()))
        except (MemoryPredictorError, json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            log.warning("%s: skipped (%s)", path, exc)
            continue
        if device is None or pred.device == device:
            out.append((path, pred))
    return out


# ------------------------------------------------------------------------------------------- training


@dataclass
class TrainingSet:
    """One peak memory per arch (MiB: the median of its clean rows), and the repeat pairs."""

    space: SearchSpace
    archs: list[Arch]
    memory_mib: np.ndarray
    runtime: str | None
    num_classes: int
    pairs: list[tuple[float, float]]


def training_rows(rows: Sequence[Measurement], space: str | None = None
                  ) -> tuple[str, dict[str, list[float]]]:
    """(space, arch id → its stored peak memories in MiB, oldest first) from measurement rows: the
    space most rows were measured in; rows without a peak memory (old runners) are left out, and
    noisy rows too when the arch has clean ones (a noisy timing says nothing against its memory,
    but clean rows are the protocol's own)."""
    rows = [r for r in rows if r.memory_kib is not None and r.space]
    if space is None and rows:
        counts: dict[str, int] = {}
        for r in rows:
            counts[str(r.space)] = counts.get(str(r.space), 0) + 1
        space = max(sorted(counts), key=counts.__getitem__)
    by_arch: dict[str, list[tuple[float, bool]]] = {}
    for r in rows:
        if r.space == space:
            by_arch.setdefault(r.arch, []).append((float(r.memory_kib or 0) / 1024.0, r.noisy))
    out = {}
    for arch, vals in by_arch.items():
        clean = [v for v, noisy in vals if not noisy]
        out[arch] = clean or [v for v, _ in vals]
    return space or "", out


def training_set(store: Store, device: str, precision: str, threads: int,
                 space: str | None = None, xnnpack: bool | None = None) -> TrainingSet:
    """The stored peak memories of one setting of ``device``'s class (every device of the class,
    with the device's XNNPACK setting unless ``xnnpack`` says otherwise)."""
    if xnnpack is None:
        xnnpack = device_xnnpack(store, device)
    rows = for_predictor(store, class_key(store, device), precision, threads, xnnpack=bool(xnnpack))
    name, by_arch = training_rows(rows, space)
    if not by_arch:
        raise MemoryPredictorError(
            f"no measurements with a peak memory for {device} ({precision}, {threads} thread(s)): "
            f"measure it with this edgenas (`edgenas measure CKPT --device {device} --precision "
            f"{precision}`); rows from runners before the peak memory was recorded have none")
    if len(by_arch) < MIN_SAMPLES:
        raise MemoryPredictorError(
            f"only {len(by_arch)} subnet(s) with a peak memory for {device} ({precision}, {threads} "
            f"thread(s)); a memory predictor needs at least {MIN_SAMPLES}: run `edgenas measure`")
    sp = SearchSpace.load(name)
    archs = sorted(by_arch)
    memory = np.asarray([float(np.median(by_arch[a])) for a in archs])
    pairs = [(vals[0], vals[1]) for vals in (by_arch[a] for a in archs) if len(vals) >= 2]
    from edgenas.predictors.latency import _num_classes

    last = rows[-1]
    runtime = f"{last.runtime} {last.runtime_version or ''}".strip() if last.runtime else None
    return TrainingSet(sp, [sp.parse(a) for a in archs], memory, runtime, _num_classes(rows), pairs)


def fit_arrays(space: SearchSpace, archs: Sequence[Arch], memory_mib: np.ndarray,
               num_classes: int = 10, names: Sequence[str] | None = None
               ) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, Any]]:
    """(names, coefficients, scales, held-out quality) of the NNLS fit of ``memory_mib`` on ``archs``:
    k-fold cross-validated first, then fitted on all of them."""
    y = np.asarray(memory_mib, dtype=np.float64)
    if len(y) < MIN_SAMPLES:
        raise MemoryPredictorError(f"a memory predictor needs at least {MIN_SAMPLES} subnets, "
                                   f"not {len(y)}")
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise MemoryPredictorError("peak memories must be positive finite numbers of MiB")
    names = list(names or feature_names(space))
    x = _matrix(space, list(archs), names, num_classes)
    folds = _folds(len(y), FOLDS)
    held_out = np.empty_like(y)
    for test in folds:
        train = np.setdiff1d(np.arange(len(y)), test)
        coef, scale = _nnls_fit(x[train], y[train])
        held_out[test] = _nnls_predict(x[test], coef, scale)
    q = quality(y, held_out)
    q.update(folds=len(folds), method="k-fold cross-validation")
    coef, scale = _nnls_fit(x, y)
    return names, coef, scale, q


def fit(store: Store, device: str, precision: str = "fp32", threads: int = 1, *,
        space: str | None = None, save_to: Path | None = None,
        xnnpack: bool | None = None) -> MemoryPredictor:
    """Fit (and, with ``save_to`` = the workspace home, save) the memory predictor of a device's
    class for one setting from its stored measurements; ``quality`` is held out, and
    ``extra["repeatability"]`` is the device's own noise floor when subnets were measured twice."""
    ts = training_set(store, device, precision, threads, space, xnnpack)
    names, coef, scale, q = fit_arrays(ts.space, ts.archs, ts.memory_mib, ts.num_classes)
    pred = MemoryPredictor(class_key(store, device), precision, threads, ts.space.name, names,
                           [float(c) for c in coef], [float(s) for s in scale], ts.num_classes, q,
                           ts.runtime, len(ts.archs), time.time(),
                           {"repeatability": repeatability(ts.pairs),
                            "memory_range_mib": [float(ts.memory_mib.min()),
                                                 float(ts.memory_mib.max())]})
    if save_to is not None:
        pred.save(save_to)
    return pred


__all__ = ["MemoryPredictor", "MemoryPredictorError", "feature_names", "features", "fit", "fit_arrays",
           "list_predictors", "load_predictor", "predictor_path", "quality", "repeatability",
           "training_rows", "training_set"]
