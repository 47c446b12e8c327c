"""Emulated Raspberry Pis for the test fleet: ARM sysroots whose ``python3`` runs under qemu-user.

Why: the mission is measuring on Pis, and without this every test device is x86.  Here a device's
*Python* is a real ARM userland — Debian bookworm's python3.11 for arm64 or armhf, the real aarch64
ai-edge-litert wheel or the real armv7l tflite-runtime wheel, numpy for that architecture, XNNPACK's
ARM kernels — executed instruction by instruction by ``qemu-aarch64`` / ``qemu-arm`` with a pinned
CPU model.  The device's login shell stays native x86 (no binfmt_misc, no chroot), so whatever is
read through the shell (``uname -m``, ``/proc/cpuinfo``) describes the host; only the on-device
Python sees the Pi.

How a sysroot is built, without touching the host's package database or dpkg architectures:

* a private apt configuration (its own sources, lists, cache and an *empty* status file, with
  ``APT::Architecture`` set to the foreign architecture) resolves ``python3.11`` and friends with
  ``apt-get --download-only``; every .deb is unpacked with ``dpkg-deb -x`` (no maintainer scripts);
* ``/bin``, ``/lib``, ``/sbin`` are merged into ``/usr`` (bookworm packages still ship files there),
  and absolute symlinks (alternatives and the like) are made relative so they resolve inside it;
* wheels come from ``pip download`` for the foreign platform and are unzipped into
  ``/usr/lib/python3/dist-packages`` (``pip install --target`` refuses foreign wheels);
* a Raspberry Pi ``/proc/cpuinfo`` (and device-tree model) sits in each board's root: qemu's ``-L``
  serves guest paths from that root first, and LiteRT's CPU detection crashes on the host's x86
  cpuinfo otherwise.

``pi64`` and ``pi5`` share the arm64 sysroot; each board gets its own root of symlinks into it
(so each has its own cpuinfo) and its own wrapper ``usr/bin/python3-<board>``.  The wrapper passes
``-0 <wrapper>`` so the guest's ``sys.executable`` is the wrapper: child processes the runner starts
(import probes, load checks) go through qemu again instead of failing with "Exec format error".

Never ``-cpu max``: int8 results come out wrong under qemu 7.2 (an SME emulation bug).

Everything is cached under ``<repo>/.cache/arm-fleet/<recipe hash>/``; a second build (a second
``make test``) finds ``done`` and returns at once.  Timings measured on these devices describe the
emulator, not a Pi.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.support.cache import locked
from tests.support.fleet.system import FleetError

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]
CACHE_ROOT = Path(os.environ.get("EDGENAS_ARM_CACHE", REPO / ".cache" / "arm-fleet"))
RECIPE_VERSION = 1  # bump when the build steps below change in a way the recipe data does not show
DEBIAN = "http://deb.debian.org/debian"
DEBIAN_SECURITY = "http://deb.debian.org/debian-security"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
BUILD_TIMEOUT_S = 600


@dataclass(frozen=True)
class Sysroot:
    """One foreign Debian userland: its dpkg architecture, the packages apt resolves, the wheels."""

    name: str
    dpkg_arch: str  # arm64 / armhf
    triplet: str  # multiarch directory name under /usr/lib
    packages: tuple[str, ...]
    wheel_platforms: tuple[str, ...]
    wheels: tuple[str, ...]  # exact pins, downloaded with --no-deps
    links: tuple[tuple[str, str], ...] = ()  # (path, relative target) made after unpacking


@dataclass(frozen=True)
class Board:
    """An emulated Pi: the sysroot it runs, the qemu binary and CPU model, what its kernel would say."""

    name: str
    sysroot: str
    qemu: str
    cpu: str
    machine: str  # platform.machine() the guest reports
    model: str  # the board ("Model" line, device-tree model)
    cpu_part: str  # the "CPU part" line of a real board's cpuinfo
    cpuinfo: str


def _aarch64_cpuinfo(features: str, variant: str, part: str, revision: str, hw_rev: str,
                     model: str) -> str:
    cores = "".join(
        f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
        f"CPU architecture: 8\nCPU variant\t: {variant}\nCPU part\t: {part}\n"
        f"CPU revision\t: {revision}\n\n"
        for i in range(4)
    )
    return cores + f"Revision\t: {hw_rev}\nSerial\t\t: 10000000e3a1b2c4\nModel\t\t: {model}\n"


def _armv7_cpuinfo(model: str) -> str:
    cores = "".join(
        f"processor\t: {i}\nmodel name\t: ARMv7 Processor rev 5 (v7l)\nBogoMIPS\t: 38.40\n"
        "Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm\n"
        "CPU implementer\t: 0x41\nCPU architecture: 7\nCPU variant\t: 0x0\nCPU part\t: 0xc07\n"
        "CPU revision\t: 5\n\n"
        for i in range(4)
    )
    board = "Hardware\t: BCM2835\nRevision\t: a21041\nSerial\t\t: 00000000e3a1b2c4\n"
    board += f"Model\t\t: {model}\n"
    return cores + board


def _manylinux(arch: str, newest: int = 36) -> tuple[str, ...]:
    """Every manylinux tag bookworm's glibc (2.36) satisfies: pip 23 does not expand one tag to older
    ones when ``--platform`` is given, and wheels are tagged 2_17 … 2_34."""
    return tuple(f"manylinux_2_{v}_{arch}" for v in range(newest, 16, -1)) + (f"manylinux2014_{arch}",)


SYSROOTS: dict[str, Sysroot] = {
    "arm64": Sysroot(
        name="arm64",
        dpkg_arch="arm64",
        triplet="aarch64-linux-gnu",
        packages=("python3.11", "libstdc++6"),
        wheel_platforms=_manylinux("aarch64"),
        wheels=("ai-edge-litert==2.3.0", "numpy==2.4.6", "ml_dtypes==0.6.0", "flatbuffers==25.12.19",
                "protobuf==7.36.2", "backports.strenum==1.2.8", "tqdm==4.70.1",
                "typing_extensions==4.16.0"),
    ),
    "armhf": Sysroot(
        name="armhf",
        dpkg_arch="armhf",
        triplet="arm-linux-gnueabihf",
        # Debian's numpy 1.24: there is no armv7l numpy wheel on PyPI.
        packages=("python3.11", "libstdc++6", "python3-numpy"),
        wheel_platforms=_manylinux("armv7l"),
        wheels=("tflite-runtime==2.14.0",),
        # What update-alternatives would have made: numpy's lapack_lite/_umath_linalg load these.
        links=(("usr/lib/arm-linux-gnueabihf/libblas.so.3", "blas/libblas.so.3"),
               ("usr/lib/arm-linux-gnueabihf/liblapack.so.3", "lapack/liblapack.so.3")),
    ),
}

BOARDS: dict[str, Board] = {
    "pi64": Board(
        name="pi64", sysroot="arm64", qemu="qemu-aarch64", cpu="cortex-a72", machine="aarch64",
        model="Raspberry Pi 4 Model B Rev 1.5", cpu_part="0xd08",
        cpuinfo=_aarch64_cpuinfo("fp asimd evtstrm crc32 cpuid", "0x0", "0xd08", "3", "d03115",
                                 "Raspberry Pi 4 Model B Rev 1.5"),
    ),
    "pi5": Board(
        name="pi5", sysroot="arm64", qemu="qemu-aarch64", cpu="cortex-a76", machine="aarch64",
        model="Raspberry Pi 5 Model B Rev 1.0", cpu_part="0xd0b",
        cpuinfo=_aarch64_cpuinfo(
            "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc "
            "dcpop asimddp", "0x4", "0xd0b", "1", "d04170", "Raspberry Pi 5 Model B Rev 1.0"),
    ),
    # qemu-arm's closest ARMv7 core to a Pi is the Cortex-A7 of the Pi 2 (NEON, VFPv4).
    "pi32": Board(
        name="pi32", sysroot="armhf", qemu="qemu-arm", cpu="cortex-a7", machine="armv7l",
        model="Raspberry Pi 2 Model B Rev 1.1", cpu_part="0xc07",
        cpuinfo=_armv7_cpuinfo("Raspberry Pi 2 Model B Rev 1.1"),
    ),
}


def recipe_hash() -> str:
    """The cache key: everything that decides what lands in the cache."""
    recipe = {
        "version": RECIPE_VERSION,
        "mirrors": [DEBIAN, DEBIAN_SECURITY],
        "sysroots": {k: asdict(v) for k, v in sorted(SYSROOTS.items())},
        "boards": {k: asdict(v) for k, v in sorted(BOARDS.items())},
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ArmCache:
    """A finished build: where it is and what it cost."""

    root: Path
    build_s: float  # 0 when the cache already held it
    bytes: int

    def python(self, board: str) -> Path:
        """The wrapper that is ``board``'s ``python3``."""
        return wrapper_path(self.root, BOARDS[board])

    def board_root(self, board: str) -> Path:
        return self.root / "boards" / board


