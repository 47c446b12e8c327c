"""Host keys and client keys against a real sshd: pinned fingerprints, ``@cert-authority`` host
certificates signed by ``ssh-keygen -s``, ``@revoked``, the workspace known_hosts winning over
``~/.ssh/known_hosts``, only ``--key`` offered when given, and OpenSSH's key-permission rule."""

from __future__ import annotations

import base64
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from edgenas.core.errors import HostKeyError, TransportError
from edgenas.device import registry
from edgenas.device.connect import open_transport
from edgenas.device.transports.host_keys import (
    KnownHost,
    check_certificate,
    host_matches,
    parse_fingerprint,
    sha256_fingerprint,
)
from edgenas.device.transports.ssh import SSHTransport, known_hosts_name
from edgenas.records.store import open_store
from tests.conftest import TFLITE_PYTHON
from tests.support.cli_runner import Cli
from tests.support.fleet.sshd import SSHDevice, keygen, sign_host_key

fleet_only = pytest.mark.fleet


def fp_only(fingerprint: str) -> str:
    """``SHA256:…`` of a ``ssh-ed25519 SHA256:…`` fingerprint string."""
    return fingerprint.split()[-1]


def ssh(dev: SSHDevice, home: Path, key: str | None = None, **kw) -> SSHTransport:
    return SSHTransport(
        dev.name,
        dev.host,
        dev.port,
        dev.user,
        key if key is not None else str(dev.client_key),
        known_hosts=home / "known_hosts",
        workdir="edgenas",
        connect_timeout=5,
        **kw,
    )


def pub_line(pub: Path) -> str:
    """``type base64`` of a .pub file."""
    return " ".join(pub.read_text().split()[:2])


# ------------------------------------------------------------------------------------ no daemon


def test_fingerprint_parsing_accepts_ssh_keygen_forms_and_rejects_the_rest():
    fp = "SHA256:" + "A" * 43
    assert parse_fingerprint(fp) == fp
    assert parse_fingerprint(f"256 {fp} root@pi (ED25519)") == fp
    assert parse_fingerprint(f"ssh-ed25519 {fp}") == fp
    for bad in ("", "MD5:aa:bb", "SHA256:short", "SHA256:" + "!" * 43):
        with pytest.raises(ValueError, match="SHA256:<43 base64 characters>"):
            parse_fingerprint(bad)


def test_known_hosts_patterns_wildcards_negation_ports_and_hashes():
    assert host_matches(["pi.lab"], "PI.lab")
    assert host_matches(["*.lab"], "pi.lab") and not host_matches(["*.lab"], "pi.lab.evil")
    assert host_matches(["10.0.0.?"], "10.0.0.7") and not host_matches(["10.0.0.?"], "10.0.0.17")
    assert not host_matches(["*.lab", "!bad.lab"], "bad.lab")
    assert host_matches(["[pi]:2222"], "[pi]:2222") and not host_matches(["[pi]:2222"], "pi")
    hashed = paramiko.HostKeys.hash_host("[10.1.2.3]:2200")
    assert host_matches([hashed], "[10.1.2.3]:2200") and not host_matches([hashed], "10.1.2.3")


