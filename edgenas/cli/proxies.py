"""``edgenas proxies``: how well zero-cost proxies rank a space's subnets, MACs as the baseline."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgenas.cli.common import Workspace, table
from edgenas.predictors.accuracy import sample_for_accuracy
from edgenas.space.spec import SearchSpace, available_spaces

# edgenas.predictors.proxies imports torch; the CLI must start without it (tests check these match)
PROXIES = ("synflow", "grad_norm", "snip", "naswot", "jacob_cov")
BASELINE = "macs"
WEIGHTS = ("init", "inherited")


@click.command("proxies")
@click.argument("ckpt", required=False,
                type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--space", "space_name", default=None,
              help="An untrained space instead of CKPT (" + ", ".join(available_spaces())
              + "): proxies only, compared with MACs.")
@click.option("--samples", type=click.IntRange(min=3), default=20, show_default=True,
              help="Subnets to score (smallest, largest, then random).")
@click.option("--data", "data_source", default=None,
              help="Images for the minibatch and the top-1 [default: CKPT's data set; digits "
              "with --space].")
@click.option("--limit", type=click.IntRange(min=2), default=None,
              help="Use only the first N training images (BN recalibration, minibatch): a quick "
              "look.")
@click.option("--weights", type=click.Choice(WEIGHTS), default="init", show_default=True,
              help="Score freshly initialised subnets (zero-cost) or the supernet's weights.")
@click.option("--proxy", "names", multiple=True, type=click.Choice(PROXIES + (BASELINE,)),
              help="Proxies to compute (repeatable) [default: all].")
@click.option("--batch", type=click.IntRange(min=2), default=64, show_default=True,
              help="Minibatch size.")
@click.option("--classes", type=click.IntRange(min=2), default=None,
              help="Classifier width with --space [default: the data set's].")
@click.option("--finetune-steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also the early-stopping estimate: top-1 after N steps of fine-tuning the "
              "inherited subnet (needs CKPT).")
@click.option("--scratch-steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also top-1 after N steps of training the subnet from scratch (needs CKPT).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Torch threads: a minibatch proxy runs fastest on one (and others spin-wait "
              "for cores on a busy machine).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write every score and correlation here.")
@click.pass_obj
def proxies_cmd(ws: Workspace, ckpt: Path | None, space_name: str | None, samples: int,
                data_source: str | None, limit: int | None, weights: str,
                names: tuple[str, ...], batch: int,
                classes: int | None, finetune_steps: int, scratch_steps: int, threads: int,
                seed: int, json_out: Path | None) -> None:
    """Score sampled subnets of CKPT (or of an untrained --space) with zero-cost proxies.

    With CKPT every subnet is also evaluated (BN-recalibrated top-1) and each proxy's Spearman
    and Kendall correlation with that top-1 is printed, with MACs as the baseline a proxy must
    beat, and what each costs per subnet. With --space there is no top-1: the proxies are
    correlated with MACs only.
    """
    from edgenas.predictors.proxies import (  # lazy: torch stays out of CLI start-up
        SubnetProxies,
        proxy_study,
    )
    from edgenas.training.data import load_data  # lazy: torch stays out of CLI start-up

    if (ckpt is None) == (space_name is None):
        raise click.UsageError("give either CKPT or --space NAME")
    import torch

    torch.set_num_threads(threads)
    net = None
    if ckpt is not None:
        from edgenas.export.api import training_data_source  # lazy: torch stays out of CLI start-up
        from edgenas.supernets.mbv3 import load_supernet  # lazy: torch stays out of CLI start-up

        net = load_supernet(ckpt)
        space = net.space
        source = data_source or training_data_source(net.meta)
        if not source:
            raise click.UsageError(f"{ckpt} does not record its data set; pass --data")
    else:
        space = SearchSpace.load(str(space_name))
        source = data_source or "digits"
    data = load_data(source, size=space.resolutions[-1], limit=limit)
    if net is not None:
        if data.num_classes != net.num_classes:
            raise click.UsageError(f"{source} has {data.num_classes} classes; the supernet "
                                   f"{net.num_classes}")
        data.normalization = dict(net.normalization)
    num_classes = net.num_classes if net is not None else (classes or data.num_classes)
    proxies = SubnetProxies(space, num_classes, data, net=net, weights=weights, batch=batch,
                            seed=seed)
    archs = sample_for_accuracy(space, samples, seed)
    wanted = list(names) or list(PROXIES) + [BASELINE]
    if BASELINE not in wanted:
        wanted.append(BASELINE)
    if (finetune_steps or scratch_steps) and net is None:
        raise click.UsageError("--finetune-steps/--scratch-steps train a supernet's subnets: "
                               "give CKPT")
    study = proxy_study(proxies, archs, wanted, finetune_steps=finetune_steps,
                        scratch_steps=scratch_steps, progress=lambda i, n: click.echo(
        f"\r  scored {i}/{n}", nl=False, err=True))
    click.echo("", err=True)
    truth = "top-1 (BN-recalibrated)" if study.top1 is not None else "MACs"
    corr = study.correlations(None if study.top1 is not None else BASELINE)
    rows = [[n, f"{corr[n]['spearman']:+.3f}", f"{corr[n]['kendall']:+.3f}",
             f"{1000 * study.seconds[n]:.1f}"] for n in study.scores]
    click.echo(f"{len(archs)} subnets of {space.name}, {weights} weights, minibatch {batch} "
               f"of {source}; correlation with {truth}")
    click.echo(table(["proxy", "Spearman", "Kendall", "ms/subnet"], rows))
    if study.top1 is not None:
        click.echo(f"ground truth: {1000 * study.eval_seconds:.0f} ms/subnet; top-1 "
                   f"{min(study.top1):.1%}..{max(study.top1):.1%}")
    if json_out is not None:
        json_out.write_text(json.dumps({"space": space.name, "weights": weights,
                                        "data": source, "batch": batch, **study.to_json(),
                                        "correlations": corr}, indent=1))
        click.echo(f"wrote {json_out}")
    del ws
