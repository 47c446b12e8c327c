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
from edgenas.device.registry import Device, Hop, pin_offered_hop_keys
from edgenas.device.session import DeviceSession
from edgenas.device.transports.base import Transport


def _session(home: Path, dev: Device, *, accept_new: bool = False,
             replace: bool = False) -> DeviceSession:
    def opener(device: Device, where: Path) -> Transport:
        return open_transport(device, where, accept_new_host_key=accept_new, replace_known_host=replace)

    return DeviceSession(home, dev, opener=opener)


def check_pinned_host_key(dev: Device, home: Path, replace: bool) -> str:
    """Contact the device now: a wrong key fails registration (HostKeyError); an unreachable device is
    still added, its pin checked on first use (provisioning before the board is online).  The jump
    hosts' keys verified on the way are pinned in ``dev`` too.  Returns the line ``device add``
    prints."""
    transport = None
    try:
        with _session(home, dev, replace=replace) as session:
            transport = session.transport
            transport.connect()  # type: ignore[attr-defined]
    except HostKeyError:
        raise
    except TransportError as exc:
        hops = _pin_hops(dev, transport)
        return f"\n  host key pinned to {dev.host_key_fingerprint}; not checked now ({exc}){hops}"
    hops = _pin_hops(dev, transport)
    return f"\n  host key {dev.host_key_fingerprint} (pinned, and matches the device){hops}"


def trust_host_key(dev: Device, home: Path) -> tuple[str | None, str]:
    """Trust-on-first-use: record the device's key in the workspace known_hosts (a *changed* key is
    still refused), and pin each jump host's key in ``dev`` (the caller pins the device's with the
    fingerprint returned).  Returns the fingerprint and the line ``device add`` prints."""
    with _session(home, dev, accept_new=True) as session:
        transport = session.transport
        transport.connect()  # type: ignore[attr-defined]
        fp = transport.host_fingerprint  # type: ignore[attr-defined]
        new = transport.accepted_fingerprint is not None  # type: ignore[attr-defined]
    hops = _pin_hops(dev, transport)
    return fp, f"\n  host key {fp} ({'new, now trusted' if new else 'already known'}){hops}"


def _pin_hops(dev: Device, transport: Transport | None) -> str:
    """Pin in ``dev``'s record the key each jump host proved it holds on this connection (those it
    reached; a hop already pinned keeps its pin), so later connections hold every hop to it as they
    hold the device to its own.  Returns the lines ``device add`` prints about them."""
    offered = list(getattr(transport, "hop_fingerprints", None) or [None] * len(dev.jump))
    if not dev.jump or len(offered) != len(dev.jump):
        return ""
    dev.jump = pin_offered_hop_keys(dev.jump, offered)
    lines = []
    for hop in dev.jump:
        spec = Hop.from_dict(hop).spec
        if hop.get("host_key"):
            lines.append(f"\n  jump host {spec}: host key {hop['host_key']} (pinned)")
        else:
            lines.append(f"\n  jump host {spec}: not reached, host key not pinned (known_hosts "
                         "decides on first use)")
    return "".join(lines)


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
