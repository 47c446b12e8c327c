"""Issue 24, findings 7, 8 and 10: an inventory is data that decides what edgenas runs, so importing
one must run nothing and must not smuggle a host program or an unusable folder into the registry.

Real parts only: files on disk, the real ``ansible-inventory`` (ansible-core, a test requirement), the
real CLI and a real SQLite workspace.  An inventory script here writes a marker file when it runs, so
"it did not run" is a fact checked on disk, not an assumption.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edgenas.cli import main
from edgenas.core.errors import DeviceError
from edgenas.device import inventory
from edgenas.records.store import open_store
from tests.support.ansible import needs_ansible, quiet_ansible  # noqa: F401  (autouse fixture)


def cli(home: Path, *args: str) -> Any:
    return CliRunner().invoke(main, ["--home", str(home), *args])


def device_rows(home: Path) -> list[dict[str, Any]]:
    with open_store(home) as store:
        return [dict(r) for r in store.query("SELECT * FROM devices ORDER BY name")]


# ------------------------------------------------------------------ 8: inventories that run code


def _script(tmp_path: Path, name: str = "dynamic.sh") -> tuple[Path, Path]:
    """An executable inventory that leaves a marker when it runs, and the marker's path."""
    marker = tmp_path / "script-ran"
    listing = {"pis": {"hosts": ["pi01"]}, "_meta": {"hostvars": {"pi01": {"ansible_host": "10.0.0.1"}}}}
    script = tmp_path / name
    script.write_text(
        f"#!/bin/sh\ntouch '{marker}'\ncat <<'EOF'\n{json.dumps(listing)}\nEOF\n"
    )
    script.chmod(0o755)
    return script, marker


@needs_ansible
def test_an_executable_inventory_is_not_run_without_via_ansible(tmp_path, workspace):
    script, marker = _script(tmp_path)
    result = cli(workspace, "device", "import", str(script))
    assert result.exit_code == 1, result.output
    assert "executable file" in result.output and "--via-ansible" in result.output
    assert str(script) in result.output
    assert not marker.exists(), "the inventory script was executed without --via-ansible"
    assert device_rows(workspace) == []
    # The explicit opt-in runs it, as before.
    result = cli(workspace, "device", "import", str(script), "--via-ansible")
    assert result.exit_code == 0, result.output
    assert marker.exists()
    assert [(r["name"], r["host"]) for r in device_rows(workspace)] == [("pi01", "10.0.0.1")]


@needs_ansible
def test_an_executable_file_without_a_shebang_or_with_any_name_is_a_script(tmp_path, workspace):
    """Ansible's script plugin runs any executable file: "#!" or not, ``.cfg`` or no suffix."""
    for name in ("hosts", "inventory.cfg"):
        script, marker = _script(tmp_path, name)
        with pytest.raises(DeviceError, match=r"executable file.*--via-ansible"):
            inventory.load_inventory(script, home=workspace)
        assert not marker.exists()
        script.unlink()


def test_an_executable_yaml_or_ini_inventory_is_read_as_text_not_run(tmp_path, workspace):
    """A mode from a FAT drive or a careless chmod: edgenas reads the text itself and runs nothing."""
    inv = tmp_path / "inv.yml"
    inv.write_text("#!/bin/sh\nall:\n  hosts:\n    pi01: {ansible_host: 10.0.0.2}\n")
    inv.chmod(0o755)
    (dev,) = inventory.load_inventory(inv, home=workspace, ssh_config=tmp_path / "none")
    assert (dev.name, dev.host) == ("pi01", "10.0.0.2")


