"""Jump hosts as OpenSSH reads them: ``-J``/``ProxyJump`` specs, ``~/.ssh/config`` chains, Ansible's
ssh argument variables, the device record that keeps the chain, and each hop's host key pinned in
it at registration and held to it afterwards."""

from __future__ import annotations

from pathlib import Path

import paramiko
import pytest

from edgenas.core.errors import DeviceError, HostKeyError
from edgenas.device import enroll, registry
from edgenas.device.inventory import load_inventory
from edgenas.device.inventory.ssh_args import parse_ssh_args
from edgenas.device.registry import Hop, parse_jump_spec, resolve_jump
from edgenas.device.transports.host_keys import sha256_fingerprint
from edgenas.device.transports.ssh import SSHTransport, _HostKeyPolicy
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


# ------------------------------------------------------------------- hop host keys, pinned like devices


def test_registration_pins_each_reached_hop_and_keeps_given_pins(tmp_path):
    jump = [Hop("gw", 22, "ops").to_dict(), Hop("mid", 2200, host_key=FP2).to_dict(),
            Hop("far").to_dict()]
    pinned = registry.pin_offered_hop_keys(jump, [f"ssh-ed25519 {FP}", f"ssh-ed25519 {FP}", None])
    assert [h.get("host_key") for h in pinned] == [FP, FP2, None]  # given pin kept; unreached: none
    assert jump[0].get("host_key") is None  # the record passed in is not changed behind its back

    class Reached:  # what enroll reads from the registering connection
        hop_fingerprints = [f"ssh-ed25519 {FP}", None]

    dev = registry.make_device("pi", "ssh", home=tmp_path, host="10.0.0.5",
                               jump=[Hop("gw", 22, "ops"), Hop("far")])
    lines = enroll._pin_hops(dev, Reached())  # type: ignore[arg-type]
    assert [h.get("host_key") for h in dev.jump] == [FP, None]
    assert f"jump host ops@gw: host key {FP} (pinned)" in lines and "far: not reached" in lines
    with open_store(tmp_path) as store:  # the pins live in the record and come back as hop pins
        registry.add_device(store, dev)
        hops = registry.hops_of(registry.get_device(store, "pi"))
    t = SSHTransport("pi", "10.0.0.5", known_hosts=tmp_path / "kh", jump=hops)
    assert t._hop_endpoint(0).pin == FP and t._hop_endpoint(1).pin is None  # older: known_hosts


def test_reimporting_an_inventory_keeps_the_hop_pins(tmp_path):
    old = [{"host": "gw", "port": 22, "host_key": FP}, {"host": "mid", "port": 2200, "host_key": FP2}]
    new = [{"host": "gw", "port": 22}, {"host": "mid", "port": 2200}]
    assert registry.keep_hop_pins(new, old) == old
    assert registry.keep_hop_pins([{"host": "gw", "port": 22, "host_key": FP2}], old)[0]["host_key"] \
        == FP2  # trusted again during this import: the new pin wins
    moved = registry.keep_hop_pins([{"host": "other", "port": 22}, {"host": "mid", "port": 2200}], old)
    assert [h.get("host_key") for h in moved] == [None, None]  # another chain: nothing carried over
    assert registry.keep_hop_pins([{"host": "gw", "port": 2222}], old)[0].get("host_key") is None


def test_a_changed_hop_key_is_refused_naming_the_hop_with_the_readd_advice(tmp_path):
    pinned_key, offered_key = paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()
    pin, new = sha256_fingerprint(pinned_key), sha256_fingerprint(offered_key)
    hops = [Hop("gw.lab", 22, "ops", host_key=FP2), Hop("inner", 2200, host_key=pin)]
    t = SSHTransport("pi1", "10.0.0.5", 22, "pi", known_hosts=tmp_path / "known_hosts", jump=hops,
                     host_key_pin=FP)

    def offer(hop: int | None, key: paramiko.PKey) -> None:
        """What paramiko calls once the server proved it holds ``key`` (nothing authenticated yet)."""
        ep = t._device_endpoint() if hop is None else t._hop_endpoint(hop)
        name = "10.0.0.5" if hop is None else "[inner]:2200"
        _HostKeyPolicy(t, ep).missing_host_key(paramiko.SSHClient(), name, key)

    offer(1, pinned_key)
    with pytest.raises(HostKeyError) as err:
        offer(1, offered_key)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("pi1: jump host [inner]:2200 (2 of 2): ")
    assert f"pinned {pin}" in msg and new in msg and "nothing was run" in msg
    assert msg.endswith(f"`edgenas device add pi1 --replace --ssh pi@10.0.0.5 --jump ops@gw.lab,"
                        f"inner:2200 --jump-host-key {FP2} --jump-host-key {new} --host-key {FP}`")
    assert not (tmp_path / "known_hosts").exists()
    # The device's own changed key: the same advice, the hops' keys kept as they are.
    with pytest.raises(HostKeyError) as err:
        offer(None, offered_key)
    assert str(err.value).startswith("pi1: the SSH host key of 10.0.0.5 does not match")
    assert f"--jump-host-key {FP2} --jump-host-key {pin} --host-key {new}`" in str(err.value)
