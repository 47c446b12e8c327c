"""Variables to device fields: each value checked (hosts, ports, users, workdirs, interpreters,
benchmark binaries) with an error naming the host, the variable and the file."""

from __future__ import annotations

import logging
import os
import posixpath
import re
import shlex
import shutil
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from edgenas.core.errors import DeviceError
from edgenas.device.inventory.model import (
    _AUTO_INTERPRETERS,
    _HOME_DIRS,
    _HOST_VALUE,
    _PORT_RE,
    _SERIAL_VALUE,
    _SHARED_ROOTS,
    _SSH_CONNECTIONS,
    _SYSTEM_TREES,
    _USER_VALUE,
    _WORKDIR_CHAR,
    MAX_BINARY_BYTES,
    _Var,
)
from edgenas.device.inventory.ssh_args import parse_ssh_args
from edgenas.device.registry import (
    Device,
    Hop,
    make_device,
    parse_ssh_target,
    proxy_command_error,
    resolve_jump,
    validate_group,
    validate_name,
)
from edgenas.records.classes import ClassError, parse_cpu_set, validate_class

log = logging.getLogger(__name__)
# Ansible's ssh connection plugin passes these to ssh in this order; ssh keeps the first ProxyJump.
_SSH_ARG_VARS = ("ansible_ssh_args", "ansible_ssh_common_args", "ansible_ssh_extra_args")

# ------------------------------------------------------------------------------ values → devices


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def python_command(value: Any) -> str | None:
    """``ansible_python_interpreter`` / ``edgenas_python`` → the interpreter, one program.

    Ansible runs the value through a shell, so ``/usr/bin/env python3`` is common.  edgenas stores the
    interpreter as one string and runs it as argv[0] in every call site (probe, setup, bench, predict,
    fleet), so the value is split with shlex: ``env PROG`` is stored as ``PROG`` (env looks PROG up on
    PATH, exactly as running PROG directly does), one word is kept, and a command line with options is
    refused rather than run as a file named ``python3 -u``.  Ansible's ``auto*`` values mean "discover
    it": None, edgenas' default (python3)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a path, got {type(value).__name__} {value!r}")
    if value.strip() in _AUTO_INTERPRETERS:
        return None
    try:
        argv = shlex.split(value)
    except ValueError as exc:
        raise ValueError(f"cannot split {value!r}: {exc}") from None
    if (
        len(argv) == 2
        and posixpath.basename(argv[0]) == "env"
        and not argv[1].startswith("-")
        and "=" not in argv[1]
    ):
        argv = argv[1:]
    if len(argv) != 1 or not argv[0]:
        raise ValueError(
            f"{value!r} is a command line; edgenas runs the interpreter as one program: give its path "
            "(e.g. /usr/bin/python3 or a venv's bin/python)"
        )
    if argv[0].startswith("-") or any(ord(c) < 32 for c in argv[0]):
        raise ValueError(f"{value!r} is not an interpreter path")
    return argv[0]


def validate_workdir(value: Any, kind: str, *, host_home: Path | None = None) -> str:
    """A device work folder edgenas may create, replace and delete files in.

    Refused: ``/``, ``..`` anywhere, ``~``/``$VAR`` (not expanded: they would be literal folder names), a
    home folder itself (``.`` on SSH, ``/home/pi``, ``/root``, Termux' home), shared roots (``/tmp``,
    ``/data/local/tmp``, ``/var``) and anything inside system folders (``/etc``, ``/usr``, ``/bin``, …);
    any character outside letters, digits and ``/._-+@,:=`` (a backslash makes every upload look
    corrupt, spaces and quotes break the scripts) and any component starting with ``-`` (``-rf`` is an
    option to ``rm``).  Relative folders are relative to the SSH login folder, so only SSH devices may
    use them."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a folder path, got {value!r}")
    if len(value) > 1024 or any(ord(c) < 32 for c in value):
        raise ValueError(f"{value!r}: too long or holds control characters")
    if value.startswith("~") or "$" in value or "`" in value:
        raise ValueError(
            f"{value!r}: ~ and $VARS are not expanded; give a path relative to the login folder "
            "(SSH) or an absolute one"
        )
    if ".." in value.split("/"):
        raise ValueError(f"{value!r}: '..' is not allowed in a work folder")
    bad = sorted({c for c in value if not _WORKDIR_CHAR.match(c)})
    if bad:
        raise ValueError(
            f"{value!r}: holds {''.join(bad)!r}; the device scripts take only letters, digits and "
            "/ . _ - + @ , : = in a work folder (GNU sha256sum escapes a backslash, so every upload "
            "would look corrupt, and a shell splits at spaces and quotes)"
        )
    dashed = next((part for part in value.split("/") if part.startswith("-")), None)
    if dashed is not None:
        raise ValueError(
            f"{value!r}: the component {dashed!r} starts with '-', which the device's commands "
            "(rm, mkdir, sha256sum) would read as options; rename the folder"
        )
    norm = posixpath.normpath(value)
    if not norm.startswith("/"):
        if kind != "ssh":
            raise ValueError(f"{value!r}: must be absolute on a {kind} device")
        if norm == ".":
            raise ValueError(
                f"{value!r} is the login (home) folder itself; use a folder inside it, e.g. edgenas"
            )
        return norm
    if norm in _SHARED_ROOTS or norm == "//":
        raise ValueError(f"{value!r} is a shared or top-level folder; use a folder of its own inside it")
    if any(norm == t or norm.startswith(t + "/") for t in _SYSTEM_TREES):
        raise ValueError(f"{value!r} is inside a system folder")
    if _HOME_DIRS.match(norm):
        raise ValueError(f"{value!r} is a home folder itself; use a folder inside it")
    if kind == "local" and host_home is not None:
        home = os.path.normpath(str(host_home))
        if norm == home:
            raise ValueError(f"{value!r} is this host's home folder itself")
    return norm


