"""Deciding whether an SSH host key is the device's: pinned fingerprints, known_hosts, host certificates.

paramiko only knows plain known_hosts lines, and lets ``~/.ssh/known_hosts`` win over the file a
program writes to.  edgenas needs more, so the whole decision is made here and paramiko is only asked
for the key the server proved it holds (see :class:`~edgenas.device.transports.ssh.SSHTransport`):

1. A fingerprint pinned on the device row (``device add --host-key SHA256:…``) is authoritative.
2. Otherwise the workspace's ``<home>/known_hosts`` decides when it says anything about the host, and
   only then the user's ``~/.ssh/known_hosts`` (read-only for edgenas).  So a stale personal entry can
   always be overridden from edgenas, and the advice edgenas prints can actually be followed.
3. In each file, ``@cert-authority`` lines are honoured: an OpenSSH host certificate is accepted when it
   is signed by a listed CA, is a *host* certificate, names the host among its principals, is inside its
   validity window and carries no critical option.  ``@revoked`` keys (host or CA) are never accepted.

OpenSSH's certificate format is PROTOCOL.certkeys in openssh-portable; the parser below follows that
text, and the signature is checked with paramiko's own key classes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import struct
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import paramiko

log = logging.getLogger(__name__)

CERT_SUFFIX = "-cert-v01@openssh.com"
_FP_RE = re.compile(r"^SHA256:([A-Za-z0-9+/]{43})=?$")
_HOST_CERT = 2  # SSH2_CERT_TYPE_HOST
_FOREVER = 0xFFFFFFFFFFFFFFFF


class Verdict(Enum):
    ACCEPT = "accept"
    MISMATCH = "mismatch"
    UNKNOWN = "unknown"


def sha256_fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:…`` of the plain public key (a certificate's fingerprint is its key's, as in ssh)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse_fingerprint(text: str) -> str:
    """Validate a user-given fingerprint; returns the canonical ``SHA256:<43 chars>``.

    Accepts what ``ssh-keygen -lf`` prints (``256 SHA256:… comment (ED25519)``) or the stored form
    ``ssh-ed25519 SHA256:…``: the first ``SHA256:`` token is taken.
    """
    token = next((t for t in str(text).split() if t.startswith("SHA256:")), str(text).strip())
    match = _FP_RE.match(token)
    if not match:
        raise ValueError(
            f"host key fingerprint {text!r} is not of the form SHA256:<43 base64 characters> "
            "(as `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` prints it on the device)"
        )
    return f"SHA256:{match.group(1)}"


# ------------------------------------------------------------------------------------ known_hosts


@dataclass(frozen=True)
class KnownHost:
    """One known_hosts line that edgenas understood."""

    marker: str | None  # None, "cert-authority" or "revoked"
    patterns: tuple[str, ...]
    key: paramiko.PKey
    where: str  # "path:line", for messages

    def matches(self, name: str) -> bool:
        return host_matches(self.patterns, name)


def load_known_hosts(path: Path) -> list[KnownHost]:
    """The lines of ``path`` (missing file: none).  Lines with key types paramiko cannot load are
    skipped, as ssh skips what it does not understand."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc)
        return []
    out: list[KnownHost] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        fields = raw.split()
        if not fields or fields[0].startswith("#"):
            continue
        marker = None
        if fields[0].startswith("@"):
            marker = fields.pop(0)[1:]
            if marker not in ("cert-authority", "revoked"):
                continue
        if len(fields) < 3:
            continue
        try:
            blob = base64.b64decode(fields[2], validate=True)
            key = paramiko.PKey.from_type_string(fields[1], blob)
        except (binascii.Error, ValueError, paramiko.SSHException) as exc:
            log.debug("%s:%d: skipped (%s)", path, lineno, exc)
            continue
        out.append(KnownHost(marker, tuple(fields[0].split(",")), key, f"{path}:{lineno}"))
    return out


