"""``edgenas device …`` end to end against the test fleet: add / list / probe / setup / check / remove
for SSH, ADB and local devices, ssh_config aliases and Ansible inventories."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgenas.cli import main

pytestmark = [pytest.mark.fleet, pytest.mark.usefixtures("user_home")]


class Cli:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int = 0) -> str:
        result = self.runner.invoke(main, ["--home", str(self.home), "device", *args])
        assert result.exit_code == code, result.output + repr(result.exception)
        return result.output

    def json(self, *args: str, code: int = 0) -> object:
        out = self(*args, "--json", code=code)
        return json.loads(out[: out.rindex("]" if out.lstrip().startswith("[") else "}") + 1])


@pytest.fixture
def cli(workspace: Path) -> Cli:
    return Cli(workspace)


def ssh_args(dev) -> list[str]:
    return ["--ssh", dev.target, "--key", str(dev.client_key), "--python", dev.python]


def test_ssh_device_add_list_probe_setup_remove(fleet, cli):
    dev = fleet.ssh["ssh1"]
    out = cli("add", "pi", *ssh_args(dev), "--accept-new-host-key", "--group", "lab")
    assert dev.fingerprint in out and "now trusted" in out
    listed = cli.json("list")
    assert [(d["name"], d["kind"], d["host_key_fingerprint"]) for d in listed] == [
        ("pi", "ssh", dev.fingerprint)
    ]
    probe = cli.json("probe", "pi")["pi"]
    assert probe["arch"] and probe["cores"] >= 1 and probe["mem_total_mib"] > 0 and probe["os"]
    assert probe["python"] == dev.python and probe["python_version"].startswith("3.")
    assert probe["runtime"] == "ai_edge_litert" and probe["runtimes"]["ai_edge_litert"]["version"]
    assert int(probe["numpy"].split(".")[0]) >= 2
    assert "ai_edge_litert" in cli("show", "pi")
    out = cli("setup", "pi")
    assert "runner ready" in out and "litert" in out
    assert (dev.workdir / "runner.pyz").is_file()
    cli("remove", "pi")
    assert cli.json("list") == []
    assert (cli.home / "known_hosts").read_text().strip() == ""  # its host key is forgotten too


def test_ssh_device_without_the_flag_is_refused_on_first_use(fleet, cli):
    dev = fleet.ssh["ssh2"]
    out = cli("add", "pi2", *ssh_args(dev))
    assert "host key not checked yet" in out
    out = cli("probe", "pi2", code=1)
    assert "unknown SSH host key" in out and dev.fingerprint in out


def test_tflite_runtime_device_probe_and_setup(fleet, cli):
    dev = fleet.ssh["ssh2"]
    cli("add", "old-pi", *ssh_args(dev), "--accept-new-host-key")
    probe = cli.json("probe", "old-pi")["old-pi"]
    assert (
        probe["runtime"] == "tflite_runtime"
        and probe["runtimes"]["tflite_runtime"]["version"] == "2.14.0"
    )
    assert int(probe["numpy"].split(".")[0]) == 1
    assert probe["runtimes"]["ai_edge_litert"]["importable"] is False
    assert "tflite_runtime 2.14.0" in cli("setup", "old-pi")


def test_adb_device_add_probe_setup_remove(fleet, cli):
    dev = fleet.adb["adb1"]
    workdir = str(dev.root / "edgenas")
    out = cli("add", "phone", "--adb", dev.serial, "--workdir", workdir, "--python", dev.python)
    assert f"added adb device phone ({dev.serial})" in out
    probe = cli.json("probe", "phone")["phone"]
    assert probe["runtime"] == "tflite_runtime" and probe["arch"]
    assert "runner ready" in cli("setup", "phone")
    assert (dev.root / "edgenas" / "runner.pyz").is_file()
    cli("remove", "phone")
    assert cli.json("list") == []


def test_setup_without_runtime_says_exactly_what_to_install(fleet, cli):
    dev = fleet.adb["adb1"]
    cli(
        "add",
        "bare",
        "--adb",
        dev.serial,
        "--workdir",
        str(dev.root / "bare"),
        "--python",
        "/usr/bin/python3",
    )
    out = cli("setup", "bare", code=1)
    assert "no TFLite runtime is usable" in out and "pip install ai-edge-litert" in out
    cli(
        "add",
        "nopy",
        "--adb",
        dev.serial,
        "--workdir",
        str(dev.root / "nopy"),
        "--python",
        "/no/python3",
    )
    out = cli("setup", "nopy", code=1)
    assert "no Python at '/no/python3'" in out and "install Python 3" in out


def test_local_device_add_probe_remove(cli):
    cli("add", "host", "--local")
    probe = cli.json("probe", "host")["host"]
    assert probe["cores"] >= 1 and probe["python_version"]
    assert probe["runtimes"]["tflite_runtime"]["importable"] is False  # never beside this env's numpy 2
    cli("remove", "host")
    assert "no devices" in cli("list")


def test_ssh_config_alias_add_and_probe(fleet, cli, user_home):
    dev = fleet.ssh["ssh2"]
    (user_home / ".ssh" / "config").write_text(
        f"Host bench-pi\n  HostName {dev.host}\n  User {dev.user}\n  Port {dev.port}\n"
        f"  IdentityFile {dev.client_key}\n"
    )
    cli("add", "aliased", "--ssh", "bench-pi", "--python", dev.python, "--accept-new-host-key")
    shown = cli.json("show", "aliased")
    assert (shown["host"], shown["user"], shown["port"], shown["ssh_alias"]) == (
        dev.host,
        dev.user,
        dev.port,
        "bench-pi",
    )
    assert shown["key_path"] == str(dev.client_key)
    assert cli.json("probe", "aliased")["aliased"]["runtime"] == "tflite_runtime"


def test_ansible_inventory_import_then_probe_a_group(fleet, cli, tmp_path):
    one, two = fleet.ssh["ssh1"], fleet.ssh["ssh2"]
    inv = tmp_path / "inventory.yml"
    inv.write_text(f"""
