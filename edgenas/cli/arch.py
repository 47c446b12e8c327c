"""``edgenas arch``: sample and inspect architectures of a search space."""

from __future__ import annotations

import click

from edgenas.cli.common import echo_json, human, table
from edgenas.space.plan import net_plan
from edgenas.space.spec import SearchSpace, available_spaces

SPACE_HELP = "Search space: a built-in name (" + ", ".join(available_spaces()) + ") or a JSON path."


@click.group()
def arch() -> None:
    """Sample and inspect architectures (subnets) of a search space."""


@arch.command("sample")
@click.option("--space", "space_name", default="mbv3-w1.0", show_default=True, help=SPACE_HELP)
@click.option("-n", "count", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list with MACs and params.")
def sample(space_name: str, count: int, seed: int, as_json: bool) -> None:
    """Print N random arch ids, one a line (reproducible with --seed)."""
    space = SearchSpace.load(space_name)
    archs = space.sample_many(count, seed)
    if as_json:
        echo_json([{**a.to_json(), "macs": space.macs(a), "params": space.params(a)}
                   for a in archs])
        return
    for a in archs:
        click.echo(a.to_string())


@arch.command("show")
@click.argument("arch_id")
@click.option("--space", "space_name", default="mbv3-w1.0", show_default=True, help=SPACE_HELP)
@click.option("--classes", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Classifier width used for the MAC and parameter counts.")
@click.option("--json", "as_json", is_flag=True)
def show(arch_id: str, space_name: str, classes: int, as_json: bool) -> None:
    """MACs, parameters and a per-stage table of ARCH_ID (or 'min' / 'max')."""
    space = SearchSpace.load(space_name)
    a = space.parse(arch_id)
    plan = net_plan(space, a)
    macs, params = plan.macs(classes), plan.params(classes)
    rows = []
    for s, stage in enumerate(space.stages):
        blocks = [b for b, st in zip(plan.blocks, plan.stage_of_block) if st == s]
        rows.append([s + 1, len(blocks), stage.width, stage.stride, stage.act,
                     "yes" if stage.se else "no",
                     " ".join(f"k{b.kernel}e{b.expand}" for b in blocks),
                     f"{blocks[-1].out_size}x{blocks[-1].out_size}",
                     human(sum(b.macs for b in blocks))])
    if as_json:
        echo_json({**a.to_json(), "space": space.name, "macs": macs, "params": params})
        return
    click.echo(f"arch   {a.to_string()}  ({space.name})")
    click.echo(f"input  {a.resolution}x{a.resolution}   MACs {human(macs)}   "
               f"params {human(params)} ({classes} classes)")
    click.echo(table(["stage", "depth", "width", "stride", "act", "se", "blocks", "out", "MACs"],
                     rows))
