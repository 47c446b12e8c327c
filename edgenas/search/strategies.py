"""Search strategies behind one interface: ``run_strategy(searcher, name, budget=N)``.

Every strategy spends the same currency, the searcher's *accuracy evaluations* (constraint checks
are free: latency, size and MACs come from tables), and every one returns the searcher's feasible
candidates best first, so they can be compared at equal cost (``benchmarks/search_strategies.py``):

* ``evolution`` — regularized (aging) evolution (Real et al., 2019): tournament selection from a
  population that forgets its oldest members, so no lucky early candidate dominates for ever.
* ``ofa-evolution`` — OFA's evolution: the top quarter of the population breeds by mutation and
  crossover (:meth:`Searcher.evolution`).
* ``nsga2`` — NSGA-II (:meth:`Searcher.nsga2`): a whole accuracy/latency front for the budget.
* ``random`` — uniform samples that meet the constraints; the baseline every method must beat.
* ``tpe`` — Bayesian optimisation with optuna's tree-structured Parzen estimator, with the
  constraint violation given to TPE's constraint model (optuna is imported only here).
* ``reinforce`` — a REINFORCE controller: one categorical distribution per choice (a factorised
  policy rather than an RNN: the choices of this space are nearly independent, and it trains in
  numpy), rewarded with the accuracy, a moving-average baseline, infeasible samples punished.
* ``gradient`` — ProxylessNAS/FBNet-style relaxation over the supernet itself, the expected latency
  from the per-block tables in the loss (:mod:`edgenas.search.gradient`; needs ``net=`` and
  ``data=``, and imports torch only when it runs).

Every strategy reports progress on long work (``progress=``, :mod:`edgenas.core.progress`: a line
every few seconds with the evaluations spent and the best so far), and ``seconds=`` stops any of
them at a wall-time limit (how ``benchmarks/search_strategies.py`` compares them at equal time).
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from edgenas.core.errors import EdgeNASError
from edgenas.core.progress import ProgressFn, Reporter, reporter
from edgenas.search.problem import (
    Candidate,
    Score,
    predictor_score,
    rank_and_crowd,
    tournament,
)
from edgenas.search.searcher import Searcher
from edgenas.space.spec import SearchSpace

log = logging.getLogger(__name__)

# What benchmarks/search_strategies.py measured (docs/search.md, mbv3-tiny, 5 seeds): with few
# evaluations (50) OFA's evolution (the top quarter breeds) finds the best subnet, with more (200)
# aging evolution; TPE comes second or third in every row and costs seconds per search, where the
# evolutions cost milliseconds.
DEFAULT_STRATEGY = "evolution"
SMALL_BUDGET_STRATEGY = "ofa-evolution"
SMALL_BUDGET = 100


def default_strategy(budget: int) -> str:
    """The strategy that won at this many evaluations in ``benchmarks/search_strategies.py``:
    ``ofa-evolution`` up to 100 (it exploits its best quarter at once, which pays when there is
    little budget to explore), then ``evolution`` (aging keeps exploring, which pays later)."""
    return SMALL_BUDGET_STRATEGY if budget <= SMALL_BUDGET else DEFAULT_STRATEGY
ACCURACY_SOURCES = ("predictor", "proxy:NAME", "supernet")
# evaluations a search spends by default: accuracy predictions cost microseconds, a proxy about a
# second on a laptop, a supernet evaluation (BN recalibration + validation) several
DEFAULT_BUDGET = {"predictor": 1000, "proxy": 100, "supernet": 40}
# ... except where a strategy's own cost per evaluation would make that slow: optuna's TPE costs
# milliseconds per trial, growing with the trials, so 1000 predictor evaluations took 5½–10 min on
# a loaded 2-core machine, 200 took 10-35 s and 50 took 1-4 s (benchmarks/search_strategies.py);
# on that machine at load 7 it spent 94 in 15 s (a tight budget's infeasible trials cost time
# too), so 100 keeps it near 15 s.  (The gradient strategy's time is set by its steps:
# edgenas.search.gradient.DEFAULT_SECONDS.)
STRATEGY_BUDGET = {"tpe": {"predictor": 100}}


def make_score(kind: str, space: SearchSpace, *, predictor: Any = None, net: Any = None,
               data: Any = None, num_classes: int = 10, seed: int = 0) -> Score:
    """The search's accuracy estimate: ``predictor`` (the fitted accuracy predictor),
    ``proxy:NAME`` (a zero-cost proxy of freshly initialised subnets; needs only the space and
    one minibatch) or ``supernet`` (BN-recalibrated top-1 of the subnet inside the supernet)."""
    if kind == "predictor":
        if predictor is None:
            raise EdgeNASError("--accuracy predictor needs the supernet's accuracy predictor "
                               "(`edgenas predictor fit-accuracy CKPT`)")
        return predictor_score(space, predictor)
    if kind.startswith("proxy:"):
        from edgenas.predictors.proxies import (  # lazy: torch stays out of CLI start-up
            SubnetProxies,
            check_names,
        )

        name = kind.partition(":")[2]
        check_names([name])
        if data is None:
            raise EdgeNASError(f"--accuracy {kind} needs images for its minibatch (--data)")
        proxies = SubnetProxies(space, num_classes, data, net=net, weights="init", seed=seed)
        return Score(proxies.score_fn(name), name=kind)
    if kind == "supernet":
        if net is None or data is None:
            raise EdgeNASError("--accuracy supernet needs the supernet and its data set")
        from edgenas.training.evaluate import evaluate_archs  # lazy: torch stays out of CLI start-up

        return Score(lambda archs: [r.top1 for r in evaluate_archs(net, archs, data)],
                     name="supernet")
    raise EdgeNASError(f"unknown accuracy source {kind!r} (one of "
                       f"{', '.join(ACCURACY_SOURCES)})")


def default_budget(kind: str, strategy: str | None = None) -> int:
    source = "proxy" if kind.startswith("proxy:") else kind
    return STRATEGY_BUDGET.get(strategy or "", {}).get(source, DEFAULT_BUDGET[source])


class _Ticker:
    """A running strategy's progress line (at most every ``every`` seconds) and wall-time limit:
    past ``deadline`` it ends the search by spending the searcher's budget."""

    def __init__(self, searcher: Searcher, name: str, say: Reporter, deadline: float | None,
                 every: float = 5.0) -> None:
        self.searcher, self.name, self.say = searcher, name, say
        self.deadline, self.every = deadline, every
        self.started = self.last = time.monotonic()
        self.total = searcher.budget

    def __call__(self) -> None:
        now = time.monotonic()
        if (self.deadline is not None and now >= self.deadline
                and self.searcher.best_accuracy() == self.searcher.best_accuracy()):  # not NaN
            # past the time with a feasible candidate: every loop ends on remaining == 0
            self.searcher.budget = self.searcher.evaluations
        if now - self.last >= self.every:
            self.last = now
            self.report(now)

    def report(self, now: float) -> None:
        s = self.searcher
        best = s.best_accuracy()
        self.say(self.name, f"{s.evaluations} evaluations, best {best:.4f} "
                 f"({now - self.started:.0f} s)", done=s.evaluations,
                 total=max(self.total or 0, s.evaluations))