def check_benchmark_binary(value: Any, inventory_dir: Path, allowed: Sequence[Path] = ()) -> str:
    """An ``edgenas_benchmark_binary``: it is uploaded to the device and executed there, so it must be a
    regular ELF executable whose real location (symlinks resolved) is inside the inventory's folder or a
    folder the user allowed (``--binary-dir``), not any file the host can read (``~/.ssh/id_ed25519``).

    Returns the absolute path as written (not resolved), like ``device add --benchmark-binary``."""
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ValueError(f"expected a file path, got {value!r}")
    p = Path(os.path.expanduser(value))
    if not p.is_absolute():
        p = inventory_dir / p
    p = Path(os.path.abspath(p))
    try:
        real = p.resolve(strict=True)
        st = real.stat()
    except OSError as exc:
        raise ValueError(f"{p}: {exc.strerror or 'cannot be read'}") from None
    roots = [Path(os.path.realpath(r)) for r in (inventory_dir, *allowed)]
    if not any(real == r or real.is_relative_to(r) for r in roots):
        where = ", ".join(str(r) for r in roots)
        raise ValueError(f"{p} is outside {where}; allow its folder with --binary-dir")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{p}: not a regular file")
    if st.st_size > MAX_BINARY_BYTES:
        raise ValueError(f"{p}: {st.st_size} bytes, larger than {MAX_BINARY_BYTES >> 20} MiB")
    try:
        with open(real, "rb") as f:
            head = f.read(18)
    except OSError as exc:
        raise ValueError(f"{p}: {exc.strerror or 'cannot be read'}") from None
    if len(head) < 18 or head[:4] != b"\x7fELF":
        raise ValueError(f"{p}: not an ELF executable (benchmark_model is one)")
    e_type = int.from_bytes(head[16:18], "little" if head[5] == 1 else "big")
    if e_type not in (2, 3):  # ET_EXEC, ET_DYN (PIE)
        raise ValueError(f"{p}: an ELF file but not an executable (e_type {e_type})")
    return str(p)


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected a port number 1-65535, got {value!r}")
    if isinstance(value, str):
        if not _PORT_RE.match(value.strip()):
            raise ValueError(f"expected a port number 1-65535, got {value!r}")
        value = int(value.strip())
    if not 0 < value < 65536:
        raise ValueError(f"port {value} out of range 1-65535")
    return value


def _positive(value: Any, unit: str, most: float) -> float:
    """A number of ``unit`` in (0, ``most``]; YAML booleans and text are refused, not coerced."""
    if isinstance(value, bool):
        raise ValueError(f"expected {unit}, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected {unit}, got {value!r}") from None
    if not 0 < number <= most:
        raise ValueError(f"expected a positive number of {unit} (at most {most:g}), got {value!r}")
    return number


