"""Accuracy predictor: top-1 of an unmeasured subnet, learned from supernet evaluations.

Ground truth is the BN-recalibrated validation top-1 of sampled subnets (``edgenas.training.evaluate``),
stored in the workspace database per (supernet sha256, arch, data set) so an interrupted run
resumes and nothing is evaluated twice.  The model follows OFA's arch encoding: a one-hot of
kernel and expand per block slot (zeros for blocks a shallow stage skips), depth one-hot per
stage, and the resolution; fitted with cross-validated ridge regression, which is hard to beat at
the few hundred samples a laptop can afford.  Persisted as plain JSON (no pickle).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgenas.core.errors import EdgeNASError
from edgenas.records.store import Store
from edgenas.space.spec import Arch, SearchSpace


class PredictorError(EdgeNASError):
    """A predictor cannot be fitted or loaded."""


# ---------------------------------------------------------------------------------- features


def arch_features(space: SearchSpace, arch: Arch) -> np.ndarray:
    """OFA-style encoding of ``arch``: per-slot kernel/expand one-hots, depth one-hot, resolution."""
    ks, es, ds = space.kernel_choices, space.expand_choices, space.depth_choices
    out: list[float] = []
    for stage in arch.blocks:
        for slot in range(space.max_depth):
            active = slot < len(stage)
            k, e = stage[slot] if active else (None, None)
            out += [1.0 if active and k == c else 0.0 for c in ks]
            out += [1.0 if active and e == c else 0.0 for c in es]
        out += [1.0 if len(stage) == d else 0.0 for d in ds]
    lo, hi = space.resolutions[0], space.resolutions[-1]
    out.append((arch.resolution - lo) / max(1, hi - lo))
    return np.asarray(out, dtype=np.float64)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Rank correlation (ties averaged), without pulling scipy into the import path."""
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    for value in np.unique(x):
        tie = x == value
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


# ---------------------------------------------------------------------------------- ground truth


def stored_evaluations(store: Store, source_sha256: str, data: str) -> dict[str, float]:
    rows = store.query("SELECT arch, top1 FROM accuracy_evals WHERE source_sha256 = ? AND data = ?",
                       (source_sha256, data))
    return {row[0]: float(row[1]) for row in rows}


def record_evaluation(store: Store, source_sha256: str, space: str, data: str, arch: str,
                      top1: float, images: int) -> None:
    with store.transaction() as conn:
        conn.execute(
            "INSERT OR REPLACE INTO accuracy_evals (source_sha256, arch, space, data, top1, images,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (source_sha256, arch, space, data, float(top1), int(images), time.time()),
        )


def sample_for_accuracy(space: SearchSpace, n: int, seed: int = 0) -> list[Arch]:
    """``n`` distinct archs: the smallest, the largest, then seeded random ones."""
    archs = [space.smallest(), space.largest()]
    seen = {a.to_string() for a in archs}
    for arch in space.sample_many(n * 3 + 10, seed):
        if len(archs) >= n:
            break
        if arch.to_string() not in seen:
            seen.add(arch.to_string())
            archs.append(arch)
    return archs[:n]


def evaluate_into_store(store: Store, net: Any, source_sha256: str, data: Any,
                        archs: Sequence[Arch],
                        progress: Callable[[int, int, Arch, float], None] | None = None
                        ) -> dict[str, float]:
    """Evaluate (BN-recalibrated top-1) every arch not yet stored; returns all stored results.

    Each result is committed as soon as it exists, so a killed run loses at most one evaluation.
    """
    from edgenas.training.evaluate import evaluate_archs

    done = stored_evaluations(store, source_sha256, data.source)
    todo = [a for a in archs if a.to_string() not in done]
    for i, arch in enumerate(todo):
        result = evaluate_archs(net, [arch], data)[0]
        record_evaluation(store, source_sha256, net.space.name, data.source, arch.to_string(),
                          result.top1, result.images)
        done[arch.to_string()] = result.top1
        if progress:
            progress(i + 1, len(todo), arch, result.top1)
    return done


