"""Helpers shared by the CLI modules: the workspace handle, logging set-up and output formatting."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from edgenas.core.files import private_dir
from edgenas.core.text import printable
from edgenas.records.classes import parse_cpu_set

LOG_ENV = "EDGENAS_LOG"
_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING,
           "WARN": logging.WARNING, "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL}


class _EchoHandler(logging.Handler):
    """Log records to stderr through ``click.echo``, which finds the *current* stderr at each call:
    a handler holding the stream it saw first would write into a closed one when the CLI runs again
    in the same process (tests, notebooks).  Log lines carry device text (stderr tails, runner
    errors), so control characters are escaped (:func:`edgenas.core.text.printable`)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(printable(self.format(record), multiline=True), err=True)
        except Exception:  # noqa: BLE001 - logging must never take the command down
            self.handleError(record)


def log_level(verbose: int = 0, quiet: int = 0, env: str | None = None) -> int:
    """The level for ``-v``/``-q`` counts, else ``$EDGENAS_LOG`` (a level name or number), else WARNING.

    Flags win over the environment: a user who types ``-v`` means it for this command.
    """
    if verbose or quiet:
        return {-2: logging.CRITICAL, -1: logging.ERROR, 0: logging.WARNING,
                1: logging.INFO}.get(max(-2, verbose - quiet), logging.DEBUG)
    value = (env if env is not None else os.environ.get(LOG_ENV, "")).strip()
    if not value:
        return logging.WARNING
    if value.isdigit():
        return int(value)
    level = _LEVELS.get(value.upper())
    if level is None:
        raise click.BadParameter(f"{value!r} is not a log level ({', '.join(_LEVELS)})",
                                 param_hint=f"${LOG_ENV}")
    return level


def setup_logging(level: int) -> None:
    """The one logging set-up: library modules log to ``logging.getLogger(__name__)`` and never
    configure anything; the CLI entry point calls this once per invocation.

    Only the ``edgenas`` logger gets a handler, so third-party chatter (paramiko's transport logs)
    is not turned up with it.  Calling it again replaces the handler instead of adding a second one.
    """
    logger = logging.getLogger("edgenas")
    for handler in [h for h in logger.handlers if isinstance(h, _EchoHandler)]:
        logger.removeHandler(handler)
    handler = _EchoHandler()
    if level <= logging.DEBUG:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    else:
        handler.setFormatter(_LowerLevelFormatter("%(levelname)s: %(message)s"))
    handler.setLevel(level)
    logger.addHandler(handler)
    # The threshold sits on the handler; the logger is lowered only when asked for more than warnings,
    # so a default run leaves the logger as it found it (NOTSET) for code that embeds the CLI.
    logger.setLevel(level if level < logging.WARNING else logging.NOTSET)


class _LowerLevelFormatter(logging.Formatter):
    """``warning: …`` like the CLI's own ``error: …`` lines."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


@dataclass(frozen=True)
class Workspace:
    """Where state lives (``--home``); created on first use, not on every invocation."""

    home: Path

    def ensure(self) -> Path:
        """The home folder, created private (0700) or tightened if others can read it."""

        return private_dir(self.home)


def echo(message: Any = "", *, err: bool = False, nl: bool = True) -> None:
    """``click.echo`` for anything that may hold device text (probe facts, runtime names, error
    reasons, stderr tails): control characters are shown escaped, never sent to the terminal, so a
    device cannot write the operator's clipboard (``ESC ] 52``), retitle the window or overwrite
    earlier lines.  Newlines and tabs are kept."""
    click.echo(printable(message, multiline=True), err=err, nl=nl)


def echo_json(data: Any) -> None:
    """JSON output: ``json.dumps`` (``ensure_ascii``) writes every control character as ``\\uXXXX``,
    so device text in it is inert too."""
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table (numbers right-aligned).  Every cell is single-line printable text
    (:func:`edgenas.core.text.printable`): cells often hold device text, and a newline or escape sequence
    in one must neither reach the terminal nor fake rows."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_num(row[i]) for row in rows) if rows else False
               for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        parts = [c.rjust(w) if numeric[i] and n else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else printable(value)


def human(n: float) -> str:
    """1234567 → '1.23M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def cpu_set(_ctx: click.Context | None, _param: click.Parameter | None, value: str | None) -> str | None:
    """Click callback for ``--cpus``: the CPU set checked (and made canonical) before anything is
    contacted; a bad set is a usage error naming the option."""
    if value is None:
        return None
    try:
        return parse_cpu_set(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


# The bench protocol's options, one definition for every command that benchmarks (`bench`, `fleet
# bench`, `fleet specialize`); the defaults are the runner's own (docs/runner.md).
WARMUP_SECS = click.option(
    "--warmup-secs", type=click.FloatRange(min=0), default=0.5, show_default=True,
    help="Untimed runs for this long first (XNNPACK packs its weights at load time; 0.1 s is enough "
         "for small models).")
CV_THRESHOLD = click.option(
    "--cv-threshold", type=click.FloatRange(min=0), default=0.05, show_default=True,
    help="Re-run once when the coefficient of variation is above this; flag if still above.")
