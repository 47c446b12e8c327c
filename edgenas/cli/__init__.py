"""The ``edgenas`` command: a thin shell over the library (parse, call, print).

Each verb group lives in its own module and is registered here; library errors
(:class:`~edgenas.core.errors.EdgeNASError`) are printed as one clear line, never as a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from edgenas import __version__
from edgenas.cli.allocator import reexec_tuned
from edgenas.cli.arch import arch
from edgenas.cli.bench import bench_cmd
from edgenas.cli.common import Workspace, log_level, setup_logging
from edgenas.cli.device import device
from edgenas.cli.evaluate import evaluate_cmd
from edgenas.cli.export import export_cmd
from edgenas.cli.fleet import fleet
from edgenas.cli.measure import measure_cmd, measurements
from edgenas.cli.predictor import predictor
from edgenas.cli.predictor_accuracy import fit_accuracy_cmd
from edgenas.cli.proxies import proxies_cmd
from edgenas.cli.quickstart import quickstart_cmd, report_cmd
from edgenas.cli.search import search_cmd
from edgenas.cli.subnet import subnet
from edgenas.cli.supernet import supernet
from edgenas.core.errors import EdgeNASError
from edgenas.core.paths import default_home
from edgenas.core.text import printable
from edgenas.device.cancel import sigterm_as_interrupt


class _Main(click.Group):
    def main(self, args: Sequence[str] | None = None, *rest: Any, **kwargs: Any) -> Any:
        if args is None:  # the process's own command line (not a caller's list): may re-exec
            reexec_tuned(sys.argv[1:])
        return super().main(args, *rest, **kwargs)

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            # SIGTERM unwinds like Ctrl-C, so commands stop their jobs on devices and release locks.
            with sigterm_as_interrupt():
                return super().invoke(ctx)
        except EdgeNASError as exc:
            # messages quote device text (runner errors, stderr tails): escaped, never obeyed
            click.echo(f"error: {printable(exc, multiline=True)}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("cancelled: the jobs it started on devices were stopped", err=True)
            sys.exit(130)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgenas")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=None,
              envvar="EDGENAS_HOME", show_envvar=True,
              help="Workspace for devices, measurements and models [default: ~/.edgenas].")
@click.option("-v", "--verbose", count=True,
              help="More log output (-v: info, -vv: debug) [default: warnings; env EDGENAS_LOG].")
@click.option("-q", "--quiet", count=True, help="Less log output (-q: errors only).")
@click.pass_context
def main(ctx: click.Context, home: Path | None, verbose: int, quiet: int) -> None:
    """edgenas: hardware-aware NAS for edge devices.

    Train a once-for-all supernet once, measure its subnets on your devices, search per
    device, and deploy int8 TFLite models to a fleet.
    """
    setup_logging(log_level(verbose, quiet))
    # absolute: a local device runs the runner from its own working directory, where a relative
    # workspace path (--home ws) would name another file
    ctx.obj = Workspace((home or default_home()).absolute())


main.add_command(arch)
main.add_command(supernet)
main.add_command(device)
main.add_command(export_cmd)
main.add_command(evaluate_cmd)
main.add_command(subnet)
main.add_command(bench_cmd)
main.add_command(fleet)
main.add_command(measure_cmd)
main.add_command(measurements)
main.add_command(predictor)
predictor.add_command(fit_accuracy_cmd)
main.add_command(search_cmd)
main.add_command(proxies_cmd)
main.add_command(quickstart_cmd)
main.add_command(report_cmd)
