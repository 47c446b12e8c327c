"""Zero-cost proxies: a subnet's promise scored from one minibatch, without training it.

The proxies follow their papers (the definitions, not their code):

* ``synflow`` — Tanaka et al. 2020, as a NAS proxy by Abdelfattah et al. 2021: with every weight
  replaced by its absolute value and an all-ones input, Σ |θ · ∂R/∂θ| where R is the sum of the
  outputs (data-free; again in float64 if the product over the layers overflows float32).
* ``grad_norm`` — Σ over weight tensors of ‖∂L/∂θ‖₂ for the cross-entropy L of the minibatch.
* ``snip`` — Lee et al. 2019: Σ |θ · ∂L/∂θ| (connection sensitivity).
* ``naswot`` — Mellor et al. 2021: the binary activation codes c of every ReLU/h-swish unit per
  image; log|det K| with K = c·cᵀ + (1−c)·(1−c)ᵀ (images the network tells apart score high).
* ``jacob_cov`` — Mellor et al.'s first version: the correlation of the input Jacobians of the
  images; −Σ log(λ + k) + 1/(λ + k) over its eigenvalues λ (k = 1e-5).
* ``macs`` — the multiply-accumulates: the baseline any proxy must beat to be worth its cost.

Proxies are computed on the *extracted* static subnet (a copy: the supernet is never touched),
either freshly initialised (``weights="init"``, the zero-cost setting, usable before any
supernet training) or with the supernet's weights (``"inherited"``).  :func:`proxy_study` relates
them to the BN-recalibrated top-1 of the same subnets (Spearman and Kendall).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgenas.core.errors import EdgeNASError
from edgenas.space.spec import Arch, SearchSpace

log = logging.getLogger(__name__)

PROXIES = ("synflow", "grad_norm", "snip", "naswot", "jacob_cov")
BASELINE = "macs"
WEIGHTS = ("init", "inherited")


class ProxyError(EdgeNASError):
    """A proxy name or setting is not known."""


def check_names(names: Sequence[str]) -> list[str]:
    bad = [n for n in names if n not in PROXIES and n != BASELINE]
    if bad:
        raise ProxyError(f"unknown proxy {bad[0]!r} (one of {', '.join(PROXIES + (BASELINE,))})")
    return list(names)


def _weights(model: nn.Module) -> list[nn.Parameter]:
    """Convolution and linear weights (what the proxies' papers score; BN affine left out)."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def synflow(model: nn.Module, shape: tuple[int, ...]) -> float:
    """In float32 (CPU convolutions in float64 are an order of magnitude slower); in float64 only
    when the product over the layers overflowed."""
    for dtype in (torch.float32, torch.float64):
        m = _copy(model).to(dtype).eval()
        with torch.no_grad():
            for p in m.state_dict().values():
                if p.is_floating_point():
                    p.abs_()
        m.zero_grad()
        m(torch.ones(shape, dtype=dtype)).sum().backward()
        score = _saliency(m)
        if math.isfinite(score):
            return score
    return score


def _saliency(model: nn.Module) -> float:
    with torch.no_grad():
        return float(sum((w * w.grad).abs().sum() for w in _weights(model) if w.grad is not None))


def _loss_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    model = _copy(model).train()
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return model


def grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    m = _loss_grads(model, x, y)
    with torch.no_grad():
        return float(sum(w.grad.norm() for w in _weights(m) if w.grad is not None))


def snip(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return _saliency(_loss_grads(model, x, y))


def naswot(model: nn.Module, x: torch.Tensor) -> float:
    from edgenas.supernets.layers import HSwish

    codes: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
        codes.append((out.detach() > 0).flatten(1).double())

    model = _copy(model).eval()
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.ReLU, HSwish))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    if not codes:
        raise ProxyError("naswot needs ReLU or h-swish activations")
    c = torch.cat(codes, dim=1)
    k = c @ c.t() + (1 - c) @ (1 - c).t()
    sign, logdet = torch.linalg.slogdet(k)
    return float(logdet) if sign > 0 else -math.inf


