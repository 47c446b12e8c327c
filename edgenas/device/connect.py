"""A transport for a device record: the one constructor, wiring in the workspace's known_hosts file,
the device's pinned host key or ADB serial, and its timeout.  Connections are made lazily.
"""

from __future__ import annotations

from pathlib import Path

from edgenas.core.errors import DeviceError
from edgenas.device.registry import Device, hops_of
from edgenas.device.transports.adb import AdbTransport
from edgenas.device.transports.base import Transport
from edgenas.device.transports.local import LocalTransport
from edgenas.device.transports.ssh import SSHTransport

__all__ = ["known_hosts_path", "open_transport"]


def known_hosts_path(home: Path) -> Path:
    """The workspace's own known_hosts (``<home>/known_hosts``), the one edgenas writes to."""
    return Path(home) / "known_hosts"


def open_transport(
    device: Device,
    home: Path,
    *,
    accept_new_host_key: bool = False,
    replace_known_host: bool = False,
) -> Transport:
    """A transport for ``device``; connections are made lazily, on first use.

    ``accept_new_host_key`` is trust-on-first-use for SSH and is only meant for ``device add``: an
    unknown key is then recorded in the workspace known_hosts (a *changed* key is still refused).
    ``replace_known_host`` (``device add --replace --host-key``) records the pinned key in place of
    whatever the workspace known_hosts said about the host.  The device's pinned host key and ADB
    serial are always enforced.  An SSH device's jump hosts (``Device.jump``) are gone through, each
    one's host key checked like the device's; their connections are shared within the process.
    """
    if device.kind == "local":
        return LocalTransport(device.name, workdir=device.workdir)
    if device.kind == "ssh":
        # lazy: paramiko costs CLI start-up for verbs that reach no SSH device

        assert device.host is not None
        return SSHTransport(
            device.name,
            device.host,
            device.port or 22,
            device.user,
            device.key_path,
            known_hosts=known_hosts_path(home),
            workdir=device.workdir,
            connect_timeout=device.timeout_s,
            accept_new_host_key=accept_new_host_key,
            host_key_pin=device.host_key_fingerprint,
            replace_known_host=replace_known_host,
            jump=hops_of(device),
        )
    if device.kind == "adb":

        assert device.serial is not None
        return AdbTransport(
            device.name,
            device.serial,
            workdir=device.workdir,
            connect_timeout=device.timeout_s,
            expected_serialno=device.adb_serialno,
        )
    raise DeviceError(f"device {device.name}: unknown kind {device.kind!r}")
