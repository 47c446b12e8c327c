"""``edgenas export``: one subnet → calibrated, parity-checked TFLite + manifest."""

from __future__ import annotations

from pathlib import Path

import click

from edgenas.cli.common import echo_json, human


@click.command("export")
@click.argument("ckpt", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--arch", "arch_id", default=None,
              help="Arch id, 'min' or 'max' [default: max; a fine-tuned subnet fixes it].")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "dynamic"]),
              default="int8", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write model.tflite and manifest.json into.")
@click.option("--data", default=None,
              help="digits, an ImageFolder or CIFAR-10 folder [default: the training data].")
@click.option("--calibration-samples", type=click.IntRange(min=1), default=500, show_default=True,
              help="Real images used to calibrate int8 activation ranges.")
@click.option("--bn-samples", type=click.IntRange(min=1), default=500, show_default=True,
              help="Training images that re-estimate a supernet subnet's BN statistics (a "
                   "fine-tuned subnet keeps its own).")
@click.option("--validation-samples", type=click.IntRange(min=0), default=1000,
              show_default=True,
              help="Validation images (a seeded choice when the split is larger) on which float "
                   "and exported top-1 are measured; 0 skips it.")
@click.option("--search", "search_json", type=click.Path(dir_okay=False, exists=True,
                                                       path_type=Path), default=None,
              help="search.json from `edgenas search`: records its latency promise in the "
                   "manifest (checked later by `edgenas fleet bench`).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def export_cmd(ckpt: Path, arch_id: str | None, precision: str, out_dir: Path, data: str | None,
               calibration_samples: int, bn_samples: int, validation_samples: int,
               search_json: Path | None, as_json: bool) -> None:
    """Export a subnet of CKPT (a supernet or a fine-tuned subnet) to TFLite.

    The subnet is written as TFLite directly; its fp32 model is checked against torch (max abs
    logit difference <= 1e-4) before anything is written; int8 is full-integer with int8 input
    and output, its ranges calibrated on real images.
    """
    from edgenas.export.api import export  # lazy: torch stays out of CLI start-up

    click.echo(f"exporting {arch_id or 'max'} of {ckpt} as {precision} ...", err=True)
    result = export(ckpt, arch_id, precision, out_dir, data, calibration_samples, search_json,
                    bn_samples=bn_samples, validation_samples=validation_samples, progress=True)
    m = result.manifest
    if as_json:
        echo_json(m)
        return
    acc = m.get("accuracy") or {}
    click.echo(f"wrote {result.model_path} ({m['model']['bytes'] / 1024:.0f} KiB, {precision}) "
               f"and {result.manifest_path.name}")
    click.echo(f"arch       {m['arch']}  ({m['space']}, {human(m['macs'])} MACs, "
               f"{human(m['params'])} params)")
    click.echo(f"parity     max |tflite - torch| = {m['parity']['max_abs_logit_diff']:.2e}")
    if acc:
        click.echo(f"accuracy   float {acc['float_top1']:.2%}  exported {acc['exported_top1']:.2%}"
                   f"  ({acc['samples']} validation images)")
    click.echo(f"sha256     {m['model']['sha256']}")
