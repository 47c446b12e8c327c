"""Issue 24, findings 1 and 3: a local workdir another user can change is refused, the runner of a
local device runs from the private workspace cache, and clean-ups delete only names edgenas makes.

Real folders, owners and modes on this machine (another user is ``nobody``: the tests that need to
give a folder away skip when not run as root), real ``/bin/sh`` running the device scripts.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import subprocess
from pathlib import Path

import pytest

from edgenas.core.errors import DeviceError
from edgenas.core.files import unsafe_path_reason
from edgenas.device import layout
from edgenas.device.registry import add_device, make_device
from edgenas.device.scripts import script
from edgenas.device.session import DeviceSession
from edgenas.device.transports.local import LocalTransport, UnsafeWorkdirError
from edgenas.records.store import open_store
from tests.support.cli_runner import Cli

REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")


def _nobody() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this machine")
    return entry.pw_uid, entry.pw_gid


def _folder(path: Path, mode: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    return path


def _local_device(home: Path, workdir: Path, name: str = "here"):
    with open_store(home) as store:
        return add_device(store, make_device(name, "local", home=home, workdir=str(workdir),
                                             python=PYTHON), replace_existing=True)


# ------------------------------------------------------------------------------------------ the rule


def test_strictmodes_rule_on_real_folders(tmp_path: Path):
    base = _folder(tmp_path / "base", 0o755)
    mine = _folder(base / "mine", 0o755)
    assert unsafe_path_reason(mine) is None
    assert unsafe_path_reason(mine / "not" / "made" / "yet") is None  # judged by what exists
    os.chmod(mine, 0o775)
    assert "writable by its group" in unsafe_path_reason(mine)
    os.chmod(mine, 0o757)
    assert "writable by others" in unsafe_path_reason(mine)
    os.chmod(mine, 0o700)
    # a loose parent: whoever can write it can rename ours away and put theirs in its place
    os.chmod(base, 0o777)
    assert f"{base} is writable by group and others" in unsafe_path_reason(mine)
    # ... unless it is sticky like /tmp: then others cannot rename or delete our entries
    os.chmod(base, 0o1777)
    assert unsafe_path_reason(mine) is None
    # but a sticky world-writable folder is never fine as the workdir itself
    assert "writable by group and others" in unsafe_path_reason(base)
    # a missing workdir under a sticky folder is fine: we create it, private
    assert unsafe_path_reason(base / "to-be-made") is None
    # a symlink is judged by where it leads, too
    os.symlink(base, tmp_path / "link")
    assert "writable" in unsafe_path_reason(tmp_path / "link")
    assert unsafe_path_reason(tmp_path / "link" / "mine") is None


@needs_root
def test_strictmodes_rule_refuses_another_users_folder_parent_or_symlink(tmp_path: Path):
    uid, gid = _nobody()
    theirs = _folder(tmp_path / "theirs", 0o755)
    os.chown(theirs, uid, gid)
    assert "owned by nobody" in unsafe_path_reason(theirs)
    inner = _folder(theirs / "inner", 0o700)  # ours, but inside a folder they can rename things in
    assert f"{theirs} is owned by nobody" in unsafe_path_reason(inner)
    mine = _folder(tmp_path / "mine", 0o700)
    link = tmp_path / "their-link"
    os.symlink(mine, link)
    os.lchown(link, uid, gid)  # they can point it anywhere later
    assert f"{link} is owned by nobody" in unsafe_path_reason(link)
    # root-owned folders are fine (every path starts with some)
    assert unsafe_path_reason("/") is None


# ------------------------------------------------------------------------------------------ transport


@needs_root
def test_local_transport_refuses_a_workdir_another_user_made_and_runs_nothing(tmp_path: Path):
    uid, gid = _nobody()
    shared = _folder(tmp_path / "shared-tmp", 0o1777)  # like /tmp
    workdir = _folder(shared / "edgenas-wd", 0o755)  # made first by the other user
    os.chown(workdir, uid, gid)
    marker = tmp_path / "ran"
    t = LocalTransport("here", workdir=str(workdir))
    with pytest.raises(UnsafeWorkdirError, match=r"here: refusing the local workdir .*edgenas-wd.*"
                                                 r"owned by nobody"):
        t.run(["touch", str(marker)])
    assert not marker.exists(), "the command ran in a workdir another user owns"
    src = tmp_path / "file"
    src.write_bytes(b"x")
    with pytest.raises(UnsafeWorkdirError):
        t.put(src, "runner.pyz")
    assert not (workdir / "runner.pyz").exists()


def test_local_transport_checks_at_use_time_not_only_at_registration(tmp_path: Path):
    workdir = _folder(tmp_path / "wd", 0o755)
    t = LocalTransport("here", workdir=str(workdir))
    assert t.run(["true"], cwd=".").rc == 0
    os.chmod(workdir, 0o777)  # loosened after it was registered and used
    marker = tmp_path / "ran"
    with pytest.raises(UnsafeWorkdirError, match="writable by group and others"):
        t.run(["touch", str(marker)], cwd=".")
    assert not marker.exists()
    os.chmod(workdir, 0o755)
    os.chmod(tmp_path, 0o777)  # a loose parent, not sticky
    try:
        with pytest.raises(UnsafeWorkdirError, match=re.escape(f"{tmp_path} is writable")):
            t.run(["true"])
    finally:
        os.chmod(tmp_path, 0o700)


def test_a_missing_local_workdir_is_created_private_whatever_the_umask(tmp_path: Path):
    workdir = tmp_path / "a" / "b" / "wd"
    old = os.umask(0o002)
    try:
        t = LocalTransport("here", workdir=str(workdir))
        assert t.run(["true"], cwd=".").rc == 0
    finally:
        os.umask(old)
    assert workdir.is_dir()
    assert oct(workdir.stat().st_mode & 0o777) == oct(0o700)
    assert unsafe_path_reason(workdir) is None


# ------------------------------------------------------------------------------------------ runner


def test_a_local_device_runs_the_runner_from_the_workspace_cache_not_the_workdir(workspace: Path,
                                                                                  tmp_path: Path):
    """The race of finding 1: the workdir's runner.pyz is hashed by one command and started by the
    next; a copy swapped in between must never run."""
    workdir = _folder(tmp_path / "wd", 0o700)
    device = _local_device(workspace, workdir)
    marker = tmp_path / "swapped-runner-ran"
    with DeviceSession(workspace, device) as session, session.locked():
        assert session.ensure([session.runner_file()]) == [layout.RUNNER]
        # what someone swaps in after the sha256 check (Python runs a plain script named .pyz too)
        (workdir / layout.RUNNER).write_text(
            f"open({str(marker)!r}, 'w').close()\nprint('{{\"median_ms\": 1}}')\n")
        res = session.run([PYTHON, layout.RUNNER, "info", "--no-probe"], 120, job=True)
        info = session.runner("info", ["--no-probe"], timeout=120)
    assert not marker.exists(), "the workdir's copy of the runner ran"
    assert res.rc == 0, res.stderr
    assert '"median_ms"' not in res.stdout
    assert info["runner"]["sha256"] == session.runner_file().sha256
    assert Path(session.local_runner()) == session.runner_file().path
    assert session.runner_file().path.is_relative_to(workspace)


def test_a_local_runner_in_a_loose_workspace_is_refused(workspace: Path, tmp_path: Path):
    workdir = _folder(tmp_path / "wd", 0o700)
    device = _local_device(workspace, workdir)
    with DeviceSession(workspace, device) as session:
        cache = session.runner_file().path.parent
        os.chmod(cache, 0o777)
        with pytest.raises(DeviceError, match=r"here: refusing to run the runner from .*writable"):
            session.run([PYTHON, layout.RUNNER, "info", "--no-probe"], 60)


# ------------------------------------------------------------------------------------------ finding 3


def _hex(seed: str, n: int) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:n]


def test_cache_pruning_deletes_only_names_edgenas_writes(tmp_path: Path):
    cache = _folder(tmp_path / "cache" / "models", 0o755)
    ours = [f"{_hex('a', 64)}.tflite", f"{_hex('b', 64)}.json", f"{_hex('c', 16)}.npy"]
    users = ["notes.txt", "model.tflite", f"{_hex('d', 64)}.TFLITE", f"{_hex('e', 15)}.npy",
             "README"]
    for name in ours + users:
        (cache / name).write_bytes(b"x" * 4096)
    (cache / "my-folder").mkdir()
    (cache / "my-folder" / "data.bin").write_bytes(b"y" * 4096)
    (cache / (_hex("f", 16) + ".png")).mkdir()  # a folder with an edgenas-like name: not a cache file
    res = subprocess.run(["/bin/sh", "-c", script("prune"), "prune", str(cache), "0"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert f"deleted {len(ours)}" in res.stdout
    left = sorted(p.name for p in cache.iterdir())
    assert left == sorted([*users, "my-folder", _hex("f", 16) + ".png"])
    assert (cache / "my-folder" / "data.bin").is_file()


def test_device_clean_keeps_a_users_files_in_the_workdir(workspace: Path, tmp_path: Path):
    workdir = _folder(tmp_path / "wd", 0o700)
    _local_device(workspace, workdir)
    models = _folder(workdir / "cache" / "models", 0o755)
    (models / f"{_hex('a', 64)}.tflite").write_bytes(b"m" * 2048)
    (models / "thesis-results.csv").write_text("precious\n")
    Cli(workspace)("device", "clean", "here")
    assert not (models / f"{_hex('a', 64)}.tflite").exists()
    assert (models / "thesis-results.csv").read_text() == "precious\n"


def _fleet_commit(workdir: Path, name: str, version: str, stage: str, sha: str, msha: str,
                  tag: str) -> str:
    res = subprocess.run(["/bin/sh", "-c", script("fleet-lib") + "\n" + script("fleet-commit"),
                          "fleet-commit", str(workdir), PYTHON, name, version, stage, sha, msha, tag],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_fleet_commit_deletes_only_old_versions_and_its_own_leftovers(tmp_path: Path):
    workdir = tmp_path / "wd"
    mdir = _folder(workdir / "models" / "net", 0o755)
    versions = []
    for seed in ("v1", "v2", "v3"):
        model = f"model {seed}".encode()
        sha = hashlib.sha256(model).hexdigest()
        ver, tag = sha[:12], _hex(seed + "tag", 8)
        stage = mdir / f".incoming-{tag}"
        stage.mkdir()
        (stage / "model.tflite").write_bytes(model)
        (stage / "manifest.json").write_text("{}")
        msha = hashlib.sha256(b"{}").hexdigest()
        if seed == "v1":  # the user's own files, there before edgenas deployed anything else
            (mdir / "README.md").write_text("how we deploy\n")
            (mdir / "calibration").mkdir()
            (mdir / "calibration" / "set.npy").write_bytes(b"c")
            (mdir / ".incoming-notes").write_text("not an upload of edgenas\n")
            (mdir / "0123456789abcdef").mkdir()  # not a version name (16 hex digits)
        out = _fleet_commit(workdir, "net", ver, stage.name, sha, msha, tag)
        assert out.startswith(f"OK\t{ver}"), out
        versions.append(ver)
    (mdir / f".trash-{_hex('t', 8)}").mkdir()  # a leftover of a failed switch: edgenas' own
    out = _fleet_commit(workdir, "net", versions[2], "", hashlib.sha256(b"model v3").hexdigest(),
                        "", _hex("again", 8))
    assert out.startswith(f"OK\t{versions[2]}"), out
    left = sorted(p.name for p in mdir.iterdir())
    assert left == sorted([".incoming-notes", "0123456789abcdef", "README.md", "calibration",
                           "current", "previous", versions[1], versions[2]])
    assert os.readlink(mdir / "current") == versions[2]
    assert os.readlink(mdir / "previous") == versions[1]
    assert (mdir / "calibration" / "set.npy").read_bytes() == b"c"
