"""``edgenas supernet``: inspect checkpoints and import the published OFA weights."""

from __future__ import annotations

from pathlib import Path

import click

from edgenas.cli.common import echo_json, human
from edgenas.space import available_spaces
from edgenas.supernets.checkpoint import load_supernet
from edgenas.supernets.ofa_import import import_ofa


@click.group()
def supernet() -> None:
    """Train, inspect, evaluate and import supernets."""


@supernet.command("info")
@click.argument("ckpt", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def info(ckpt: Path, as_json: bool) -> None:
    """What a supernet checkpoint holds: space, classes, normalisation, size."""
    net = load_supernet(ckpt)
    space = net.space
    data = {
        "path": str(ckpt),
        "space": space.name,
        "num_classes": net.num_classes,
        "labels": net.labels if len(net.labels) <= 20 else net.labels[:20] + ["..."],
        "normalization": net.normalization,
        "resolutions": [space.resolutions[0], space.resolutions[-1]],
        "subnets": space.size(),
        "parameters": sum(p.numel() for p in net.parameters()),
        "largest_macs": space.macs(space.largest(), net.num_classes),
        "smallest_macs": space.macs(space.smallest(), net.num_classes),
        "meta": net.meta,
    }
    if as_json:
        echo_json(data)
        return
    click.echo(f"checkpoint  {ckpt}")
    click.echo(f"space       {space.name}: {space.size():.2e} subnets, resolution "
               f"{space.resolutions[0]}-{space.resolutions[-1]}")
    click.echo(f"classes     {net.num_classes}: {', '.join(data['labels'])}")
    click.echo(f"normalize   mean {net.normalization['mean']} std {net.normalization['std']}")
    click.echo(f"weights     {human(data['parameters'])} parameters in the supernet")
    click.echo(f"MACs        {human(data['smallest_macs'])} (min) .. "
               f"{human(data['largest_macs'])} (max)")
    for key, value in net.meta.items():
        click.echo(f"meta        {key}: {value}")


@supernet.command("import-ofa")
@click.argument("path", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--space", "space_name", default="mbv3-w1.0", show_default=True,
              type=click.Choice([s for s in available_spaces() if s.startswith("mbv3-w")]),
              help="Width of the OFA checkpoint (ofa_mbv3_d234_e346_k357_w1.0 or _w1.2).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the edgenas checkpoint.")
def import_ofa_cmd(path: Path, space_name: str, out: Path) -> None:
    """Convert a published once-for-all MobileNetV3 state dict into an edgenas checkpoint."""
    net = import_ofa(path, space_name)
    net.save(out, net.meta)
    click.echo(f"imported {path} ({net.num_classes} classes, {space_name}) -> {out}")
