"""Latency predictor per device × precision × threads, fitted from the stored measurements.

The model is OFA's per-layer lookup table expressed as a regression: a subnet's latency is the sum of
what its layers cost, and what a layer costs on a device is (nearly) linear in the work it does of each
*kind* — 1×1 convolution MACs, depthwise MACs per kernel size, activation elements (h-swish costs more
than ReLU, and int8 h-swish may not be delegated at all), squeeze-excite, residual adds — plus a fixed
cost per operator and per invoke.  Instead of timing every layer in isolation (which misses fusion and
the interpreter's per-op overhead), the per-kind costs are *learned* from whole-subnet measurements by
non-negative least squares, weighted by 1/latency so that relative error is what is minimised.
Non-negativity keeps the costs physical and regularises the fit at the few dozen samples a device
campaign affords.  Two feature sets compete: per operator kind ("ops", 11 features) and per operator
kind and stage ("stages": spatial size and width change how efficient a kernel is); the one with the
lower cross-validated error is kept.

Quality is always *held-out*: k-fold cross-validation (model selection nested inside each fold), giving
the share of subnets within ±5 % and ±10 %, RMSE, Spearman and the p90 relative error.  That p90 error
is stored with the predictor and printed with every prediction (``1.23 ms ±6.1 %``).

Predictors are plain JSON in ``<home>/predictors/latency-<device>-<precision>-t<threads>.json``: one
per device setting, and it records which run-time statistic it predicts (median, min or mean, chosen
at fit time).  Everything that later compares a measurement with a prediction — the search's
on-device verification, ``fleet bench`` — reads that same statistic from the measurement, and the
verification re-uses the benchmark protocol the predictor's training measurements were taken with
(``extra.protocol``), so a prediction is only ever checked against a number of the same kind.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgenas.core.errors import EdgeNASError
from edgenas.core.files import atomic_write_json
from edgenas.records.store import Store
from edgenas.space.plan import net_plan
from edgenas.space.spec import Arch, SearchSpace

FORMAT = "edgenas-latency-predictor"
VERSION = 1
MIN_SAMPLES = 8
FOLDS = 5
FEATURE_SETS = ("ops", "dwstages", "stages")
# What is predicted: the median run (the default, what edgenas reports everywhere), the fastest run
# (far steadier on a device shared with other work: interference only ever adds time), or the mean
# (amortises a CPU quota's throttling periods, which make single runs bimodal).
STATISTICS = {"median": "median_ms", "min": "min_ms", "mean": "mean_ms"}


class LatencyPredictorError(EdgeNASError):
    """A latency predictor cannot be fitted (too few measurements) or loaded (missing, corrupt)."""


# ------------------------------------------------------------------------------------------ features


def features(space: SearchSpace, arch: Arch, feature_set: str,
             num_classes: int = 10) -> dict[str, float]:
    """The named per-kind (and per-stage) work of ``arch``; see the module docstring."""
    plan = net_plan(space, arch)
    per_stage = feature_set == "stages"
    # Depthwise MACs per stage and kernel size: what a runtime's int8 depthwise kernels make uneven
    # (on this host's XNNPACK, int8 7x7 depthwise costs ~20x its fp32 per MAC, and by stage).
    per_stage_dw = feature_set in ("stages", "dwstages")
    f: dict[str, float] = {"invoke": 1.0}

    def add(name: str, value: float) -> None:
        f[name] = f.get(name, 0.0) + float(value)

    stem = plan.stem_size**2 * 3 * plan.stem_ch * plan.stem_kernel**2
    head = (plan.head_size**2 * plan.head_in * plan.head_expand
            + plan.head_expand * plan.head_feature + plan.head_feature * num_classes)
    add("stem_macs", stem)
    add("head_macs", head)
    add("hswish_elems", plan.stem_size**2 * plan.stem_ch + plan.head_size**2 * plan.head_expand)
    for block, stage in zip(plan.blocks, plan.stage_of_block):
        tag = f"s{stage + 1}_" if per_stage else ""
        if block.expand != 1:
            add(f"{tag}pw_macs", block.in_size**2 * block.in_ch * block.mid_ch)
        add(f"{tag}pw_macs", block.out_size**2 * block.mid_ch * block.out_ch)
        dw = block.out_size**2 * block.mid_ch * block.kernel**2
        add(f"dw{block.kernel}_macs", dw)  # kernel sizes differ in efficiency
        if per_stage:
            add(f"{tag}dw_macs", dw)
        if per_stage_dw:
            add(f"s{stage + 1}_dw{block.kernel}_macs", dw)
        elems = block.mid_ch * ((block.in_size**2 if block.expand != 1 else 0) + block.out_size**2)
        add("hswish_elems" if block.act == "h_swish" else "relu_elems", elems)
        if block.se_ch:
            add("se_elems", block.out_size**2 * block.mid_ch)
            add("se_blocks", 1)
        if block.residual:
            add("residual_elems", block.out_size**2 * block.out_ch)
        add("blocks", 1)
    return f


def feature_names(space: SearchSpace, feature_set: str) -> list[str]:
    """Every name :func:`features` can produce for ``space`` (the largest arch has them all)."""
    names = set(features(space, space.largest(), feature_set))
    for k in space.kernel_choices:
        names.add(f"dw{k}_macs")
        if feature_set in ("stages", "dwstages"):
            names |= {f"s{st + 1}_dw{k}_macs" for st in net_plan(space, space.largest()).stage_of_block}
    names |= {"se_elems", "se_blocks", "residual_elems", "relu_elems", "hswish_elems"}
    return sorted(names)


def _matrix(space: SearchSpace, archs: Sequence[Arch], names: Sequence[str], feature_set: str,
            num_classes: int) -> np.ndarray:
    rows = []
    for a in archs:
        f = features(space, a, feature_set, num_classes)
        rows.append([f.get(n, 0.0) for n in names])
    return np.asarray(rows, dtype=np.float64)


# -------------------------------------------------------------------------------------------- fitting


def _nnls_fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted NNLS minimising relative error; returns (coefficients, column scales)."""
    from scipy.optimize import nnls

    scale = np.abs(x).max(axis=0)
    scale[scale == 0] = 1.0
    xs = x / scale
    w = 1.0 / y
    coef, _ = nnls(xs * w[:, None], y * w, maxiter=50 * x.shape[1])
    return coef, scale