@needs_ansible
@pytest.mark.parametrize("case", ["plugin", "folder", "vault-file", "vault-host-vars"])
def test_plugins_folders_and_vault_need_via_ansible(tmp_path, workspace, case):
    inv_dir = tmp_path / "inv"
    inv_dir.mkdir()
    if case == "plugin":
        path = inv_dir / "inv.yml"
        path.write_text("plugin: ansible.builtin.constructed\nstrict: true\n")
        expected = "plugin configuration"
    elif case == "folder":
        (inv_dir / "hosts.ini").write_text("pi01 ansible_host=10.0.0.3\n")
        path, expected = inv_dir, "folder of inventory sources"
    elif case == "vault-file":
        path = inv_dir / "inv.yml"
        path.write_text("$ANSIBLE_VAULT;1.1;AES256\n6162636465\n")
        expected = "vault-encrypted"
    else:
        path = inv_dir / "inv.yml"
        path.write_text("all:\n  hosts:\n    secret01: {}\n")
        (inv_dir / "host_vars").mkdir()
        (inv_dir / "host_vars" / "secret01.yml").write_text("$ANSIBLE_VAULT;1.1;AES256\n6162\n")
        expected = "vault-encrypted"
    result = cli(workspace, "device", "import", str(path))
    assert result.exit_code == 1, result.output
    assert expected in result.output and "--via-ansible" in result.output, result.output
    assert device_rows(workspace) == []


def test_without_ansible_installed_the_error_still_names_the_flag(tmp_path, workspace, monkeypatch):
    script, marker = _script(tmp_path)
    for where in ("ansible", "load"):  # each module that looks for it
        monkeypatch.setattr(f"edgenas.device.inventory.{where}.find_ansible_inventory", lambda: None)
    with pytest.raises(DeviceError, match=r"not installed .*only with --via-ansible"):
        inventory.load_inventory(script, home=workspace)
    assert not marker.exists()


# --------------------------------------------------- 7: a local device's interpreter from an inventory


def _local_inventory(tmp_path: Path, line: str) -> Path:
    inv = tmp_path / "hosts.ini"
    inv.write_text(f"[lab]\n{line}\n")
    return inv


@pytest.mark.parametrize(
    "line, key",
    [
        ("here ansible_connection=local ansible_python_interpreter=/bin/sh",
         "ansible_python_interpreter"),
        ("here edgenas_kind=local edgenas_python=/usr/bin/env", "edgenas_python"),
        ("here ansible_connection=local ansible_python_interpreter='/usr/bin/env sh'",
         "ansible_python_interpreter"),
        ("here ansible_connection=local edgenas_python=sh", "edgenas_python"),
    ],
)
def test_a_local_device_from_an_inventory_may_not_name_any_program(tmp_path, workspace, line, key):
    inv = _local_inventory(tmp_path, line)
    with pytest.raises(DeviceError) as err:
        inventory.load_inventory(inv, home=workspace)
    message = str(err.value)
    assert f"inventory {inv}:2: host here: {key}:" in message
    assert "--allow-local-python" in message and sys.executable in message
    result = cli(workspace, "device", "import", str(inv))
    assert result.exit_code == 1 and "host here" in result.output, result.output
    assert device_rows(workspace) == []


def test_the_interpreter_may_come_from_host_vars_and_the_error_names_that_file(tmp_path, workspace):
    inv = _local_inventory(tmp_path, "here ansible_connection=local")
    (tmp_path / "host_vars").mkdir()
    vars_file = tmp_path / "host_vars" / "here.yml"
    vars_file.write_text("edgenas_python: /bin/sh\n")
    with pytest.raises(DeviceError) as err:
        inventory.load_inventory(inv, home=workspace)
    assert f"inventory {vars_file}: host here: edgenas_python: '/bin/sh'" in str(err.value)