_TICKER: contextvars.ContextVar[_Ticker | None] = contextvars.ContextVar("edgenas_search_ticker",
                                                                         default=None)


def _tick() -> None:
    """Called from every strategy's loop: progress and the wall-time limit."""
    ticker = _TICKER.get()
    if ticker is not None:
        ticker()


@contextmanager
def _ticking(ticker: _Ticker) -> Iterator[_Ticker]:
    token = _TICKER.set(ticker)
    try:
        yield ticker
    finally:
        _TICKER.reset(token)


def run_strategy(searcher: Searcher, name: str, budget: int | None = None,
                 limit: int = 500, *, progress: bool | ProgressFn | Reporter | None = None,
                 seconds: float | None = None, **options: Any) -> list[Candidate]:
    """Run strategy ``name`` for ``budget`` more accuracy evaluations; feasible candidates best
    first (at most ``limit``).  ``progress``: where to report on work that takes more than a few
    seconds (:func:`edgenas.core.progress.reporter`'s argument); ``seconds``: stop after that much
    wall time even if evaluations are left."""
    if name not in STRATEGIES:
        raise EdgeNASError(f"unknown search strategy {name!r} (one of {', '.join(STRATEGIES)})")
    if budget is not None:
        if budget < 1:
            raise EdgeNASError(f"the evaluation budget must be at least 1, got {budget}")
        searcher.budget = searcher.evaluations + budget
    if searcher.budget is None:
        raise EdgeNASError("give the strategy an evaluation budget")
    say = progress if isinstance(progress, Reporter) else reporter(progress)
    deadline = None if seconds is None else time.monotonic() + seconds
    with _ticking(_Ticker(searcher, name, say, deadline)) as ticker:
        if name == "gradient":
            options.setdefault("progress", say)
            if seconds is not None:
                options.setdefault("seconds", seconds)
        STRATEGIES[name](searcher, **options)
        if time.monotonic() - ticker.started >= ticker.every:
            ticker.report(time.monotonic())  # long work ends with its final count
    return searcher.ranked(limit)