def wrapper_path(root: Path, board: Board) -> Path:
    return root / "sysroots" / board.sysroot / "usr" / "bin" / f"python3-{board.name}"


def _run(argv: list[str], *, env: dict[str, str] | None = None, check: bool = True,
         timeout: float = BUILD_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    except FileNotFoundError as exc:
        raise FleetError(f"`{argv[0]}` is not installed (run `make system-packages` as root)") from exc
    except subprocess.TimeoutExpired as exc:
        raise FleetError(f"`{' '.join(argv[:4])} …` did not finish within {timeout} s") from exc
    if check and proc.returncode != 0:
        detail = proc.stderr.strip()[-1500:]
        raise FleetError(f"`{' '.join(argv[:6])} …` failed ({proc.returncode}): {detail}")
    return proc


# ------------------------------------------------------------------------------------------ apt


def _apt_env(work: Path, sysroot: Sysroot) -> tuple[list[str], dict[str, str]]:
    """apt-get argv prefix and environment for a private apt that knows only ``sysroot``'s
    architecture and writes nothing outside ``work`` (empty status file: nothing counts as installed,
    so apt resolves the whole dependency closure)."""
    for d in ("lists/partial", "archives/partial", "etc/apt.conf.d", "etc/sources.list.d",
              "etc/preferences.d", "etc/trusted.gpg.d"):
        (work / d).mkdir(parents=True, exist_ok=True)
    (work / "status").write_text("")
    signed = f"[arch={sysroot.dpkg_arch} signed-by={KEYRING}]"
    (work / "etc" / "sources.list").write_text(
        f"deb {signed} {DEBIAN} bookworm main\n"
        f"deb {signed} {DEBIAN} bookworm-updates main\n"
        f"deb {signed} {DEBIAN_SECURITY} bookworm-security main\n"
    )
    (work / "apt.conf").write_text("")  # APT_CONFIG: the host's /etc/apt/apt.conf is not read
    opts = {
        "APT::Architecture": sysroot.dpkg_arch,
        "APT::Architectures": sysroot.dpkg_arch,
        "Dir::Etc": str(work / "etc"),
        "Dir::Etc::Parts": str(work / "etc" / "apt.conf.d"),
        "Dir::State": str(work),
        "Dir::State::Lists": str(work / "lists"),
        "Dir::State::status": str(work / "status"),
        "Dir::Cache": str(work),
        "Dir::Cache::Archives": str(work / "archives"),
        "Dir::Cache::pkgcache": "",
        "Dir::Cache::srcpkgcache": "",
        "Debug::NoLocking": "1",
        "APT::Sandbox::User": "root",
        "Acquire::Languages": "none",
        "Acquire::Retries": "3",
        "APT::Install-Recommends": "0",
        "APT::Get::AllowUnauthenticated": "0",
    }
    argv = ["apt-get", "-q"]
    for k, v in opts.items():
        argv += ["-o", f"{k}={v}"]
    env = dict(os.environ, APT_CONFIG=str(work / "apt.conf"), DEBIAN_FRONTEND="noninteractive")
    return argv, env


def _download_debs(work: Path, sysroot: Sysroot) -> list[Path]:
    argv, env = _apt_env(work, sysroot)
    upd = _run([*argv, "update"], env=env, check=False)
    # The armhf bookworm-security index has come back with a size mismatch on every try from here;
    # the main suite is what matters, and a missing security list only means older versions.
    lists = [p.name for p in (work / "lists").iterdir() if p.is_file()]
    if not any("_bookworm_main_binary-" in n and "_Packages" in n for n in lists):  # .lz4 or not
        raise FleetError(f"apt-get update for {sysroot.dpkg_arch} fetched no bookworm index: "
                         f"{upd.stderr.strip()[-1500:]}")
    if upd.returncode != 0:
        log.warning("apt-get update (%s) reported errors, continuing with the lists it got: %s",
                    sysroot.dpkg_arch, upd.stderr.strip()[-500:])
    _run([*argv, "install", "--download-only", "-y", *sysroot.packages], env=env)
    debs = sorted((work / "archives").glob("*.deb"))
    if not debs:
        raise FleetError(f"apt downloaded no packages for {sysroot.dpkg_arch}")
    return debs


# ---------------------------------------------------------------------------------------- unpack


def _merge_usr(root: Path) -> None:
    """Move /bin, /lib, /sbin into /usr and leave relative symlinks, as a merged-/usr system has."""
    for top in ("bin", "sbin", "lib"):
        src, dst = root / top, root / "usr" / top
        if src.is_symlink() or not src.exists():
            continue
        dst.mkdir(parents=True, exist_ok=True)
        for dirpath, dirnames, filenames in os.walk(src):
            rel = Path(dirpath).relative_to(src)
            (dst / rel).mkdir(parents=True, exist_ok=True)
            for d in list(dirnames):  # symlinked directories are entries to move, not to walk
                if (Path(dirpath) / d).is_symlink():
                    filenames.append(d)
                    dirnames.remove(d)
            for f in filenames:
                target = dst / rel / f
                if not target.exists() and not target.is_symlink():
                    os.rename(Path(dirpath) / f, target)
        shutil.rmtree(src)
        src.symlink_to(f"usr/{top}")


def _relativize_links(root: Path) -> None:
    """Absolute symlinks would resolve on the host: point them inside the sysroot instead."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                target = os.readlink(p)
                if target.startswith("/"):
                    p.unlink()
                    p.symlink_to(os.path.relpath(root / target.lstrip("/"), p.parent))


def _unpack_wheels(sysroot: Sysroot, dest: Path, work: Path) -> None:
    wheels = work / "wheels"
    argv = [str(REPO / ".venv" / "bin" / "python"), "-m", "pip", "download", "-q",
            "--disable-pip-version-check", "--no-deps", "--only-binary=:all:",
            "--python-version", "3.11",
            "--implementation", "cp", "--abi", "cp311", "--abi", "none", "-d", str(wheels)]
    for plat in sysroot.wheel_platforms:
        argv += ["--platform", plat]
    _run([*argv, *sysroot.wheels])
    found = sorted(wheels.glob("*.whl"))
    if len(found) != len(sysroot.wheels):
        raise FleetError(f"pip downloaded {len(found)} wheels for {len(sysroot.wheels)} pins: "
                         f"{[w.name for w in found]}")
    dest.mkdir(parents=True, exist_ok=True)
    for whl in found:
        with zipfile.ZipFile(whl) as zf:
            for member in zf.namelist():
                if member.startswith("/") or ".." in Path(member).parts:
                    raise FleetError(f"{whl.name}: unsafe path {member!r}")
            zf.extractall(dest)


def _build_sysroot(sysroot: Sysroot, out: Path, work: Path) -> None:
    t0 = time.monotonic()
    debs = _download_debs(work / "apt", sysroot)
    out.mkdir(parents=True)
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(out)])
    _merge_usr(out)
    _relativize_links(out)
    for path, target in sysroot.links:
        link = out / path
        if not (link.parent / target).exists():
            raise FleetError(f"{sysroot.name}: {path} -> {target}: the target was not unpacked")
        if not link.exists():
            link.symlink_to(target)
    _unpack_wheels(sysroot, out / "usr" / "lib" / "python3" / "dist-packages", work)
    log.info("sysroot %s: %d packages in %.1f s", sysroot.name, len(debs), time.monotonic() - t0)


def _make_board(root: Path, board: Board, final_root: Path) -> None:
    """The board's qemu ``-L`` root: symlinks into its sysroot plus its own /proc; and its wrapper,
    which names the paths the build will have once moved to ``final_root``."""
    sysroot = root / "sysroots" / board.sysroot
    broot = root / "boards" / board.name
    broot.mkdir(parents=True)
    for entry in sysroot.iterdir():
        (broot / entry.name).symlink_to(os.path.relpath(entry, broot))
    (broot / "proc" / "device-tree").mkdir(parents=True)
    (broot / "proc" / "cpuinfo").write_text(board.cpuinfo)
    (broot / "proc" / "device-tree" / "model").write_text(board.model + "\0")
    wrapper = wrapper_path(root, board)
    final_wrapper = wrapper_path(final_root, board)
    final_broot = final_root / "boards" / board.name
    wrapper.write_text(
        "#!/bin/sh\n"
        f"# {board.name}: an emulated {board.model} ({board.machine}, qemu -cpu {board.cpu});\n"
        "# generated by tests/support/fleet/arm.py.  Timings measured through it describe the\n"
        "# emulator, not a Pi.\n"
        "# -0 makes the guest's sys.executable this wrapper: the Python's children run under qemu too.\n"
        "unset PYTHONHOME LD_PRELOAD LD_LIBRARY_PATH\n"
        f"exec /usr/bin/{board.qemu} -cpu {board.cpu} -L {final_broot} -0 {final_wrapper} "
        f"{final_broot}/usr/bin/python3.11 \"$@\"\n"
    )
    wrapper.chmod(0o755)


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if not p.is_symlink():
                total += p.stat().st_size
    return total


def _open_up(root: Path) -> None:
    """Every device user must read the sysroot: a+rX everywhere (zip extraction follows the umask)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if not p.is_symlink():
                mode = p.stat().st_mode
                p.chmod(mode | 0o444 | (0o111 if p.is_dir() or mode & 0o100 else 0))
    root.chmod(0o755)


def ensure_built(cache_root: Path = CACHE_ROOT) -> ArmCache:
    """The cached sysroots, boards and wrappers, built on first use (about 10–60 s and 260 MB; two
    concurrent callers build once).  Needs qemu-user on the host and network access to Debian and
    PyPI.  ``cache_root`` other than the default is for measuring a cold build."""
    for board in BOARDS.values():
        if shutil.which(board.qemu) is None:
            raise FleetError(f"`{board.qemu}` is missing: run `make system-packages` as root "
                             "(Debian package qemu-user)")
    key = recipe_hash()
    final = cache_root / key
    done = final / "done.json"
    cache_root.mkdir(parents=True, exist_ok=True)
    os.chmod(cache_root, 0o755)
    with locked(cache_root / ".lock"):
        if done.exists():
            meta = json.loads(done.read_text())
            return ArmCache(final, 0.0, int(meta["bytes"]))
        t0 = time.monotonic()
        build = Path(tempfile.mkdtemp(prefix=f"{key}.build-", dir=cache_root))
        try:
            stage = build / key
            with ThreadPoolExecutor(max_workers=len(SYSROOTS)) as pool:
                jobs = [pool.submit(_build_sysroot, s, stage / "sysroots" / s.name,
                                    build / f"work-{s.name}") for s in SYSROOTS.values()]
                for job in jobs:
                    job.result()
            for board in BOARDS.values():
                _make_board(stage, board, final)
            _open_up(stage)
            size = _tree_bytes(stage)
            elapsed = time.monotonic() - t0
            (stage / "done.json").write_text(json.dumps(
                {"recipe": key, "build_s": round(elapsed, 1), "bytes": size,
                 "boards": sorted(BOARDS)}, indent=2))
            shutil.rmtree(final, ignore_errors=True)  # a half-moved earlier attempt
            os.rename(stage, final)
        finally:
            shutil.rmtree(build, ignore_errors=True)
        for old in cache_root.iterdir():  # other recipes' builds and killed builds are dead weight
            if old.is_dir() and old.name != key:
                shutil.rmtree(old, ignore_errors=True)
        log.info("ARM sysroots built in %.1f s, %.0f MB", elapsed, size / 1e6)
        return ArmCache(final, elapsed, size)
