"""Every remote shell script is a file under devices/scripts/, clean under ``shellcheck -s sh``.

The scripts run through ``sh -c`` on boards and phones whose shell is busybox ash, dash or mksh, so
they are checked as POSIX sh, not bash.  The loader is tested on the real files.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from edgenas.device import scripts

SCRIPTS = sorted((Path(__file__).resolve().parent.parent / "devices" / "scripts").glob("*.sh"))


def test_there_are_scripts_to_check():
    assert SCRIPTS, "devices/scripts/ has no *.sh files"
    assert scripts.scripts_dir().resolve() == SCRIPTS[0].parent


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_shellcheck_clean_as_posix_sh(path: Path):
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.fail("shellcheck is not installed: run `apt-get install shellcheck` "
                    "(or `make system-packages`) - the remote scripts are checked with it")
    res = subprocess.run([exe, "-s", "sh", "-f", "gcc", str(path)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, f"shellcheck -s sh {path.name}:\n{res.stdout}{res.stderr}"


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_script_parses_as_posix_sh(path: Path):
    # `sh -n` parses without running: a script that only shellcheck liked but dash rejects fails here.
    res = subprocess.run(["sh", "-n", "-c", path.read_text(encoding="utf-8")], capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0, res.stderr


def test_loader_returns_the_file_and_caches_it():
    text = scripts.script("state")
    assert text == (scripts.scripts_dir() / "state.sh").read_text(encoding="utf-8")
    assert scripts.script("state") is text


@pytest.mark.parametrize("name", ["../state", "state.sh", "/etc/passwd", "", "State"])
def test_loader_rejects_non_plain_names(name: str):
    with pytest.raises(ValueError, match="bad script name"):
        scripts.script(name)


def test_loader_names_a_missing_script():
    with pytest.raises(scripts.ScriptNotFound, match="no-such-script.sh"):
        scripts.script("no-such-script")


def test_shellcheck_catches_a_bashism(tmp_path: Path):
    # The check above can fail: a bash-only construct in a script is reported under -s sh.
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed: run `apt-get install shellcheck`")
    bad = tmp_path / "bad.sh"
    bad.write_text('x=(a b)\nif [[ "$x" == a ]]; then echo "${x[0]}"; fi\n', encoding="utf-8")
    res = subprocess.run(["shellcheck", "-s", "sh", str(bad)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode != 0 and "SC" in res.stdout
