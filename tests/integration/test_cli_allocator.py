"""The heavy commands re-execute themselves under a huge-page malloc (edgenas/cli/allocator.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgenas.cli.allocator import _glibc_knows_tunable, command_of, tuned_environment
from edgenas.core.malloc import MARK, TUNABLE, untuned

# prints the tunables this interpreter started with, then runs the CLI: a re-executed process
# prints twice, the second time with the tunable set
PROBE = ("import os; print('TUNABLES=' + os.environ.get('GLIBC_TUNABLES', ''), flush=True); "
         "from edgenas.cli import main; main()")


def _probe(home: Path, *args: str, code: int = 0, **extra: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "EDGENAS_MALLOC")}
    out = subprocess.run([sys.executable, "-c", PROBE, "--home", str(home), *args],
                         env={**env, **extra}, capture_output=True, text=True, timeout=120)
    assert out.returncode == code, out.stderr
    return [line for line in out.stdout.splitlines() if line.startswith("TUNABLES=")]


def test_the_command_word_skips_global_options() -> None:
    assert command_of(["--home", "export", "-v", "supernet", "train"]) == "supernet"
    assert command_of(["-vv", "export", "x"]) == "export"
    assert command_of(["--version"]) is None


def test_only_heavy_commands_not_yet_tuned_get_the_tunable() -> None:
    env = tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, ["export"])
    if not _glibc_knows_tunable() or not sys.platform.startswith("linux"):
        assert env is None
        return
    assert env is not None and env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{TUNABLE}"
    assert tuned_environment({}, ["device", "list"]) is None  # a light command: no second start
    assert tuned_environment({}, ["export", "--help"]) is None  # help runs no network
    assert tuned_environment({"EDGENAS_MALLOC": "tuned"}, ["export"]) is None  # never twice
    assert tuned_environment({"EDGENAS_MALLOC": "system"}, ["export"]) is None  # opted out
    assert tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, ["export"]) is None


@pytest.mark.skipif(not _glibc_knows_tunable(), reason="glibc < 2.35 has no malloc.hugetlb")
def test_a_heavy_command_restarts_itself_once_with_huge_pages(tmp_path: Path) -> None:
    # `export` without its arguments: restarted, then a usage error (exit 2) from the second start
    assert _probe(tmp_path, "export", code=2) == ["TUNABLES=", f"TUNABLES={TUNABLE}"]
    assert _probe(tmp_path, "export", "--help") == ["TUNABLES="]  # help runs no network
    assert _probe(tmp_path, "device", code=2) == ["TUNABLES="]
    assert _probe(tmp_path, "export", code=2, EDGENAS_MALLOC="system") == ["TUNABLES="]


def test_untuned_removes_only_what_the_re_execution_added() -> None:
    tuned = {"GLIBC_TUNABLES": f"glibc.malloc.arena_max=2:{TUNABLE}", MARK: "tuned", "PATH": "/bin"}
    assert untuned(tuned) == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "PATH": "/bin"}
    assert untuned({"GLIBC_TUNABLES": TUNABLE, MARK: "tuned"}) == {}
    # the user's own huge pages (no mark: edgenas did not re-execute) stay
    assert untuned({"GLIBC_TUNABLES": TUNABLE}) == {"GLIBC_TUNABLES": TUNABLE}
    assert untuned({MARK: "system"}) == {MARK: "system"}


def test_a_local_device_runs_under_the_users_malloc_not_edgenas_tuning(tmp_path: Path,
                                                                      monkeypatch) -> None:
    """A heavy command runs tuned, and a local device's runner is a child of it: the device's peak
    memory and latency must be measured as the user's own program would run, so the tunable the
    re-execution added is not passed on (a search's memory verification measured 16.5 MiB against
    14.9 MiB predicted with it inherited)."""
    from edgenas.device.transports.local import LocalTransport

    monkeypatch.setenv("GLIBC_TUNABLES", f"glibc.malloc.arena_max=2:{TUNABLE}")
    monkeypatch.setenv(MARK, "tuned")
    work = tmp_path / "dev"
    res = LocalTransport("here", workdir=str(work)).run(
        [sys.executable, "-c", "import os; print(repr(os.environ.get('GLIBC_TUNABLES')), "
         f"repr(os.environ.get({MARK!r})))"])
    assert res.rc == 0, res.stderr
    assert res.stdout.strip() == "'glibc.malloc.arena_max=2' None"
