"""What can go wrong on a device, by kind: one error type per failure the host reacts to differently.

Kept apart from the session so that every module that reads a device's answers (the session, the
answer checks, the benchmark backends) raises the same types without importing each other.
"""

from __future__ import annotations

from edgenas.core.errors import DeviceError


class RunnerError(DeviceError):
    """The on-device runner failed or answered something that is not its contract."""


class ModelFileError(RunnerError):
    """A model (or its manifest, or an input) is missing, corrupt or cannot be loaded."""


class NoRuntimeError(RunnerError):
    """The device has no Python, or no usable TFLite runtime; the message says what to install."""


class NoSpaceError(DeviceError):
    """The files would not fit on the device; nothing was uploaded."""
