"""The session fixture ``arm_fleet``: emulated Raspberry Pis behind their own sshd
(tests/support/fleet/arm.py).

A Fleet of its own, apart from the x86 ``fleet`` fixture, so tests that need only x86 devices never
pay for the ARM build and tests that need both just ask for both (each Fleet takes its own subnet).
The sysroots are cached under ``<repo>/.cache/arm-fleet/``: the first session builds them (about 10–60
s, network needed), later sessions find them at once.  Imported by tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fleet import arm
from tests.support.fleet.fleet import Fleet, standing
from tests.support.fleet.system import FleetError

# device name -> board; the device is named after its board so test output reads plainly.
ARM_DEVICES = {"pi64": "pi64", "pi5": "pi5", "pi32": "pi32"}


@pytest.fixture(scope="session")
def arm_fleet() -> Iterator[Fleet]:
    """SSH devices pi64 (aarch64, ai-edge-litert, Cortex-A72), pi5 (aarch64, Cortex-A76) and pi32
    (armv7l, tflite-runtime 2.14 + Debian numpy 1.24), each with its own user, host key, workdir and
    (netns mode) namespace; ``fleet.ssh[name].python`` is the device's qemu wrapper."""
    try:
        arm.ensure_built()
    except FleetError as exc:
        pytest.fail(f"cannot stand up the emulated ARM fleet: {exc}", pytrace=False)

    def build(fleet: Fleet) -> None:
        for name, board in ARM_DEVICES.items():
            fleet.add_arm_ssh(name, board)

    with standing("the emulated ARM fleet", build) as fleet:
        yield fleet
