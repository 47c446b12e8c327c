"""A device only a jump host reaches (ProxyJump), on a small fleet of its own: the device's sshd lives
in a namespace wired to the jump host's namespace alone, so a direct connection fails while the jumped
one probes, benches, pushes and rolls back; hop host keys are checked like any other and pinned in
the device's record at registration, and transports through one chain share one hop connection."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgenas.core.errors import HostKeyError
from edgenas.device.transports import ssh as ssh_transport
from edgenas.device.transports.ssh import Hop, SSHTransport
from edgenas.export.package import ModelPackage
from tests.conftest import TFLITE_PYTHON
from tests.support import fleet_models
from tests.support.cli_runner import Cli
from tests.support.fleet.fleet import standing

pytestmark = [pytest.mark.fleet, pytest.mark.usefixtures("user_home")]


def fp_only(fingerprint: str) -> str:
    """``SHA256:…`` of a ``ssh-ed25519 SHA256:…`` fingerprint string."""
    return fingerprint.split()[-1]


@pytest.fixture(scope="module")
def jumped():
    """(jump host, device behind it)."""
    if not TFLITE_PYTHON.exists():
        pytest.fail(f"the fleet needs {TFLITE_PYTHON}: run `make setup` first", pytrace=False)

    def build(fleet) -> None:
        jump = fleet.add_ssh("bastion", str(TFLITE_PYTHON))
        fleet.add_behind_jump("inner", str(TFLITE_PYTHON), jump)

    with standing("a jump host and a device behind it", build) as fleet:
        yield fleet.ssh["bastion"], fleet.ssh["inner"]


@pytest.fixture(scope="module")
def models(request, tmp_path_factory) -> dict[str, Path]:
    cache = Path(request.config.cache.mkdir("runner_models"))
    return fleet_models.model_set(tmp_path_factory.mktemp("jump-models"), cache, big_bytes=0)


def test_only_the_jumped_connection_works_for_probe_bench_push_and_rollback(jumped, models, workspace):
    bastion, inner = jumped
    cli = Cli(workspace)
    key = str(inner.client_key)
    target = f"{inner.user}@{inner.host}"

    # Directly: the device's address leads nowhere from here.
    cli("device", "add", "direct", "--ssh", target, "--key", key, "--python", inner.python,
        "--timeout", "1")
    out = cli("device", "probe", "direct", "--json", code=1)
    assert "cannot connect" in out or "no answer" in out

    # Through the jump host: both host keys trusted on first use, each recorded in known_hosts and
    # pinned in the device's record.
    out = cli("device", "add", "inner", "--ssh", target, "--jump", f"{bastion.user}@{bastion.host}",
              "--key", key, "--python", inner.python, "--accept-new-host-key", "--group", "far")
    assert "through jump host" in out and inner.fingerprint in out
    known = (workspace / "known_hosts").read_text()
    assert bastion.host in known and inner.host in known
    shown = cli.json("device", "show", "inner")
    assert shown["jump"] == [{"host": bastion.host, "port": 22, "user": bastion.user,
                              "host_key": fp_only(bastion.fingerprint)}]
    assert shown["host_key_fingerprint"] == inner.fingerprint
    assert shown["address"] == f"{target} via {bastion.user}@{bastion.host}"

    probe = cli.json("device", "probe", "inner")["inner"]
    assert probe["runtime"] == "tflite_runtime" and probe["cores"] >= 1

    rec = cli.json("bench", str(models["v1"]), "--device", "inner", "--runs", "5", "--min-secs", "0.05")
    assert rec["device"] == "inner" and rec["median_ms"] > 0

    v1, v2 = ModelPackage.open(models["v1"]), ModelPackage.open(models["v2"])
    for model in ("v1", "v2"):
        out = cli.json("fleet", "push", str(models[model]), "--group", "far")
        assert [r["status"] for r in out["results"]] == ["ok"]
    cur = inner.workdir / "models" / "net" / "current" / "model.tflite"
    assert fleet_models.sha(cur) == v2.sha256
    out = cli.json("fleet", "rollback", "--group", "far")
    assert [(r["status"], r["sha256"]) for r in out["results"]] == [("ok", v1.sha256)]
    assert fleet_models.sha(cur) == v1.sha256


def test_ssh_config_proxyjump_and_proxycommand(jumped, workspace, user_home):
    bastion, inner = jumped
    cli = Cli(workspace)
    (user_home / ".ssh" / "config").write_text(
        f"Host lab-bastion\n  HostName {bastion.host}\n  User {bastion.user}\n"
        f"  IdentityFile {bastion.client_key}\n"
        f"Host lab-inner\n  HostName {inner.host}\n  User {inner.user}\n  ProxyJump lab-bastion\n"
        f"  IdentityFile {inner.client_key}\n"
        f"Host lab-old\n  HostName {inner.host}\n  ProxyCommand ssh -W %h:%p -q lab-bastion\n"
    )
    cli("device", "add", "aliased", "--ssh", "lab-inner", "--python", inner.python,
        "--accept-new-host-key")
    shown = cli.json("device", "show", "aliased")
    assert shown["jump"] == [{"host": bastion.host, "port": 22, "user": bastion.user,
                              "key_path": str(bastion.client_key),
                              "host_key": fp_only(bastion.fingerprint)}]
    assert cli.json("device", "probe", "aliased")["aliased"]["runtime"] == "tflite_runtime"
    out = cli("device", "add", "old", "--ssh", "lab-old", code=1)
    assert "ProxyCommand" in out and "ProxyJump lab-bastion" in out


def test_a_jump_host_key_changed_after_registration_is_refused_naming_the_hop(jumped, workspace):
    bastion, inner = jumped
    cli = Cli(workspace)
    own = ["--key", str(inner.client_key), "--python", inner.python, "--workdir", "edgenas-hopkey"]
    cli("device", "add", "pinned", "--ssh", f"{inner.user}@{inner.host}", "--jump",
        f"{bastion.user}@{bastion.host}", *own, "--accept-new-host-key")
    old = fp_only(bastion.fingerprint)
    new = fp_only(bastion.rotate_host_key())  # the bastion reinstalled; known_hosts never told
    try:
        out = cli("device", "probe", "pinned", code=1)
        error = next(line for line in out.splitlines() if "jump host" in line)
        assert f"jump host {bastion.user}@{bastion.host} (1 of 1)" in error
        assert f"pinned {old}" in error and new in error and "nothing was run" in error
        assert not (inner.home / "edgenas-hopkey").exists()  # the device was never reached
        advice = error[error.index("`edgenas ") + 1: error.rindex("`")]
        assert f"--jump-host-key {new}" in advice
        cli(*advice.split()[1:], *own)  # the advice, as printed: pins the bastion's new key
        assert cli.json("device", "show", "pinned")["jump"][0]["host_key"] == new
    finally:
        bastion.restore_host_key()


def test_hop_host_keys_are_checked_and_one_connection_serves_a_chain(jumped, tmp_path):
    bastion, inner = jumped
    known = tmp_path / "known_hosts"
    hop = Hop(bastion.host, 22, bastion.user)

    def transport(name: str, hops: list[Hop], **kw) -> SSHTransport:
        return SSHTransport(name, inner.host, 22, inner.user, str(inner.client_key),
                            known_hosts=known, jump=hops, connect_timeout=5, **kw)

    # Unknown jump host key: refused, naming the hop.
    with transport("a", [hop]) as t, pytest.raises(HostKeyError) as err:
        t.run(["true"])
    assert "jump host" in str(err.value) and bastion.host in str(err.value)
    # A wrong pin on the hop: refused before the device is even contacted.
    wrong = Hop(bastion.host, 22, bastion.user, host_key=inner.fingerprint)
    with transport("b", [wrong], host_key_pin=inner.fingerprint) as t, \
            pytest.raises(HostKeyError, match="does not match the pinned"):
        t.run(["true"])
    # The right pins: both ends pinned, nothing written to known_hosts.
    pinned = Hop(bastion.host, 22, bastion.user, host_key=bastion.fingerprint)
    before = ssh_transport._HOPS.open_count()
    with transport("c", [pinned], host_key_pin=inner.fingerprint) as one, \
            transport("d", [pinned], host_key_pin=inner.fingerprint) as two:
        for _ in range(3):
            assert one.run(["hostname"]).rc == 0 and two.run(["true"]).rc == 0
        assert ssh_transport._HOPS.open_count() == before + 1  # one bastion connection for both
        assert one.hop_fingerprints == [bastion.fingerprint]
    assert ssh_transport._HOPS.open_count() == before  # closed with its last user
    assert not known.exists()
