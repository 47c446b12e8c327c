"""The test fleet: SSH devices, ADB devices, a slow device, and the faults tests inflict on them.

``Fleet`` owns everything it creates and tears it down in the reverse order (daemons, veth, namespaces,
bridge, users, cgroups).  Network namespace mode is the default; where namespaces are not permitted
(or ``EDGENAS_FLEET_NETNS=0``), every sshd listens on its own kernel-chosen loopback port instead.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.fleet import arm
from tests.support.fleet.adb import AdbDevice, AdbServer
from tests.support.fleet.cgroups import PERIOD_US, CGroup
from tests.support.fleet.sshd import FAKETIME_LIBS, SSHD, SSHDevice, keygen
from tests.support.fleet.system import (
    STATE_ROOT,
    FleetError,
    cleanup_resources,
    free_port,
    new_run,
    purge_stale,
    record,
    require_root_and_tools,
    sh,
)

SUBNET_PREFIX = "10.213"


def netns_permitted() -> bool:
    if os.environ.get("EDGENAS_FLEET_NETNS", "1") == "0":
        return False
    probe = f"edgenas-probe-{os.getpid()}"
    if sh(["ip", "netns", "add", probe], check=False).returncode != 0:
        return False
    sh(["ip", "netns", "del", probe], check=False)
    return True


class Network:
    """A bridge with a private /24 (10.213.N.0/24, no default route anywhere) and one veth per device."""

    def __init__(self, run_id: str, run_dir: Path) -> None:
        self.run_id, self.run_dir = run_id, run_dir
        self.bridge = f"efb{run_id}"
        with open(STATE_ROOT / "subnets.lock", "a") as lock:  # two fleets must not pick the same /24
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = sh(["ip", "-4", "-o", "addr"]).stdout
            for n in range(1, 255):
                if f" {SUBNET_PREFIX}.{n}." not in used:
                    break
            else:
                raise FleetError(f"no free {SUBNET_PREFIX}.N.0/24 test subnet")
            self.net = ipaddress.ip_network(f"{SUBNET_PREFIX}.{n}.0/24")
            sh(["ip", "link", "add", self.bridge, "type", "bridge"])
            record(run_dir, "bridge", self.bridge)
            sh(["ip", "addr", "add", f"{self.net[1]}/24", "dev", self.bridge])
            sh(["ip", "link", "set", self.bridge, "up"])
        self.count = 0

    def attach(self, name: str) -> tuple[str, str, str]:
        """A namespace wired to the bridge; returns (netns, host-side veth, device address)."""
        self.count += 1
        idx = self.count
        netns = f"edgenas-{self.run_id}-{name}"
        veth, peer = f"ef{self.run_id}{idx}", f"eg{self.run_id}{idx}"
        address = str(self.net[10 + idx])
        sh(["ip", "netns", "add", netns])
        record(self.run_dir, "netns", netns)
        sh(["ip", "link", "add", veth, "type", "veth", "peer", "name", peer])
        record(self.run_dir, "veth", veth)
        sh(["ip", "link", "set", peer, "netns", netns])
        sh(["ip", "-n", netns, "link", "set", peer, "name", "eth0"])
        sh(["ip", "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0"])
        sh(["ip", "-n", netns, "link", "set", "lo", "up"])
        sh(["ip", "-n", netns, "link", "set", "eth0", "up"])
        sh(["ip", "link", "set", veth, "master", self.bridge])
        sh(["ip", "link", "set", veth, "up"])
        return netns, veth, address


class Fleet:
    """Stand up devices with :meth:`add_ssh` / :meth:`add_adb`; :meth:`teardown` removes everything."""

    def __init__(self, use_netns: bool | None = None) -> None:
        require_root_and_tools(["ip", "nft", "tc", "adb", "ssh-keygen", "useradd", "unshare", SSHD])
        purge_stale()
        self.run_id, self.dir = new_run()
        self.ssh: dict[str, SSHDevice] = {}
        self.adb: dict[str, AdbDevice] = {}
        self.adb_server: AdbServer | None = None
        try:
            self.netns = netns_permitted() if use_netns is None else use_netns
            self.network = Network(self.run_id, self.dir) if self.netns else None
            self.client_key = keygen(self.dir / "client_key", f"edgenas-fleet-{self.run_id}")
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        except BaseException:
            self.teardown()
            raise

    # --------------------------------------------------------------------------------- devices

    def add_ssh(
        self, name: str, python: str, cpu_quota: float | None = None, cpus: str | None = None,
        period_us: int = PERIOD_US, memory_bytes: int | None = None, fake_clock: bool = False,
        boot_id: str | None = None, _netns: tuple[str, str, str] | None = None,
    ) -> SSHDevice:
        """An SSH device with its own user, host key, home and (netns mode) namespace and address.
        ``cpu_quota`` (fraction of one CPU per ``period_us``) and ``cpus`` (a cpuset) make it a slow
        device; ``memory_bytes`` a small one (OOM killer).  ``fake_clock``: its processes see a wall
        clock the test moves (:meth:`SSHDevice.jump_clock`, libfaketime).  ``boot_id``: a boot id of
        its own, changed by :meth:`SSHDevice.reboot`."""
        env: dict[str, str] = {}
        if fake_clock:
            lib = next((p for p in FAKETIME_LIBS if Path(p).exists()), None)
            if lib is None:
                raise FleetError("a device with a fake clock needs libfaketime "
                                 "(Debian package faketime: `make system-packages`)")
        ddir = self.dir / name
        ddir.mkdir()
        os.chmod(ddir, 0o755)
        user = f"ef{self.run_id}{name}"[:32]
        if fake_clock:
            stamp = ddir / "faketime"
            stamp.write_text("+0\n")
            os.chmod(stamp, 0o644)
            env = {"LD_PRELOAD": lib, "FAKETIME_TIMESTAMP_FILE": str(stamp), "FAKETIME_NO_CACHE": "1",
                   "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
        home = ddir / "home"
        sh(["useradd", "-M", "-N", "-g", "nogroup", "-d", str(home), "-s", "/bin/sh", "-p", "*", user])
        record(self.dir, "user", user)
        home.mkdir()
        (home / "edgenas").mkdir()
        shutil.chown(home, user)
        shutil.chown(home / "edgenas", user)
        (ddir / "authorized_keys").write_text(Path(str(self.client_key) + ".pub").read_text())
        os.chmod(ddir / "authorized_keys", 0o644)
        host_key = keygen(ddir / "ssh_host_ed25519_key", f"{name}-host")
        cgroup = CGroup(f"edgenas-fleet-{self.run_id}-{name}", self.dir, cpu_quota=cpu_quota, cpus=cpus,
                        period_us=period_us, memory_bytes=memory_bytes)
        reached_from = None
        if _netns is not None:  # add_behind_jump: (namespace, address, the jump host's namespace)
            netns, host, reached_from = _netns
            veth, port = None, 22
        elif self.network is not None:
            netns, veth, host = self.network.attach(name)
            port = 22
        else:
            netns, veth, host, port = None, None, "127.0.0.1", free_port()
        dev = SSHDevice(
            name=name,
            dir=ddir,
            user=user,
            home=home,
            python=python,
            host=host,
            port=port,
            client_key=self.client_key,
            host_key=host_key,
            run_dir=self.dir,
            netns=netns,
            veth_host=veth,
            cgroup=cgroup,
            env=env,
            boot_id=boot_id,
            reached_from_netns=reached_from,
        )
        self.ssh[name] = dev
        dev.start()
        return dev

    def add_behind_jump(self, name: str, python: str, jump: SSHDevice) -> SSHDevice:
        """An SSH device that only ``jump`` reaches (``ProxyJump`` through it): its own namespace, wired
        by a veth pair to ``jump``'s namespace alone, on a /30 carved from the top of the fleet's /24
        (10.213.N.200 and up).  The host and every other device have no way there: the host's route for
        the /24 points at the bridge, where nothing answers for that address, and the device has no
        route back but to the jump host.  ``jump``'s sshd is restarted allowing TCP forwarding."""
        if self.network is None or jump.netns is None:
            raise FleetError("a device behind a jump host needs network namespace mode "
                             "(EDGENAS_FLEET_NETNS=1)")
        if not jump.allow_tcp_forwarding:
            jump.allow_tcp_forwarding = True
            jump.restart()
        behind = sum(1 for d in self.ssh.values() if d.reached_from_netns)
        if behind >= 13:
            raise FleetError("at most 13 devices behind jump hosts per fleet")
        base = self.network.net[200 + 4 * behind]
        near, far = str(base + 1), str(base + 2)
        netns = f"edgenas-{self.run_id}-{name}"
        side_jump, side_dev = f"ej{self.run_id}{behind}", f"ek{self.run_id}{behind}"
        sh(["ip", "netns", "add", netns])
        record(self.dir, "netns", netns)
        sh(["ip", "link", "add", side_jump, "type", "veth", "peer", "name", side_dev])
        record(self.dir, "veth", side_jump)  # gone with the namespaces; recorded for a half-made link
        sh(["ip", "link", "set", side_jump, "netns", jump.netns])
        sh(["ip", "link", "set", side_dev, "netns", netns])
        sh(["ip", "-n", jump.netns, "addr", "add", f"{near}/30", "dev", side_jump])
        sh(["ip", "-n", jump.netns, "link", "set", side_jump, "up"])
        sh(["ip", "-n", netns, "link", "set", side_dev, "name", "eth0"])
        sh(["ip", "-n", netns, "addr", "add", f"{far}/30", "dev", "eth0"])
        sh(["ip", "-n", netns, "link", "set", "lo", "up"])
        sh(["ip", "-n", netns, "link", "set", "eth0", "up"])
        return self.add_ssh(name, python, _netns=(netns, far, jump.netns))

    def add_arm_ssh(self, name: str, board: str) -> SSHDevice:
        """An SSH device whose ``python3`` is an emulated Raspberry Pi (``board``: pi64, pi5 or pi32; see
        tests/support/fleet/arm.py), built on first use and cached.  Its shell stays native x86: only the
        on-device Python sees the Pi.  Timings measured on it describe the emulator, not a Pi."""
        if board not in arm.BOARDS:
            raise FleetError(f"unknown ARM board {board!r}: one of {', '.join(sorted(arm.BOARDS))}")
        return self.add_ssh(name, str(arm.ensure_built().python(board)))

    def add_adb(self, name: str, python: str) -> AdbDevice:
        if self.adb_server is None:
            self.adb_server = AdbServer(self.dir)
        ddir = self.dir / f"adb-{name}"
        ddir.mkdir()
        dev = AdbDevice(name=name, root=ddir / "root", server=self.adb_server, python=python)
        self.adb[name] = dev
        dev.start()
        return dev

    # ---------------------------------------------------------------------------------- faults

    def _nft(self, dev: SSHDevice, ruleset: str) -> list[str]:
        prefix = ["ip", "netns", "exec", dev.netns] if dev.netns else []
        proc = subprocess.run([*prefix, "nft", "-f", "-"], input=ruleset, text=True, capture_output=True)
        if proc.returncode != 0:
            raise FleetError(f"nft failed on {dev.name}: {proc.stderr.strip()}")
        return [*prefix, "nft", "delete", "table", "inet", f"edgenas_fault_{dev.name}"]

    @contextmanager
    def blackhole(self, dev: SSHDevice) -> Iterator[None]:
        """Drop every packet to and from the device's sshd (SYNs included): the peer just vanishes."""
        with self.loss(dev, 100):
            yield

    @contextmanager
    def loss(self, dev: SSHDevice, percent: int) -> Iterator[None]:
        """Drop ``percent`` % of the packets of the device's SSH port, in both directions (nftables)."""
        match = f"numgen random mod 100 < {percent}" if percent < 100 else ""
        table = f"edgenas_fault_{dev.name}"
        undo = self._nft(
            dev,
            f"""table inet {table} {{
  chain input {{ type filter hook input priority -10; policy accept;
    tcp dport {dev.port} {match} drop; }}
  chain output {{ type filter hook output priority -10; policy accept;
    tcp sport {dev.port} {match} drop; }}
}}""",
        )
        try:
            yield
        finally:
            sh(undo, check=False)

    @contextmanager
    def bandwidth(self, dev: SSHDevice, rate: str = "8mbit") -> Iterator[None]:
        """Limit the device's link to ``rate`` both ways with a token bucket (``tc tbf``)."""
        if dev.netns is None or dev.veth_host is None:
            raise FleetError("bandwidth limits need network namespace mode (EDGENAS_FLEET_NETNS=1)")
        tbf = ["root", "tbf", "rate", rate, "burst", "16kb", "latency", "200ms"]
        sh(["tc", "qdisc", "replace", "dev", dev.veth_host, *tbf])
        sh(["ip", "netns", "exec", dev.netns, "tc", "qdisc", "replace", "dev", "eth0", *tbf])
        try:
            yield
        finally:
            sh(["tc", "qdisc", "del", "dev", dev.veth_host, "root"], check=False)
            sh(
                ["ip", "netns", "exec", dev.netns, "tc", "qdisc", "del", "dev", "eth0", "root"],
                check=False,
            )

    # -------------------------------------------------------------------------------- teardown

    def teardown(self) -> None:
        """Daemons first, then veth, namespaces, bridge, users, cgroups (system.cleanup_resources)."""
        for dev in self.ssh.values():
            dev.kill()
        for adev in self.adb.values():
            adev.kill()
        if self.adb_server is not None:
            self.adb_server.stop()
        for dev in self.ssh.values():
            if dev.cgroup is not None:
                dev.cgroup.delete()
        cleanup_resources(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def standing(what: str, build: Callable[[Fleet], None]) -> Iterator[Fleet]:
    """A new :class:`Fleet` with the devices ``build`` adds, torn down when the block ends or when the
    build fails; a FleetError fails the test with one line naming ``what``."""
    import pytest

    try:
        fleet = Fleet()
    except FleetError as exc:
        pytest.fail(f"cannot stand up {what}: {exc}", pytrace=False)
    try:
        build(fleet)
    except FleetError as exc:
        fleet.teardown()
        pytest.fail(f"cannot stand up {what}: {exc}", pytrace=False)
    except BaseException:
        fleet.teardown()
        raise
    try:
        yield fleet
    finally:
        fleet.teardown()
