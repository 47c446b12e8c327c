"""The shipped systemd units: valid for systemd, sandboxed, and the sandbox does not break the job.

``systemd-analyze verify`` catches misspelt or misplaced directives; ``systemd-analyze security`` scores
the sandbox (lower is safer).  ``MemoryDenyWriteExecute=`` is the one rule that can break a Python
program at run time (a library that writes machine code), so the last test applies the same seccomp
rules systemd installs for it and runs ``fleet status`` (a local and an unreachable SSH device) under
them.  No systemd needs to be running for any of this.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
SERVICE = "edgenas-fleet-status.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed (apt systemd)")


def _units_with_real_binary(tmp_path: Path) -> Path:
    """The units, copied, with ExecStart pointing at a file that exists here (verify checks it)."""
    out = tmp_path / "units"
    out.mkdir()
    for unit in UNITS.iterdir():
        true = shutil.which("true") or "/bin/true"
        text = unit.read_text().replace("/opt/edgenas/.venv/bin/edgenas", true)
        (out / unit.name).write_text(text)
    return out


@needs_analyze
def test_units_verify(tmp_path):
    units = _units_with_real_binary(tmp_path)
    proc = subprocess.run(
        [ANALYZE, "verify", "--man=no", *(str(u) for u in sorted(units.iterdir()))],
        capture_output=True,
        text=True,
        cwd=units,
    )
    complaints = [ln for ln in proc.stderr.splitlines() if "edgenas-fleet-status" in ln]
    assert proc.returncode == 0 and not complaints, proc.stderr


@needs_analyze
def test_service_sandbox_exposure_is_low(tmp_path):
    units = _units_with_real_binary(tmp_path)
    proc = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(units / SERVICE)],
        capture_output=True,
        text=True,
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    if m is None:
        pytest.skip(f"this systemd-analyze has no offline security scoring: {proc.stderr.strip()[:200]}")
    assert float(m.group(1)) <= 2.0, proc.stdout
    text = (UNITS / SERVICE).read_text()
    for line in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
        "UMask=0077",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "MemoryDenyWriteExecute=yes",
        "SystemCallFilter=@system-service",
        "StateDirectory=edgenas",
    ):
        assert line in text


# systemd's MemoryDenyWriteExecute=, as seccomp rules (libseccomp through ctypes): mmap with both
# PROT_WRITE and PROT_EXEC, mprotect/pkey_mprotect adding PROT_EXEC and shmat with SHM_EXEC fail (EPERM).
MDWE_CHILD = textwrap.dedent(
    """
    import ctypes, ctypes.util, errno, mmap, sys

    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)

    class Cmp(ctypes.Structure):
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                    ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]

    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(Cmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    ALLOW, EPERM_ACT, MASKED_EQ = 0x7FFF0000, 0x00050000 | errno.EPERM, 7
    PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
    ctx = lib.seccomp_init(ALLOW)
    rules = [("mmap", 2, PROT_WRITE | PROT_EXEC, PROT_WRITE | PROT_EXEC),
             ("mprotect", 2, PROT_EXEC, PROT_EXEC), ("pkey_mprotect", 2, PROT_EXEC, PROT_EXEC),
             ("shmat", 2, SHM_EXEC, SHM_EXEC)]
    for name, arg, mask, value in rules:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        cmp = Cmp(arg, MASKED_EQ, mask, value)
        assert lib.seccomp_rule_add_array(ctx, EPERM_ACT, nr, 1, ctypes.byref(cmp)) == 0, name
    assert lib.seccomp_load(ctx) == 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_long]
    wx = libc.mmap(None, 4096, PROT_WRITE | PROT_EXEC, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    assert wx in (None, ctypes.c_void_p(-1).value), "the W^X rule is not in force"
    print("MDWE in force", flush=True)
    from edgenas.cli import main

    main(sys.argv[1:], prog_name="edgenas")
    """
)


def test_fleet_status_runs_under_memory_deny_write_execute(tmp_path):
    try:
        import ctypes.util

        if not ctypes.util.find_library("seccomp"):
            pytest.skip("libseccomp not installed")
    except OSError:
        pytest.skip("libseccomp not loadable")
    home = tmp_path / "ws"
    edgenas = [sys.executable, "-c", "from edgenas.cli import main; main()", "--home", str(home)]
    subprocess.run([*edgenas, "device", "add", "here", "--local"], check=True, capture_output=True)
    subprocess.run(
        [*edgenas, "device", "add", "far", "--ssh", "127.0.0.1:9"], check=True, capture_output=True
    )
    proc = subprocess.run(
        [sys.executable, "-c", MDWE_CHILD, "--home", str(home), "fleet", "status", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.startswith("MDWE in force"), proc.stderr
    # Exit 1: `far` is unreachable (connection refused through paramiko); `here` has no models.
    assert proc.returncode == 1, proc.stderr
    assert '"no models deployed"' in proc.stdout and "connection refused" in proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
