"""Ansible inventories read as Ansible reads them, turned into edgenas devices.

A Pi fleet is usually already written down as an Ansible inventory, so ``edgenas device import`` takes
the same files: INI (Ansible's default format) or YAML, with ``group_vars/`` and ``host_vars/`` beside
them, merged with Ansible's variable precedence.  Anything else Ansible can read (inventory scripts,
plugin configurations, vault-encrypted files, inventory folders) is read through ``ansible-inventory
--list``, only when the user asks for it (``--via-ansible``: Ansible runs such inventories as code);
its JSON is treated as untrusted input like any other.

An inventory is user input that decides what edgenas later runs and deletes on devices, so every value
edgenas uses is validated before anything is written to the database: one line names the file, the host
and the variable.  Host ranges are counted before they are expanded; a device's work folder may not be
``/``, a home folder itself or a system folder (edgenas deletes inside it); a benchmark binary (uploaded
and executed later) must be an ELF executable inside the inventory's folder or a folder the user allows,
and is pinned by its real path and sha256; an interpreter is one program, never a command line, and a
local device's may only be this edgenas' own or one the user allows; a work folder holds only plain
characters.

One module per job, as Ansible's inventory plugins are split: :mod:`.yaml_format`, :mod:`.ini_format`,
:mod:`.ansible` (``ansible-inventory`` JSON), :mod:`.patterns` (host ranges), :mod:`.variables`
(``group_vars``/``host_vars`` and precedence), :mod:`.values` (checks), :mod:`.ssh_args` (ssh arguments
in ``ansible_ssh_*_args``: the jump hosts), :mod:`.load` (the whole read and the database import).
"""

from edgenas.device.inventory.ansible import find_ansible_inventory, parse_ansible_json
from edgenas.device.inventory.load import import_inventory, inventory_view, load_inventory
from edgenas.device.inventory.model import MAX_HOSTS, NeedsAnsible
from edgenas.device.inventory.patterns import expand_host_pattern, split_host_port
from edgenas.device.inventory.values import check_benchmark_binary, python_command, validate_workdir

__all__ = ["MAX_HOSTS", "NeedsAnsible", "check_benchmark_binary", "expand_host_pattern",
           "find_ansible_inventory", "import_inventory", "inventory_view", "load_inventory",
           "parse_ansible_json", "python_command", "split_host_port", "validate_workdir"]
