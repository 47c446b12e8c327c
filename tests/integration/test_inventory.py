"""``edgenas device import`` against Ansible's own reading of the same files.

Every well-formed inventory here is also read by the real ``ansible-inventory`` (ansible-core, a test
requirement): groups, hosts and merged host vars must match, and importing through ``--via-ansible``
must give the same devices as edgenas' own reader.  Every bad inventory must fail with one line that
names the file, the host and the variable, and leave the device table as it was.
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

REPO = Path(__file__).resolve().parents[2]
ELF = Path(sys.executable).resolve()  # a real ELF executable to stand in for benchmark_model

def ansible_list(path: Path, *extra: str) -> Any:
    exe = inventory.find_ansible_inventory()
    assert exe
    env = dict(os.environ, ANSIBLE_INVENTORY_UNPARSED_FAILED="1")
    out = subprocess.run(
        [exe, "-i", str(path), *(extra or ("--list",))], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def normalized(view: dict[str, Any]) -> dict[str, Any]:
    """Groups (direct hosts and children as sets, empty ones dropped) and hostvars, for comparing."""
    hostvars = view.get("_meta", {}).get("hostvars", {})
    groups = {
        name: (sorted(body.get("hosts", [])), sorted(body.get("children", [])))
        for name, body in view.items()
        if name != "_meta" and (body.get("hosts") or body.get("children"))
    }
    return {"groups": groups, "hostvars": {h: v for h, v in hostvars.items() if v}}


def assert_same_as_ansible(path: Path, home: Path) -> list[Any]:
    """edgenas' reading of ``path`` equals ansible-inventory's, in the view and as devices."""
    assert normalized(inventory.inventory_view(path)) == normalized(ansible_list(path))
    native = inventory.load_inventory(path, home=home, ssh_config=home / "none")
    through = inventory.load_inventory(path, home=home, ssh_config=home / "none", via_ansible=True)
    assert [d.to_dict() for d in native] == [d.to_dict() for d in through]
    return native


def cli(home: Path, *args: str) -> Any:
    return CliRunner().invoke(main, ["--home", str(home), *args])


def device_rows(home: Path) -> list[dict[str, Any]]:
    with open_store(home) as store:
        return [dict(r) for r in store.query("SELECT * FROM devices ORDER BY name")]


# ------------------------------------------------------------------------------------- YAML, moved


YAML_INVENTORY = """
all:
  vars:
    ansible_user: root
    edgenas_timeout: 7
  hosts:
    laptop:
      ansible_connection: local
  children:
    pis:
      vars:
        ansible_user: pi
        ansible_python_interpreter: /usr/bin/python3
      hosts:
        pi[01:03]:
          ansible_port: 2222
        pi-special:
          ansible_host: 10.9.9.9
          ansible_user: admin
          ansible_ssh_private_key_file: /keys/special
      children:
        pi4:
          hosts:
            pi02:
              ansible_host: 10.0.0.2
    phones:
      hosts:
        pixel:
          edgenas_kind: adb
          edgenas_serial: 10.0.0.50:5555
"""


@needs_ansible
def test_yaml_inventory_hosts_groups_children_and_vars(tmp_path, workspace):
    inv = tmp_path / "inventory.yml"
    inv.write_text(YAML_INVENTORY)
    devs = {d.name: d for d in assert_same_as_ansible(inv, workspace)}
    assert sorted(devs) == ["laptop", "pi-special", "pi01", "pi02", "pi03", "pixel"]
    assert devs["laptop"].kind == "local"
    pi02 = devs["pi02"]
    assert (pi02.kind, pi02.host, pi02.user, pi02.port) == ("ssh", "10.0.0.2", "pi", 2222)
    assert pi02.groups == ["pi4", "pis"] and pi02.python == "/usr/bin/python3" and pi02.timeout_s == 7
    assert (devs["pi01"].host, devs["pi01"].groups) == ("pi01", ["pis"])
    special = devs["pi-special"]
    assert (special.host, special.user, special.port, special.key_path) == (
        "10.9.9.9", "admin", 22, "/keys/special",
    )
    assert (devs["pixel"].kind, devs["pixel"].serial, devs["pixel"].groups) == (
        "adb", "10.0.0.50:5555", ["phones"],
    )
    with open_store(workspace) as store:
        added, updated = inventory.import_inventory(store, devs.values())
        assert len(added) == 6 and updated == []
        added, updated = inventory.import_inventory(store, devs.values())
        assert added == [] and len(updated) == 6


def test_yaml_group_that_is_not_a_mapping_is_a_clear_error(tmp_path, workspace):
    inv = tmp_path / "bad.yml"
    inv.write_text("all:\n  hosts: [a, b]\n")
    with pytest.raises(DeviceError, match="bad.yml"):
        inventory.load_inventory(inv, home=workspace)


# ------------------------------------------------------------------------------------------- INI

INI_INVENTORY = """\
# an INI inventory, Ansible's default format
laptop ansible_connection=local
10.0.0.7:2200 ansible_user=ops   # the port from the pattern