all:
  vars:
    ansible_ssh_private_key_file: {one.client_key}
  children:
    pis:
      children:
        pi5:
          hosts:
            lab-a:
              ansible_host: {one.host}
              ansible_port: {one.port}
              ansible_user: {one.user}
              ansible_python_interpreter: {one.python}
        pi3:
          hosts:
            lab-b:
              ansible_host: {two.host}
              ansible_port: {two.port}
              ansible_user: {two.user}
              edgenas_python: {two.python}
""")
    out = cli("import", str(inv), "--accept-new-host-key")
    assert "2 added" in out
    groups = {d["name"]: d["groups"] for d in cli.json("list")}
    assert groups == {"lab-a": ["pi5", "pis"], "lab-b": ["pi3", "pis"]}
    probes = cli.json("probe", "pis")
    assert {n: p["runtime"] for n, p in probes.items()} == {
        "lab-a": "ai_edge_litert",
        "lab-b": "tflite_runtime",
    }


def test_check_probes_in_parallel_and_reports_a_blackholed_device(fleet, cli):
    victim, adb = fleet.ssh["victim"], fleet.adb["adb1"]
    cli("add", "here", "--local")
    cli("add", "ok-ssh", *ssh_args(fleet.ssh["ssh2"]), "--accept-new-host-key")
    cli("add", "phone", "--adb", adb.serial, "--python", adb.python, "--workdir", str(adb.root))
    cli("add", "gone", *ssh_args(victim), "--accept-new-host-key", "--timeout", "2")
    with fleet.blackhole(victim):
        t0 = time.monotonic()
        rows = {r["name"]: r for r in cli.json("check", code=1)}
        elapsed = time.monotonic() - t0
    assert {n: r["ok"] for n, r in rows.items()} == {
        "gone": False,
        "here": True,
        "ok-ssh": True,
        "phone": True,
    }
    assert "no answer within 2 s" in rows["gone"]["error"]
    assert elapsed < 15
    assert rows["ok-ssh"]["probe"]["rtt_ms"] < 100
    table = cli("check", "here", "ok-ssh")
    assert "ok-ssh" in table and "FAIL" not in table and "tflite_runtime" in table
