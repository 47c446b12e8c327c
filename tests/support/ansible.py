"""What inventory tests share: a skip for hosts without ansible-inventory, and Ansible kept out of the
user's home and the working folder (import ``quiet_ansible`` into a test module: it is autouse)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgenas.device import inventory

needs_ansible = pytest.mark.skipif(
    inventory.find_ansible_inventory() is None,
    reason="ansible-inventory not installed (ansible-core is in requirements-test.txt)",
)


@pytest.fixture(autouse=True)
def quiet_ansible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep Ansible's state and config out of the user's home and the working folder."""
    monkeypatch.setenv("ANSIBLE_HOME", str(tmp_path / "ansible-home"))
    monkeypatch.setenv("ANSIBLE_LOCAL_TEMP", str(tmp_path / "ansible-tmp"))
    monkeypatch.setenv("ANSIBLE_CONFIG", str(tmp_path / "no-ansible.cfg"))