def _nnls_predict(x: np.ndarray, coef: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return (x / scale) @ coef


def _folds(n: int, k: int, seed: int = 0) -> list[np.ndarray]:
    idx = np.random.default_rng(seed).permutation(n)
    return [idx[i::k] for i in range(min(k, n))]


def quality(y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """Held-out error summary of predictions ``pred`` for measured ``y`` (ms)."""
    rel = np.abs(pred - y) / y
    return {
        "samples": int(len(y)),
        "within_5": float(np.mean(rel <= 0.05)),
        "within_10": float(np.mean(rel <= 0.10)),
        "rmse_ms": float(np.sqrt(np.mean((pred - y) ** 2))),
        "mape": float(np.mean(rel)),
        "p90_rel_error": float(np.quantile(rel, 0.9)),
        "max_rel_error": float(rel.max()),
        "spearman": spearman(y, pred),
    }


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Rank correlation with ties averaged."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def _cv_predictions(space: SearchSpace, archs: list[Arch], y: np.ndarray, feature_set: str,
                    num_classes: int, folds: list[np.ndarray]) -> np.ndarray:
    names = feature_names(space, feature_set)
    x = _matrix(space, archs, names, feature_set, num_classes)
    pred = np.empty_like(y)
    for test in folds:
        train = np.setdiff1d(np.arange(len(y)), test)
        coef, scale = _nnls_fit(x[train], y[train])
        pred[test] = _nnls_predict(x[test], coef, scale)
    return pred


def _select(space: SearchSpace, archs: list[Arch], y: np.ndarray, num_classes: int,
            candidates: Sequence[str]) -> str:
    """The feature set with the lowest cross-validated mean relative error on these samples."""
    if len(candidates) == 1:
        return candidates[0]
    folds = _folds(len(y), FOLDS, seed=1)
    best, best_err = candidates[0], math.inf
    for fs in candidates:
        err = float(np.mean(np.abs(_cv_predictions(space, archs, y, fs, num_classes, folds) - y) / y))
        if err < best_err - 1e-9:
            best, best_err = fs, err
    return best


def _candidates(n: int) -> list[str]:
    # The per-stage set has ~40 coefficients; below 40 samples it mostly fits noise.  The per-kind
    # set plus depthwise per stage and kernel (~25) competes from 16 (where it wins is held out).
    return ["ops"] + (["dwstages"] if n >= 16 else []) + (["stages"] if n >= 40 else [])


# ------------------------------------------------------------------------------------------ predictor


@dataclass
class LatencyPredictor:
    """A fitted predictor: ``predict(space, arch)`` in ms; ``error`` its held-out p90 relative error.

    ``device``: the device class it serves (:mod:`edgenas.records.classes`; for a device never probed,
    the
    device's own name) — the field keeps its name so that saved predictors stay readable."""

    device: str
    precision: str
    threads: int
    space: str
    feature_set: str
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
        """Held-out p90 relative error (0.06 = 90 % of held-out subnets were within ±6 %)."""
        return float(self.quality.get("p90_rel_error", float("nan")))

    @property
    def statistic(self) -> str:
        """``median``, ``min`` or ``mean``: which run time per subnet the predictor was fitted to."""
        return str(self.extra.get("statistic", "median"))

    @property
    def protocol(self) -> dict[str, Any] | None:
        """The benchmark settings its training measurements used (BenchSettings fields), if known."""
        proto = self.extra.get("protocol")
        return dict(proto) if isinstance(proto, dict) else None

    @property
    def xnnpack(self) -> bool:
        """Whether its training measurements ran with XNNPACK (a device profile: ``device add
        --no-xnnpack``); predictors from before the setting existed were fitted with it."""
        value = self.extra.get("xnnpack", (self.protocol or {}).get("xnnpack", True))
        return bool(value)

    def measured(self, row: Any) -> float:
        """The run time of a stored measurement row that this predictor's predictions compare to."""
        return measured_latency(row, self.statistic)

    @property
    def model_name(self) -> str:
        return str(self.extra.get("model") or f"nnls-{self.feature_set}")

    def predict(self, space: SearchSpace, arch: Arch | str) -> float:
        """Predicted latency in ms on this device (of the run-time :attr:`statistic`)."""
        if space.name != self.space:
            raise LatencyPredictorError(
                f"this predictor was fitted on {self.space} subnets, not {space.name}")
        arch = space.parse(arch) if isinstance(arch, str) else arch
        x = _matrix(space, [arch], self.names, self.feature_set, self.num_classes)
        return float(_nnls_predict(x, np.asarray(self.coef), np.asarray(self.scale))[0])

    def predict_many(self, space: SearchSpace, archs: Sequence[Arch]) -> np.ndarray:
        x = _matrix(space, list(archs), self.names, self.feature_set, self.num_classes)
        return _nnls_predict(x, np.asarray(self.coef), np.asarray(self.scale))

    def describe(self, ms: float) -> str:
        """``1.234 ms ±6.1 %``: a prediction always carries the predictor's measured error."""
        return f"{ms:.4g} ms ±{100 * self.error:.1f} %"

    def contributions(self) -> dict[str, float]:
        """Fitted cost per unit of each feature (ms per MAC, per element, per block ...)."""
        return {n: c / s for n, c, s in zip(self.names, self.coef, self.scale)}

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "device": self.device,
                "precision": self.precision, "threads": self.threads, "space": self.space,
                "model": self.model_name, "feature_set": self.feature_set, "features": self.names,
                "coef": self.coef, "scale": self.scale, "num_classes": self.num_classes,
                "quality": self.quality, "error": {"p90_rel": self.error},
                "runtime": self.runtime, "samples": self.samples, "fitted_at": self.fitted_at,
                **({"extra": self.extra} if self.extra else {})}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LatencyPredictor:
        if data.get("format") != FORMAT:
            raise LatencyPredictorError("not an edgenas latency predictor file")
        if int(data.get("version", 0)) > VERSION:
            raise LatencyPredictorError(f"latency predictor format {data.get('version')} is newer "
                                        "than this edgenas understands; upgrade edgenas")
        try:
            return cls(data["device"], data["precision"], int(data["threads"]), data["space"],
                       data["feature_set"], list(data["features"]), [float(c) for c in data["coef"]],
                       [float(s) for s in data["scale"]], int(data["num_classes"]),
                       dict(data["quality"]), data.get("runtime"), int(data.get("samples", 0)),
                       float(data.get("fitted_at", 0.0)), dict(data.get("extra") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise LatencyPredictorError(f"latency predictor file is incomplete ({exc})") from None

    def save(self, home: Path) -> Path:
        path = predictor_path(home, self.device, self.precision, self.threads)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_json(path, self.to_json(), indent=2)


def measured_latency(row: Any, statistic: str = "median") -> float:
    """``row``'s run time of ``statistic`` (a measurements row or its dict); the median when the
    backend did not report that statistic."""
    if statistic not in STATISTICS:
        raise LatencyPredictorError(f"unknown statistic {statistic!r} (one of {', '.join(STATISTICS)})")
    value = row[STATISTICS[statistic]]
    return float(value if value is not None else row["median_ms"])


def predictor_path(home: Path, device_class: str, precision: str, threads: int) -> Path:
    """Where the predictor of a device class (one setting) is saved: one file serves every device of
    the class."""
    return Path(home) / "predictors" / f"latency-{device_class}-{precision}-t{threads}.json"


def load_predictor(home: Path, device: str, precision: str = "fp32", threads: int = 1,
                   statistic: str | None = None, xnnpack: bool | None = None) -> LatencyPredictor:
    """The device's predictor; with ``statistic``, refuse one fitted to a different statistic; with
    ``xnnpack`` (the device's setting), refuse one fitted to the other XNNPACK profile."""
    path = predictor_path(home, device, precision, threads)
    try:
        pred = LatencyPredictor.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise LatencyPredictorError(
            f"no latency predictor for {device} ({precision}, {threads} thread(s)): run "
            f"`edgenas predictor fit --device {device} --precision {precision} --threads {threads}`"
        ) from None
    except json.JSONDecodeError as exc:
        raise LatencyPredictorError(f"{path}: corrupt predictor file ({exc})") from None
    if statistic is not None and pred.statistic != statistic:
        raise LatencyPredictorError(
            f"the latency predictor for {device} ({precision}, {threads} thread(s)) predicts the "
            f"{pred.statistic} run time, not the {statistic}: refit it with "
            f"`edgenas predictor fit --device {device} --statistic {statistic}`")
    if xnnpack is not None and pred.xnnpack != bool(xnnpack):
        def say(on: bool) -> str:
            return "with XNNPACK" if on else "without XNNPACK"

        raise LatencyPredictorError(
            f"the latency predictor for {device} ({precision}, {threads} thread(s)) was fitted to "
            f"measurements {say(pred.xnnpack)}, but the device is registered {say(bool(xnnpack))}: "
            f"measure it again (`edgenas measure`) and refit "
            f"(`edgenas predictor fit --device {device}`)")
    return pred


def list_predictors(home: Path, device: str | None = None) -> list[tuple[Path, LatencyPredictor]]:
    out = []
    for path in sorted((Path(home) / "predictors").glob("latency-*.json")):
        try:
            pred = LatencyPredictor.from_json(json.loads(path.read_text()))
        except (LatencyPredictorError, json.JSONDecodeError, OSError):
            continue
        if device is None or pred.device == device:
            out.append((path, pred))
    return out


# ------------------------------------------------------------------------------------------- training


@dataclass
class TrainingSet:
    """One latency per arch (median of its stored medians; noisy rows only when nothing else)."""

    space: SearchSpace
    archs: list[Arch]
    latency_ms: np.ndarray
    runtime: str | None
    num_classes: int
    protocol: dict[str, Any] | None = None
    xnnpack: bool = True


def training_set(store: Store, device: str, precision: str, threads: int,
                 space: str | None = None, statistic: str = "median",
                 xnnpack: bool | None = None) -> TrainingSet:
    """The measurements of one setting of ``device``'s class (a device name stands for its class; any
    other name is taken as a class name), from every device of the class; ``xnnpack`` (default: the
    registered device's setting) keeps only rows measured with (True) or without (False) XNNPACK."""
    if statistic not in STATISTICS:
        raise LatencyPredictorError(f"unknown statistic {statistic!r} (one of {', '.join(STATISTICS)})")
    column = STATISTICS[statistic]
    if xnnpack is None:
        xnnpack = device_xnnpack(store, device)
    from edgenas.records.measurements import for_predictor

    rows = for_predictor(store, class_key(store, device), precision, threads, xnnpack=bool(xnnpack))
    if space is None:
        spaces = sorted({r.space for r in rows if r.space})
        if len(spaces) > 1:
            counts = {s: sum(r.space == s for r in rows) for s in spaces}
            space = max(spaces, key=lambda s: counts[s])
        elif spaces:
            space = spaces[0]
    rows = [r for r in rows if r.space == space]
    if len(rows) == 0:
        raise LatencyPredictorError(
            f"no measurements for {device} ({precision}, {threads} thread(s)); run "
            f"`edgenas measure CKPT --device {device} --samples 60 --precision {precision}` first")
    sp = SearchSpace.load(space)
    by_arch: dict[str, list[tuple[float, int]]] = {}
    for r in rows:
        by_arch.setdefault(r.arch, []).append((float(getattr(r, column)), int(r.noisy)))
    archs, ys = [], []
    for arch_id in sorted(by_arch):
        vals = by_arch[arch_id]
        clean = [v for v, noisy in vals if not noisy] or [v for v, _ in vals]
        archs.append(sp.parse(arch_id))
        ys.append(float(np.median(clean)))
    if len(archs) < MIN_SAMPLES:
        raise LatencyPredictorError(
            f"only {len(archs)} measured subnet(s) for {device} ({precision}, {threads} thread(s)); "
            f"a predictor needs at least {MIN_SAMPLES} (60-150 for ±10 %): run `edgenas measure`")
    last = rows[-1]
    runtime = f"{last.runtime} {last.runtime_version or ''}".strip() if last.runtime else None
    return TrainingSet(sp, archs, np.asarray(ys), runtime, _num_classes(rows), _protocol(rows),
                       bool(xnnpack))


def device_xnnpack(store: Store, device: str) -> bool:
    """The registered device's XNNPACK setting, or that of the devices of the class of that name
    (True for a name that is neither)."""
    try:
        rows = store.query("SELECT xnnpack FROM devices WHERE name = ?", (device,))
    except sqlite3.OperationalError:  # a store without the column predates the setting: XNNPACK on
        return True
    if not rows:
        from edgenas.device.registry import list_devices
        from edgenas.records.classes import class_of

        members = [d for d in list_devices(store) if class_of(d) == device]
        return members[0].xnnpack if members else True
    return bool(rows[0]["xnnpack"]) if rows[0]["xnnpack"] is not None else True


def class_key(store: Store, name: str) -> str:
    """The class a predictor command's target names (:func:`edgenas.device.registry.resolve_class`),
    as a predictor error."""
    from edgenas.device.registry import resolve_class as resolve
    from edgenas.records.classes import ClassError

    try:
        return resolve(store, name)
    except ClassError as exc:
        raise LatencyPredictorError(str(exc)) from None


def _protocol(rows: Sequence[Any]) -> dict[str, Any] | None:
    """The benchmark settings most of the rows were measured with (``edgenas.settings`` in their
    result), so that verifying a prediction later measures the same way."""
    counts: dict[str, int] = {}
    for r in rows:
        try:
            settings = json.loads(r.result_json).get("edgenas", {}).get("settings")
        except (ValueError, TypeError, AttributeError):
            continue
        if isinstance(settings, dict):
            key = json.dumps(settings, sort_keys=True)
            counts[key] = counts.get(key, 0) + 1
    return json.loads(max(counts, key=counts.__getitem__)) if counts else None


def _num_classes(rows: Sequence[Any]) -> int:
    """The classifier width of the measured models (from the runner's output shape), default 10."""
    for r in rows:
        try:
            outputs = json.loads(r.result_json).get("outputs") or []
            shape = outputs[0].get("shape") if outputs else None
            if shape:
                return int(shape[-1])
        except (ValueError, TypeError, AttributeError, IndexError):
            continue
    return 10


def fit_per_device(store: Store, device: str, precision: str = "fp32", threads: int = 1, *,
                   space: str | None = None, save_to: Path | None = None, statistic: str = "median",
                   feature_sets: Sequence[str] | None = None, xnnpack: bool | None = None,
                   compared: dict[str, Any] | None = None) -> LatencyPredictor:
    """Fit (and, with ``save_to`` = the workspace home, save) a device's own predictor from its own
    measurements alone; :func:`edgenas.predictors.latency_fit.fit` decides when to transfer instead.

    The returned predictor's ``quality`` is from k-fold cross-validation with the feature-set choice
    nested inside each fold, so it is an honest estimate for unmeasured subnets.  ``compared`` is the
    transfer fit's quality when it lost to this one (kept in ``extra`` so the choice is visible).
    """
    ts = training_set(store, device, precision, threads, space, statistic, xnnpack)
    n = len(ts.archs)
    cands = list(feature_sets or _candidates(n))
    folds = _folds(n, FOLDS)
    held_out = np.empty(n)
    chosen = []
    for test in folds:
        train = np.setdiff1d(np.arange(n), test)
        tr_archs = [ts.archs[i] for i in train]
        fs = _select(ts.space, tr_archs, ts.latency_ms[train], ts.num_classes, cands)
        chosen.append(fs)
        names = feature_names(ts.space, fs)
        x_tr = _matrix(ts.space, tr_archs, names, fs, ts.num_classes)
        coef, scale = _nnls_fit(x_tr, ts.latency_ms[train])
        x_te = _matrix(ts.space, [ts.archs[i] for i in test], names, fs, ts.num_classes)
        held_out[test] = _nnls_predict(x_te, coef, scale)
    q = quality(ts.latency_ms, held_out)
    q.update(folds=len(folds), method="k-fold cross-validation (feature set chosen inside each fold)")
    fs = _select(ts.space, ts.archs, ts.latency_ms, ts.num_classes, cands)
    names = feature_names(ts.space, fs)
    coef, scale = _nnls_fit(_matrix(ts.space, ts.archs, names, fs, ts.num_classes), ts.latency_ms)
    pred = LatencyPredictor(class_key(store, device), precision, threads, ts.space.name, fs, names,
                            [float(c) for c in coef], [float(s) for s in scale], ts.num_classes, q,
                            ts.runtime, n, time.time(),
                            {"statistic": statistic, "protocol": ts.protocol, "xnnpack": ts.xnnpack,
                             "method": "per-device", "compared": compared,
                             "fold_feature_sets": chosen,
                             "latency_range_ms": [float(ts.latency_ms.min()),
                                                  float(ts.latency_ms.max())]})
    if save_to is not None:
        pred.save(save_to)
    return pred


def evaluate_baseline(store: Store, device: str, precision: str = "fp32", threads: int = 1,
                      space: str | None = None, statistic: str = "median") -> dict[str, Any]:
    """The MACs-only baseline (latency = a + b · MACs, same weighting, same folds), for comparison."""
    ts = training_set(store, device, precision, threads, space, statistic)
    x = np.asarray([[1.0, float(ts.space.macs(a, ts.num_classes))] for a in ts.archs])
    pred = np.empty(len(ts.archs))
    for test in _folds(len(ts.archs), FOLDS):
        train = np.setdiff1d(np.arange(len(ts.archs)), test)
        coef, scale = _nnls_fit(x[train], ts.latency_ms[train])
        pred[test] = _nnls_predict(x[test], coef, scale)
    return quality(ts.latency_ms, pred)


__all__ = ["LatencyPredictor", "LatencyPredictorError", "evaluate_baseline", "features",
           "fit_per_device", "list_predictors", "load_predictor", "measured_latency", "predictor_path",
           "training_set"]