[pis]
pi[01:03] ansible_port=2222
pi-special ansible_host=10.9.9.9 ansible_user=admin ansible_ssh_private_key_file=/keys/special
node[a:c]
w[01:09:4]   # w01 w05 w09

[pis:vars]
ansible_user=pi
ansible_python_interpreter=/usr/bin/env python3
edgenas_timeout=7.5

[pi4]
pi02 ansible_host=10.0.0.2

[pis:children]
pi4

[phones]
pixel edgenas_kind=adb edgenas_serial="10.0.0.50:5555" edgenas_workdir=/data/local/tmp/edgenas

[fleet:children]
pis
phones
"""


@needs_ansible
def test_ini_inventory_matches_ansible(tmp_path, workspace):
    inv = tmp_path / "hosts"  # no extension, as /etc/ansible/hosts
    inv.write_text(INI_INVENTORY)
    devs = {d.name: d for d in assert_same_as_ansible(inv, workspace)}
    assert sorted(devs) == [
        "10.0.0.7", "laptop", "nodea", "nodeb", "nodec", "pi-special", "pi01", "pi02", "pi03",
        "pixel", "w01", "w05", "w09",
    ]
    assert (devs["10.0.0.7"].port, devs["10.0.0.7"].user, devs["10.0.0.7"].groups) == (2200, "ops", [])
    pi02 = devs["pi02"]
    assert (pi02.host, pi02.user, pi02.port) == ("10.0.0.2", "pi", 2222)
    assert pi02.groups == ["fleet", "pi4", "pis"]
    # `/usr/bin/env python3` is one program (python3, looked up on PATH), not a file named "env python3".
    assert pi02.python == "python3" and pi02.timeout_s == 7.5
    assert (devs["pi-special"].user, devs["pi-special"].key_path) == ("admin", "/keys/special")
    assert (devs["pixel"].kind, devs["pixel"].serial, devs["pixel"].workdir) == (
        "adb", "10.0.0.50:5555", "/data/local/tmp/edgenas",
    )
    assert devs["laptop"].kind == "local" and devs["nodeb"].groups == ["fleet", "pis"]


@needs_ansible
def test_host_patterns_expand_as_ansible_expands_them(tmp_path):
    patterns = ["db[1:3]", "r[01:02]-n[a:b]", "x[0:10:5]", "y[:2]", "[a:C]z", "w[08:10]"]
    inv = tmp_path / "ranges.ini"
    inv.write_text("[g]\n" + "\n".join(patterns) + "\n")
    ansible_hosts = sorted(ansible_list(inv)["g"]["hosts"])
    ours = sorted(h for p in patterns for h in inventory.expand_host_pattern(p)[0])
    assert ours == ansible_hosts
    assert inventory.expand_host_pattern("x[0:10:5]")[0] == ["x0", "x5", "x10"]
    assert inventory.expand_host_pattern("pi[01:04]:2222") == (["pi01", "pi02", "pi03", "pi04"], 2222)
    assert inventory.expand_host_pattern("[fe80::1]:22") == (["fe80::1"], 22)


def test_huge_range_is_refused_before_expansion():
    for pattern in ("pi[0:99999999]", "a[0:999]b[0:999]", "n[0:99999999999999999999999]"):
        with pytest.raises(DeviceError, match="at most 10000 per pattern"):
            inventory.expand_host_pattern(pattern)
    for pattern, message in [
        ("pi[5:1:0]", "step"), ("pi[01:100]", "equal length"), ("pi[1:2", "without"),
        ("pi[a:5]", "numbers"), ("pi[z:a]", "begin <= end"), ("pi[1:2:3:4]", "begin:end"),
    ]:
        with pytest.raises(DeviceError, match=message):
            inventory.expand_host_pattern(pattern)


# ----------------------------------------------------------------------- group_vars, precedence

PRECEDENCE = """
all:
  vars: {a: all-inv, b: all-inv, c: all-inv}
  children:
    parent:
      vars: {b: parent-inv, c: parent-inv}
      children:
        child:
          vars: {b: child-inv, c: child-inv}
          hosts:
            h1: {e: h1-inv, f: h1-inv}
    alpha: {vars: {s: alpha}, hosts: {h1: {}}}
    beta: {vars: {s: beta}, hosts: {h1: {}}}
    prio: {vars: {ansible_group_priority: 10, q: prio}, hosts: {h1: {}}}
    zeta: {vars: {q: zeta}, hosts: {h1: {}}}
    other: {hosts: {h2: {ansible_port: 2201}}}
