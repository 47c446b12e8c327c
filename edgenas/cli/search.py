"""``edgenas search``: the best subnet for a device or group, verified on the device(s)."""

from __future__ import annotations

from pathlib import Path

import click

from edgenas.cli.common import Workspace, echo, human, table
from edgenas.records.store import open_store
from edgenas.search.problem import Constraints

# edgenas.search.strategies imports numpy only, but the CLI lists the names without importing it
STRATEGY_NAMES = ("evolution", "ofa-evolution", "nsga2", "random", "tpe", "reinforce",
                  "gradient")


@click.command("search")
@click.argument("ckpt", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--device", "devices", multiple=True, help="Device name (repeatable).")
@click.option("--group", "groups", multiple=True,
              help="Device group; the constraint holds on every device in it (repeatable).")
@click.option("--latency-ms", type=float, default=None, help="Latency budget on every device.")
@click.option("--max-size-kb", type=float, default=None, help="Model size limit (estimated).")
@click.option("--max-macs", type=float, default=None, help="MAC limit, e.g. 5e6.")
@click.option("--max-memory-mb", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Peak memory budget of the model on every device, in MiB (what loading and "
                   "running it adds to the process; docs/search.md). Needs each device's memory "
                   "predictor (`edgenas predictor fit`); verified candidates are held to their "
                   "measured peak.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "int8"]), default="auto",
              show_default=True,
              help="auto: per device, whichever precision measured faster on the subnets near the "
                   "latency budget.")
@click.option("--objective", type=click.Choice(["accuracy", "pareto"]), default="accuracy",
              show_default=True, help="Best accuracy under the constraints, or a Pareto front.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--verify-top", type=click.IntRange(min=0), default=3, show_default=True,
              help="Measure this many top candidates on the device(s) and re-rank on them.")
@click.option("--strategy", type=click.Choice(STRATEGY_NAMES), default=None,
              help="Search strategy (docs/search.md) spending --budget accuracy evaluations "
              "[default: ofa-evolution over --population x --generations; with --budget or "
              "--accuracy other than predictor, the measured winner: ofa-evolution up to 100 "
              "evaluations, evolution above]. gradient: ProxylessNAS-style search of the supernet "
              "itself on its training data, expected latency in the loss (about 20 s).")
@click.option("--budget", type=click.IntRange(min=1), default=None,
              help="Accuracy evaluations to spend [default: 1000 with the predictor (100 for tpe, "
              "whose cost per trial grows with the trials: 1000 took minutes), 100 with a proxy, "
              "40 with the supernet; gradient spends at most 25, its time is its training "
              "steps].")
@click.option("--accuracy", "accuracy", default="predictor", show_default=True,
              help="Accuracy estimate: predictor (fitted by `predictor fit-accuracy`), "
              "proxy:synflow|grad_norm|snip|naswot|jacob_cov (zero-cost, freshly initialised "
              "subnets), or supernet (BN-recalibrated top-1; slow).")
@click.option("--data", "data_source", default=None,
              help="Images for a proxy's minibatch, the supernet's top-1 or the gradient "
              "strategy's training [default: the data set CKPT trained on].")
@click.option("--population", type=click.IntRange(min=4), default=60, show_default=True)
@click.option("--generations", type=click.IntRange(min=1), default=12, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("search"), show_default=True,
              help="Writes search.json and pareto.png here.")
@click.pass_obj
def search_cmd(ws: Workspace, ckpt: Path, devices: tuple[str, ...], groups: tuple[str, ...],
               latency_ms: float | None, max_size_kb: float | None, max_macs: float | None,
               max_memory_mb: float | None, precision: str, objective: str, threads: int,
               verify_top: int, strategy: str | None, budget: int | None, accuracy: str,
               data_source: str | None, population: int, generations: int, seed: int,
               out_dir: Path) -> None:
    """Search CKPT's space for the most accurate subnet within the budget on the device(s).

    Needs the supernet's accuracy predictor (`edgenas predictor fit-accuracy`) and a latency
    predictor per device (`edgenas measure`, then `edgenas predictor fit`). An impossible
    budget fails at once with the tightest achievable value.
    """
    from edgenas.search.job import run_search  # lazy: torch stays out of CLI start-up

    targets = list(devices) + list(groups)
    if not targets:
        raise click.UsageError("give --device NAME or --group G")
    if not (accuracy in ("predictor", "supernet") or accuracy.startswith("proxy:")):
        raise click.BadParameter(f"{accuracy!r}: use predictor, proxy:NAME or supernet",
                                 param_hint="--accuracy")
    constraints = Constraints(latency_ms, max_size_kb, max_macs, max_memory_mb)
    with open_store(ws.ensure()) as store:
        outcome = run_search(store, ws.home, ckpt, targets, constraints, precision=precision,
                             objective=objective, threads=threads, out_dir=out_dir,
                             verify_top=verify_top, population=population,
                             generations=generations, seed=seed, strategy=strategy,
                             budget=budget, accuracy=accuracy, data_source=data_source)
    r = outcome.result
    errs = r["predictors"]["latency"]
    echo(f"{r['strategy'] or 'ofa-evolution'}: {r['evaluations']} evaluations of "
               f"{r['accuracy_source']} accuracy")
    echo(f"searched {r['space']} for {', '.join(r['precision'])} "
               f"({constraints.describe()}); precision: "
               + ", ".join(f"{d} {p} ({r['precision_reason'][d]})" for d, p in
                           r["precision"].items()))
    rows = []
    for c in r["verified"] or r["front"][:10]:
        pred = ", ".join(f"{v:.3f}±{100 * errs[d]['p90_rel_error']:.0f}%"
                         for d, v in c["latency_ms"].items())
        meas = ", ".join(f"{v:.3f}" for v in c["measured_ms"].values()) or "-"
        row = [c["arch"], f"{c['accuracy']:.2%}", pred, meas, f"{c['size_kb']:.0f}",
               human(c["macs"])]
        if max_memory_mb is not None:
            row += [f"{c['memory_mb']:.1f}" if c.get("memory_mb") is not None else "-",
                    ", ".join(f"{v:.1f}" for v in (c.get("measured_memory_mb") or {}).values())
                    or "-"]
        rows.append(row)
    memory_headers = ["pred. MiB", "measured MiB"] if max_memory_mb is not None else []
    echo(table(["arch", "pred. top-1", "pred. ms", "measured ms", "size KB", "MACs",
                *memory_headers], rows))
    chosen = r["chosen"]
    if chosen:
        echo(f"chosen: {chosen['arch']}")
        if chosen.get("measured_within_budget") is False:
            echo("warning: no verified candidate measured within the latency budget on "
                       "the device; the chosen one missed it least (see search.json)", err=True)
        if chosen.get("measured_within_memory_budget") is False:
            echo("warning: no verified candidate measured within the memory budget on the "
                 "device; the chosen one missed it least (see search.json)", err=True)
        echo(f"next:   edgenas export {ckpt} --arch {chosen['arch']} --precision "
                   f"{next(iter(r['precision'].values()))} --search {outcome.path} --out model/")
    echo(f"wrote {outcome.path} and {out_dir / 'pareto.png'}")
