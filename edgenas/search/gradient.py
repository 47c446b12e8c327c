"""Gradient-based search over the supernet (ProxylessNAS / FBNet style), latency as a loss term.

Every choice of :class:`~edgenas.search.problem.ArchCodec` but the resolution — each stage's
depth, each slot's kernel and expand ratio — gets a vector of architecture logits.  A training
step samples one subnet from them with the straight-through Gumbel-softmax: the forward pass runs
*exactly* that subnet through the supernet's shared weights (the choice weights are one-hot in
value), while the backward pass reaches every choice through the soft weights:

* kernel: the depthwise filter is ``Σ_k g_k · pad(W_k)``, every kernel zero-padded to the largest
  (a convolution is linear in its filter, so this is the mixture of the choices' outputs);
* expand: the middle channels are multiplied by ``Σ_e g_e · mask_e`` (the first ``mid(e)``
  channels; squeeze-excite's hidden channels likewise), as FBNetV2 masks channels;
* depth: a stage's output is ``Σ_d g_d · x_d``, the output after each allowed number of blocks.

Batch norm uses the batch's statistics (a subnet's own, as BN recalibration would give it) and
leaves the supernet's running statistics alone: the search runs on a copy.  The resolution is
sampled each step and its logits learnt by REINFORCE on the step's loss (a mixture over
resolutions would cost one forward pass per resolution).

The loss is ``CE + λ · cost``: ``cost`` is the *expected* cost under the softmax of the logits,
read from the searcher's additive tables (:class:`~edgenas.search.problem.AdditiveTable`, the
per-block costs of each device class's latency predictor, and of size and MACs), divided by its
limit, and for several constraints (a group's devices, size, MACs) their maximum or a smooth
maximum.  ``λ`` is set by a short bisection: each round searches from fresh logits, its argmax
subnet is checked against the constraints, and λ goes up after an infeasible result and down
after a feasible one.  Every round's argmax subnet and a few samples of its distribution are
handed to the searcher (its accuracy estimate ranks them, the constraint check is exact), so the
result is ranked and verified like every other strategy's.  The supernet's weights are frozen by
default; ``train_weights=True`` alternates a weight step on the sampled subnet with each
architecture step, as DARTS does (on the copy).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgenas.core.errors import EdgeNASError
from edgenas.core.progress import ProgressFn, Reporter, reporter
from edgenas.search.searcher import Searcher
from edgenas.space.plan import mid_channels, se_channels
from edgenas.supernets.layers import activate, h_sigmoid

# What a default run costs: the steps per round are sized from the first steps' time so that the
# whole search (every round) takes about this long (benchmarks/search_strategies.py).
DEFAULT_SECONDS = 20.0
DEFAULT_ROUNDS = 5


@dataclass
class _Logits:
    depth: torch.Tensor  # (stages, n_depths)
    kernel: torch.Tensor  # (stages * slots, n_kernels)
    expand: torch.Tensor  # (stages * slots, n_expands)
    res: torch.Tensor  # (n_res,)

    def params(self) -> list[torch.Tensor]:
        return [self.depth, self.kernel, self.expand, self.res]


def _bn(x: torch.Tensor, bn: torch.nn.BatchNorm2d) -> torch.Tensor:
    """Batch norm with the batch's statistics; the running statistics are not touched."""
    return F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)


def _st_gumbel(logits: torch.Tensor, tau: float, gen: torch.Generator) -> torch.Tensor:
    """One-hot in value, the Gumbel-softmax's gradient (straight-through), per row."""
    u = torch.rand(logits.shape, generator=gen).clamp_(1e-9, 1 - 1e-9)
    soft = torch.softmax((logits - torch.log(-torch.log(u))) / tau, dim=-1)
    hard = F.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