def test_certificate_checks_with_real_ssh_keygen_certificates(tmp_path):
    ca, other_ca = keygen(tmp_path / "ca", "ca"), keygen(tmp_path / "ca2", "ca2")
    host = keygen(tmp_path / "host", "host")
    pub = Path(str(host) + ".pub")
    trusted = [KnownHost("cert-authority", ("*",), _pkey(Path(str(ca) + ".pub")), "kh:1")]

    def cert(*args, **kw) -> bytes:
        path = sign_host_key(*args, **kw)
        blob = base64.b64decode(path.read_text().split()[1])
        path.unlink()
        return blob

    good = cert(ca, pub, "pi.lab,10.0.0.5")
    assert check_certificate(good, trusted, "pi.lab") is None
    assert check_certificate(good, trusted, "10.0.0.5") is None
    assert "not pi2.lab" in check_certificate(good, trusted, "pi2.lab")
    user_cert = cert(ca, pub, "pi.lab", host=False)
    assert "not a host certificate" in check_certificate(user_cert, trusted, "pi.lab")
    expired = cert(ca, pub, "pi.lab", "20200101:20200102")
    assert "expired" in check_certificate(expired, trusted, "pi.lab")
    assert "not valid before" in check_certificate(
        cert(ca, pub, "pi.lab", "+1d:+2d"), trusted, "pi.lab"
    )
    assert "no @cert-authority" in check_certificate(cert(other_ca, pub, "pi.lab"), trusted, "pi.lab")
    assert "no principals" in check_certificate(cert(ca, pub, ""), trusted, "pi.lab")
    tampered = bytearray(good)
    tampered[len(tampered) // 3] ^= 0x01  # inside the signed part (key material)
    assert check_certificate(bytes(tampered), trusted, "pi.lab") is not None
    assert "malformed" in check_certificate(good[:-10], trusted, "pi.lab")


def _pkey(pub: Path) -> paramiko.PKey:
    kind, data = pub.read_text().split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(data))


# ------------------------------------------------------------------------------- pinned keys


@fleet_only
def test_pinned_fingerprint_accepts_the_device_and_refuses_another_key(fleet, workspace, user_home):
    dev, other = fleet.ssh["ssh1"], fleet.ssh["ssh2"]
    with ssh(dev, workspace, host_key_pin=fp_only(dev.fingerprint)) as t:
        assert t.run(["echo", "ok"]).stdout == "ok\n"
        assert t.host_key_how == "pinned fingerprint"
    marker = dev.home / "pinned-must-not-exist"
    with ssh(dev, workspace, host_key_pin=fp_only(other.fingerprint)) as t:
        with pytest.raises(HostKeyError) as err:
            t.run(["touch", str(marker)])
    msg = str(err.value)
    assert "does not match the pinned fingerprint" in msg
    assert fp_only(other.fingerprint) in msg and dev.fingerprint in msg  # both shown
    assert not marker.exists()
    assert not (workspace / "known_hosts").exists()  # nothing trusted on the way


@fleet_only
def test_device_add_host_key_pins_and_a_wrong_pin_fails_the_add(fleet, workspace, user_home):
    dev, other = fleet.ssh["ssh1"], fleet.ssh["ssh2"]
    cli = Cli(workspace)
    base = ["device", "add", "pi", "--ssh", dev.target, "--key", str(dev.client_key)]
    out = cli(*base, "--host-key", fp_only(other.fingerprint), code=1)
    assert "does not match the pinned fingerprint" in out and fp_only(other.fingerprint) in out
    out = cli(*base, "--host-key", fp_only(dev.fingerprint))
    assert "pinned, and matches the device" in out
    with open_store(workspace) as store:
        stored = registry.get_device(store, "pi")
    assert stored.host_key_fingerprint == fp_only(dev.fingerprint)
    with open_transport(stored, workspace) as t:
        assert t.run(["true"]).rc == 0
    assert "SHA256:<43" in cli(*base, "--replace", "--host-key", "SHA256:nope", code=1)
    assert "only apply to --ssh" in cli("device", "add", "l", "--local", "--host-key", "x", code=2)


# ----------------------------------------------------------------------------- known_hosts order