def host_matches(patterns: tuple[str, ...] | list[str], name: str) -> bool:
    """ssh's rule: some pattern matches and no negated (``!``) pattern does.  Hashed entries
    (``|1|salt|hash``) compare the HMAC-SHA1 of the name."""
    name = name.lower()
    hit = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern[1:] if negated else pattern
        if pattern.startswith("|1|"):
            parts = pattern.split("|")
            if len(parts) != 4:
                continue
            try:
                salt, want = base64.b64decode(parts[2]), base64.b64decode(parts[3])
            except binascii.Error:
                continue
            ok = hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), want)
        else:
            ok = _glob(pattern.lower()).fullmatch(name) is not None
        if ok and negated:
            return False
        hit = hit or ok
    return hit


def _glob(pattern: str) -> re.Pattern[str]:
    """ssh's wildcards: ``*`` and ``?`` only (``[host]:port`` brackets are literal)."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern))


# ----------------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class HostCertificate:
    """The fields of an OpenSSH certificate that decide whether it vouches for a host."""

    cert_type: int
    key_id: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    critical_options: bytes
    ca_blob: bytes
    signature: bytes
    signed: bytes  # everything the CA signed


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("certificate is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack(">Q", self.take(8))[0]

    def string(self) -> bytes:
        return self.take(self.u32())


# The public-key fields between the nonce and the serial, per certificate type (PROTOCOL.certkeys).
_KEY_FIELDS = {
    "ssh-ed25519-cert-v01@openssh.com": 1,
    "ssh-rsa-cert-v01@openssh.com": 2,
    "ecdsa-sha2-nistp256-cert-v01@openssh.com": 2,
    "ecdsa-sha2-nistp384-cert-v01@openssh.com": 2,
    "ecdsa-sha2-nistp521-cert-v01@openssh.com": 2,
}


def parse_certificate(blob: bytes) -> HostCertificate:
    """Parse an OpenSSH certificate blob; raises ValueError for anything malformed."""
    r = _Reader(blob)
    cert_type_name = r.string().decode("ascii", "replace")
    if cert_type_name not in _KEY_FIELDS:
        raise ValueError(f"unsupported certificate type {cert_type_name}")
    r.string()  # nonce
    for _ in range(_KEY_FIELDS[cert_type_name]):
        r.string()  # key material (an mpint is length-prefixed like a string)
    r.u64()  # serial
    kind = r.u32()
    key_id = r.string().decode("utf-8", "replace")
    pr = _Reader(r.string())
    principals = []
    while pr.pos < len(pr.data):
        principals.append(pr.string().decode("utf-8", "replace"))
    valid_after, valid_before = r.u64(), r.u64()
    critical = r.string()
    r.string()  # extensions (none are defined for host certificates)
    r.string()  # reserved
    ca_blob = r.string()
    signed = blob[: r.pos]
    signature = r.string()
    if r.pos != len(blob):
        raise ValueError("trailing bytes after the certificate signature")
    return HostCertificate(
        kind, key_id, tuple(principals), valid_after, valid_before, critical, ca_blob, signature, signed
    )


def certificate_of(key: paramiko.PKey) -> bytes | None:
    """The certificate blob a server presented with its key, or None for a plain key."""
    blob = getattr(key, "public_blob", None)
    if blob is not None and str(blob.key_type).endswith(CERT_SUFFIX):
        return bytes(blob.key_blob)
    return None


def check_certificate(
    cert_blob: bytes, cas: list[KnownHost], host: str, now: float | None = None
) -> str | None:
    """Why the certificate does not vouch for ``host`` under one of ``cas`` — or None when it does."""
    try:
        cert = parse_certificate(cert_blob)
    except ValueError as exc:
        return f"malformed host certificate: {exc}"
    if cert.cert_type != _HOST_CERT:
        return "the certificate is not a host certificate"
    ca = next((c for c in cas if c.key.asbytes() == cert.ca_blob), None)
    if ca is None:
        return "the host certificate is signed by a CA that no @cert-authority line trusts for this host"
    if CERT_SUFFIX in ca.key.get_name():
        return "the CA key is itself a certificate"
    sig_type = _Reader(cert.signature).string().decode("ascii", "replace")
    if sig_type == "ssh-rsa":
        return "the certificate is signed with SHA-1 (ssh-rsa), which OpenSSH no longer accepts"
    try:
        valid_sig = ca.key.verify_ssh_sig(cert.signed, paramiko.Message(cert.signature))
    except Exception as exc:  # noqa: BLE001 - a malformed signature blob is simply not valid
        log.debug("certificate signature check raised %r", exc)
        valid_sig = False
    if not valid_sig:
        return "the host certificate's signature does not verify with the CA key"
    if cert.critical_options:
        return "the host certificate carries critical options (none are defined for host certificates)"
    if not cert.principals:
        return "the host certificate names no principals (it would vouch for any host)"
    if host.lower() not in {p.lower() for p in cert.principals}:
        return f"the host certificate is for {', '.join(cert.principals)}, not {host}"
    now = time.time() if now is None else now
    if now < cert.valid_after:
        return f"the host certificate is not valid before {_when(cert.valid_after)}"
    if cert.valid_before != _FOREVER and now >= cert.valid_before:
        return f"the host certificate expired at {_when(cert.valid_before)}"
    return None


def _when(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(min(ts, 253402300799)))


# --------------------------------------------------------------------------------------- decision


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    detail: str  # why (for MISMATCH: the message body; for ACCEPT: what vouched)


def decide_file(
    entries: list[KnownHost], name: str, host: str, key: paramiko.PKey, now: float | None = None
) -> Decision:
    """What one known_hosts file says about ``key`` offered by ``name`` (``host`` or ``[host]:port``)."""
    cert = certificate_of(key)
    cas = [e for e in entries if e.marker == "cert-authority" and e.matches(name)]
    plain = [e for e in entries if e.marker is None and e.matches(name)]
    cert_problem = None
    if cert is not None and cas:
        cert_problem = check_certificate(cert, cas, host, now)
        if cert_problem is None:
            return Decision(Verdict.ACCEPT, "host certificate signed by a trusted CA")
    if plain:
        for e in plain:
            if e.key.asbytes() == key.asbytes():
                return Decision(Verdict.ACCEPT, f"known key ({e.where})")
        known = ", ".join(sorted({f"{e.key.get_name()} {sha256_fingerprint(e.key)}" for e in plain}))
        return Decision(Verdict.MISMATCH, f"known {known} ({plain[0].where})")
    if cert_problem is not None:
        return Decision(Verdict.MISMATCH, f"{cert_problem} ({cas[0].where})")
    return Decision(Verdict.UNKNOWN, "")


def revoked(entries: list[KnownHost], key: paramiko.PKey) -> str | None:
    """Where ``key`` (or the CA of its certificate) is marked ``@revoked``, if anywhere."""
    blobs = {key.asbytes()}
    cert = certificate_of(key)
    if cert is not None:
        try:
            blobs.add(parse_certificate(cert).ca_blob)
        except ValueError:
            pass
    for e in entries:
        if e.marker == "revoked" and e.key.asbytes() in blobs:
            return e.where
    return None


def known_key_types(entries: list[KnownHost], name: str) -> tuple[list[str], bool]:
    """Key types already known for ``name`` (to ask the server for those first, as ssh does) and
    whether a CA is trusted for it (then certificates are asked for first)."""
    types = [e.key.get_name() for e in entries if e.marker is None and e.matches(name)]
    has_ca = any(e.marker == "cert-authority" and e.matches(name) for e in entries)
    return types, has_ca


def order_host_key_algorithms(algorithms: tuple[str, ...], known: list[str], certs_first: bool) -> tuple:
    """``algorithms`` reordered: certificates first when a CA is trusted, then known key types."""

    def family(alg: str) -> str:
        base = alg.replace(CERT_SUFFIX, "")
        return "ssh-rsa" if base.startswith("rsa-sha2-") else base

    known_families = {family(k) for k in known}

    def rank(item: tuple[int, str]) -> tuple[int, int, int]:
        idx, alg = item
        is_cert = alg.endswith(CERT_SUFFIX)
        return (0 if certs_first and is_cert else 1, 0 if family(alg) in known_families else 1, idx)

    return tuple(alg for _, alg in sorted(enumerate(algorithms), key=rank))