def test_a_local_device_may_name_this_python_or_one_the_user_allows(tmp_path, workspace):
    link = tmp_path / "venv-python"
    link.symlink_to(sys.executable)  # a venv's bin/python: the same program
    for value, stored in ((sys.executable, sys.executable), (str(link), str(link)),
                          ("auto", sys.executable)):
        line = f"here ansible_connection=local ansible_python_interpreter={value}"
        inv = _local_inventory(tmp_path, line)
        (dev,) = inventory.load_inventory(inv, home=workspace)
        assert (dev.kind, dev.python) == ("local", stored)
    other = tmp_path / "tfl-env" / "python3"
    other.parent.mkdir()
    shutil.copy("/bin/sh", other)  # another program, allowed by hand
    inv = _local_inventory(tmp_path, f"here ansible_connection=local edgenas_python={other}")
    with pytest.raises(DeviceError, match="edgenas_python"):
        inventory.load_inventory(inv, home=workspace)
    result = cli(workspace, "device", "import", str(inv), "--allow-local-python", str(other))
    assert result.exit_code == 0, result.output
    assert [(r["name"], r["kind"], r["python"]) for r in device_rows(workspace)] == [
        ("here", "local", str(other))
    ]


def test_a_remote_device_still_names_its_own_interpreter(tmp_path, workspace):
    line = "pi01 ansible_host=10.0.0.4 ansible_python_interpreter=/opt/tfl/bin/python"
    inv = _local_inventory(tmp_path, line)
    (dev,) = inventory.load_inventory(inv, home=workspace, ssh_config=tmp_path / "none")
    assert (dev.kind, dev.python) == ("ssh", "/opt/tfl/bin/python")


# ------------------------------------------------------------------ 10: work folders the scripts break


@pytest.mark.parametrize(
    "value, kind, words",
    [
        ("/home/pi/edge\\nas", "ssh", ["'\\\\'", "sha256sum"]),
        ("-rf", "ssh", ["'-rf'", "starts with '-'", "options"]),
        ("work/-rf", "ssh", ["'-rf'", "starts with '-'"]),
        ("/data/local/tmp/--help", "adb", ["'--help'", "starts with '-'"]),
        ("/home/pi/edge nas", "ssh", ["' '"]),
        ("/home/pi/it's", "ssh", ['"\'"']),
        ('/home/pi/a"b', "ssh", ["'\"'"]),
        ("/home/pi/a;rm", "ssh", ["';'"]),
        ("/home/pi/a*", "local", ["'*'"]),
        ("/home/pi/a\nb", "ssh", ["control characters"]),
    ],
)
def test_workdirs_the_device_scripts_cannot_take_are_refused(value, kind, words):
    with pytest.raises(ValueError) as err:
        inventory.validate_workdir(value, kind)
    for word in words:
        assert word in str(err.value)


def test_plain_workdirs_are_still_accepted():
    for value in ("edgenas", "work/edge-nas_1.2+x@y,z:w=v", "/home/pi/edgenas-v2", "/data/local/tmp/e"):
        kind = "ssh" if not value.startswith("/data") else "adb"
        assert inventory.validate_workdir(value, kind) == value


def test_a_bad_workdir_in_an_inventory_names_host_variable_and_file(tmp_path, workspace):
    inv = tmp_path / "hosts.ini"
    inv.write_text("[pis]\npi01 ansible_host=10.0.0.5 edgenas_workdir=-rf\n")
    result = cli(workspace, "device", "import", str(inv))
    assert result.exit_code == 1
    assert f"inventory {inv}:2: host pi01: edgenas_workdir: '-rf'" in result.output, result.output
    assert device_rows(workspace) == []


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="GNU sha256sum not installed")
def test_why_a_backslash_breaks_uploads_gnu_sha256sum_escapes_the_name(tmp_path):
    """The fact behind the rule: the device's listing of a file in such a folder starts with '\\', so
    its sha256 never matches the host's and every upload would be reported as corrupt."""
    folder = tmp_path / "edge\\nas"
    folder.mkdir()
    (folder / "runner.pyz").write_bytes(b"x")
    out = subprocess.run(["sha256sum", str(folder / "runner.pyz")], capture_output=True, text=True,
                         check=True, env=dict(os.environ, LC_ALL="C")).stdout
    assert out.startswith("\\")
    with pytest.raises(ValueError, match="sha256sum"):
        inventory.validate_workdir(str(folder), "local")
