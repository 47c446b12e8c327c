"""Progress reporting for long jobs: a one-line bar on stderr and a JSON-lines log file.

The bar redraws in place on a terminal and falls back to one line every few seconds when stderr is
a pipe or a file (CI logs stay readable).  The JSON log is for machines: one object per line,
flushed at once so a killed run still leaves a complete record up to its last step.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import IO, Any


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
