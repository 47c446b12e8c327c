"""``edgenas subnet``: fine-tune an extracted subnet, or retrain its architecture from scratch."""

from __future__ import annotations

from pathlib import Path

import click

from edgenas.cli.common import echo_json
from edgenas.cli.supernet import _load_eval_data


@click.group()
def subnet() -> None:
    """Work with single subnets extracted from a supernet."""


@subnet.command("train")
@click.argument("ckpt", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--arch", "arch_id", required=True, help="Arch id, 'min' or 'max'.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Subnet checkpoint to write.")
@click.option("--from-scratch", is_flag=True,
              help="Re-initialise the weights instead of inheriting them (the 'retrain' baseline).")
@click.option("--epochs", type=click.FloatRange(min=0.01), default=10.0, show_default=True)
@click.option("--minutes", type=click.FloatRange(min=0.05), default=None,
              help="Train for about this long instead of --epochs.")
@click.option("--data", "data_source", default=None,
              help="Data set [default: the one the supernet was trained on].")
@click.option("--batch-size", type=click.IntRange(min=2), default=64, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Peak learning rate [default: 0.01 fine-tune, 0.1 from scratch, per 64 images].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def train_cmd(ckpt: Path, arch_id: str, out: Path, from_scratch: bool, epochs: float,
              minutes: float | None, data_source: str | None, batch_size: int, lr: float | None,
              seed: int, device: str, as_json: bool) -> None:
    """Fine-tune (or retrain) subnet ARCH of supernet CKPT and save it as a subnet checkpoint."""
    from edgenas.supernets.mbv3 import load_supernet  # lazy: torch stays out of CLI start-up
    from edgenas.supernets.subnet_ckpt import save_subnet  # lazy: torch stays out of CLI start-up
    from edgenas.training.finetune import train_subnet  # lazy: torch stays out of CLI start-up

    net = load_supernet(ckpt)
    arch = net.space.parse(arch_id)
    data = _load_eval_data(data_source, net)
    result = train_subnet(net, arch, data, epochs=epochs, minutes=minutes,
                          from_scratch=from_scratch, batch_size=batch_size, lr=lr, seed=seed,
                          device=device, progress=not as_json)
    meta = {"supernet": str(ckpt), "data": data.source, "from_scratch": from_scratch,
            "val_top1": round(result.top1, 6), "inherited_top1": result.top1_before,
            "steps": result.steps, "seconds": round(result.seconds, 1), "seed": seed}
    save_subnet(out, result.model, arch, net.space, net.labels, net.normalization, meta)
    if as_json:
        echo_json({"out": str(out), "arch": arch.to_string(), **meta})
        return
    before = ("" if result.top1_before is None
              else f"inherited {result.top1_before:.2%} -> ")
    click.echo(f"{arch.to_string()}: {before}{'scratch ' if from_scratch else 'fine-tuned '}"
               f"{result.top1:.2%} top-1 after {result.steps} steps -> {out}")