"""


@needs_ansible
@pytest.mark.parametrize("fmt", ["yaml", "ini"])
def test_group_vars_host_vars_and_precedence_match_ansible(tmp_path, workspace, fmt):
    if fmt == "yaml":
        inv = tmp_path / "inventory.yml"
        inv.write_text(PRECEDENCE)
    else:
        inv = tmp_path / "inventory.ini"
        inv.write_text(
            "[all:vars]\na=all-inv\nb=all-inv\nc=all-inv\n"
            "[parent:children]\nchild\n[parent:vars]\nb=parent-inv\nc=parent-inv\n"
            "[child]\nh1 e=h1-inv f=h1-inv\n[child:vars]\nb=child-inv\nc=child-inv\n"
            "[alpha]\nh1\n[alpha:vars]\ns=alpha\n[beta]\nh1\n[beta:vars]\ns=beta\n"
            "[prio]\nh1\n[prio:vars]\nansible_group_priority=10\nq=prio\n[zeta]\nh1\n[zeta:vars]\nq=zeta\n"
            "[other]\nh2 ansible_port=2201\n"
        )
    gv, hv = tmp_path / "group_vars", tmp_path / "host_vars"
    (gv / "parent").mkdir(parents=True)
    hv.mkdir()
    (gv / "all.yml").write_text("c: all-file\nd: all-file\n")  # beats every inventory group var
    (gv / "parent" / "01.yml").write_text("d: parent-01\ne: parent-01\n")
    (gv / "parent" / "02.yaml").write_text("d: parent-02\n")  # later file in the folder wins
    (gv / "parent" / "notes.txt").write_text("d: ignored\n")  # not a vars extension: ignored
    (gv / "other.yml").write_text("ansible_user: from-group-file\n")
    (gv / "other.yaml").write_text("ansible_user: ignored\n")  # .yml is found first
    (hv / "h1").write_text("f: h1-file\n")  # no extension
    (hv / "h2.yml").write_text("ansible_port: '2202'\n")  # host_vars beat inventory host vars
    for name in ("h1", "h2"):
        ours = inventory.inventory_view(inv)["_meta"]["hostvars"][name]
        assert ansible_list(inv, "--host", name) == ours
    assert_same_as_ansible(inv, workspace)
    v = inventory.inventory_view(inv)["_meta"]["hostvars"]["h1"]
    assert (v["a"], v["b"], v["c"], v["d"], v["e"], v["f"]) == (
        "all-inv", "child-inv", "all-file", "parent-02", "h1-inv", "h1-file",
    )
    assert (v["s"], v["q"]) == ("beta", "prio") and "ansible_group_priority" not in v
    h2 = {d.name: d for d in inventory.load_inventory(inv, home=workspace)}["h2"]
    assert (h2.port, h2.user) == (2202, "from-group-file")


# ------------------------------------------------------------------------------ bad inventories

GOOD_HOST = "    good01: {ansible_host: 10.0.0.1}\n"


def _yaml(host_vars: str, group_vars: str = "") -> str:
    gv = f"  vars: {{{group_vars}}}\n" if group_vars else ""
    return f"all:\n{gv}  hosts:\n{GOOD_HOST}    pi01: {{{host_vars}}}\n"


BAD = [
    # (file name, content, extra files, expected fragments of the one error line)
    ("inv.yml", _yaml('ansible_port: "22abc"'), {}, ["inv.yml", "host pi01", "ansible_port", "22abc"]),
    ("inv.yml", _yaml("ansible_port: 70000"), {}, ["host pi01", "ansible_port", "out of range"]),
    ("inv.yml", _yaml(""), {"group_vars/all.yml": "ansible_port: nope\n"},
     ["group_vars/all.yml", "host good01", "ansible_port"]),
    ("inv.ini", "[g]\npi01 ansible_port=22abc\n", {}, ["inv.ini:2", "host pi01", "ansible_port"]),
    ("inv.yml", "all:\n  hosts:\n    pi[0:99999999]: {}\n", {}, ["pi[0:99999999]", "at most 10000"]),
    ("inv.ini", "[g]\npi[0:99999999]\n", {}, ["inv.ini:2", "100000000 hosts"]),
    ("inv.yml", _yaml("ansible_python_interpreter: /usr/bin/env -S python3 -u"), {},
     ["host pi01", "ansible_python_interpreter", "command line"]),
    ("inv.yml", _yaml("edgenas_python: python3 -X utf8"), {}, ["edgenas_python", "command line"]),
    ("inv.yml", _yaml("edgenas_workdir: /"), {}, ["host pi01", "edgenas_workdir", "top-level"]),
    ("inv.yml", _yaml("edgenas_workdir: ."), {}, ["edgenas_workdir", "home"]),
    ("inv.yml", _yaml("edgenas_workdir: /home/pi"), {}, ["edgenas_workdir", "home folder"]),
    ("inv.yml", _yaml("edgenas_workdir: /root/"), {}, ["edgenas_workdir", "shared or top-level"]),
    ("inv.yml", _yaml("edgenas_workdir: /etc/edgenas"), {}, ["edgenas_workdir", "system folder"]),
    ("inv.yml", _yaml("edgenas_workdir: /usr"), {}, ["edgenas_workdir", "system folder"]),
    ("inv.yml", _yaml("edgenas_workdir: work/../../x"), {}, ["edgenas_workdir", "'..'"]),
    ("inv.yml", _yaml("edgenas_workdir: ~/edgenas"), {}, ["edgenas_workdir", "not expanded"]),
    ("inv.yml", _yaml("edgenas_kind: adb, edgenas_workdir: tmp/x"), {}, ["must be absolute"]),
    ("inv.yml", _yaml("edgenas_benchmark_binary: /etc/passwd"), {},
     ["edgenas_benchmark_binary", "outside"]),
    ("inv.yml", _yaml("edgenas_benchmark_binary: notes.txt"), {"notes.txt": "hello\n"},
     ["edgenas_benchmark_binary", "not an ELF"]),
    ("inv.yml", _yaml("edgenas_benchmark_binary: bin"), {"bin/x": ""}, ["not a regular file"]),
    ("inv.yml", _yaml("edgenas_benchmark_binary: missing"), {}, ["edgenas_benchmark_binary", "No such"]),
    ("inv.yml", _yaml("ansible_host: '-oProxyCommand=x'"), {}, ["ansible_host", "host name"]),
    ("inv.yml", _yaml("ansible_user: 'a b'"), {}, ["ansible_user"]),
    ("inv.yml", _yaml("edgenas_timeout: soon"), {}, ["edgenas_timeout", "seconds"]),
    ("inv.yml", _yaml("edgenas_latency_ms: -3"), {}, ["edgenas_latency_ms", "positive"]),
    ("inv.yml", _yaml("edgenas_latency_ms: fast"), {}, ["edgenas_latency_ms", "milliseconds"]),
    ("inv.yml", _yaml("edgenas_class: ../pi4"), {}, ["edgenas_class", "invalid device class"]),
    ("inv.yml", _yaml("edgenas_kind: winrm"), {}, ["edgenas_kind", "unknown"]),
    ("inv.yml", _yaml("ansible_connection: winrm"), {}, ["ansible_connection", "edgenas_skip"]),
    ("inv.yml", _yaml("ansible_host: '{{ inventory_hostname }}.lan'"), {}, ["ansible_host", "Jinja"]),
    ("inv.yml", "all:\n  hosts:\n    'bad name': {}\n", {}, ["bad name", "invalid device name"]),
    ("inv.yml", "all: &a\n  children:\n    x: *a\n", {}, ["nested too deep"]),
    ("inv.ini", "[g:vars]\nx=1\n", {}, ["inv.ini:1", "[g:vars]", "undefined group"]),
    ("inv.ini", "[a:children]\nb\n[b:children]\na\n", {}, ["loop"]),
    ("inv.ini", "[g]\npi01 ansible_port\n", {}, ["inv.ini:2", "key=value"]),
    ("inv.ini", "[g b]\n", {}, ["inv.ini:1", "invalid section"]),
    ("inv.ini", "[g:hostz]\n", {}, ["unknown type"]),
]


@pytest.mark.parametrize("name,content,files,fragments", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_inventory_is_one_clear_line_and_imports_nothing(
    tmp_path, workspace, name, content, files, fragments
):
    # A device registered before must survive a failed import unchanged.
    good = tmp_path / "good.yml"
    good.write_text("all:\n  hosts:\n    keep: {ansible_host: 10.0.0.99}\n")
    assert cli(workspace, "device", "import", str(good)).exit_code == 0
    before = device_rows(workspace)
    inv = tmp_path / "inv" / name
    inv.parent.mkdir()
    inv.write_text(content)
    for rel, text in files.items():
        (inv.parent / rel).parent.mkdir(parents=True, exist_ok=True)
        (inv.parent / rel).write_text(text)
    result = cli(workspace, "device", "import", str(inv))
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: inventory "), result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert device_rows(workspace) == before


def test_interpreter_and_workdir_accepted_forms():
    assert inventory.python_command("/usr/bin/env python3") == "python3"
    assert inventory.python_command("env python3.11") == "python3.11"
    assert inventory.python_command("'/opt/my env/bin/python'") == "/opt/my env/bin/python"
    assert inventory.python_command("auto_silent") is None
    with pytest.raises(ValueError, match="command line"):
        inventory.python_command("/usr/bin/env PYTHONPATH=x python3")
    assert inventory.validate_workdir("edgenas/", "ssh") == "edgenas"
    assert inventory.validate_workdir("/home/pi/edgenas", "ssh") == "/home/pi/edgenas"
    assert inventory.validate_workdir("/data/local/tmp/edgenas", "adb") == "/data/local/tmp/edgenas"
    for bad in ("/data/local/tmp", "/tmp", "/data/data/com.termux", "/var", "/sys/x", "//"):
        with pytest.raises(ValueError):
            inventory.validate_workdir(bad, "adb")


def test_benchmark_binary_inside_the_inventory_or_an_allowed_folder(tmp_path, workspace):
    inv_dir, tools = tmp_path / "inv", tmp_path / "tools"
    (inv_dir / "bin").mkdir(parents=True)
    tools.mkdir()
    shutil.copy(ELF, inv_dir / "bin" / "benchmark_model")
    shutil.copy(ELF, tools / "benchmark_model")
    (inv_dir / "escape").symlink_to(tools / "benchmark_model")  # a symlink pointing outside
    inv = inv_dir / "inv.yml"
    inv.write_text(
        "all:\n  hosts:\n"
        "    phone1: {edgenas_kind: adb, edgenas_benchmark_binary: bin/benchmark_model}\n"
        "    phone2: {edgenas_kind: adb, edgenas_benchmark_binary: escape}\n"
    )
    with pytest.raises(DeviceError, match=r"host phone2: edgenas_benchmark_binary: .*outside"):
        inventory.load_inventory(inv, home=workspace)
    devs = {d.name: d for d in inventory.load_inventory(inv, home=workspace, binary_dirs=[tools])}
    assert devs["phone1"].benchmark_binary == str(inv_dir / "bin" / "benchmark_model")
    assert devs["phone2"].benchmark_binary == str(inv_dir / "escape")
    result = cli(workspace, "device", "import", str(inv), "--binary-dir", str(tools))
    assert result.exit_code == 0, result.output
    assert {r["name"]: r["benchmark_binary"] for r in device_rows(workspace)}["phone1"].endswith(
        "bin/benchmark_model"
    )


# ---------------------------------------------------------------------------- through ansible


@needs_ansible
def test_dynamic_inventory_script_and_vault_are_read_through_ansible(tmp_path, workspace, monkeypatch):
    script = tmp_path / "dynamic.sh"
    listing = {
        "pis": {"hosts": ["pi01", "pi02"], "vars": {"ansible_user": "pi"}},
        "_meta": {"hostvars": {"pi01": {"ansible_host": "10.0.0.1"}, "pi02": {"ansible_port": 2202}}},
    }
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{json.dumps(listing)}\nEOF\n")
    script.chmod(0o755)
    result = cli(workspace, "device", "import", str(script), "--via-ansible")  # a script runs: opt in
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in device_rows(workspace)}
    assert (rows["pi01"]["host"], rows["pi01"]["user"], rows["pi02"]["port"]) == ("10.0.0.1", "pi", 2202)

    # A vault-encrypted host_vars file: read through ansible-inventory when the user asks for it.
    inv_dir = tmp_path / "vaulted"
    (inv_dir / "host_vars").mkdir(parents=True)
    (inv_dir / "inv.yml").write_text("all:\n  hosts:\n    secret01: {}\n")
    secret = inv_dir / "host_vars" / "secret01.yml"
    secret.write_text("ansible_host: 10.7.7.7\nansible_user: vaulted\n")
    password = tmp_path / "vault-pass"
    password.write_text("s3cret\n")
    monkeypatch.setenv("ANSIBLE_VAULT_PASSWORD_FILE", str(password))
    vault = Path(inventory.find_ansible_inventory()).with_name("ansible-vault")
    subprocess.run([str(vault), "encrypt", str(secret)], check=True, capture_output=True)
    assert secret.read_text().startswith("$ANSIBLE_VAULT;")
    with pytest.raises(DeviceError, match="vault-encrypted: edgenas reads it through ansible-inventory"):
        inventory.load_inventory(inv_dir / "inv.yml", home=workspace, ansible_inventory="/nonexistent")
    (dev,) = inventory.load_inventory(inv_dir / "inv.yml", home=workspace, via_ansible=True)
    assert (dev.host, dev.user) == ("10.7.7.7", "vaulted")


@needs_ansible
def test_bad_values_from_ansible_are_still_refused(tmp_path, workspace):
    script = tmp_path / "dynamic.sh"
    listing = {"g": {"hosts": ["pi01"]}, "_meta": {"hostvars": {"pi01": {"ansible_port": "22abc"}}}}
    script.write_text(f"#!/bin/sh\necho '{json.dumps(listing)}'\n")
    script.chmod(0o755)
    result = cli(workspace, "device", "import", str(script), "--via-ansible")
    assert result.exit_code == 1 and "host pi01: ansible_port" in result.output, result.output
    assert device_rows(workspace) == []


def test_ansible_json_is_validated_as_untrusted(tmp_path):
    src = tmp_path / "x"
    bad = [
        ([], "JSON object"),
        ({"g": {"hosts": "pi01"}}, "list of names"),
        ({"g": {"hosts": [1, 2]}}, "list of names"),
        ({"g": {"children": "nope"}}, "list of names"),
        ({"g": {"vars": []}}, "vars must be an object"),
        ({"_meta": {"hostvars": {"pi01": "x"}}}, "expected an object"),
        ({"_meta": []}, "_meta.hostvars"),
        ({"g": {"hosts": [f"h{i}" for i in range(inventory.MAX_HOSTS + 1)]}}, "more than 10000 hosts"),
    ]
    for data, message in bad:
        with pytest.raises(DeviceError, match=message):
            inventory.parse_ansible_json(data, src, "ansible-inventory -i x")


def test_missing_ansible_inventory_is_a_clear_error(tmp_path, workspace, monkeypatch):
    script = tmp_path / "dynamic.py"
    script.write_text("#!/usr/bin/env python3\nprint('{}')\n")
    script.chmod(0o755)
    for where in ("ansible", "load"):  # each module that looks for it
        monkeypatch.setattr(f"edgenas.device.inventory.{where}.find_ansible_inventory", lambda: None)
    with pytest.raises(DeviceError, match="inventory script.*ansible-inventory, which is not installed"):
        inventory.load_inventory(script, home=workspace)


# ----------------------------------------------------------------------------------- examples


@needs_ansible
def test_example_inventories_import_and_agree(workspace):
    yml = assert_same_as_ansible(REPO / "deploy" / "inventory.example.yml", workspace)
    ini = assert_same_as_ansible(REPO / "deploy" / "inventory.example.ini", workspace)
    assert [d.to_dict() for d in yml] == [d.to_dict() for d in ini]
    by_name = {d.name: d for d in yml}
    assert sorted(by_name) == ["galaxy-a14", "pi-garage", "pi01", "pi02", "pi03", "pi04", "pixel7"]
    assert by_name["pi03"].python == "/home/pi/tfl32/bin/python" and "pi3" in by_name["pi03"].groups
    assert by_name["pixel7"].kind == "adb" and "canary" in by_name["pixel7"].groups
    assert (by_name["pi-garage"].host, by_name["pi-garage"].port) == ("10.0.0.9", 2222)


def _registry(workspace: Path) -> list[tuple]:
    """Everything the registry holds about devices, as plain tuples (groups included)."""
    from edgenas.device.registry import list_devices

    with open_store(workspace) as store:
        return [(d.name, d.kind, d.host, d.user, d.port, tuple(d.groups)) for d in list_devices(store)]


def test_import_is_one_transaction_a_failure_midway_changes_nothing(workspace):
    """Devices are written in one transaction: when the database refuses one in the middle (here a
    row its CHECK constraint rejects) or the user interrupts, the devices before it (new ones and
    updates of existing ones) are not left behind; a corrected import then completes."""
    from edgenas.device.registry import Device

    def ssh(name: str, user: str, groups: list[str]) -> Device:
        return Device(name=name, kind="ssh", host=f"{name}.lan", user=user, port=22, groups=groups)

    with open_store(workspace) as store:
        inventory.import_inventory(store, [ssh("pi1", "pi", ["pis"]), ssh("pi2", "pi", ["pis"])])
    before = _registry(workspace)
    assert [row[0] for row in before] == ["pi1", "pi2"]
    refused = Device(name="bad", kind="telnet", host="bad.lan")  # the schema allows ssh/adb/local
    batch = [ssh("pi1", "admin", ["pis", "lab"]), ssh("pi3", "pi", ["pis"]), refused,
             ssh("pi4", "pi", ["pis"])]
    with open_store(workspace) as store, pytest.raises(DeviceError) as err:
        inventory.import_inventory(store, batch)
    assert "at device bad" in str(err.value) and "nothing was changed" in str(err.value)
    assert "\n" not in str(err.value)
    assert _registry(workspace) == before

    def interrupted():  # Ctrl-C after two devices were written
        yield ssh("pi1", "admin", ["pis"])
        yield ssh("pi5", "pi", [])
        raise KeyboardInterrupt

    with open_store(workspace) as store, pytest.raises(KeyboardInterrupt):
        inventory.import_inventory(store, interrupted())
    assert _registry(workspace) == before

    with open_store(workspace) as store:
        added, updated = inventory.import_inventory(store, [d for d in batch if d is not refused])
    assert (added, updated) == (["pi3", "pi4"], ["pi1"])
    after = {row[0]: row for row in _registry(workspace)}
    assert after["pi1"][3] == "admin" and after["pi1"][5] == ("lab", "pis")


def test_budget_and_class_variables_reach_the_registry(tmp_path, workspace):
    """``edgenas_latency_ms`` and ``edgenas_class`` (group or host vars) are what `fleet specialize`
    reads: a class's budget is the strictest of its devices'."""
    import json

    inv = tmp_path / "inv.yml"
    inv.write_text("all:\n  children:\n    pis:\n      vars: {edgenas_latency_ms: 40, edgenas_class: "
                   "pi4}\n      hosts:\n        pi01: {ansible_host: 10.0.0.1}\n"
                   "        pi02: {ansible_host: 10.0.0.2, edgenas_latency_ms: 25.5}\n")
    assert cli(workspace, "device", "import", str(inv)).exit_code == 0
    shown = json.loads(cli(workspace, "device", "list", "--json").output)
    assert {d["name"]: (d["class"], d["latency_budget_ms"]) for d in shown} == {
        "pi01": ("pi4", 40.0), "pi02": ("pi4", 25.5)}
