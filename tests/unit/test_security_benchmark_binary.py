"""Issue 24, finding 2: a benchmark binary is pinned when it is registered.

``edgenas_benchmark_binary`` was checked once (an ELF inside the inventory's folder) and its path was
followed again at every bench and push, so a symlink re-pointed later — a ``git pull`` of the
inventory's repository — sent any host file, a private key, to the device.  The registry now keeps
the real file the path led to and its sha256, and :func:`edgenas.device.registry.verify_benchmark_binary`
refuses any change before the file is used.

Real parts: a real inventory folder with real symlinks, the real CLI import, a real SQLite workspace
(one created by the schema before pinning, too), real ELF files (this Python's executable).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edgenas.cli import main
from edgenas.core.errors import DeviceError
from edgenas.device import registry
from edgenas.records.store import MIGRATIONS, open_store

ELF = Path(sys.executable).resolve()  # a real ELF executable to stand in for benchmark_model


def cli(home: Path, *args: str) -> Any:
    return CliRunner().invoke(main, ["--home", str(home), *args])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def repo(tmp_path: Path) -> dict[str, Path]:
    """An inventory repository: ``bin/benchmark_model`` a symlink to ``builds/v1`` (an ELF), and a
    private key outside it, the file an attacker would like pushed to a phone."""
    inv_dir = tmp_path / "inventory-repo"
    (inv_dir / "builds").mkdir(parents=True)
    (inv_dir / "bin").mkdir()
    v1 = inv_dir / "builds" / "v1"
    shutil.copy(ELF, v1)
    (inv_dir / "bin" / "benchmark_model").symlink_to("../builds/v1")
    key = tmp_path / "userhome" / ".ssh" / "id_ed25519"
    key.parent.mkdir(parents=True)
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n-----END OPENSSH PRIVATE KEY-----\n")
    inv = inv_dir / "inventory.yml"
    inv.write_text(
        "all:\n  hosts:\n    phone:\n      edgenas_kind: adb\n      edgenas_serial: R58M2\n"
        "      edgenas_benchmark_binary: bin/benchmark_model\n"
    )
    link = inv_dir / "bin" / "benchmark_model"
    return {"dir": inv_dir, "inv": inv, "v1": v1, "link": link, "key": key}


def _import(workspace: Path, inv: Path) -> registry.Device:
    result = cli(workspace, "device", "import", str(inv))
    assert result.exit_code == 0, result.output
    with open_store(workspace) as store:
        return registry.get_device(store, "phone")


def test_import_records_the_real_file_and_its_sha256(workspace, repo):
    device = _import(workspace, repo["inv"])
    assert device.benchmark_binary == str(repo["link"])  # as written, for display
    assert device.benchmark_binary_real == os.path.realpath(repo["v1"])
    assert device.benchmark_binary_sha256 == sha256(repo["v1"])
    with open_store(workspace) as store:  # in the database row itself, not only the object
        (row,) = store.query("SELECT benchmark_binary_real, benchmark_binary_sha256 FROM devices")
    assert (row[0], row[1]) == (os.path.realpath(repo["v1"]), sha256(repo["v1"]))
    assert registry.verify_benchmark_binary(device) == Path(os.path.realpath(repo["v1"]))


def test_a_symlink_re_pointed_after_import_is_refused(workspace, repo):
    device = _import(workspace, repo["inv"])
    repo["link"].unlink()
    repo["link"].symlink_to(repo["key"])  # what a `git pull` of a hostile commit can do
    with pytest.raises(DeviceError) as err:
        registry.verify_benchmark_binary(device)
    message = str(err.value)
    assert "device phone" in message and f"now leads to {repo['key']}" in message
    assert "edgenas device import INVENTORY" in message and "refusing to push" in message


def test_the_real_file_replaced_by_a_symlink_or_new_bytes_is_refused(workspace, repo):
    device = _import(workspace, repo["inv"])
    v1 = repo["v1"]
    v1.unlink()
    v1.symlink_to(repo["key"])  # the pinned file itself becomes a link to the key
    with pytest.raises(DeviceError, match="now leads to"):
        registry.verify_benchmark_binary(device)
    v1.unlink()
    shutil.copy(ELF, v1)
    with v1.open("ab") as f:
        f.write(b"\0")  # a rebuilt binary at the same path: also a change, registered by hand
    with pytest.raises(DeviceError) as err:
        registry.verify_benchmark_binary(device)
    assert "changed since it was registered" in str(err.value)
    assert "if the change is intended" in str(err.value)
    v1.unlink()
    with pytest.raises(DeviceError, match="No such file"):
        registry.verify_benchmark_binary(device)


def test_importing_again_pins_the_new_build(workspace, repo):
    _import(workspace, repo["inv"])
    v2 = repo["dir"] / "builds" / "v2"
    shutil.copy(ELF, v2)
    with v2.open("ab") as f:
        f.write(b"v2")
    repo["link"].unlink()
    repo["link"].symlink_to("../builds/v2")
    with open_store(workspace) as store:
        with pytest.raises(DeviceError):
            registry.verify_benchmark_binary(registry.get_device(store, "phone"))
    device = _import(workspace, repo["inv"])
    assert registry.verify_benchmark_binary(device) == Path(os.path.realpath(v2))
    assert device.benchmark_binary_sha256 == sha256(v2)


def test_an_import_that_does_not_name_the_binary_keeps_its_pin(workspace, repo, tmp_path):
    pinned = _import(workspace, repo["inv"])
    other = tmp_path / "other.yml"
    other.write_text("all:\n  hosts:\n    phone: {edgenas_kind: adb, edgenas_serial: R58M3}\n")
    kept = _import(workspace, other)
    assert kept.serial == "R58M3"
    assert (kept.benchmark_binary, kept.benchmark_binary_real, kept.benchmark_binary_sha256) == (
        pinned.benchmark_binary, pinned.benchmark_binary_real, pinned.benchmark_binary_sha256)


def test_device_add_pins_too(workspace, repo):
    device = registry.make_device("phone2", "adb", home=workspace, serial="R1",
                                  benchmark_binary=repo["link"])
    with open_store(workspace) as store:
        registry.add_device(store, device)
        stored = registry.get_device(store, "phone2")
    assert stored.benchmark_binary_sha256 == sha256(repo["v1"])
    assert registry.verify_benchmark_binary(stored) == Path(os.path.realpath(repo["v1"]))


def test_a_record_from_before_pinning_is_refused_until_registered_again(workspace, repo):
    """An existing workspace: the schema before pinning, a device with a binary path and no hash."""
    before = next(i for i, m in enumerate(MIGRATIONS) if "benchmark_binary_sha256" in m)
    with open_store(workspace, MIGRATIONS[:before]) as store:
        with store.transaction() as conn:
            conn.execute(
                "INSERT INTO devices (name, kind, serial, workdir, python, benchmark_binary, "
                "created_at, updated_at) VALUES ('phone', 'adb', 'R1', '/data/local/tmp/edgenas', "
                "'python3', ?, 0, 0)",
                (str(repo["link"]),),
            )
    repo["link"].unlink()
    repo["link"].symlink_to(repo["key"])  # and the path was re-pointed since
    with open_store(workspace) as store:  # upgraded in place
        old = registry.get_device(store, "phone")
        assert (old.benchmark_binary, old.benchmark_binary_sha256) == (str(repo["link"]), None)
        assert registry.list_devices(store)[0].name == "phone"  # listing it still works
    with pytest.raises(DeviceError) as err:
        registry.verify_benchmark_binary(old)
    message = str(err.value)
    assert "device phone" in message and "older edgenas" in message
    assert "edgenas device add phone ... --benchmark-binary PATH --replace" in message
    repo["link"].unlink()
    repo["link"].symlink_to("../builds/v1")
    device = _import(workspace, repo["inv"])  # registering again pins it
    assert registry.verify_benchmark_binary(device) == Path(os.path.realpath(repo["v1"]))


def test_a_fifo_put_in_place_does_not_hang_the_check(workspace, repo):
    device = _import(workspace, repo["inv"])
    repo["v1"].unlink()
    os.mkfifo(repo["v1"])
    with pytest.raises(DeviceError, match="not a regular file"):
        registry.verify_benchmark_binary(device)


def test_the_bench_backend_refuses_a_re_pointed_binary(workspace, repo):
    from edgenas.measure.bench import backend_for

    device = _import(workspace, repo["inv"])
    repo["link"].unlink()
    repo["link"].symlink_to(repo["key"])
    with pytest.raises(DeviceError):
        backend_for(device, workspace).tool()
