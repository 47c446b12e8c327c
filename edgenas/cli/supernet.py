"""``edgenas supernet``: inspect checkpoints and import the published OFA weights."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgenas.cli.common import echo_json, human, table
from edgenas.space.spec import available_spaces


@click.group()
def supernet() -> None:
    """Train, inspect, evaluate and import supernets."""


@supernet.command("info")
@click.argument("ckpt", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def info(ckpt: Path, as_json: bool) -> None:
    """What a supernet checkpoint holds: space, classes, normalisation, size."""
    from edgenas.supernets.mbv3 import load_supernet

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
    from edgenas.supernets.ofa_import import import_ofa

    net = import_ofa(path, space_name)
    net.save(out, net.meta)
    click.echo(f"imported {path} ({net.num_classes} classes, {space_name}) -> {out}")


def _load_eval_data(source: str | None, net, limit: int | None = None):  # noqa: ANN001, ANN202
    """The data set to evaluate on: ``--data`` or the one recorded in the checkpoint."""
    from edgenas.training.data import DataError, load_data

    source = source or net.meta.get("data")
    if not source:
        raise DataError("this checkpoint does not record its data set; pass --data digits|PATH")
    data = load_data(source, net.space.resolutions[-1], limit=limit)
    if data.num_classes != net.num_classes:
        raise DataError(f"{source} has {data.num_classes} classes but the supernet was trained "
                        f"for {net.num_classes}")
    return data


@supernet.command("train")
@click.option("--space", "space_name", default="mbv3-tiny", show_default=True,
              help="Search space: a built-in name (" + ", ".join(available_spaces())
              + ") or a JSON path.")
@click.option("--data", "data_source", default="digits", show_default=True,
              help="'digits' (embedded), an ImageFolder directory (ROOT/<class>/*.jpg|png) or a "
                   "CIFAR-10 python directory.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Supernet checkpoint to write (training state goes to OUT.state, the JSON log "
                   "to OUT.log.jsonl).")
@click.option("--minutes", type=click.FloatRange(min=0.1), default=None,
              help="Wall-clock budget; phases get time in proportion to their share.")
@click.option("--epochs", type=click.FloatRange(min=0.01), default=None,
              help="Total epochs over all phases [default: scaled to the data set size].")
@click.option("--batch-size", type=click.IntRange(min=2), default=64, show_default=True,
              help="Images per step (per process under torchrun); lr scales with it.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUT.state (same config and plan).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--kd-ratio", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Weight of the distillation loss from the full network.")
@click.option("--limit", type=click.IntRange(min=2), default=None,
              help="Use only the first N training images (quick trials).")
@click.option("--save-every", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Also save the training state every this many seconds (besides every epoch).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch [default: torch's choice]; 1 is faster on a busy machine.")
@click.option("--data-mode", type=click.Choice(["auto", "memory", "stream"]), default="auto",
              show_default=True,
              help="memory: decode every image once and keep it; stream: decode each batch in "
                   "worker processes (ImageFolder; bounded memory); auto: keep it in memory when "
                   "that path's estimated peak (data, batches, training, evaluation) fits the "
                   "memory left, else stream; the choice and its reasons are printed.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Decoding processes when streaming [default: CPU cores - 1, at most 8].")
@click.option("--init", "init", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None,
              help="Start from this pretrained supernet (an edgenas checkpoint, or a once-for-all "
                   "MobileNetV3 state dict as `import-ofa` takes): its body is kept, its head is "
                   "replaced by one for the data's labels unless they are the same; its space "
                   "and normalisation are used. Training follows the adaptation schedule: the "
                   "full network adapts first, then subnets of the whole space distil from it "
                   "(the body already serves them all).")
@click.option("--activation-checkpointing", is_flag=True,
              help="Recompute the elastic blocks' activations in the backward pass: less "
                   "training memory (about a quarter at 224 px) for more step time; same result.")
@click.option("--calib", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Training images that re-estimate BN before the final evaluation of the "
                   "smallest and largest subnets (as `supernet eval --calib`): fewer shortens "
                   "the wind-down on large images.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_cmd(space_name: str, data_source: str, out: Path, minutes: float | None,
              epochs: float | None, batch_size: int, device: str, resume: bool, seed: int,
              kd_ratio: float, limit: int | None, save_every: float, threads: int | None,
              data_mode: str, workers: int | None, init: Path | None,
              activation_checkpointing: bool, calib: int, quiet: bool) -> None:
    """Train a supernet by progressive shrinking with distillation (Ctrl-C saves; --resume)."""
    from edgenas.training.train import TrainConfig, TrainingInterrupted, train_supernet

    cfg = TrainConfig(out=str(out), space=space_name, data=data_source, minutes=minutes,
                      epochs=epochs, batch_size=batch_size, seed=seed, kd_ratio=kd_ratio,
                      limit=limit, data_mode=data_mode, workers=workers,
                      activation_checkpointing=activation_checkpointing,
                      init=str(init) if init is not None else None, calib_images=calib)
    try:
        train_supernet(cfg, device=device, resume=resume, progress=not quiet,
                       save_seconds=save_every, threads=threads)
    except TrainingInterrupted as exc:
        click.echo(f"\n{exc}", err=True)
        sys.exit(130)


@supernet.command("eval")
@click.argument("ckpt", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--arch", "arch_ids", multiple=True, default=("min", "max"), show_default=True,
              help="Arch id, 'min' or 'max' (repeatable).")
@click.option("--data", "data_source", default=None,
              help="Data set [default: the one the checkpoint was trained on].")
@click.option("--calib", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Training images used for BN recalibration.")
@click.option("--no-recalibrate", is_flag=True, help="Keep the supernet's BN statistics.")
@click.option("--json", "as_json", is_flag=True)
def eval_cmd(ckpt: Path, arch_ids: tuple[str, ...], data_source: str | None, calib: int,
             no_recalibrate: bool, as_json: bool) -> None:
    """Top-1 of subnets on the validation split (BN recalibrated on calibration images)."""
    from edgenas.supernets.mbv3 import load_supernet
    from edgenas.training.evaluate import evaluate_archs

    net = load_supernet(ckpt)
    archs = [net.space.parse(a) for a in arch_ids]
    data = _load_eval_data(data_source, net)
    results = evaluate_archs(net, archs, data, calibrate=not no_recalibrate, calib_images=calib)
    rows = [{**r.to_json(), "name": name if name in ("min", "max") else None,
             "macs": net.space.macs(r.arch, net.num_classes),
             "params": net.space.params(r.arch, net.num_classes)}
            for name, r in zip(arch_ids, results)]
    if as_json:
        echo_json({"checkpoint": str(ckpt), "data": data.source, "recalibrated": not no_recalibrate,
                   "results": rows})
        return
    click.echo(table(["arch", "MACs", "params", "top-1"],
                     [[r["arch"] + (f" ({r['name']})" if r["name"] else ""), human(r["macs"]),
                       human(r["params"]), f"{r['top1']:.2%}"] for r in rows]))
