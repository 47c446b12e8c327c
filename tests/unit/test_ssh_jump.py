"""Jump hosts as OpenSSH reads them: ``-J``/``ProxyJump`` specs, ``~/.ssh/config`` chains, Ansible's
ssh argument variables, and the device record that keeps the chain."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgenas.core.errors import DeviceError
from edgenas.device import registry
from edgenas.device.inventory import load_inventory
from edgenas.device.inventory.ssh_args import parse_ssh_args
from edgenas.device.registry import Hop, parse_jump_spec, resolve_jump
from edgenas.records.store import open_store

FP = "SHA256:" + "A" * 43
FP2 = "SHA256:" + "B" * 43


def test_jump_specs_parse_like_ssh_dash_j():
    assert parse_jump_spec("bastion") == [(None, "bastion", None)]
    assert parse_jump_spec("ops@bastion:2222,pi@10.0.0.1") == [
        ("ops", "bastion", 2222), ("pi", "10.0.0.1", None)]
    assert parse_jump_spec(["a", "b:23"]) == [(None, "a", None), (None, "b", 23)]  # --jump twice
    assert parse_jump_spec("ssh://ops@gw:2200") == [("ops", "gw", 2200)]
    assert parse_jump_spec("[fe80::1]:22,u@[::1]") == [(None, "fe80::1", 22), ("u", "::1", None)]
    assert parse_jump_spec("none") == []
    for bad in ("a,,b", "a b", "-oProxyCommand=x", "u@", "host:99999", "a@-b", "h:port", ""):
        with pytest.raises(DeviceError):
            parse_jump_spec(bad)
    with pytest.raises(DeviceError, match="more than 8"):
        parse_jump_spec(",".join(f"h{i}" for i in range(9)))


def test_hops_resolve_through_the_ssh_config_first_hop_recursively(tmp_path):
    cfg = tmp_path / "config"
    cfg.write_text(
        "Host inner\n  HostName 10.0.0.5\n  User pi\n  ProxyJump mid\n"
        "Host mid\n  HostName mid.lab\n  User ops\n  Port 2200\n  ProxyJump edge\n"
        "  IdentityFile ~/.ssh/mid\n"
        "Host edge\n  HostName edge.example.com\n"
        "Host loop1\n  ProxyJump loop2\nHost loop2\n  ProxyJump loop1\n"
        "Host old\n  ProxyCommand ssh -W %h:%p -q -p 2022 ops@gw\n"
        "Host direct\n  ProxyJump none\n"
    )
    target = registry.parse_ssh_target("inner", cfg)
    assert (target.host, target.user, target.alias) == ("10.0.0.5", "pi", "inner")
    assert [h.spec for h in target.jump] == ["edge.example.com", "ops@mid.lab:2200"]
    assert target.jump[1].key_path == str(Path("~/.ssh/mid").expanduser())
    # What the spec says wins over the config; only the first hop's own ProxyJump is followed.
    assert [h.spec for h in resolve_jump("root@mid:22,edge", cfg)] == [
        "edge.example.com", "root@mid.lab", "edge.example.com"]
    assert registry.parse_ssh_target("direct", cfg).jump == ()
    with pytest.raises(DeviceError, match="loop"):
        registry.parse_ssh_target("loop1", cfg)
    with pytest.raises(DeviceError) as err:
        registry.parse_ssh_target("old", cfg)
    assert "ProxyCommand" in str(err.value) and "ProxyJump ops@gw:2022" in str(err.value)
    assert "Host old" in str(err.value)


def test_jump_host_keys_pin_one_per_hop(tmp_path):
    hops = resolve_jump("a,b", tmp_path / "none")
    pinned = registry.pin_hops(hops, [FP, FP2])
    assert [h.host_key for h in pinned] == [FP, FP2]
    with pytest.raises(DeviceError, match="one --jump-host-key per hop"):
        registry.pin_hops(hops, [FP])
    with pytest.raises(DeviceError, match="jump host b"):
        registry.pin_hops(hops, [FP, "MD5:xx"])


def test_ansible_ssh_args_read_with_ssh_grammar():
    assert parse_ssh_args("-o ProxyJump=bastion").jump == "bastion"
    assert parse_ssh_args("-oProxyJump=ops@gw:22").jump == "ops@gw:22"
    assert parse_ssh_args("-o 'ProxyJump a,b' -o ProxyJump=c").jump == "a,b"  # the first one wins
    assert parse_ssh_args('-o "proxyjump = gw"').jump == "gw"
    assert parse_ssh_args("-qC -J gw -o ControlMaster=auto -o ControlPersist=60s").jump == "gw"
    assert parse_ssh_args("-Jgw").jump == "gw"
    assert parse_ssh_args("-o ServerAliveInterval=30").jump is None
    loose = parse_ssh_args("-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null")
    assert loose.jump is None and len(loose.notes) == 2 and "always checks host keys" in loose.notes[0]
    pc = parse_ssh_args("-o ProxyCommand='ssh -W %h:%p -q bastion'")
    assert pc.proxy_command == "ssh -W %h:%p -q bastion"
    for bad, says in (("-p 2222", "ansible_port"), ("-o Port=2", "ansible_port"),
                      ("-i key", "ansible_ssh_private_key_file"), ("-L 80:x:80", "forwardings"),
                      ("-o Frobnicate=yes", "frobnicate"), ("-J", "needs an argument"),
                      ("bastion", "not an ssh option"), ("-o 'unbalanced", "cannot split"),
                      ("-F cfg", "--ssh-config"), ("-Z", "not an ssh option")):
        with pytest.raises(ValueError, match=says):
            parse_ssh_args(bad)


def _inventory(tmp_path: Path, host_vars: str) -> Path:
    inv = tmp_path / "hosts.ini"
    inv.write_text(f"[pis]\npi1 ansible_host=10.9.0.1 ansible_user=pi {host_vars}\n")
    return inv


def test_inventory_jump_variables_become_the_device_chain(tmp_path):
    cfg = tmp_path / "ssh_config"
    cfg.write_text("Host bastion\n  HostName gw.example.com\n  User ops\n")
    inv = _inventory(tmp_path, "ansible_ssh_common_args='-o ProxyJump=bastion,jump2:2200'")
    (dev,) = load_inventory(inv, home=tmp_path, ssh_config=cfg)
    assert dev.jump == [{"host": "gw.example.com", "port": 22, "user": "ops"},
                        {"host": "jump2", "port": 2200}]
    assert dev.address == "pi@10.9.0.1 via ops@gw.example.com,jump2:2200"
    inv = _inventory(tmp_path, "ansible_ssh_extra_args='-J admin@gw'")
    assert load_inventory(inv, home=tmp_path, ssh_config=cfg)[0].jump_spec == "admin@gw"


@pytest.mark.parametrize(("args", "says"), [
    ("ansible_ssh_common_args='-o ProxyCommand=\"ssh -W %h:%p -q ops@gw\"'", "ProxyJump ops@gw"),
    ("ansible_ssh_extra_args='-o LocalForward=8080:x:80'", "port forwardings"),
    ("ansible_ssh_common_args='-o ProxyJump=a,,b'", "empty hop"),
])
def test_inventory_jump_variables_refused_name_host_and_variable(tmp_path, args, says):
    inv = _inventory(tmp_path, args)
    with pytest.raises(DeviceError) as err:
        load_inventory(inv, home=tmp_path, ssh_config=tmp_path / "none")
    message = str(err.value)
    assert "host pi1" in message and says in message
    assert ("ansible_ssh_common_args" in message) or ("ansible_ssh_extra_args" in message)


def test_the_jump_chain_is_stored_with_the_device(tmp_path):
    hops = [Hop("gw", 22, "ops", host_key=FP), Hop("inner", 2200)]
    dev = registry.make_device("pi", "ssh", home=tmp_path, host="10.0.0.5", user="pi", jump=hops)
    with open_store(tmp_path) as store:
        registry.add_device(store, dev)
        back = registry.get_device(store, "pi")
        assert registry.hops_of(back) == hops
        assert back.jump_spec == "ops@gw,inner:2200"
        registry.add_device(store, registry.make_device("pi2", "ssh", home=tmp_path, host="x"))
        assert registry.get_device(store, "pi2").jump == []
    with pytest.raises(DeviceError, match="only apply to SSH"):
        registry.make_device("l", "local", home=tmp_path, jump=hops)
