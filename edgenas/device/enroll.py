"""First contact with a device being registered (``device add``): its SSH host key, trusted or checked
against the pin, and an ADB device's own serial.

Like every command that touches a device, this goes through a :class:`DeviceSession`; only the way
its transport is opened differs (trust-on-first-use or replacing a known_hosts entry are allowed
here, at registration, and nowhere else).  No lock is taken: nothing runs on the device.
"""

from __future__ import annotations

from pathlib import Path

from edgenas.core.errors import DeviceError, HostKeyError, TransportError
from edgenas.device.connect import open_transport
from edgenas.device.registry import Device
from edgenas.device.session import DeviceSession
from edgenas.device.transports.base import Transport


def _session(home: Path, dev: Device, *, accept_new: bool = False,
             replace: bool = False) -> DeviceSession:
    def opener(device: Device, where: Path) -> Transport:
        return open_transport(device, where, accept_new_host_key=accept_new, replace_known_host=replace)

    return DeviceSession(home, dev, opener=opener)


def check_pinned_host_key(dev: Device, home: Path, replace: bool) -> str:
    """Contact the device now: a wrong key fails registration (HostKeyError); an unreachable device is
    still added, its pin checked on first use (provisioning before the board is online).  Returns
    the line ``device add`` prints."""
    try:
        with _session(home, dev, replace=replace) as session:
            session.transport.connect()  # type: ignore[attr-defined]
    except HostKeyError:
        raise
    except TransportError as exc:
        return f"\n  host key pinned to {dev.host_key_fingerprint}; not checked now ({exc})"
    return f"\n  host key {dev.host_key_fingerprint} (pinned, and matches the device)"


def trust_host_key(dev: Device, home: Path) -> tuple[str | None, str]:
    """Trust-on-first-use: record the device's key in the workspace known_hosts (a *changed* key is
    still refused).  Returns the fingerprint and the line ``device add`` prints."""
    with _session(home, dev, accept_new=True) as session:
        transport = session.transport
        transport.connect()  # type: ignore[attr-defined]
        fp = transport.host_fingerprint  # type: ignore[attr-defined]
        new = transport.accepted_fingerprint is not None  # type: ignore[attr-defined]
    return fp, f"\n  host key {fp} ({'new, now trusted' if new else 'already known'})"


def read_adb_serialno(dev: Device, home: Path) -> tuple[str | None, str]:
    """The device's own serial, to refuse another device at this address later; the line printed."""
    assert dev.serial is not None
    try:
        with _session(home, dev) as session:
            serialno = session.transport.read_serialno()  # type: ignore[attr-defined]
    except TransportError as exc:
        raise DeviceError(
            f"cannot read the serial of adb device {dev.serial} ({exc}); connect it "
            f"(`adb connect {dev.serial}` for a TCP device) and add it again"
        ) from None
    if not serialno:
        return None, "\n  the device reports no serial: another one at this address cannot be told apart"
    return serialno, f"\n  device serial {serialno} (another device at this address will be refused)"


__all__ = ["check_pinned_host_key", "read_adb_serialno", "trust_host_key"]
