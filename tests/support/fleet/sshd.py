"""SSH devices: a real Debian sshd each, with its own user, host key, home/workdir and (where allowed)
its own network namespace on a private bridge.

Each sshd runs in a private mount namespace too.  That is where the one trick of the fleet lives: the
device Pythons (``.venv`` / ``.venv-tflite``) are symlinks into ``/root/.pyenv``, and ``/root`` is 0700.
Inside the device's mount namespace, ``/root`` is covered by a world-traversable tmpfs with only the
needed subtree bind-mounted back, so the device user can run those interpreters while the host's
``/root`` stays as it is.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.fleet.cgroups import CGroup
from tests.support.fleet.system import (
    FleetError,
    kill_pid,
    netns_pids,
    record_process,
    sh,
    wait_port,
    wait_port_in_netns,
)

SSHD = "/usr/sbin/sshd"
FAKETIME_LIBS = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
                 "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1")
BOOT_ID = "/proc/sys/kernel/random/boot_id"


def keygen(path: Path, comment: str) -> Path:
    """An ed25519 key pair (no passphrase); returns the private key path."""
    sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return path


def key_fingerprint(pub: Path) -> str:
    """``ssh-ed25519 SHA256:…`` computed by ssh-keygen, independent of edgenas' own code."""
    bits, fp, *_ = sh(["ssh-keygen", "-l", "-f", str(pub)]).stdout.split()
    key_type = pub.read_text().split()[0]
    return f"{key_type} {fp}"


def sign_host_key(
    ca: Path, host_pub: Path, principals: str, validity: str = "-5m:+1h", *, host: bool = True
) -> Path:
    """An OpenSSH certificate for ``host_pub`` signed by ``ca`` with ssh-keygen itself (``-h``: a host
    certificate); returns the ``…-cert.pub`` path.  ``principals`` is ssh-keygen's ``-n`` list."""
    argv = ["ssh-keygen", "-q", "-s", str(ca), "-I", f"edgenas-test-{host_pub.stem}", "-V", validity]
    if principals:
        argv += ["-n", principals]
    sh([*argv, *(["-h"] if host else []), str(host_pub)])
    return host_pub.with_name(host_pub.name[: -len(".pub")] + "-cert.pub")


def unhide_script(paths: list[str], stage: Path) -> str:
    """Shell commands making ``paths`` (and their symlink targets) reachable by an unprivileged user in
    the current (private) mount namespace.  Empty when they already are."""
    blocked: dict[str, set[str]] = {}
    for raw in paths:
        for p in {os.path.abspath(raw), os.path.realpath(raw)}:
            cur = "/"
            for part in Path(p).parts[1:]:
                child = os.path.join(cur, part)
                if os.path.isdir(cur) and not os.stat(cur).st_mode & 0o001:
                    blocked.setdefault(cur, set()).add(child)
                    break
                cur = child
    lines: list[str] = []
    for i, (top, children) in enumerate(sorted(blocked.items())):
        staged = [(stage / f"{i}-{j}", child) for j, child in enumerate(sorted(children))]
        for s, child in staged:
            lines += [
                f"mkdir -p {shlex.quote(str(s))}",
                f"mount --bind {shlex.quote(child)} {shlex.quote(str(s))}",
            ]
        lines.append(f"mount -t tmpfs -o mode=0755,size=1m edgenas-unhide {shlex.quote(top)}")
        for s, child in staged:
            lines += [
                f"mkdir -p {shlex.quote(child)}",
                f"mount --move {shlex.quote(str(s))} {shlex.quote(child)}",
            ]
    return " && ".join(lines)