@fleet_only
def test_stale_user_known_hosts_is_overridden_by_following_the_advice(fleet, workspace, user_home):
    dev, other = fleet.ssh["ssh1"], fleet.ssh["ssh2"]
    name = known_hosts_name(dev.host, dev.port)
    stale = f"{name} {pub_line(Path(str(other.host_key) + '.pub'))}\n"
    (user_home / ".ssh" / "known_hosts").write_text(stale)
    for accept in (False, True):  # not even trust-on-first-use overrides the user's own record
        with ssh(dev, workspace, accept_new_host_key=accept) as t, pytest.raises(HostKeyError) as err:
            t.run(["true"])
    msg = str(err.value)
    assert "CHANGED" in msg and "~/.ssh/known_hosts" in msg and dev.fingerprint in msg
    advice = msg[msg.index("`edgenas ") + 1 : msg.rindex("`")]
    assert advice.startswith(f"edgenas device add {dev.name} --replace --ssh ")
    args = advice.split()[1:] + ["--key", str(dev.client_key)]
    Cli(workspace)(*args)  # the advice, as printed
    # The workspace now knows the key, and it wins over the stale personal entry.
    with ssh(dev, workspace) as t:
        assert t.run(["echo", "fixed"]).stdout == "fixed\n"
    assert (user_home / ".ssh" / "known_hosts").read_text() == stale  # never edited


@fleet_only
def test_changed_key_in_the_workspace_is_replaced_by_a_pinned_add(fleet, workspace, user_home):
    dev = fleet.ssh["victim"]
    cli = Cli(workspace)
    base = ["device", "add", "v", "--ssh", dev.target, "--key", str(dev.client_key)]
    cli(*base, "--accept-new-host-key")
    old = dev.fingerprint
    new = dev.rotate_host_key()
    try:
        with open_store(workspace) as store:
            device = registry.get_device(store, "v")
        with open_transport(device, workspace) as t, pytest.raises(HostKeyError) as err:
            t.run(["true"])
        assert fp_only(old) in str(err.value) and new in str(err.value)
        cli(*base, "--replace", "--host-key", fp_only(new))
        lines = (workspace / "known_hosts").read_text().splitlines()
        assert len(lines) == 1 and fp_only(new) == sha256_fingerprint(_pkey_line(lines[0]))
        with open_store(workspace) as store:
            device = registry.get_device(store, "v")
        with open_transport(device, workspace) as t:
            assert t.run(["true"]).rc == 0
    finally:
        dev.restore_host_key()


def _pkey_line(line: str) -> paramiko.PKey:
    _, kind, data = line.split()[:3]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(data))


# ------------------------------------------------------------------------------ host certificates


@pytest.fixture(scope="module")
def certdev(fleet, tmp_path_factory) -> Iterator[tuple[SSHDevice, Path]]:
    """A device whose sshd presents a host certificate signed by a test CA (``ssh-keygen -s``)."""
    dev = fleet.add_ssh("certhost", str(TFLITE_PYTHON))
    ca = keygen(tmp_path_factory.mktemp("ca") / "ca", "edgenas-test-ca")
    dev.host_cert = sign_host_key(ca, Path(str(dev.host_key) + ".pub"), dev.host)
    dev.restart()
    yield dev, ca


def _ca_line(pattern: str, ca: Path, marker: str = "@cert-authority") -> str:
    return f"{marker} {pattern} {pub_line(Path(str(ca) + '.pub'))}\n"


@fleet_only
@pytest.mark.parametrize("where", ["workspace", "user"])
def test_cert_authority_line_accepts_the_host_certificate(certdev, workspace, user_home, where):
    dev, ca = certdev
    path = workspace / "known_hosts" if where == "workspace" else user_home / ".ssh" / "known_hosts"
    path.write_text("# fleet CA\n" + _ca_line("*", ca))
    with ssh(dev, workspace) as t:
        assert t.run(["echo", "ok"]).stdout == "ok\n"
        assert "certificate" in t.host_key_how
        assert t.host_fingerprint == dev.fingerprint  # the certified key itself
    assert path.read_text() == "# fleet CA\n" + _ca_line("*", ca)  # nothing recorded
    if where == "workspace":
        assert not (user_home / ".ssh" / "known_hosts").exists()


