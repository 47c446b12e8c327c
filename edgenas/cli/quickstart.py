"""``edgenas quickstart`` and ``edgenas report``."""

from __future__ import annotations

from pathlib import Path

import click

from edgenas.cli.common import Workspace, echo, echo_json, table
from edgenas.records.store import open_store
from edgenas.workflows.quickstart import QuickstartConfig, report_inputs, run_quickstart
from edgenas.workflows.report import write_report


@click.command("quickstart")
@click.option("--minutes", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Training budget for the supernet.")
@click.option("--samples", type=click.IntRange(min=8), default=16, show_default=True,
              help="Subnets to measure on the device (per precision).")
@click.option("--accuracy-samples", type=click.IntRange(min=8), default=40, show_default=True,
              help="Subnets to evaluate for the accuracy predictor.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--limit", type=click.IntRange(min=2), default=None, hidden=True,
              help="Train and calibrate on the first N training images only (tests).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def quickstart_cmd(ws: Workspace, minutes: float, samples: int, accuracy_samples: int,
                   threads: int, limit: int | None, as_json: bool) -> None:
    """The whole loop on the embedded digits data, with this machine as the device.

    Trains (or resumes) a small supernet, measures subnets on this host (fp32 and int8), fits
    the latency and accuracy predictors, searches under a budget taken from the measured range,
    exports the choice to int8 and fp32 TFLite, benchmarks both, pushes the int8 model to the
    local fleet, runs one prediction through the runner and writes HOME/report.html. A re-run
    reuses everything already done.
    """

    cfg = QuickstartConfig(ws.ensure(), minutes=minutes, measure_samples=samples,
                           accuracy_samples=accuracy_samples, threads=threads, limit=limit)
    summary = run_quickstart(cfg)
    if as_json:
        echo_json(summary)
        return
    echo("")
    echo(table(["", ""], summary["table"]))
    echo(f"\nreport: {summary['report']}   (total {summary['seconds']:.0f} s)")


@click.command("report")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write [default: HOME/report.html].")
@click.pass_obj
def report_cmd(ws: Workspace, out: Path | None) -> None:
    """Write a static HTML report of the workspace (training curve, Pareto front, predictor
    error per device, model card, fleet state), readable offline."""

    with open_store(ws.ensure()) as store:
        path = write_report(report_inputs(ws.home, store), out or ws.home / "report.html")
    echo(f"wrote {path}")