# ---------------------------------------------------------------------------------- the model


@dataclass
class AccuracyPredictor:
    """Ridge regression on :func:`arch_features`; ``quality`` holds the held-out metrics."""

    space: str
    source_sha256: str
    data: str
    weights: list[float]
    bias: float
    quality: dict[str, float]
    samples: int

    def predict_many(self, space: SearchSpace, archs: Sequence[Arch]) -> np.ndarray:
        x = np.stack([arch_features(space, a) for a in archs])
        return np.clip(x @ np.asarray(self.weights) + self.bias, 0.0, 1.0)

    def predict(self, space: SearchSpace, arch: Arch) -> float:
        return float(self.predict_many(space, [arch])[0])

    @property
    def rmse(self) -> float:
        return float(self.quality.get("rmse", math.nan))

    def to_json(self) -> dict[str, Any]:
        return {"kind": "accuracy", "model": "ridge", "space": self.space,
                "source_sha256": self.source_sha256, "data": self.data,
                "weights": self.weights, "bias": self.bias, "quality": self.quality,
                "samples": self.samples}

    def save(self, path: Path) -> Path:
        """Atomically (unique temp name, fsync, rename), so two fits never share a temp file."""
        from edgenas.core.files import atomic_write_json

        return atomic_write_json(path, self.to_json(), indent=1)

    @classmethod
    def load(cls, path: Path) -> AccuracyPredictor:
        try:
            d = json.loads(Path(path).read_text())
            return cls(d["space"], d["source_sha256"], d["data"], list(d["weights"]),
                       float(d["bias"]), dict(d["quality"]), int(d["samples"]))
        except FileNotFoundError:
            raise PredictorError(f"{path}: no accuracy predictor (run `edgenas predictor "
                                 "fit-accuracy CKPT` first)") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise PredictorError(f"{path}: corrupt accuracy predictor ({exc})") from None


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    mean_x, mean_y = x.mean(0), y.mean()
    xc = x - mean_x
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - mean_y))
    return w, float(mean_y - mean_x @ w)