@fleet_only
def test_certificate_refused_for_wrong_principal_expiry_other_ca_or_revoked_ca(
    certdev, workspace, user_home, tmp_path
):
    dev, ca = certdev
    kh = workspace / "known_hosts"
    pub = Path(str(dev.host_key) + ".pub")
    other_ca = keygen(tmp_path / "other-ca", "other")

    def refused(match: str, *, accept: bool = False) -> None:
        marker = dev.home / "cert-must-not-exist"
        with ssh(dev, workspace, accept_new_host_key=accept) as t, pytest.raises(HostKeyError) as err:
            t.run(["touch", str(marker)])
        assert match in str(err.value), str(err.value)
        assert not marker.exists()

    original = dev.host_cert
    try:
        kh.write_text(_ca_line(known_hosts_name(dev.host, dev.port), other_ca))
        refused("no @cert-authority", accept=True)  # a CA is configured: TOFU does not bypass it
        kh.write_text(_ca_line("*", ca) + _ca_line("*", ca, "@revoked"))
        refused("@revoked")
        kh.write_text(_ca_line("*", ca))
        for principals, validity, why in (
            ("not-this-host", "-5m:+1h", "not " + dev.host),
            (dev.host, "20200101:20200102", "expired"),
        ):
            dev.host_cert = sign_host_key(ca, pub, principals, validity)
            dev.restart()
            refused(why)
        # A CA for another host pattern says nothing about this one: an unknown key, as ssh says.
        kh.write_text(_ca_line("*.example.org", ca))
        refused("unknown SSH host key")
    finally:
        dev.host_cert = sign_host_key(ca, pub, dev.host) if original else None
        dev.restart()


# ------------------------------------------------------------------------------------ client keys


@pytest.fixture
def agent(fleet, tmp_path, monkeypatch) -> Iterator[None]:
    """A real ssh-agent holding the fleet's authorized client key."""
    out = subprocess.run(["ssh-agent", "-s", "-a", str(tmp_path / "agent.sock")], capture_output=True,
                         text=True, check=True).stdout
    pid = int(out.split("SSH_AGENT_PID=")[1].split(";")[0])
    monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "agent.sock"))
    try:
        subprocess.run(["ssh-add", "-q", str(fleet.client_key)], check=True, capture_output=True)
        yield
    finally:
        os.kill(pid, 15)


@fleet_only
def test_only_the_given_key_is_offered_else_agent_and_default_keys(
    fleet, workspace, user_home, agent, tmp_path
):
    dev = fleet.ssh["ssh1"]
    unauthorized = keygen(tmp_path / "stranger", "stranger")
    with ssh(dev, workspace, key=str(unauthorized), accept_new_host_key=True) as t:
        with pytest.raises(TransportError, match=f"authentication .* failed with key {unauthorized}"):
            t.run(["true"])  # the agent holds a key that would work: it must not be offered
    with ssh(dev, workspace, key="", accept_new_host_key=True) as t:  # no --key: agent, as ssh does
        assert t.run(["echo", "agent"]).stdout == "agent\n"


@fleet_only
def test_group_readable_keys_are_refused_like_openssh(fleet, workspace, user_home, monkeypatch, caplog):
    dev = fleet.ssh["ssh1"]
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    loose = user_home / "loose_key"
    shutil.copy(dev.client_key, loose)
    os.chmod(loose, 0o640)
    with ssh(dev, workspace, key=str(loose), accept_new_host_key=True) as t:
        with pytest.raises(TransportError, match=r"group or others \(mode 0640\).*chmod 600"):
            t.run(["true"])
    out = Cli(workspace)("device", "add", "pi", "--ssh", dev.target, "--key", str(loose), code=1)
    assert "chmod 600" in out
    # A default ~/.ssh key with loose permissions is skipped with a warning, as ssh skips it.
    default = user_home / ".ssh" / "id_ed25519"
    shutil.copy(dev.client_key, default)
    os.chmod(default, 0o644)
    with caplog.at_level(logging.WARNING), ssh(dev, workspace, key="", accept_new_host_key=True) as t:
        with pytest.raises(TransportError, match="authentication"):
            t.run(["true"])
    assert any("not offered" in r.getMessage() for r in caplog.records)
    os.chmod(default, 0o600)
    with ssh(dev, workspace, key="", accept_new_host_key=True) as t:
        assert t.run(["echo", "default"]).stdout == "default\n"
