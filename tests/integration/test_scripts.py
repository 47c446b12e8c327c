"""Every remote shell script is a file under devices/scripts/, clean under ``shellcheck -s sh``.

The scripts run through ``sh -c`` on boards and phones whose shell is busybox ash, dash or mksh, so
they are checked as POSIX sh, not bash.  The loader is tested on the real files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from edgenas.device import scripts

SCRIPTS = sorted((Path(__file__).resolve().parents[2] / "devices" / "scripts").glob("*.sh"))


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


def _prune(folder: Path, max_kib: int, *keep: str) -> str:
    res = subprocess.run(["sh", "-c", scripts.script("prune"), "prune", str(folder), str(max_kib),
                          *keep], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_prune_removes_temps_of_killed_uploads_but_never_one_in_use(tmp_path: Path):
    """A killed upload leaves a hidden ``.NAME.edgenas-tmp-*`` file that nothing else ever removes.
    prune.sh removes one only when it is both old (the age covers writers /proc does not show) and
    open in no process (which does not trust the device's wall clock): an upload that is running,
    even a stalled one, keeps its file."""
    folder = tmp_path / "cache dir"  # a space: the list of temps is not split on it
    folder.mkdir()
    two_hours_ago = time.time() - 7200
    orphan = folder / f".{'a' * 64}.tflite.edgenas-tmp-0123abcd"
    fresh = folder / f".{'b' * 64}.tflite.edgenas-tmp-4567cdef"
    held = folder / f".{'c' * 64}.tflite.edgenas-tmp-89abcdef"
    model = folder / f"{'d' * 64}.tflite"
    for path in (orphan, fresh, held, model):
        path.write_bytes(b"x" * 4096)
    # a running upload whose writer has not written for hours (stalled): it holds the file open
    writer = subprocess.Popen(["sh", "-c", 'exec 3>>"$1"; echo ready; exec sleep 60', "w", str(held)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        for path in (orphan, held):
            os.utime(path, (two_hours_ago, two_hours_ago))
        said = _prune(folder, 1 << 20)
        assert said.endswith("deleted 0 temps 1"), said
        assert not orphan.exists()
        assert fresh.exists() and held.exists() and model.exists()
    finally:
        writer.kill()
        writer.wait(timeout=10)
    # once its writer is gone, the old temp is an orphan too; the young one stays until it is old
    assert _prune(folder, 1 << 20).endswith("temps 1") and not held.exists() and fresh.exists()
    # the cache bound itself still works, and never counts or deletes by the hidden temps
    said = _prune(folder, 0)
    assert said.startswith("kept ") and "deleted 1 temps 0" in said, said
    assert sorted(p.name for p in folder.iterdir()) == [fresh.name]


def test_prune_of_a_missing_folder_says_nothing_was_there(tmp_path: Path):
    assert _prune(tmp_path / "nope", 0) == "kept 0 deleted 0 temps 0"
