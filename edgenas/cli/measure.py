"""``edgenas measure`` (a campaign) and ``edgenas measurements list|export`` (what is stored)."""

from __future__ import annotations

import csv
import io
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgenas.cli.common import WARMUP_SECS, Workspace, echo, echo_json, table
from edgenas.device.cancel import raise_from_signal

if TYPE_CHECKING:
    from edgenas.measure.bench import BenchSettings
    from edgenas.records.store import Store


def _on_sigterm(signum: int, frame: Any) -> None:
    # SystemExit unwinds normally: export workers are stopped and device locks released.
    raise_from_signal(signum, frame, SystemExit(128 + signum))


def _install_sigterm() -> Any:
    """SIGTERM as SystemExit (main thread only); returns the previous handler to restore."""
    try:
        return signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        return None


@click.command("measure")
@click.argument("ckpt", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--device", "device_names", multiple=True, help="A device (repeatable).")
@click.option("--group", "groups", multiple=True, help="Every device of a group (repeatable).")
@click.option("--samples", type=click.IntRange(min=1), required=True, help="Subnets to measure.")
@click.option("--precision", "precisions", default="fp32", show_default=True,
              help="Comma list of fp32, fp16, int8, dynamic.")
@click.option("--threads", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Which subnets are sampled.")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="Export worker processes (0: export in this process).")
@click.option("--runs", type=click.IntRange(min=1), default=50, show_default=True,
              help="At least this many timed runs per benchmark.")
@click.option("--min-secs", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="And at least this many seconds per benchmark.")
@WARMUP_SECS
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Measure every subnet this many times, in successive passes over the list, so a "
                   "device that drifts for a while spoils one measurement of a subnet, not all "
                   "(predictors fit the median of them).")
@click.option("--cpus", default=None, metavar="SET",
              help="Pin every benchmark to these CPUs (4-7: big.LITTLE's big cores); the rows form "
                   "a device class of their own [default: each device's own set, else unpinned].")
@click.option("--export-cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where exports are cached [default: HOME/cache/exports].")
@click.option("--json", "as_json", is_flag=True, help="Print the campaign report as JSON.")
@click.option("--quiet", is_flag=True, help="No progress lines on stderr.")
@click.option("--adaptive", is_flag=True,
              help="One device: choose the most informative subnets for its few-shot predictor, "
                   "measure them in rounds and stop once the held-out estimate holds ±10 % "
                   "(SAMPLES is the most it measures; see docs/measurement.md).  One in five of "
                   "SAMPLES are random subnets the design did not choose, held out: each round "
                   "prints the predictor's share of them within ±10 %, and the campaign stops only "
                   "when that holds too.  Unless --runs, --min-secs or --warmup-secs is given, it "
                   "starts with a trimmed protocol (20 runs, 0.25 s, 0.1 s warm-up) and checks it "
                   "against the full protocol (the one `bench` and the search's verification use, "
                   "so the one the predictor is judged by): each round re-measures a trimmed "
                   "subnet with the full protocol, and the first that differs by more than 5 % "
                   "ends the trimming.  Held-out subnets are measured with the full protocol.")
@click.pass_obj
def measure_cmd(ws: Workspace, ckpt: Path, device_names: tuple[str, ...], groups: tuple[str, ...],
                samples: int, precisions: str, threads: int, seed: int, workers: int, runs: int,
                min_secs: float, warmup_secs: float, repeats: int, export_cache: Path | None,
                as_json: bool,
                quiet: bool, adaptive: bool = False, cpus: str | None = None) -> None:
    """Measure SAMPLES subnets of the supernet CKPT on devices and store every result.

    Subnets are sampled evenly over depth, kernel, expand and resolution; exports are cached and
    run in worker processes; devices run in parallel, one benchmark at a time each.  Interrupted
    and re-run with the same arguments, it resumes and measures nothing twice (with --repeats K,
    nothing more than K times).
    """
    from edgenas.core.progress import ProgressRenderer
    from edgenas.measure.bench import BenchSettings
    from edgenas.measure.campaign import measure
    from edgenas.records.store import open_store

    if cpus is not None:
        from edgenas.records.classes import parse_cpu_set

        try:
            cpus = parse_cpu_set(cpus)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--cpus") from None
        if adaptive:
            raise click.UsageError("--adaptive measures the device as registered: pin it with "
                                   "`edgenas device add ... --cpus SET --replace` instead of --cpus")
    settings = BenchSettings(threads=threads, runs=runs, min_secs=min_secs, warmup_secs=warmup_secs,
                             cpus=cpus)
    previous = _install_sigterm()
    renderer = None if quiet else ProgressRenderer()  # a bar on a terminal, plain lines otherwise
    try:
        with open_store(ws.ensure()) as store:
            if adaptive:

                ctx = click.get_current_context()
                trim = all(ctx.get_parameter_source(p) is click.core.ParameterSource.DEFAULT
                           for p in ("runs", "min_secs", "warmup_secs"))
                return _run_adaptive(store, ws.home, ckpt, [*device_names, *groups], samples, precisions,
                               threads, seed, workers, settings, export_cache, quiet, as_json,
                               trim=trim)
            report = measure(store, ws.home, ckpt, [*device_names, *groups], samples,
                             precisions.split(","), threads, seed, workers,
                             progress=renderer or False, export_cache=export_cache,
                             settings=settings, repeats=repeats)
    finally:
        if renderer is not None:
            renderer.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if as_json:
        echo_json(report.to_dict())
    else:
        models = len(report.archs) * len(report.precisions)
        rows = [[d.device, models, d.skipped, d.measured, d.failed, f"{d.seconds:.0f} s",
                 d.aborted or "; ".join(d.errors[:1])
                 or (f"same class as {d.served_by}: measured there" if d.served_by else "")]
                for d in report.devices.values()]
        echo(table(["device", "models", "already done", "measured", "failed", "time", "error"],
                         rows))
        echo(f"campaign {report.campaign}: {len(report.archs)} archs x {report.precisions}, "
                   f"exported {report.exported} (cached {report.export_cached}), "
                   f"{report.seconds:.0f} s" + ("" if report.complete else "  INCOMPLETE"))
        for job, err in report.export_failed.items():
            echo(f"export failed: {job}: {err}", err=True)
    if not report.complete:
        sys.exit(1)


@click.group("measurements")
def measurements() -> None:
    """Stored latency measurements."""


def _rows(ws: Workspace, device: str | None, precision: str | None,
          threads: int | None) -> list[dict[str, Any]]:
    from edgenas.records import measurements
    from edgenas.records.store import open_store

    with open_store(ws.ensure()) as store:
        return [m.to_dict() for m in measurements.find(store, device, precision, threads)]


_filters = [
    click.option("--device", default=None, help="Only this device."),
    click.option("--precision", default=None, help="Only this precision."),
    click.option("--threads", type=int, default=None, help="Only this thread count."),
]


def _with_filters(fn: Any) -> Any:
    for opt in reversed(_filters):
        fn = opt(fn)
    return fn


@measurements.command("list")
@_with_filters
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def list_cmd(ws: Workspace, device: str | None, precision: str | None, threads: int | None,
             as_json: bool) -> None:
    """A table of stored measurements (newest last)."""
    rows = _rows(ws, device, precision, threads)
    if as_json:
        echo_json(rows)
        return
    if not rows:
        echo("no measurements (run `edgenas bench` or `edgenas measure`)")
        return
    echo(table(
        ["id", "device", "arch", "precision", "thr", "runtime", "median ms", "p90 ms", "CV %", "noisy"],
        [[r["id"], r["device"], r["arch"], r["precision"], r["threads"],
          f"{r['runtime']} {r['runtime_version'] or ''}".strip(), r["median_ms"], r["p90_ms"],
          round(100 * (r["cv"] or 0), 2), "yes" if r["noisy"] else ""] for r in rows]))


@measurements.command("export")
@_with_filters
@click.option("--csv", "fmt", flag_value="csv", default=True, help="CSV (default).")
@click.option("--json", "fmt", flag_value="json", help="A JSON array.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file instead of stdout.")
@click.pass_obj
def export_cmd(ws: Workspace, device: str | None, precision: str | None, threads: int | None,
               fmt: str, out: Path | None) -> None:
    """All stored fields of the measurements, as CSV or JSON, for analysis elsewhere."""
    from edgenas.records.measurements import FIELDS as MEASUREMENT_FIELDS

    rows = _rows(ws, device, precision, threads)
    if fmt == "json":
        text = json.dumps(rows, indent=2) + "\n"
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(MEASUREMENT_FIELDS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    if out:
        out.write_text(text)
        echo(f"wrote {len(rows)} measurement(s) to {out}", err=True)
    else:
        echo(text, nl=False)


def _run_adaptive(store: Store, home: Path, ckpt: Path, devices: Sequence[str], samples: int,
            precisions: str, threads: int, seed: int, workers: int, settings: BenchSettings,
            export_cache: Path | None, quiet: bool, as_json: bool, trim: bool = False) -> None:
    """``edgenas measure --adaptive``: one device, one precision; prints the per-round quality."""
    from edgenas.measure.adaptive import AdaptiveError, measure_adaptive  # lazy: torch (CLI start-up)

    precs = [p.strip() for p in precisions.split(",") if p.strip()]
    if len(devices) != 1 or len(precs) != 1:
        raise AdaptiveError("--adaptive measures one device at one precision (give one --device and "
                            "one --precision)")
    rep = measure_adaptive(store, home, ckpt, devices[0], samples, precs[0], threads, seed=seed,
                           workers=workers, settings=settings, export_cache=export_cache,
                           progress=not quiet, trim=trim)
    if as_json:
        echo_json(rep.to_dict())
    else:
        for r in rep.rounds:
            echo(r.line())
        echo(f"{rep.device}: {len(rep.measured)} subnet(s) measured in {len(rep.rounds)} "
                   f"round(s), {rep.seconds:.0f} s; stopped: {rep.stopped}")
        for err in rep.errors[:5]:
            echo(f"error: {err}", err=True)
    if not rep.complete:
        sys.exit(1)