def jacob_cov(model: nn.Module, x: torch.Tensor) -> float:
    model = _copy(model).train()
    x = x.clone().requires_grad_(True)
    model(x).sum().backward()
    assert x.grad is not None
    j = x.grad.flatten(1).double()
    corr = torch.corrcoef(j)
    corr = torch.nan_to_num(corr, nan=0.0)
    lam = torch.linalg.eigvalsh(corr).clamp(min=0)
    k = 1e-5
    return float(-(torch.log(lam + k) + 1.0 / (lam + k)).sum())


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def compute(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
            names: Sequence[str] = PROXIES) -> dict[str, float]:
    """Each proxy in ``names`` for ``model`` on the minibatch ``(x, y)`` (the model is copied)."""
    out: dict[str, float] = {}
    for name in names:
        if name == "synflow":
            out[name] = synflow(model, (1,) + tuple(x.shape[1:]))
        elif name == "grad_norm":
            out[name] = grad_norm(model, x, y)
        elif name == "snip":
            out[name] = snip(model, x, y)
        elif name == "naswot":
            out[name] = naswot(model, x)
        elif name == "jacob_cov":
            out[name] = jacob_cov(model, x)
    return out


def init_subnet(space: SearchSpace, arch: Arch, num_classes: int, seed: int = 0) -> nn.Module:
    """A freshly initialised static subnet (the supernet's initialisation: Kaiming-normal fan-out
    convolutions, unit BN, N(0, 0.01) classifier), seeded by the arch id so a subnet's score does
    not depend on which subnets were scored before it."""
    import zlib

    from edgenas.space.plan import net_plan
    from edgenas.supernets.static import MobileNetV3

    gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{arch.to_string()}".encode()))
    model = MobileNetV3(net_plan(space, arch), num_classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
                m.weight.normal_(0, math.sqrt(2.0 / fan_out), generator=gen)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0, 0.01, generator=gen)
                m.bias.zero_()
    return model


