"""``edgenas evaluate``: top-1 of an exported model, measured where it runs."""

from __future__ import annotations

from pathlib import Path

import click

from edgenas.cli.common import Workspace, echo, echo_json


@click.command("evaluate")
@click.argument("model_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--device", default=None,
              help="Run on this registered device through the runner [default: the host].")
@click.option("--data", default=None, help="Data set [default: the one recorded at export].")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def evaluate_cmd(ws: Workspace, model_dir: Path, device: str | None, data: str | None,
                 as_json: bool) -> None:
    """Top-1 of MODEL_DIR (model.tflite + manifest.json) over the validation split.

    On the host it runs TFLite's built-in kernels, as the export's validation did, and so
    reproduces the top-1 recorded at export; with --device, the device's own runtime and
    delegate, which may round some int8 values differently.
    """
    from edgenas.workflows.evaluate_model import (
        evaluate_model_dir,  # lazy: torch stays out of CLI start-up
    )

    result = evaluate_model_dir(model_dir, data, home=ws.home, device=device)
    if as_json:
        echo_json(result)
        return
    recorded = result["recorded_exported_top1"]
    echo(f"{result['arch']} {result['precision']} on {result['where']}: top-1 "
               f"{result['top1']:.2%} over {result['images']} validation images of "
               f"{result['data']}" + (f" (at export: {recorded:.2%})" if recorded is not None
                                      else ""))