def _stalled(searcher: Searcher, before: int, misses: int, patience: int) -> tuple[bool, int]:
    """(stop?, misses): a strategy that proposes only known or infeasible archs ``patience``
    times in a row has converged (or cannot find feasible archs) and stops early."""
    _tick()
    misses = 0 if searcher.evaluations > before else misses + 1
    return misses >= patience or searcher.remaining == 0, misses


def random_search(searcher: Searcher, batch: int = 256, patience: int = 50) -> None:
    misses = 0
    while searcher.remaining:
        before = searcher.evaluations
        searcher.propose(searcher.codec.sample(batch, searcher.np_rng))
        stop, misses = _stalled(searcher, before, misses, patience)
        if stop:
            break


def _population(searcher: Searcher, population: int | None, most: int) -> int:
    """A population that leaves most of the budget to breeding: a fifth of it, 10..``most``."""
    if population is not None:
        return population
    return int(np.clip((searcher.remaining or most * 5) // 5, 10, most))


def aging_evolution(searcher: Searcher, population: int | None = None, sample: int | None = None,
                    batch: int = 8, mutate_prob: float = 0.1, patience: int = 200) -> None:
    """Regularized evolution; ``batch`` children per step (1 is the paper's sequential form; a
    few at once vectorise the step and change little with a population of 64)."""
    rng, codec = searcher.np_rng, searcher.codec
    population = _population(searcher, population, 64)
    sample = sample or max(2, population // 4)
    seeds = searcher.feasible_seeds()
    pop = searcher.score_rows(seeds[:population])
    pop = pop[pop >= 0]
    if len(pop) < population and len(pop):
        start = searcher._enc[pop]
        extra = searcher.feasible_children(
            lambda k: codec.mutate(start[rng.integers(0, len(start), k)], 0.3, rng),
            population - len(pop))
        more = searcher.score_rows(extra)
        pop = np.concatenate([pop, more[more >= 0]])
    misses = 0
    while searcher.remaining and len(pop):
        before = searcher.evaluations
        acc = searcher._acc[pop]

        def make(k: int, pop: np.ndarray = pop, acc: np.ndarray = acc) -> np.ndarray:
            picks = rng.integers(0, len(pop), (k, min(sample, len(pop))))
            winners = pop[picks[np.arange(k), np.argmax(acc[picks], axis=1)]]
            return codec.mutate(searcher._enc[winners], mutate_prob, rng)

        children = searcher.score_rows(searcher.feasible_children(make, batch))
        pop = np.concatenate([pop, children[children >= 0]])[-population:]  # the oldest die
        stop, misses = _stalled(searcher, before, misses, patience)
        if stop:
            break


def ofa_evolution(searcher: Searcher, population: int | None = None, **kwargs: Any) -> None:
    evolve(searcher, population=_population(searcher, population, 100), generations=None,
                       **kwargs)


def nsga2(searcher: Searcher, population: int | None = None, **kwargs: Any) -> None:
    nsga2_front(searcher, population=_population(searcher, population, 100), generations=None,
                   **kwargs)


def reinforce(searcher: Searcher, batch: int = 32, lr: float = 0.2, baseline_decay: float = 0.9,
              patience: int = 50) -> None:
    """REINFORCE with a factorised categorical policy over the genes of :class:`ArchCodec`."""
    rng, codec = searcher.np_rng, searcher.codec
    n_genes, width = codec.n_genes, int(codec.choices.max())
    valid = np.arange(width)[None, :] < codec.choices[:, None]
    logits = np.where(valid, 0.0, -np.inf)
    baseline: float | None = None
    worst = np.inf
    misses = 0
    while searcher.remaining:
        before = searcher.evaluations
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        cum = np.cumsum(p, axis=1)
        u = rng.random((batch, n_genes))
        enc = np.minimum((u[:, :, None] > cum[None, :, :]).sum(axis=2), codec.choices - 1)
        rows, ok = searcher.propose(enc)
        scored = rows >= 0
        reward = np.full(batch, np.nan)
        reward[scored] = searcher._acc[rows[scored]]
        if scored.any():
            worst = min(worst, float(np.nanmin(reward)))
        floor = worst if np.isfinite(worst) else 0.0
        # Infeasible: worse than the worst feasible arch seen, the more so the further past the
        # constraints — under a tight budget almost every sample is infeasible at first, and a flat
        # penalty gives the policy no direction to the feasible region (it stalled after 2-11
        # evaluations where the others spent their budget).
        if not ok.all():  # (a batch with none infeasible has nothing to price)
            reward[~ok] = floor - searcher.overshoot(searcher.costs(enc[~ok]))
        keep = ~np.isnan(reward)  # feasible but past the budget: no signal
        if keep.sum() >= 2:
            r = reward[keep]
            baseline = float(r.mean()) if baseline is None else (
                baseline_decay * baseline + (1 - baseline_decay) * float(r.mean()))
            adv = (r - baseline) / (r.std() + 1e-8)
            onehot = np.zeros((int(keep.sum()), n_genes, width))
            np.put_along_axis(onehot, enc[keep][:, :, None], 1.0, axis=2)
            used = _used_genes(searcher, enc[keep])
            grad = (adv[:, None, None] * (onehot - p[None]) * used[:, :, None]).mean(axis=0)
            logits = np.where(valid, logits + lr * grad, -np.inf)
        stop, misses = _stalled(searcher, before, misses, patience)
        if stop:
            break


def _used_genes(searcher: Searcher, enc: np.ndarray) -> np.ndarray:
    """(N, genes) 1.0 where a gene shapes the network (unused slots' genes get no credit)."""
    codec = searcher.codec
    active = codec.active(enc).reshape(len(enc), -1).astype(np.float64)
    head = np.ones((len(enc), codec.k0))
    return np.concatenate([head, active, active], axis=1)


def tpe(searcher: Searcher, startup: int | None = None, patience: int = 200,
        multivariate: bool = False) -> None:
    """Optuna's TPE, ask-and-tell, over the choices each arch actually uses (conditional
    parameters: a slot's kernel and expand exist only when the stage is deep enough)."""
    try:
        import optuna
    except ImportError:  # pragma: no cover - optuna is in requirements.txt
        raise EdgeNASError("the tpe strategy needs optuna (pip install optuna)") from None
    codec = searcher.codec
    budget = searcher.remaining or 0
    startup = startup if startup is not None else max(10, min(50, budget // 10))
    optuna_log = logging.getLogger("optuna")
    level = optuna_log.level
    optuna_log.setLevel(logging.WARNING)  # one INFO line per trial otherwise; restored below
    try:
        sampler = optuna.samplers.TPESampler(
            seed=int(searcher.np_rng.integers(2**31)), n_startup_trials=startup,
            multivariate=multivariate)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        worst, misses = np.inf, 0
        n_dev = len(searcher.devices)
        while searcher.remaining:
            before = searcher.evaluations
            trial = study.ask()
            enc = np.zeros((1, codec.n_genes), dtype=np.int64)
            enc[0, 0] = trial.suggest_categorical("r", list(range(len(codec.res))))
            for s in range(codec.stages):
                d = trial.suggest_categorical(f"d{s}", list(range(len(codec.depths))))
                enc[0, 1 + s] = d
                for m in range(int(codec.depths[d])):
                    g = s * codec.slots + m
                    enc[0, codec.k0 + g] = trial.suggest_categorical(
                        f"k{s}.{m}", list(range(len(codec.kernels))))
                    enc[0, codec.e0 + g] = trial.suggest_categorical(
                        f"e{s}.{m}", list(range(len(codec.expands))))
            cost = searcher.costs(enc)
            violation = _violation(searcher, cost[0], n_dev)
            trial.set_constraint("latency_size_macs", violation)
            if violation > 0:
                study.tell(trial, worst if np.isfinite(worst) else 0.0)
            else:
                row = searcher.score_rows(enc, cost)[0]
                if row < 0:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    break
                value = float(searcher._acc[row])
                worst = min(worst, value)
                study.tell(trial, value)
            stop, misses = _stalled(searcher, before, misses, patience)
            if stop:
                break
    finally:
        optuna_log.setLevel(level)


def _violation(searcher: Searcher, cost: np.ndarray, n_dev: int) -> float:
    """How far a cost row is outside the constraints (relative; 0 when feasible)."""
    k = searcher.constraints
    v = 0.0
    if k.latency_ms is not None and n_dev:
        v = max(v, float(cost[:n_dev].max()) / k.latency_ms - 1)
    if k.max_size_kb is not None:
        v = max(v, float(cost[n_dev]) / k.max_size_kb - 1)
    if k.max_macs is not None:
        v = max(v, float(cost[n_dev + 1]) / k.max_macs - 1)
    if k.max_memory_mb is not None:
        memory = float(cost[n_dev + 2])
        v = max(v, memory / k.max_memory_mb - 1 if np.isfinite(memory) else 1e6)
    return v


def gradient(searcher: Searcher, **options: Any) -> None:
    """:func:`edgenas.search.gradient.gradient_search` (imported here: it needs torch)."""
    from edgenas.search.gradient import gradient_search  # lazy: torch stays out of CLI start-up

    gradient_search(searcher, **options)


STRATEGIES: dict[str, Callable[..., None]] = {
    "evolution": aging_evolution,
    "ofa-evolution": ofa_evolution,
    "nsga2": nsga2,
    "random": random_search,
    "tpe": tpe,
    "reinforce": reinforce,
    "gradient": gradient,
}


def evolve(searcher: Searcher, population: int = 100, generations: int | None = 20,
              parent_ratio: float = 0.25, mutation_ratio: float = 0.5,
              mutate_prob: float = 0.1, limit: int = 500) -> list[Candidate]:
    """OFA's evolution: best feasible candidates by accuracy, best first.  With a ``budget``
    on the searcher, ``generations=None`` runs until it is spent."""
    rng = searcher.np_rng
    seeds = searcher.feasible_seeds()  # every feasible seed is scored; the best start
    if searcher.budget is not None:  # ... unless that would spend a small budget on seeds
        seeds = seeds[:max(population, min(len(seeds), (searcher.remaining or 0) // 10))]
    if len(seeds) < population:
        extra = searcher.feasible_children(
            lambda k: searcher.codec.mutate(seeds[rng.integers(0, len(seeds), k)], 0.3, rng),
            population - len(seeds))
        seeds = np.concatenate([seeds, extra])
    pop_rows = np.unique(searcher.score_rows(seeds))
    pop_rows = pop_rows[pop_rows >= 0]
    pop_rows = pop_rows[np.argsort(-searcher._acc[pop_rows], kind="stable")][:population]
    n_parents = max(2, int(population * parent_ratio))
    n_children = population - n_parents
    n_mut = int(n_children * mutation_ratio)
    gen = 0
    while (generations is None or gen < generations) and not searcher._spent() and len(pop_rows):
        _tick()
        gen += 1
        parents = pop_rows[np.argsort(-searcher._acc[pop_rows], kind="stable")][:n_parents]
        penc = searcher._enc[parents]
        mutants = searcher.feasible_children(
            lambda k, p=penc: searcher.codec.mutate(p[rng.integers(0, len(p), k)], mutate_prob,
                                                rng), n_mut)
        crossed = searcher.feasible_children(
            lambda k, p=penc: searcher.codec.crossover(p[rng.integers(0, len(p), k)],
                                                   p[rng.integers(0, len(p), k)], rng),
            n_children - n_mut)
        children = searcher.score_rows(np.concatenate([mutants, crossed]))
        pop_rows = np.concatenate([parents, children[children >= 0]])
    return searcher.ranked(limit)

# ---- multi objective


def nsga2_front(searcher: Searcher, population: int = 100, generations: int | None = 20,
          with_size: bool = False, mutate_prob: float = 0.1) -> list[Candidate]:
    """The feasible Pareto front (accuracy ↑, latency ↓[, size ↓]), by latency."""
    rng = searcher.np_rng
    seeds = searcher.feasible_seeds()
    pop = seeds[rng.permutation(len(seeds))[:population]]
    if len(pop) < population:
        pop = np.concatenate([pop, searcher.feasible_children(
            lambda k: searcher.codec.sample(k, rng), population - len(pop))])
    pop_rows = searcher.score_rows(pop)
    pop_rows = np.unique(pop_rows[pop_rows >= 0])
    gen = 0
    while (generations is None or gen < generations) and not searcher._spent() and len(pop_rows):
        _tick()
        gen += 1
        rank, crowd = rank_and_crowd(searcher._objectives(pop_rows, with_size))
        penc = searcher._enc[pop_rows]

        def make(k: int, rank: np.ndarray = rank, crowd: np.ndarray = crowd,
                 penc: np.ndarray = penc) -> np.ndarray:
            a = tournament(rng, rank, crowd, k)
            b = tournament(rng, rank, crowd, k)
            return searcher.codec.mutate(searcher.codec.crossover(penc[a], penc[b], rng),
                                     mutate_prob, rng)

        children = searcher.score_rows(searcher.feasible_children(make, population))
        merged = np.unique(np.concatenate([pop_rows, children[children >= 0]]))
        rank, crowd = rank_and_crowd(searcher._objectives(merged, with_size))
        order = np.lexsort((-crowd, rank))
        pop_rows = merged[order[:population]]
    return searcher.front(with_size)