def _folds(n: int, k: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [order[i::k] for i in range(k)]


def fit_accuracy_predictor(space: SearchSpace, results: dict[str, float], source_sha256: str,
                           data: str, seed: int = 0) -> AccuracyPredictor:
    """Choose the ridge strength by k-fold CV, report held-out RMSE/Spearman, refit on all."""
    if len(results) < 8:
        raise PredictorError(f"need at least 8 evaluated archs to fit, have {len(results)}")
    archs = [Arch.from_string(a) for a in results]
    x = np.stack([arch_features(space, a) for a in archs])
    y = np.asarray(list(results.values()), dtype=np.float64)
    folds = _folds(len(y), min(5, len(y)), seed)
    best: tuple[float, float, np.ndarray] | None = None
    for alpha in (0.01, 0.1, 1.0, 3.0, 10.0, 30.0, 100.0):
        pred = np.empty_like(y)
        for held in folds:
            train = np.setdiff1d(np.arange(len(y)), held)
            w, b = _ridge(x[train], y[train], alpha)
            pred[held] = x[held] @ w + b
        rmse = float(np.sqrt(np.mean((np.clip(pred, 0, 1) - y) ** 2)))
        if best is None or rmse < best[0]:
            best = (rmse, alpha, pred)
    assert best is not None
    rmse, alpha, held_pred = best
    w, b = _ridge(x, y, alpha)
    quality = {"rmse": rmse, "spearman": spearman(held_pred, y), "alpha": alpha,
               "folds": float(len(folds)), "mae": float(np.mean(np.abs(np.clip(held_pred, 0, 1)
                                                                      - y)))}
    return AccuracyPredictor(space.name, source_sha256, data, [float(v) for v in w], b, quality,
                             len(y))


def predictor_path(home: Path, source_sha256: str) -> Path:
    return Path(home) / "predictors" / f"accuracy-{source_sha256[:12]}.json"


def fit_and_save(home: Path, ckpt: Path, samples: int, data_source: str | None = None,
                 seed: int = 0, progress: Callable[[int, int, Arch, float], None] | None = None,
                 stats: dict[str, Any] | None = None, limit: int | None = None
                 ) -> tuple[AccuracyPredictor, Path]:
    """Evaluate ``samples`` archs of ``ckpt`` (resuming stored ones), fit, save to the workspace.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the archs still to evaluate are split between the
    ranks (rank 0 decides the list, so a rank that sees another's fresh results cannot diverge);
    each rank commits every result to the workspace database as soon as it exists (an interrupted
    job resumes and loses at most one evaluation per rank), and the results are gathered once at
    the end.  Every rank fits the same predictor; only rank 0 writes it.  ``stats``, when given,
    receives ``world`` and ``per_rank`` (evaluations done by each rank in this run).

    ``limit`` recalibrates on the first ``limit`` training images only (quick trials, as
    ``load_data``'s); such evaluations are stored and fitted under a data name of their own, so
    they are never mistaken for (or reused as) evaluations calibrated on the whole set.
    """
    from edgenas.core.files import sha256_file
    from edgenas.export.api import training_data_source
    from edgenas.records.store import open_store
    from edgenas.supernets.mbv3 import load_supernet
    from edgenas.training.data import load_data
    from edgenas.training.train import init_distributed

    dist_info = init_distributed("cpu")
    net = load_supernet(ckpt)
    source = data_source or training_data_source(net.meta)
    if source is None:
        raise PredictorError(f"{ckpt} does not record its data set; pass --data")
    data = load_data(source, size=net.space.resolutions[-1], limit=limit)
    data.normalization = dict(net.normalization)
    if limit is not None:  # the name its evaluations are stored under (see above)
        data.source = f"{data.source} (first {limit} training images)"
    sha = sha256_file(ckpt)
    archs = sample_for_accuracy(net.space, samples, seed)
    with open_store(home) as store:
        if dist_info.world > 1:
            per_rank = _evaluate_distributed(store, net, sha, data, archs, progress, dist_info)
        else:
            before = len(stored_evaluations(store, sha, data.source))
            evaluate_into_store(store, net, sha, data, archs, progress)
            per_rank = [len(stored_evaluations(store, sha, data.source)) - before]
        wanted = {a.to_string() for a in archs}
        results = {k: v for k, v in stored_evaluations(store, sha, data.source).items()
                   if k in wanted}
    if stats is not None:
        stats.update(world=dist_info.world, per_rank=per_rank)
    pred = fit_accuracy_predictor(net.space, results, sha, data.source, seed)
    path = predictor_path(home, sha)
    if dist_info.main:
        pred.save(path)
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()  # the file exists for every rank once this returns
        dist.destroy_process_group()
    return pred, path


def _evaluate_distributed(store: Store, net: Any, sha: str, data: Any, archs: Sequence[Arch],
                          progress: Callable[[int, int, Arch, float], None] | None,
                          info: Any) -> list[int]:
    """This rank's share of the missing evaluations; returns how many each rank did."""
    import torch.distributed as dist

    todo: list[Any] = [None]
    if info.main:
        done = stored_evaluations(store, sha, data.source)
        todo = [[a.to_string() for a in archs if a.to_string() not in done]]
    dist.broadcast_object_list(todo, src=0)
    mine = [Arch.from_string(a) for a in todo[0][info.rank::info.world]]
    results = evaluate_into_store(store, net, sha, data, mine, progress if info.main else None)
    local = {a.to_string(): results[a.to_string()] for a in mine}
    gathered: list[Any] = [None] * info.world
    dist.all_gather_object(gathered, local)  # once, at the end
    for part in gathered:  # every rank committed its own; make sure all are visible here too
        for arch, top1 in part.items():
            if arch not in stored_evaluations(store, sha, data.source):
                record_evaluation(store, sha, net.space.name, data.source, arch, top1,
                                  data.num_val)
    return [len(part) for part in gathered]
