"""Exceptions users see.  Each carries a message meant to be printed as is (no traceback)."""

from __future__ import annotations


class EdgeNASError(Exception):
    """Base class: the CLI prints ``str(exc)`` and exits non-zero instead of a traceback."""


class SpecError(EdgeNASError):
    """A search-space spec is missing, unreadable or invalid."""


class ArchError(EdgeNASError, ValueError):
    """An architecture id or value is invalid; ``field`` names the offending part."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"invalid arch: {field}: {message}")


class CheckpointError(EdgeNASError):
    """A checkpoint file is missing, corrupt, or not an edgenas checkpoint."""


class ImportOFAError(EdgeNASError):
    """A once-for-all state dict does not fit the requested space (lists the bad keys)."""


class DeviceError(EdgeNASError):
    """A device is unknown, misconfigured, or cannot do what was asked (the message says what to fix)."""


class TransportError(EdgeNASError):
    """Talking to a device failed: unreachable, timed out, host key refused, connection lost."""


class HostKeyError(TransportError):
    """A device's SSH host key is unknown (and trust-on-first-use was not asked for) or has changed."""


class DataError(EdgeNASError):
    """A data set is missing, empty, unreadable or unsuitable for training (names the file/folder)."""
