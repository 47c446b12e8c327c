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


# --- facts.sh and the Python side agree: device facts are written once, in edgenas_device.facts ----


def test_facts_sh_and_python_facts_give_the_same_summary():
    from edgenas_device import facts

    out = subprocess.run(["sh", "-c", scripts.script("facts"), "sh", "python3"], capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stderr == ""
    shell = facts.parse_facts_sh(out.stdout)
    py = facts.summary()
    assert set(py) == set(facts.SUMMARY_KEYS) and set(shell) == set(facts.SUMMARY_KEYS) | {"python_path"}
    for key in ("arch", "kernel", "os", "cpu_model", "board", "cores", "governor", "freq_max_mhz",
                "mem_total_mib", "boot_id"):
        assert shell[key] == py[key], key
    assert shell["boot_id"] and shell["python_path"]
    assert 0 <= py["uptime_s"] - shell["uptime_s"] < 60


def test_parse_facts_sh_bounds_untrusted_output():
    from edgenas_device import facts

    text = ("arch=" + "A" * 10000 + "\ncores_online=2abc\nmem_total_kib=-\nboot_id=$(reboot)\n"
            "temp_millic=41500\nuptime=12.7\nnot a line\nEVIL=1\n" + "x=1\n" * 100000)
    got = facts.parse_facts_sh(text)
    assert len(got["arch"]) == facts.MAX_FACT_CHARS
    assert got["cores"] is None and got["mem_total_mib"] is None and got["boot_id"] is None
    assert got["temperature_c"] == 41.5 and got["uptime_s"] == 12.0
    assert set(got) == set(facts.SUMMARY_KEYS) | {"python_path"}


@pytest.mark.parametrize(
    "python,arch,bits,expected",
    [
        ("3.11.2", "aarch64", 64, "pip install ai-edge-litert"),
        ("3.11.2", "aarch64", 32, 'pip install tflite-runtime "numpy<2"'),  # 32-bit userland
        ("3.9.2", "armv7l", None, 'pip install tflite-runtime "numpy<2"'),
        ("3.8.18", "x86_64", 64, 'pip install tflite-runtime "numpy<2"'),
        ("3.12.1", "armv7l", 32, "install Python 3.11"),
        ("3.7.3", "armv7l", 32, "too old"),
        (None, "aarch64", None, "install Python 3"),
        ("garbage", "x86_64", 64, "cannot read the Python version"),
    ],
)
def test_install_advice(python, arch, bits, expected):
    from edgenas_device.facts import install_advice

    assert expected in install_advice(python, arch, bits)
