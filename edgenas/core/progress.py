"""The one progress facility: library code reports :class:`Progress` events; the CLI renders them.

Why split it: a library function (a measurement campaign, the quickstart, training) must not decide
how its progress looks — a terminal wants a bar redrawn in place, a CI log or a pipe wants one plain
line per event, an embedding program wants the events themselves.  So the library takes a callback
(:data:`ProgressFn`) and, without one, logs each event to the ``edgenas.core.progress`` logger; the CLI
passes
a :class:`ProgressRenderer`, which draws the bar on a TTY (over :class:`ProgressBar`, its in-place
line) and plain lines otherwise; measurement campaigns, the quickstart and training all report this
way.  :class:`JsonLog` is the machine-readable record of a long job: one JSON object per line,
flushed at once so a killed run leaves a complete record.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

LEVELS = ("info", "step", "warning", "error")
_log = logging.getLogger("edgenas.core.progress")


def fmt_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressBar:
    """``phase 2/6 kernel  ep 3  step 40/120  loss 0.512  210 img/s  ETA 01:12``."""

    def __init__(self, stream: IO[str] | None = None, enabled: bool = True,
                 every: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every
        self._last = 0.0
        self._width = 0

    def update(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            if force or now - self._last >= 0.2:
                pad = max(0, self._width - len(text))
                self.stream.write("\r" + text + " " * pad)
                self.stream.flush()
                self._width = len(text)
                self._last = now
        elif force or now - self._last >= self.every:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last = now

    def finish(self) -> None:
        """End the in-place bar line, if one is drawn, so that what follows starts on its own line."""
        if self.enabled and self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0

    def message(self, text: str) -> None:
        """A permanent line (ends the in-place bar first)."""
        if not self.enabled:
            return
        if self.tty and self._width:
            self.stream.write("\n")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()


class JsonLog:
    """Append-only JSON-lines log; ``None`` path disables it."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields: Any) -> None:
        if self.path is None:
            return
        record = {"event": event, "time": round(time.time(), 3), **fields}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Progress:
    """One progress event.  ``source``: who (a device name, ``export``, a job's name; "" for a detail
    line of the current step).  ``done``/``total``: a count, when the event advances one.  ``level``:
    ``step`` starts a numbered phase of a job, ``warning``/``error`` report something that failed."""

    source: str
    message: str
    done: int | None = None
    total: int | None = None
    level: str = "info"

    def line(self) -> str:
        """The event as one plain line: ``[source] done/total message`` (a step: ``[n/N] message``)."""
        if self.level == "step" and self.done is not None and self.total is not None:
            return f"[{self.done}/{self.total}] {self.message}"
        count = f"{self.done}/{self.total} " if self.done is not None and self.total is not None else ""
        return f"[{self.source}] {count}{self.message}" if self.source else f"{count}{self.message}"


ProgressFn = Callable[[Progress], None]


def log_progress(event: Progress, level: int = logging.INFO) -> None:
    """The library's default sink: the ``edgenas.core.progress`` logger (warnings and errors at
    WARNING)."""
    if event.level in ("warning", "error"):
        level = max(level, logging.WARNING)
    _log.log(level, "%s", event.line())


class Reporter:
    """What library code calls: ``say(source, message, done=, total=, level=)``.  Thread-safe (campaign
    workers report from their own threads) and never raises: a broken sink must not stop a job."""

    def __init__(self, sink: ProgressFn | None = None) -> None:
        self.sink: ProgressFn = sink or log_progress
        self._lock = threading.Lock()

    def __call__(self, source: str, message: str, *, done: int | None = None,
                 total: int | None = None, level: str = "info") -> None:
        self.emit(Progress(source, message, done, total, level if level in LEVELS else "info"))

    def emit(self, event: Progress) -> None:
        with self._lock:
            try:
                self.sink(event)
            except Exception:  # noqa: BLE001 - progress display must never take the job down
                _log.debug("progress sink failed", exc_info=True)


def reporter(progress: bool | ProgressFn | None, stream: IO[str] | None = None) -> Reporter:
    """The :class:`Reporter` for a library entry point's ``progress`` argument: a callback is used as
    is; ``True`` renders on ``stream`` (default stderr, as the CLI does); ``False`` logs at DEBUG
    (``-vv`` still shows it); None logs at INFO."""
    if callable(progress):
        return Reporter(progress)
    if progress is True:
        return Reporter(ProgressRenderer(stream))
    if progress is False:
        return Reporter(lambda event: log_progress(event, logging.DEBUG))
    return Reporter(None)


# --------------------------------------------------------------------------------------------- rendering


class ProgressRenderer:
    """Draws :class:`Progress` events for a person.  On a TTY: counted events update one bar line in
    place (every source's ``done/total`` and the latest message), everything else is a permanent line
    above it.  Otherwise (a pipe, a file, CI): one plain line per event, nothing redrawn.

    ``every``: on a non-TTY, a source's counted events are printed at most once per that many
    seconds (its last one, ``done == total``, always).  Training reports every step; a CI log wants
    a line every few seconds, not thousands.  0 (the default) prints them all."""

    def __init__(self, stream: IO[str] | None = None, *, tty: bool | None = None,
                 enabled: bool = True, every: float = 0.0) -> None:
        self.bar = ProgressBar(stream, enabled=enabled, every=0.0)
        if tty is not None:
            self.bar.tty = tty
        self.every = every
        self._counts: dict[str, tuple[int, int]] = {}
        self._printed: dict[str, float] = {}  # source -> when its last counted line was printed
        self._lock = threading.Lock()

    @property
    def tty(self) -> bool:
        return self.bar.tty

    def __call__(self, event: Progress) -> None:
        with self._lock:
            counted = event.done is not None and event.total is not None and event.level == "info"
            if not (self.bar.tty and counted):
                if counted and self.every > 0:
                    assert event.done is not None and event.total is not None
                    now = time.monotonic()
                    last = self._printed.get(event.source)
                    if event.done < event.total and last is not None and now - last < self.every:
                        return
                    self._printed[event.source] = now
                self.bar.message(event.line())
                return
            assert event.done is not None and event.total is not None
            self._counts[event.source] = (event.done, event.total)
            self.bar.update(self._bar_text(event), force=event.done >= event.total)

    def _bar_text(self, event: Progress) -> str:
        done = sum(d for d, _ in self._counts.values())
        total = sum(t for _, t in self._counts.values()) or 1
        filled = int(20 * min(1.0, done / total))
        per = "  ".join(f"{s} {d}/{t}" for s, (d, t) in self._counts.items())
        text = (f"[{'#' * filled}{'.' * (20 - filled)}] {100 * done // total:3d}%  {per}  | "
                f"{event.message}")
        width = shutil.get_terminal_size((100, 20)).columns - 1
        return text if len(text) <= width else text[:max(10, width - 1)] + "…"

    def close(self) -> None:
        """End the bar line (so what follows starts on a fresh line)."""
        with self._lock:
            self.bar.finish()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill mid-write
    return records
