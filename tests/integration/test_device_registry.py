"""Workspace store, device registry, ssh_config parsing, local transport, and
concurrent ``edgenas device add`` — none of it needs the fleet."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgenas.cli import main
from edgenas.core.errors import DeviceError, TransportError
from edgenas.device import registry
from edgenas.device.transports.local import LocalTransport
from edgenas.records.store import MIGRATIONS, StoreError, open_store

# ---------------------------------------------------------------------------------------------- store


def test_store_is_wal_versioned_and_reopens(workspace):
    with open_store(workspace) as store:
        assert store.version == len(MIGRATIONS)
        assert store.query("PRAGMA journal_mode")[0][0] == "wal"
        assert int(store.query("PRAGMA busy_timeout")[0][0]) >= 1000
    with open_store(workspace) as store:  # nothing runs twice
        assert store.version == len(MIGRATIONS)


def test_appended_migration_runs_once_and_newer_schema_is_refused(workspace):
    extra = MIGRATIONS + ("CREATE TABLE later_feature (x INTEGER);",)
    with open_store(workspace, migrations=extra) as store:
        assert store.version == len(extra)
        store.query("SELECT * FROM later_feature")
    with open_store(workspace, migrations=extra) as store:
        assert store.version == len(extra)
    with pytest.raises(StoreError, match="newer than this edgenas knows"):
        open_store(workspace)


def test_failed_transaction_rolls_back(workspace):
    with open_store(workspace) as store:
        dev = registry.make_device("a", "local", home=workspace)
        with pytest.raises(RuntimeError), store.transaction() as conn:
            conn.execute(
                "INSERT INTO devices (name, kind, created_at, updated_at) VALUES ('x', 'local', 0, 0)"
            )
            raise RuntimeError
        registry.add_device(store, dev)
        assert [d.name for d in registry.list_devices(store)] == ["a"]


def _add_many(home: str, prefix: str, n: int) -> None:
    with open_store(Path(home)) as store:
        for i in range(n):
            registry.add_device(store, registry.make_device(f"{prefix}{i}", "local", home=Path(home)))


def test_concurrent_writers_from_processes_all_land(tmp_path):
    home = tmp_path / "fresh"  # not created yet: the processes also race on creating the schema
    ctx = multiprocessing.get_context("fork")  # fork: no second torch import
    procs = [ctx.Process(target=_add_many, args=(str(home), f"p{k}-", 25)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with open_store(home) as store:
        assert len(registry.list_devices(store)) == 75


# ------------------------------------------------------------------------------------------- registry


def test_registry_add_get_list_groups_remove(workspace):
    with open_store(workspace) as store:
        registry.add_device(
            store,
            registry.make_device(
                "pi1", "ssh", home=workspace, host="10.0.0.5", user="pi", groups=["pis"]
            ),
        )
        registry.add_device(store, registry.make_device("phone", "adb", home=workspace, serial="R58M1"))
        with pytest.raises(DeviceError, match="already exists"):
            registry.add_device(store, registry.make_device("phone", "adb", home=workspace, serial="X"))
        pi = registry.get_device(store, "pi1")
        assert (pi.port, pi.workdir, pi.python, pi.address) == (22, "edgenas", "python3", "pi@10.0.0.5")
        assert registry.get_device(store, "phone").workdir == "/data/local/tmp/edgenas"
        registry.set_groups(store, ["pi1", "phone"], "lab", member=True)
        assert [d.name for d in registry.list_devices(store, group="lab")] == ["phone", "pi1"]
        assert [d.name for d in registry.select_devices(store, ["pis"])] == ["pi1"]
        registry.set_groups(store, ["pi1"], "lab", member=False)
        assert registry.get_device(store, "pi1").groups == ["pis"]
        registry.save_probe(store, "pi1", {"arch": "aarch64"})
        assert registry.get_device(store, "pi1").probe == {"arch": "aarch64"}
        registry.remove_device(store, "pi1")
        with pytest.raises(DeviceError, match="no device named 'pi1'"):
            registry.get_device(store, "pi1")
        with pytest.raises(DeviceError):
            registry.set_groups(store, ["ghost"], "lab", member=True)
        # Groups of a removed device go with it (foreign key cascade).
        assert store.query("SELECT COUNT(*) FROM device_groups WHERE device = 'pi1'")[0][0] == 0


@pytest.mark.parametrize("bad", ["", "-x", "a b", "a/b", "x" * 65, "é"])
def test_invalid_device_names_are_refused(bad, workspace):
    with pytest.raises(DeviceError, match="invalid device name"):
        registry.make_device(bad, "local", home=workspace)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("pi@10.0.0.5", ("10.0.0.5", "pi", 22)),
        ("pi@10.0.0.5:2222", ("10.0.0.5", "pi", 2222)),
        ("10.0.0.5", ("10.0.0.5", None, 22)),
        ("root@[fe80::1]:2200", ("fe80::1", "root", 2200)),
        ("[::1]", ("::1", None, 22)),
    ],
)
def test_parse_ssh_target(spec, expected, tmp_path):
    t = registry.parse_ssh_target(spec, tmp_path / "no-config")
    assert (t.host, t.user, t.port) == expected


@pytest.mark.parametrize("bad", ["pi@", "@host", "pi@host:0", "pi@host:99999", "pi@host:x"])
def test_parse_ssh_target_rejects_garbage(bad, tmp_path):
    with pytest.raises(DeviceError):
        registry.parse_ssh_target(bad, tmp_path / "no-config")


def test_ssh_config_alias_is_resolved(tmp_path):
    cfg = tmp_path / "config"
    cfg.write_text(
        "Host kitchen-pi\n  HostName 192.168.1.40\n  User pi\n  Port 2022\n"
        "  IdentityFile ~/.ssh/id_pi\n\nHost *\n  User fallback\n"
    )
    t = registry.parse_ssh_target("kitchen-pi", cfg)
    assert (t.host, t.user, t.port, t.alias) == ("192.168.1.40", "pi", 2022, "kitchen-pi")
    assert t.key_path == os.path.expanduser("~/.ssh/id_pi")
    over = registry.parse_ssh_target("admin@kitchen-pi:23", cfg)  # explicit values win, as with ssh
    assert (over.user, over.port) == ("admin", 23)
    plain = registry.parse_ssh_target("10.1.1.1", cfg)
    assert (plain.host, plain.user, plain.alias) == ("10.1.1.1", "fallback", None)


# ---------------------------------------------------------------------------------- local transport


def test_local_transport_run_put_get(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    t = LocalTransport("host", workdir=str(work))
    assert t.run(["sh", "-c", "echo o; echo e >&2; exit 4"]) == (4, "o\n", "e\n")
    assert t.run(["printf", "%s", "a b; $X"]).stdout == "a b; $X"
    assert t.run(["pwd"], cwd=".").stdout.strip() == str(work)
    assert t.run(["no-such-binary-here"]).rc == 127
    with pytest.raises(TransportError, match="timed out"):
        t.run(["sleep", "5"], timeout=0.3)
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(100_000))
    t.put(src, "dst.bin")
    assert (work / "dst.bin").read_bytes() == src.read_bytes()
    t.get("dst.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
    assert [p.name for p in work.iterdir()] == ["dst.bin"]
    with pytest.raises(TransportError):
        t.put(tmp_path / "missing", "x.bin")
    assert not (work / "x.bin").exists()


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_add_list_show_group_remove(workspace):
    runner = CliRunner()

    def cli(*args: str, code: int = 0) -> str:
        result = runner.invoke(main, ["--home", str(workspace), "device", *args])
        assert result.exit_code == code, result.output
        return result.output

    assert "added local device here" in cli("add", "here", "--local", "--group", "bench")
    assert "added ssh device pi" in cli("add", "pi", "--ssh", "pi@10.0.0.5:2222")
    assert "error: device pi already exists" in cli("add", "pi", "--ssh", "pi@10.0.0.6", code=1)
    assert "exactly one of" in cli("add", "x", "--local", "--adb", "123", code=2)
    out = cli("list")
    assert "pi@10.0.0.5:2222" in out and "here" in out and "bench" in out
    cli("group", "add", "lab", "pi", "here")
    assert "lab" in cli("show", "pi")
    import json

    listed = json.loads(cli("list", "--json", "--group", "lab"))
    assert [d["name"] for d in listed] == ["here", "pi"]
    cli("group", "remove", "lab", "pi")
    assert json.loads(cli("show", "pi", "--json"))["groups"] == []
    cli("remove", "pi")
    assert "no device named 'pi'" in cli("show", "pi", code=1)


@pytest.mark.skipif(
    shutil.which("edgenas", path=str(Path(sys.executable).parent)) is None,
    reason="needs the installed edgenas entry point",
)
def test_concurrent_device_add_from_two_processes(workspace):
    exe = str(Path(sys.executable).parent / "edgenas")
    procs = [
        subprocess.Popen(
            [exe, "--home", str(workspace), "device", "add", name, "--local"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("first", "second")
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    with open_store(workspace) as store:
        assert [d.name for d in registry.list_devices(store)] == ["first", "second"]
    # And the database is intact, not merely readable.
    conn = sqlite3.connect(workspace / "edgenas.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_device_add_checks_python_and_workdir_as_an_inventory_would(tmp_path: Path) -> None:
    """`device add` takes --python and --workdir by the inventory's rules: edgenas deletes files in a
    work folder, and runs the interpreter as one program."""
    from tests.support.cli_runner import Cli

    cli = Cli(tmp_path / "ws")
    for bad in ("/", "/etc/edgenas", "/usr", "/tmp", "/home/pi", "../x", "~/edgenas"):
        out = cli("device", "add", "x", "--local", "--workdir", bad, code=2)
        assert "--workdir" in out, (bad, out)
    out = cli("device", "add", "x", "--local", "--python", "python3 -u", code=2)
    assert "--python" in out and "command line" in out
    assert "no devices" in cli("device", "list")  # nothing was registered
    cli("device", "add", "x", "--ssh", "pi@192.0.2.1", "--python", "/usr/bin/env python3",
        "--workdir", "edgenas")
    shown = json.loads(cli("device", "show", "x", "--json"))
    assert (shown["python"], shown["workdir"]) == ("python3", "edgenas")
