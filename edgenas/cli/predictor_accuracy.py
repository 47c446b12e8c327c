"""``edgenas predictor fit-accuracy``: the accuracy predictor of a supernet."""

from __future__ import annotations

import os
from pathlib import Path

import click

from edgenas.cli.common import Workspace
from edgenas.predictors.accuracy import fit_and_save


@click.command("fit-accuracy")
@click.argument("ckpt", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--samples", type=click.IntRange(min=8), default=100, show_default=True,
              help="Subnets to evaluate (smallest, largest, then random); stored and resumable.")
@click.option("--data", default=None, help="Data set [default: the one the supernet trained on].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_obj
def fit_accuracy_cmd(ws: Workspace, ckpt: Path, samples: int, data: str | None,
                     seed: int) -> None:
    """Evaluate sampled subnets of CKPT (BN-recalibrated top-1) and fit the accuracy predictor.

    Evaluations are stored in the workspace as they finish: an interrupted run resumes and
    never evaluates an arch twice. Prints held-out RMSE and Spearman (5-fold). Under torchrun
    (e.g. `torchrun --nproc-per-node 4 $(which edgenas) predictor fit-accuracy ...`) the subnets
    are split between the processes and the results gathered once at the end.
    """

    stats: dict[str, object] = {}
    pred, path = fit_and_save(ws.ensure(), ckpt, samples, data, seed,
                              lambda i, n, a, top1: click.echo(
                                  f"\r  evaluated {i}/{n}  {a}  top-1 {top1:.2%}   ", nl=False,
                                  err=True), stats)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 reports
    click.echo("", err=True)
    if int(stats.get("world", 1)) > 1:  # type: ignore[call-overload]
        click.echo(f"evaluated in {stats['world']} processes: "
                   + "+".join(str(n) for n in stats["per_rank"])  # type: ignore[attr-defined]
                   + " new subnets")
    q = pred.quality
    click.echo(f"accuracy predictor from {pred.samples} subnets: held-out RMSE "
               f"{100 * q['rmse']:.2f} points, MAE {100 * q['mae']:.2f} points, Spearman "
               f"{q['spearman']:.3f} ({int(q['folds'])}-fold) -> {path}")