@dataclass
class SSHDevice:
    """One sshd-backed device.  ``host``/``port`` is where clients connect; ``workdir`` is the absolute
    path of the device's default workdir (``edgenas`` under the user's home)."""

    name: str
    dir: Path
    user: str
    home: Path
    python: str
    host: str
    port: int
    client_key: Path
    host_key: Path
    run_dir: Path
    netns: str | None = None
    veth_host: str | None = None
    cgroup: CGroup | None = None
    extra_paths: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    host_cert: Path | None = None  # an OpenSSH host certificate sshd presents (HostCertificate)
    # Variables every session gets (sshd SetEnv), e.g. libfaketime's for a device whose clock jumps.
    env: dict[str, str] = field(default_factory=dict)
    # A boot id of its own (bind-mounted over /proc/sys/kernel/random/boot_id in the device's mount
    # namespace): :meth:`reboot` changes it, as a real reboot would.  None: the host's.
    boot_id: str | None = None
    # A jump host: its sshd lets clients open direct-tcpip channels (ProxyJump through it).
    allow_tcp_forwarding: bool = False
    # A device only a jump host reaches: readiness is polled from that host's namespace.
    reached_from_netns: str | None = None

    @property
    def workdir(self) -> Path:
        return self.home / "edgenas"

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def fingerprint(self) -> str:
        return key_fingerprint(Path(str(self.host_key) + ".pub"))

    def write_config(self) -> Path:
        cfg = self.dir / "sshd_config"
        cfg.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    f"ListenAddress {self.host}",
                    f"HostKey {self.host_key}",
                    *([f"HostCertificate {self.host_cert}"] if self.host_cert else []),
                    "PidFile none",
                    f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "PermitRootLogin no",
                    f"AllowUsers {self.user}",
                    "StrictModes yes",
                    "Subsystem sftp internal-sftp",
                    "UseDNS no",
                    "LogLevel ERROR",
                    "MaxStartups 100:30:200",
                    "MaxSessions 100",
                    "X11Forwarding no",
                    f"AllowTcpForwarding {'yes' if self.allow_tcp_forwarding else 'no'}",
                    "PrintMotd no",
                    *([f"SetEnv {' '.join(f'{k}={v}' for k, v in self.env.items())}"]
                      if self.env else []),
                    "",
                ]
            )
        )
        return cfg

    def start(self, timeout: float = 15.0) -> None:
        """Start sshd (in the device's cgroup, netns and mount namespace) and wait until it accepts."""
        if self.proc is not None and self.proc.poll() is None:
            raise FleetError(f"{self.name}: sshd already running")
        cfg = self.write_config()
        unhide = unhide_script([self.python, *self.extra_paths], self.dir / "stage")
        if self.boot_id is not None:
            boot = self.dir / "boot_id"
            boot.write_text(self.boot_id + "\n")
            os.chmod(boot, 0o444)
            unhide = " && ".join(filter(None, [
                unhide, f"mount --bind {shlex.quote(str(boot))} {BOOT_ID}"]))
        inner = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            (unhide + " && " if unhide else "") + 'exec "$@"',
            "sh",
            SSHD,
            "-D",
            "-e",
            "-f",
            str(cfg),
        ]
        if self.netns:
            inner = ["ip", "netns", "exec", self.netns, *inner]
        join = 'for f in $EDGENAS_FLEET_CGROUP_PROCS; do echo $$ > "$f" || exit 99; done; exec "$@"'
        env = dict(
            os.environ,
            EDGENAS_FLEET_CGROUP_PROCS=" ".join(
                str(p) for p in (self.cgroup.procs_files if self.cgroup else [])
            ),
        )
        log = self.dir / "sshd.log"
        with open(log, "ab") as fh:
            self.proc = subprocess.Popen(
                ["sh", "-c", join, "sh", *inner],
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        record_process(self.run_dir, self.proc.pid)
        if self.reached_from_netns:
            wait_port_in_netns(self.reached_from_netns, self.host, self.port, timeout, self.proc, log)
        else:
            wait_port(self.host, self.port, timeout, self.proc, log)

    def pids(self) -> list[int]:
        """Every process of the device: the listener and all its sessions."""
        pids = set(self.cgroup.pids() if self.cgroup else [])
        if self.netns:
            pids.update(netns_pids(self.netns))
        if self.proc is not None and self.proc.poll() is None:
            pids.add(self.proc.pid)
        return sorted(pids)

    def signal(self, sig: int) -> None:
        for pid in self.pids():
            kill_pid(pid, sig)

    def kill(self) -> None:
        """Crash the device: SIGKILL its sshd and every session at once."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def freeze(self) -> None:
        self.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        self.start()

    def reboot(self, wipe: tuple[str, ...] = ()) -> None:
        """Power-cycle the device: every process killed, a new boot id, ``wipe`` (globs under the
        workdir, e.g. temp files on a tmpfs) removed, sshd started afresh.  Needs ``boot_id`` set."""
        import glob
        import secrets as _secrets

        if self.boot_id is None:
            raise FleetError(f"{self.name}: reboot needs a device created with its own boot id")
        self.kill()
        for pattern in wipe:
            for path in glob.glob(str(self.workdir / pattern)):
                sh(["rm", "-rf", "--", path])
        self.boot_id = _secrets.token_hex(16)
        self.start()

    def jump_clock(self, offset: str) -> None:
        """Move the device's wall clock (libfaketime offset such as ``+5h`` or ``-3h``; ``+0`` is the
        true time) for every process there, at once: libfaketime rereads the file on every call.
        The monotonic clock and /proc/uptime are left alone, as an NTP step leaves them."""
        stamp = self.env.get("FAKETIME_TIMESTAMP_FILE")
        if not stamp:
            raise FleetError(f"{self.name}: its clock is real (create it with fake_clock=True)")
        Path(stamp).write_text(offset + "\n")

    def rotate_host_key(self) -> str:
        """Give the device a new host key (as a reinstalled Pi would) and restart; returns the new
        fingerprint.  :meth:`restore_host_key` goes back."""
        new = self.dir / "ssh_host_ed25519_key.rotated"
        if not new.exists():
            keygen(new, f"{self.name}-rotated")
        self._original_key = getattr(self, "_original_key", self.host_key)
        self.host_key = new
        self.restart()
        return self.fingerprint

    def restore_host_key(self) -> None:
        original = getattr(self, "_original_key", None)
        if original is not None and original != self.host_key:
            self.host_key = original
            self.restart()