class RelaxedSupernet:
    """The supernet's forward pass with every block's choices mixed by choice weights (see the
    module doc); one-hot weights give exactly that subnet's output."""

    def __init__(self, net: Any, codec: Any) -> None:
        self.net, self.codec = net, codec
        self.kernels = [int(k) for k in codec.kernels]
        self.max_kernel = max(self.kernels)
        self.depths = [int(d) for d in codec.depths]
        self.mid_masks, self.se_masks = [], []
        for stage in net.stages:
            for block in stage:
                mids = [mid_channels(block.in_ch, int(e), block.divisor) for e in codec.expands]
                ar = torch.arange(block.max_mid)
                self.mid_masks.append(torch.stack([(ar < m).float() for m in mids]))
                if block.se_reduce is not None:
                    hidden = [se_channels(m, block.se_reduction, block.divisor) for m in mids]
                    ah = torch.arange(block.se_reduce.weight.shape[0])
                    self.se_masks.append(torch.stack([(ah < h).float() for h in hidden]))
                else:
                    self.se_masks.append(None)

    def _block(self, i: int, block: Any, x: torch.Tensor, gk: torch.Tensor,
               ge: torch.Tensor) -> torch.Tensor:
        mask = (ge @ self.mid_masks[i])[None, :, None, None]
        y = activate(_bn(F.conv2d(x, block.expand_conv.weight), block.expand_bn), block.act)
        y = y * mask
        big = self.max_kernel
        weight = sum(gk[j] * F.pad(block.depthwise_weight(k, block.max_mid), [(big - k) // 2] * 4)
                     for j, k in enumerate(self.kernels))
        y = F.conv2d(y, weight, None, block.stride, big // 2, 1, block.max_mid)
        y = activate(_bn(y, block.dw_bn), block.act) * mask
        if block.se_reduce is not None:
            hmask = (ge @ self.se_masks[i])[None, :, None, None]
            s = y.mean((2, 3), keepdim=True)
            s = F.relu(F.conv2d(s, block.se_reduce.weight, block.se_reduce.bias)) * hmask
            y = y * h_sigmoid(F.conv2d(s, block.se_expand.weight, block.se_expand.bias))
        y = _bn(F.conv2d(y, block.project_conv.weight), block.project_bn)
        return x + y if block.residual else y

    def forward(self, x: torch.Tensor, gd: torch.Tensor, gk: torch.Tensor,
                ge: torch.Tensor) -> torch.Tensor:
        """Logits for images ``x``; ``gd`` (stages, depths), ``gk``/``ge`` (stages·slots,
        choices) choice weights in the codec's order."""
        net = self.net
        x = net.first_block(net.stem(x))
        slots = self.codec.slots
        for s, stage in enumerate(net.stages):
            outs = []
            for m, block in enumerate(stage):
                i = s * slots + m
                x = self._block(i, block, x, gk[i], ge[i])
                if m + 1 in self.depths:
                    outs.append(x)
            x = sum(gd[s, j] * outs[j] for j in range(len(outs)))
        x = net.head_expand(x).mean((2, 3), keepdim=True)
        return net.classifier(net.feature_act(net.feature_mix(x)).flatten(1))


class CostModel:
    """The expected cost of the factorised architecture distribution, from the searcher's additive
    tables: one column per constraint (each device's latency, size, MACs), divided by its limit."""

    def __init__(self, searcher: Searcher) -> None:
        codec = searcher.codec
        tables = searcher._build_tables()
        k, cols, names = searcher.constraints, [], []
        if k.latency_ms is not None:
            for d in searcher.devices:
                t = tables.get(f"dev:{d.name}")
                if t is None:
                    raise EdgeNASError(f"the gradient strategy needs a latency predictor that is a "
                                       f"sum of per-block costs; {d.name}'s is not")
                cols.append(t.values[:, 0] / k.latency_ms)
                names.append(f"latency {d.name}")
        size_macs = tables["size_macs"]
        assert size_macs is not None
        if k.max_size_kb is not None:
            cols.append(size_macs.values[:, 0] / k.max_size_kb)
            names.append("size")
        if k.max_macs is not None:
            cols.append(size_macs.values[:, 1] / k.max_macs)
            names.append("MACs")
        self.names = names
        n_r, n_d = len(codec.res), len(codec.depths)
        n_k, n_e, S, M = len(codec.kernels), len(codec.expands), codec.stages, codec.slots
        v = torch.tensor(np.stack(cols, axis=1) if cols else np.zeros((codec.n_entries() + 1, 0)),
                         dtype=torch.float32)
        self.base = v[:n_r]  # (R, C)
        self.depth = v[n_r:n_r + n_r * S * n_d].reshape(n_r, S, n_d, -1)
        self.block = v[n_r + n_r * S * n_d:codec.n_entries()].reshape(n_r, S, M, n_k, n_e, -1)
        # used[j, m]: depth choice j uses slot m
        self.used = torch.tensor(codec.depths[:, None] > np.arange(M)[None, :], dtype=torch.float32)
        self.S, self.M = S, M

    @property
    def empty(self) -> bool:
        return not self.names

    def expected(self, lg: _Logits) -> torch.Tensor:
        """(constraints,) expected cost / limit under softmax(logits)."""
        pr = torch.softmax(lg.res, -1)
        pd = torch.softmax(lg.depth, -1)  # (S, D)
        pk = torch.softmax(lg.kernel, -1).reshape(self.S, self.M, -1)
        pe = torch.softmax(lg.expand, -1).reshape(self.S, self.M, -1)
        p_used = pd @ self.used  # (S, M)
        per_res = (self.base
                   + torch.einsum("sd,rsdc->rc", pd, self.depth)
                   + torch.einsum("sm,smk,sme,rsmkec->rc", p_used, pk, pe, self.block))
        return pr @ per_res


def _combine(cost: torch.Tensor, group: str, tau: float = 0.02) -> torch.Tensor:
    if len(cost) == 1 or group == "max":
        return cost.max()
    return tau * torch.logsumexp(cost / tau, 0)  # a smooth maximum (at most tau·log n above)


def gradient_search(searcher: Searcher, net: Any = None, data: Any = None, *,
                    seconds: float | None = DEFAULT_SECONDS, steps: int | None = None,
                    rounds: int = DEFAULT_ROUNDS, batch_size: int = 64, lr: float = 0.1,
                    tau: float = 1.0, lam: float = 2.0, samples: int = 4,
                    group: str = "smoothmax", train_weights: bool = False,
                    weight_lr: float = 0.005, progress: bool | ProgressFn | Reporter | None = None,
                    ) -> None:
    """Search ``net`` (a :class:`~edgenas.supernets.mbv3.MobileNetV3Supernet` of the searcher's
    space) on ``data``'s training images; see the module doc.

    ``steps`` architecture steps per round (default: as many as fit ``seconds`` over all
    ``rounds``, timed on the first steps, at least 5), ``rounds`` of the λ bisection starting at
    ``lam`` (high, so that the first round's subnet usually fits and a short search still has a
    feasible answer; λ is then quartered until a round misses, then bisected); ``samples``
    subnets drawn from each round's distribution besides its argmax (evaluations of the
    searcher's budget); ``group``: ``smoothmax`` or ``max`` over the
    constraints' normalised expected costs; ``tau`` the Gumbel-softmax temperature."""
    if net is None or data is None:
        raise EdgeNASError("the gradient strategy needs the supernet and its training data "
                           "(net=, data=; `edgenas search` loads the data set CKPT trained on)")
    if group not in ("smoothmax", "max"):
        raise EdgeNASError(f"group must be smoothmax or max, got {group!r}")
    say = progress if isinstance(progress, Reporter) else reporter(progress)
    codec = searcher.codec
    searcher.feasible_seeds()  # an impossible budget fails here with the tightest values
    costs = CostModel(searcher)
    seed = int(searcher.np_rng.integers(2**31))
    work = copy.deepcopy(net).train()
    for p in work.parameters():
        p.requires_grad_(train_weights)
    relaxed = RelaxedSupernet(work, codec)
    weight_opt = (torch.optim.SGD(work.parameters(), lr=weight_lr, momentum=0.9)
                  if train_weights else None)
    n_train = int(data.num_train)
    started = time.monotonic()
    # sized steps also stop at the time (a machine that slows down mid-search); given steps do not
    deadline = None if steps is not None else started + (seconds or DEFAULT_SECONDS)
    lo = hi = None  # the largest λ found infeasible, the smallest found feasible
    lam_now = 0.0 if costs.empty else lam
    rnd = 0
    while rnd < (1 if costs.empty else rounds):
        if searcher.remaining == 0 or (rnd and deadline is not None and time.monotonic() > deadline):
            break
        gen = torch.Generator().manual_seed(seed + rnd)
        lg = _Logits(torch.zeros(codec.stages, len(codec.depths), requires_grad=True),
                     torch.zeros(codec.stages * codec.slots, len(codec.kernels), requires_grad=True),
                     torch.zeros(codec.stages * codec.slots, len(codec.expands), requires_grad=True),
                     torch.zeros(len(codec.res), requires_grad=True))
        opt = torch.optim.Adam(lg.params(), lr=lr)
        baseline: float | None = None
        n_steps = steps if steps is not None else 10**9
        t0 = time.monotonic()
        i = 0
        while i < n_steps and not (deadline is not None and time.monotonic() > deadline):
            if weight_opt is not None:
                with torch.no_grad():
                    gd, gk, ge = (torch.softmax(x, -1) for x in (lg.depth, lg.kernel, lg.expand))
                    gd, gk, ge = (F.one_hot(torch.multinomial(p, 1, generator=gen)[:, 0],
                                            p.shape[-1]).float() for p in (gd, gk, ge))
                    r = int(torch.multinomial(torch.softmax(lg.res, -1), 1, generator=gen))
                x, y = _batch(data, n_train, batch_size, int(codec.res[r]), gen)
                weight_opt.zero_grad(set_to_none=True)
                F.cross_entropy(relaxed.forward(x, gd, gk, ge), y).backward()
                weight_opt.step()
            r = int(torch.multinomial(torch.softmax(lg.res.detach(), -1), 1, generator=gen))
            x, y = _batch(data, n_train, batch_size, int(codec.res[r]), gen)
            gd, gk, ge = (_st_gumbel(t, tau, gen) for t in (lg.depth, lg.kernel, lg.expand))
            ce = F.cross_entropy(relaxed.forward(x, gd, gk, ge), y)
            value = float(ce.detach())
            baseline = value if baseline is None else 0.9 * baseline + 0.1 * value
            loss = ce + (value - baseline) * torch.log_softmax(lg.res, -1)[r]
            if not costs.empty:
                loss = loss + lam_now * _combine(costs.expected(lg), group)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            i += 1
            if steps is None and i == 3 and rnd == 0:
                # as many steps as fit the time; fewer rounds rather than fewer than 10 steps each
                step_time = (time.monotonic() - t0) / 3
                budget_s = (seconds or DEFAULT_SECONDS) - (time.monotonic() - started)
                total = max(0, int(budget_s / step_time))
                if not costs.empty:
                    rounds = int(np.clip(total // 10, 2, rounds))
                n_steps = steps = max(5, total // (rounds if not costs.empty else 1))
        with torch.no_grad():
            enc = _argmax(codec, lg)
            probs = [torch.softmax(t, -1).numpy() for t in (lg.res, lg.depth, lg.kernel,
                                                            lg.expand)]
        enc = np.concatenate([enc, _sample(codec, probs, max(0, samples), searcher.np_rng)])
        enc = enc[:max(1, searcher.remaining or 0)]
        cost = searcher.costs(enc[:1])
        feasible = bool(searcher.feasible_mask(cost)[0])
        searcher.propose(enc)
        over = searcher.overshoot(cost)[0]
        say("gradient", f"round {rnd + 1}: λ {lam_now:.3g} → {codec.decode(enc[:1])[0]} "
            + ("meets the constraints" if feasible else f"{100 * over:.0f} % past them")
            + f" ({i} steps, {time.monotonic() - started:.0f} s)",
            done=rnd + 1, total=1 if costs.empty else rounds)
        if feasible:
            hi = lam_now
        else:
            lo = lam_now
        if lo is not None and hi is not None:
            lam_now = math.sqrt(max(lo, 1e-4) * max(hi, 1e-4))
        elif hi is not None:
            lam_now = hi / 4
        else:
            lam_now = lam_now * 4
        rnd += 1
    if not searcher.ranked(1) and searcher.remaining != 0:
        # no round met the constraints: the cheapest subnets do (feasible_seeds said so)
        seeds = searcher.feasible_seeds()
        searcher.score_rows(seeds[:max(1, min(len(seeds), searcher.remaining or 1))])


def _batch(data: Any, n_train: int, batch_size: int, resolution: int,
           gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randint(0, n_train, (min(batch_size, n_train),), generator=gen)
    return data.train_batch(idx, resolution, gen)


def _argmax(codec: Any, lg: _Logits) -> np.ndarray:
    enc = np.zeros((1, codec.n_genes), dtype=np.int64)
    enc[0, 0] = int(lg.res.argmax())
    enc[0, 1:codec.k0] = lg.depth.argmax(-1).numpy()
    enc[0, codec.k0:codec.e0] = lg.kernel.argmax(-1).numpy()
    enc[0, codec.e0:] = lg.expand.argmax(-1).numpy()
    return enc


def _sample(codec: Any, probs: list[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` subnets drawn from the factorised distribution (res, depth, kernel, expand)."""
    out = np.zeros((n, codec.n_genes), dtype=np.int64)
    if n == 0:
        return out
    cols = [probs[0][None, :]] + list(probs[1]) + list(probs[2]) + list(probs[3])
    for j, p in enumerate(cols):
        p = np.asarray(p, dtype=np.float64).reshape(-1)
        out[:, j] = rng.choice(len(p), size=n, p=p / p.sum())
    return out