def _timeout(value: Any) -> float:
    return _positive(value, "seconds", 3600)


def _latency_ms(value: Any) -> float:
    """``edgenas_latency_ms``: the device's latency budget for ``fleet specialize``."""
    return _positive(value, "milliseconds", 1e7)


def _memory_mb(value: Any) -> float:
    """``edgenas_memory_mb``: the peak memory (MiB) the device's model may use, a budget for ``fleet
    specialize`` and a promise ``fleet bench`` checks."""
    return _positive(value, "MiB", float(1 << 20) - 1)


def _device_class(value: Any) -> str:
    """``edgenas_class``: the device's class, named by the user (edgenas.records.classes)."""

    try:
        return validate_class(value)
    except ClassError as exc:
        raise ValueError(str(exc)) from None


def _text(regex: re.Pattern[str], what: str) -> Any:
    def check(value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValueError(f"expected {what}, got {value!r}")
        value = str(value)
        if not regex.match(value) or value.startswith("-"):
            raise ValueError(f"expected {what}, got {value!r}")
        return value

    return check


_host_value = _text(_HOST_VALUE, "a host name or address")
_user_value = _text(_USER_VALUE, "a user name")
_serial_value = _text(_SERIAL_VALUE, "an ADB serial or HOST:PORT")


@dataclass
class _Ctx:
    host: str
    vars: dict[str, _Var]
    source: Path

    def raw(self, *keys: str) -> tuple[str, Any]:
        for key in keys:
            var = self.vars.get(key)
            if var is not None and var.value is not None:
                return key, var.value
        return keys[0], None

    def get(self, *keys: str, check: Any = None) -> Any:
        key, value = self.raw(*keys)
        if value is None:
            return None
        if _is_template(value):
            self.fail(
                key, f"{value!r} is a Jinja template, which edgenas does not evaluate; write the value"
            )
        if check is None:
            return value
        try:
            return check(value)
        except ValueError as exc:
            self.fail(key, str(exc))

    def fail(self, key: str, message: str) -> NoReturn:
        var = self.vars.get(key)
        origin = var.origin if var is not None else str(self.source)
        raise DeviceError(f"inventory {origin}: host {self.host}: {key}: {message}")


def _same_program(command: str, allowed: Path) -> bool:
    """Whether ``command`` (a path, or a name looked up on PATH as the local transport runs it) is the
    program ``allowed`` is, symlinks resolved: a venv's ``bin/python`` and the file it links to are
    one program."""
    found = command if "/" in command else shutil.which(command)
    if not found:
        return False
    return os.path.realpath(found) == os.path.realpath(allowed)


def _check_local_python(ctx: _Ctx, python: str | None, allowed: Sequence[Path]) -> None:
    """A local device runs its interpreter on this host, as the edgenas user, at every probe and bench:
    an inventory line ``ansible_connection=local ansible_python_interpreter=/any/program`` would make
    edgenas execute any program.  So a local device from an inventory may name only this edgenas' own
    interpreter or one the user allowed by hand (``device import --allow-local-python PATH``)."""
    if python is None:
        return  # not set (or auto): the device runs this edgenas' own interpreter
    choices = [Path(sys.executable), *allowed]
    if any(_same_program(python, choice) for choice in choices):
        return
    key, _ = ctx.raw("edgenas_python", "ansible_python_interpreter")
    ctx.fail(
        key,
        f"{python!r} is not this edgenas' interpreter ({sys.executable}); a local device runs it on "
        f"this host at every probe and bench, so an inventory may name another one only when you "
        f"allow it: device import --allow-local-python {python}",
    )


def _device(
    ctx: _Ctx,
    groups: list[str],
    home: Path,
    ssh_config: Path | None,
    binary_dirs: Sequence[Path],
    local_pythons: Sequence[Path] = (),
) -> Device:
    kind = ctx.get("edgenas_kind", check=lambda v: v if v in ("ssh", "adb", "local") else _bad_kind(v))
    if kind is None:
        connection = ctx.get("ansible_connection")
        if connection == "local":
            kind = "local"
        elif connection is None or connection in _SSH_CONNECTIONS:
            kind = "ssh"
        else:
            ctx.fail(
                "ansible_connection",
                f"{connection!r} is not a connection edgenas can use (ssh, local); "
                "set edgenas_kind, or edgenas_skip: true to leave the host out",
            )
    python = ctx.get("edgenas_python", "ansible_python_interpreter", check=python_command)
    if kind == "local":
        _check_local_python(ctx, python, local_pythons)
    workdir = ctx.get(
        "edgenas_workdir", check=lambda v: validate_workdir(v, kind, host_home=Path.home())
    )
    inventory_dir = ctx.source if ctx.source.is_dir() else ctx.source.parent
    binary = ctx.get(
        "edgenas_benchmark_binary", check=lambda v: check_benchmark_binary(v, inventory_dir, binary_dirs)
    )
    timeout = ctx.get("edgenas_timeout", check=_timeout)
    budget = ctx.get("edgenas_latency_ms", check=_latency_ms)
    memory_mb = ctx.get("edgenas_memory_mb", check=_memory_mb)
    device_class = ctx.get("edgenas_class", check=_device_class)
    cpus = ctx.get("edgenas_cpus", check=parse_cpu_set)
    common: dict[str, Any] = dict(
        cpus=cpus,
        latency_budget_ms=budget,
        memory_budget_mb=memory_mb,
        device_class=device_class,
        benchmark_binary=binary,
        workdir=workdir,
        python=python,
        timeout_s=timeout,
        groups=groups,
        home=home,
    )
    try:
        validate_name(ctx.host)
        for g in groups:
            validate_group(g)
    except DeviceError as exc:
        raise DeviceError(f"inventory {ctx.source}: host {ctx.host}: {exc}") from None
    if kind == "local":
        return make_device(ctx.host, "local", **common)
    if kind == "adb":
        serial = ctx.get("edgenas_serial", "ansible_host", check=_serial_value) or ctx.host
        return make_device(ctx.host, "adb", serial=serial, **common)
    address = ctx.get("ansible_host", "ansible_ssh_host", check=_host_value) or ctx.host
    port = ctx.get("ansible_port", "ansible_ssh_port", check=_port)
    user = ctx.get("ansible_user", "ansible_ssh_user", check=_user_value)
    key = ctx.get(
        "ansible_ssh_private_key_file",
        "ansible_private_key_file",
        check=lambda v: v if isinstance(v, str) and v and "\0" not in v else _bad("a key file path", v),
    )
    try:
        target = parse_ssh_target(address, ssh_config)
    except DeviceError as exc:
        ctx.fail("ansible_host", str(exc))
    jump = _jump_hosts(ctx, ssh_config, target.jump)
    return make_device(
        ctx.host,
        "ssh",
        host=target.host,
        user=user or target.user,
        port=port or target.port,
        key_path=key or target.key_path,
        ssh_alias=target.alias,
        jump=jump,
        **common,
    )


def _args_text(value: Any) -> str:
    if not isinstance(value, str) or "\0" in value or len(value) > 4096:
        raise ValueError(f"expected ssh arguments as one string, got {value!r}")
    return value


def _jump_hosts(ctx: _Ctx, ssh_config: Path | None, configured: Sequence[Hop]) -> list[Hop]:
    """The jump hosts ``ansible_ssh_args``/``_common_args``/``_extra_args`` give (``-J`` or ``-o
    ProxyJump=…``, the first one wins as in ssh), resolved through the ssh config; else those of the
    ssh config's entry for the host (``configured``).  A ProxyCommand or any option edgenas cannot
    follow is an error naming the host and the variable."""
    for var in _SSH_ARG_VARS:
        text = ctx.get(var, check=_args_text)
        if text is None:
            continue
        try:
            parsed = parse_ssh_args(text)
        except ValueError as exc:
            ctx.fail(var, str(exc))
        for note in parsed.notes:
            log.warning("inventory %s: host %s: %s: %s", ctx.vars[var].origin, ctx.host, var, note)
        if parsed.proxy_command is not None:
            ctx.fail(var, str(proxy_command_error(parsed.proxy_command, "")))
        if parsed.jump is not None:
            try:
                return resolve_jump(parsed.jump, ssh_config)
            except DeviceError as exc:
                ctx.fail(var, str(exc))
    return list(configured)


def _bad_kind(value: Any) -> str:
    raise ValueError(f"unknown edgenas_kind {value!r} (ssh, adb or local)")


def _bad(what: str, value: Any) -> str:
    raise ValueError(f"expected {what}, got {value!r}")


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)
