"""First CLI verbs: --version, arch sample/show, supernet info, and error reporting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from edgenas import Arch, SearchSpace, __version__, build_supernet
from edgenas.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0 and __version__ in result.output


def test_arch_sample_is_seeded_and_valid() -> None:
    a = run("arch", "sample", "--space", "mbv3-tiny", "-n", "7", "--seed", "3")
    b = run("arch", "sample", "--space", "mbv3-tiny", "-n", "7", "--seed", "3")
    assert a.exit_code == 0 and a.output == b.output
    ids = a.output.split()
    assert len(ids) == 7
    space = SearchSpace.load("mbv3-tiny")
    assert [space.parse(i) for i in ids] == space.sample_many(7, seed=3)
    js = json.loads(run("arch", "sample", "--space", "mbv3-tiny", "-n", "2", "--json").output)
    assert js[0]["macs"] == space.macs(Arch.from_string(js[0]["id"]))


def test_arch_show_prints_cost_and_stages() -> None:
    result = run("arch", "show", "max", "--space", "mbv3-w1.0")
    assert result.exit_code == 0
    assert "r224-76767676" in result.output and "MACs" in result.output
    assert len([ln for ln in result.output.splitlines() if ln.strip()[:1].isdigit()]) == 5
    js = json.loads(run("arch", "show", "min", "--space", "mbv3-w1.0", "--json").output)
    space = SearchSpace.load("mbv3-w1.0")
    assert js["macs"] == space.macs(space.smallest())


def test_bad_input_is_one_clear_line_not_a_traceback() -> None:
    result = run("arch", "show", "r32-3436-3936-3436-3436-3436", "--space", "mbv3-tiny")
    assert result.exit_code == 1
    assert "stage 2 block 1 expand" in result.output
    assert "Traceback" not in result.output
    result = run("arch", "sample", "--space", "no-such-space")
    assert result.exit_code == 1 and "unknown search space" in result.output


def test_supernet_info_and_a_corrupt_checkpoint(tmp_path) -> None:
    ckpt = build_supernet("mbv3-tiny", 3, labels=["a", "b", "c"]).save(tmp_path / "s.pt")
    result = run("supernet", "info", str(ckpt))
    assert result.exit_code == 0 and "mbv3-tiny" in result.output and "a, b, c" in result.output
    bad = tmp_path / "bad.pt"
    bad.write_bytes(ckpt.read_bytes()[:1000])
    result = run("supernet", "info", str(bad))
    assert result.exit_code == 1 and "corrupt" in result.output


def test_installed_console_script_and_home_option(tmp_path) -> None:
    """The `edgenas` entry point exists and honours --home / EDGENAS_HOME."""
    exe = str(Path(sys.executable).parent / "edgenas")
    out = subprocess.run([exe, "--home", str(tmp_path / "ws"), "arch", "sample", "-n", "1"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith("r")
    helped = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True)
    assert "EDGENAS_HOME" in helped.stdout