class SubnetProxies:
    """Proxies of subnets of a space, on one fixed minibatch per resolution.

    ``net`` is a trained supernet (``weights="inherited"`` scores its weights) or ``None`` (an
    untrained space: every subnet freshly initialised, seeded by the arch id, so a subnet's score
    does not depend on which others were scored before it).
    """

    def __init__(self, space: SearchSpace, num_classes: int, data: Any, *, net: Any = None,
                 weights: str = "init", batch: int = 64, seed: int = 0) -> None:
        if weights not in WEIGHTS:
            raise ProxyError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
        if weights == "inherited" and net is None:
            raise ProxyError("inherited weights need a supernet checkpoint")
        self.space, self.num_classes, self.data = space, num_classes, data
        self.net, self.weights, self.batch, self.seed = net, weights, batch, seed
        g = torch.Generator().manual_seed(seed)
        n = min(batch, int(data.num_train))
        self._idx = torch.randperm(int(data.num_train), generator=g)[:n]
        self._batches: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._last: tuple[Arch, nn.Module] | None = None

    def minibatch(self, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
        if resolution not in self._batches:
            x = self.data.prepare(self.data.train_x[self._idx], resolution)
            self._batches[resolution] = (x, self.data.train_y[self._idx])
        return self._batches[resolution]

    def model(self, arch: Arch) -> nn.Module:
        """The subnet to score (memoised for the last arch: every proxy scores the same one)."""
        if self._last is not None and self._last[0] == arch:
            return self._last[1]
        if self.weights == "inherited":
            model = self.net.extract(arch)
        else:
            model = init_subnet(self.space, arch, self.num_classes, self.seed)
        self._last = (arch, model)
        return model

    def scores(self, arch: Arch, names: Sequence[str] = PROXIES) -> dict[str, float]:
        """``names`` of ``arch`` (the model is built once and copied per proxy)."""
        self.space.validate(arch)
        out: dict[str, float] = {}
        wanted = [n for n in names if n != BASELINE]
        if wanted:
            x, y = self.minibatch(arch.resolution)
            out = compute(self.model(arch), x, y, wanted)
        if BASELINE in names:
            out[BASELINE] = float(self.space.macs(arch, self.num_classes))
        return out

    def score_fn(self, name: str) -> Callable[[Sequence[Arch]], list[float]]:
        """One proxy as a search accuracy estimate (higher is better)."""
        check_names([name])
        return lambda archs: [self.scores(a, [name])[name] for a in archs]


def kendall(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import kendalltau

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(kendalltau(a, b).statistic)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    from edgenas.predictors.accuracy import spearman as rank_corr

    a = np.nan_to_num(np.asarray(a, float), neginf=-1e300, posinf=1e300)
    return rank_corr(a, b)


@dataclass
class ProxyStudy:
    archs: list[Arch]
    top1: list[float] | None
    scores: dict[str, list[float]]
    seconds: dict[str, float] = field(default_factory=dict)  # per subnet, by proxy
    eval_seconds: float = 0.0  # per subnet, BN recalibration + validation

    def correlations(self, reference: str | None = None) -> dict[str, dict[str, float]]:
        """Spearman and Kendall of each proxy with the top-1 (or with proxy ``reference``)."""
        truth = self.top1 if reference is None else self.scores[reference]
        if truth is None:
            raise ProxyError("no top-1 to correlate with (an untrained space): give a reference")
        return {name: {"spearman": spearman(vals, truth),
                       "kendall": kendall(np.nan_to_num(np.asarray(vals), neginf=-1e300), truth)}
                for name, vals in self.scores.items()}

    def to_json(self) -> dict[str, Any]:
        return {"archs": [a.to_string() for a in self.archs], "top1": self.top1,
                "scores": self.scores, "seconds_per_subnet": self.seconds,
                "eval_seconds_per_subnet": self.eval_seconds,
                "correlations": self.correlations() if self.top1 is not None else None}


def short_train(net: Any, arch: Arch, data: Any, steps: int, *, from_scratch: bool = False,
                batch_size: int = 64, seed: int = 0) -> float:
    """Early-stopping estimate: top-1 (BN recalibrated) after ``steps`` SGD steps of the subnet,
    from the supernet's weights or from scratch (:func:`edgenas.training.finetune.train_subnet`)."""
    from edgenas.training.finetune import train_subnet

    per_epoch = max(1, int(data.num_train) // min(batch_size, int(data.num_train)))
    result = train_subnet(net, arch, data, epochs=steps / per_epoch, from_scratch=from_scratch,
                          batch_size=batch_size, seed=seed, progress=False)
    return result.top1


def proxy_study(proxies: SubnetProxies, archs: Sequence[Arch], names: Sequence[str] = PROXIES
                + (BASELINE,), *, evaluate: bool = True, finetune_steps: int = 0,
                scratch_steps: int = 0,
                progress: Callable[[int, int], None] | None = None) -> ProxyStudy:
    """Every proxy (timed) of every arch, and — with a supernet and ``evaluate`` — the
    BN-recalibrated top-1 of the same subnets, the ground truth the proxies are judged by.

    ``finetune_steps`` / ``scratch_steps`` add the early-stopping estimates (``finetune@N``,
    ``scratch@N``: top-1 after N training steps from inherited weights or from scratch), scored
    and timed like the proxies."""
    names = check_names(names)
    if (finetune_steps or scratch_steps) and proxies.net is None:
        raise ProxyError("early-stopping estimates train subnets of a supernet: give a CKPT")
    scores: dict[str, list[float]] = {n: [] for n in names}
    spent: dict[str, float] = {n: 0.0 for n in names}
    top1: list[float] | None = [] if (evaluate and proxies.net is not None) else None
    eval_s = 0.0
    for i, arch in enumerate(archs):
        for name in names:
            t = time.perf_counter()
            scores[name].append(proxies.scores(arch, [name])[name])
            spent[name] += time.perf_counter() - t
        for label, steps, scratch in (("finetune", finetune_steps, False),
                                      ("scratch", scratch_steps, True)):
            if steps:
                key = f"{label}@{steps}"
                t = time.perf_counter()
                value = short_train(proxies.net, arch, proxies.data, steps, from_scratch=scratch,
                                    seed=proxies.seed)
                scores.setdefault(key, []).append(value)
                spent[key] = spent.get(key, 0.0) + time.perf_counter() - t
        if top1 is not None:
            from edgenas.training.evaluate import evaluate_archs

            t = time.perf_counter()
            top1.append(evaluate_archs(proxies.net, [arch], proxies.data)[0].top1)
            eval_s += time.perf_counter() - t
        if progress:
            progress(i + 1, len(archs))
    n = max(1, len(archs))
    return ProxyStudy(list(archs), top1, scores, {k: v / n for k, v in spent.items()}, eval_s / n)
