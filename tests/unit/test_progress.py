"""edgenas.core.progress: the library reports events; the CLI renders them (a bar on a TTY, else
lines)."""

from __future__ import annotations

import io
import logging
import threading

from edgenas.core.progress import Progress, ProgressRenderer, Reporter, reporter


def test_event_lines():
    assert Progress("ssh1", "r32 fp32: 1.2 ms", 4, 12).line() == "[ssh1] 4/12 r32 fp32: 1.2 ms"
    assert Progress("export", "FAILED x", level="error").line() == "[export] FAILED x"
    assert Progress("quickstart", "train", 1, 9, "step").line() == "[1/9] train"
    assert Progress("", "      reusing x").line() == "      reusing x"


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    render = ProgressRenderer(out)
    assert not render.tty  # a StringIO is no TTY: CI logs get one line per event, nothing redrawn
    say = Reporter(render)
    say("ssh1", "a: 1.0 ms", done=1, total=2)
    say("ssh1", "b: 2.0 ms", done=2, total=2)
    say("ssh1", "ABORTED: gone", level="error")
    render.close()
    assert out.getvalue() == "[ssh1] 1/2 a: 1.0 ms\n[ssh1] 2/2 b: 2.0 ms\n[ssh1] ABORTED: gone\n"
    assert "\r" not in out.getvalue()


def test_bar_on_a_terminal_redraws_counts_and_keeps_messages():
    out = io.StringIO()
    render = ProgressRenderer(out, tty=True)
    say = Reporter(render)
    say("ssh1", "a: 1.0 ms", done=1, total=2)
    say("export", "FAILED r32 int8: boom", level="error")
    say("ssh2", "c: 3.0 ms", done=2, total=2)
    render.close()
    text = out.getvalue()
    assert text.startswith("\r[") and "ssh1 1/2" in text and "ssh2 2/2" in text
    assert "75%" in text  # 3 of 4 across both devices
    assert "\n[export] FAILED r32 int8: boom\n" in text  # a permanent line above the bar
    assert text.endswith("\n")  # close() ends the bar line


def test_reporter_defaults_log_and_a_broken_sink_never_raises(caplog):
    caplog.set_level(logging.DEBUG, logger="edgenas.core.progress")
    reporter(None)("dev", "info line")
    reporter(False)("dev", "debug line", done=1, total=3)
    reporter(False)("dev", "bad", level="error")
    levels = {r.getMessage(): r.levelno for r in caplog.records}
    assert levels == {"[dev] info line": logging.INFO, "[dev] 1/3 debug line": logging.DEBUG,
                      "[dev] bad": logging.WARNING}

    def broken(event: Progress) -> None:
        raise RuntimeError("display gone")

    Reporter(broken)("dev", "still fine")  # no exception: progress must not stop a job
    seen: list[Progress] = []
    assert reporter(seen.append).sink == seen.append
    reporter(seen.append)("dev", "x", done=1, total=1, level="nonsense")
    assert seen == [Progress("dev", "x", 1, 1, "info")]


def test_reporter_is_safe_across_threads():
    out = io.StringIO()
    say = Reporter(ProgressRenderer(out))
    threads = [threading.Thread(target=lambda i=i: [say(f"d{i}", f"m{j}") for j in range(200)])
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = out.getvalue().splitlines()
    assert len(lines) == 800 and all(line.startswith("[d") and " m" in line for line in lines)


def test_plain_counted_lines_can_be_throttled_per_source():
    """A source that reports every step (training) prints at most one counted line per ``every``
    seconds off a terminal; its last one and every uncounted line are always printed."""
    out = io.StringIO()
    render = ProgressRenderer(out, every=3600.0)
    say = Reporter(render)
    for i in range(1, 6):
        say("train", f"step {i}", done=i, total=10)
    say("train", "note: something happened")
    say("ssh1", "a", done=1, total=2)  # another source is throttled on its own
    say("train", "step 10", done=10, total=10)
    render.close()
    assert out.getvalue() == ("[train] 1/10 step 1\n[train] note: something happened\n"
                              "[ssh1] 1/2 a\n[train] 10/10 step 10\n")
