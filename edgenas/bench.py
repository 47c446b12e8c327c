"""Benchmark an exported model on a device and store the result with its provenance.

Why it is shaped this way:

* **Nothing is transferred twice.**  Models live on the device under ``models/cache/<sha256>.tflite``
  and the runner under ``runner.py``; one ``sha256sum`` round trip tells which of the two are already
  there, so a campaign of hundreds of benchmarks pays one upload per model.
* **One benchmark at a time per device**, or numbers are garbage (two interpreters share the cores).
  Two locks: an advisory ``flock`` in the workspace serialises edgenas processes on this host cheaply
  and without polling the device, and a lock directory on the device itself (``mkdir`` is atomic on
  every filesystem) serialises different hosts.  The device lock records who holds it, so a holder
  that died (its pid is gone on this host, or it has held it longer than its own deadline) is broken.
* **Noise is measured, not hidden.**  A run whose CV is above the threshold is repeated; the steadier
  run is kept, and it is flagged ``noisy`` when even that one is above the threshold.
* **A failed benchmark stores nothing.**  The row is written only after the runner's JSON is parsed.
* **Phones without Python** are measured with LiteRT's own ``benchmark_model`` when the device was
  registered with ``--benchmark-binary``: the binary takes the runner's place (pushed to
  ``bin/benchmark_model`` when its sha256 differs, run with the same protocol, its log parsed by
  :mod:`edgenas.benchmark_binary` into the runner's record), so everything downstream is unchanged.
"""

from __future__ import annotations

import fcntl
import json
import os
import posixpath
import secrets
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgenas import benchmark_binary as bmb
from edgenas.devices import runner_path
from edgenas.errors import DeviceError, EdgeNASError, TransportError
from edgenas.files import last_json, sha256_file
from edgenas.registry import Device, get_device
from edgenas.store import Store, open_store
from edgenas.transports import Transport, open_transport

DEVICE_LOCK = ".bench.lock"
MODEL_CACHE = "models/cache"
DEFAULT_LOCK_TIMEOUT_S = 900.0

# $1 lock dir, $2 our record "token host pid ttl".  Prints "acquired", or "held AGE RECORD".
# The holder's start time is the device clock (date +%s) so clocks of different hosts never mix.
_LOCK_SCRIPT = r"""
d="$1"; rec="$2"
now=$(date +%s)
mkdir -p "$(dirname "$d")" || exit 2
if mkdir "$d" 2>/dev/null; then
  printf '%s %s\n' "$rec" "$now" > "$d/owner.tmp" && mv "$d/owner.tmp" "$d/owner"
  echo acquired; exit 0
fi
if [ ! -d "$d" ]; then echo "cannot create $d" >&2; exit 2; fi
owner=$(cat "$d/owner" 2>/dev/null)
if [ -z "$owner" ]; then  # being created right now, or its creator died: give it a minute
  m=$(stat -c %Y "$d" 2>/dev/null || echo "$now")
  owner="- - - 60 $m"
fi
echo "held $now $owner"
"""

# $1 lock dir, $2 the stale owner line as read, $3 a unique name.  Breaks the lock only if it is still
# the same holder's (a rename is atomic; if someone else's lock was moved by a race it is put back).
_BREAK_SCRIPT = r"""
d="$1"; want="$2"; side="$3"
mv "$d" "$side" 2>/dev/null || exit 0
got=$(cat "$side/owner" 2>/dev/null)
if [ -n "$got" ] && [ "$got" != "$want" ]; then mv "$side" "$d" 2>/dev/null; exit 0; fi
rm -rf "$side"
"""

# $1 lock dir, $2 our token.  Removes the lock only if we hold it.
_RELEASE_SCRIPT = r"""
d="$1"; tok="$2"
set -- $(cat "$d/owner" 2>/dev/null)
[ "$1" = "$tok" ] && rm -rf "$d"
exit 0
"""

# $1 a directory to create; then prints "<path> <sha256 or ->" for each further path; "-" when missing
# or sha256sum is unavailable.
_SHA_SCRIPT = r"""
mkdir -p "$1" 2>/dev/null; shift
for f in "$@"; do
  s=""
  if [ -f "$f" ]; then s=$(sha256sum "$f" 2>/dev/null | cut -d' ' -f1); fi
  echo "$f ${s:--}"
done
"""


class BenchError(EdgeNASError):
    """A benchmark could not be run or its output could not be understood."""


class ModelFileError(BenchError):
    """The model (or its manifest) is missing, corrupt or not loadable."""


class DeviceBusyError(BenchError):
    """Another benchmark holds the device for longer than we were willing to wait."""


@dataclass(frozen=True)
class BenchSettings:
    """The runner's measurement protocol (see docs/runner.md); defaults are the runner's own."""

    threads: int = 1
    runs: int = 50
    min_secs: float = 1.0
    warmup_runs: int = 1
    warmup_secs: float = 0.5
    max_secs: float = 150.0
    cv_threshold: float = 0.05
    retries: int = 1

    def argv(self) -> list[str]:
        return [
            "--threads", str(self.threads), "--runs", str(self.runs), "--min-secs", f"{self.min_secs:g}",
            "--warmup-runs", str(self.warmup_runs), "--warmup-secs", f"{self.warmup_secs:g}",
            "--max-secs", f"{self.max_secs:g}",
        ]


# ---------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ModelDir:
    """An exported model folder (``model.tflite`` + ``manifest.json``), verified."""

    directory: Path
    model_path: Path
    manifest: dict[str, Any]

    @property
    def sha256(self) -> str:
        return str(self.manifest["model"]["sha256"])


def load_model_dir(path: Path | str) -> ModelDir:
    """Read and verify a model folder (or the folder of a ``model.tflite`` path)."""
    from edgenas.export.convert import ExportError
    from edgenas.export.pipeline import read_manifest

    path = Path(path)
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise ModelFileError(f"{path}: no such model folder")
    try:
        manifest = read_manifest(path)
    except ExportError as exc:
        raise ModelFileError(str(exc)) from None
    return ModelDir(path, path / manifest["model"]["file"], manifest)


# ---------------------------------------------------------------------------------------------- locks


@contextmanager
def host_lock(home: Path, device: str, timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> Iterator[None]:
    """``<home>/locks/device-<name>.lock`` under ``flock``: edgenas processes on this host take turns.

    The kernel drops a flock when its holder dies, so a killed process never leaves it behind.
    """
    locks = Path(home) / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks / f"device-{device}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DeviceBusyError(
                        f"{device}: another edgenas process on this host has been benchmarking on it "
                        f"for more than {timeout:g} s"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


@dataclass
class DeviceLock:
    """The lock directory on the device (``<workdir>/.bench.lock``) with its holder's record."""

    transport: Transport
    device: str
    ttl_s: float
    timeout_s: float = DEFAULT_LOCK_TIMEOUT_S
    token: str = ""

    def acquire(self) -> None:
        self.token = secrets.token_hex(8)
        record = f"{self.token} {socket.gethostname()} {os.getpid()} {int(self.ttl_s)}"
        deadline = time.monotonic() + self.timeout_s
        path = self.transport.remote_path(DEVICE_LOCK)
        while True:
            res = self.transport.run(["sh", "-c", _LOCK_SCRIPT, "sh", path, record], timeout=30)
            out = res.stdout.strip()
            if res.rc == 0 and out == "acquired":
                return
            if res.rc != 0 or not out.startswith("held "):
                raise BenchError(f"{self.device}: cannot take the benchmark lock {path}: "
                                 f"{(res.stderr.strip() or out)[:300]}")
            parts = out.split()
            now, owner = int(parts[1]), parts[2:]
            stale = _stale_reason(owner, now)
            if stale:
                self.transport.run(
                    ["sh", "-c", _BREAK_SCRIPT, "sh", path, " ".join(owner),
                     f"{path}.stale-{secrets.token_hex(4)}"],
                    timeout=30,
                )
                continue
            if time.monotonic() > deadline:
                raise DeviceBusyError(
                    f"{self.device}: busy: a benchmark from {owner[1]} (pid {owner[2]}) holds {path}; "
                    f"waited {self.timeout_s:g} s"
                )
            time.sleep(0.5)

    def release(self) -> None:
        if not self.token:
            return
        path = self.transport.remote_path(DEVICE_LOCK)
        self.transport.run(["sh", "-c", _RELEASE_SCRIPT, "sh", path, self.token], timeout=30)
        self.token = ""


def _stale_reason(owner: Sequence[str], now: int) -> str | None:
    """Why a held lock may be broken: its holder on this host is gone, or it outlived its own ttl."""
    if len(owner) < 5:
        return "unreadable owner record"
    _token, host, pid, ttl, started = owner[:5]
    try:
        age, ttl_s = now - int(started), int(ttl)
    except ValueError:
        return "unreadable owner record"
    if age > ttl_s:
        return f"held for {age} s, longer than its holder's limit of {ttl_s} s"
    if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
        return f"its holder (pid {pid} on this host) is gone"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------------- bench


class DeviceBencher:
    """One device and one connection, reused for many benchmarks (a campaign's per-device worker).

    Not thread-safe: give each thread its own (each opens its own transport).
    """

    def __init__(self, home: Path, device: Device, settings: BenchSettings | None = None, *,
                 lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
                 transport: Transport | None = None) -> None:
        self.home = Path(home)
        self.device = device
        self.settings = settings or BenchSettings()
        self.lock_timeout = lock_timeout
        self.transport = transport or open_transport(device, self.home)
        self.python = device.python or "python3"
        self.uploads = 0  # files actually transferred by this bencher (tests and progress lines)
        self._runner = runner_path()
        self._runner_sha = sha256_file(self._runner)
        # LiteRT's benchmark_model instead of the runner (a device without Python).
        self.binary = Path(device.benchmark_binary) if device.benchmark_binary else None
        self._binary_sha: tuple[tuple[int, int], str] | None = None  # ((mtime_ns, size), sha256)
        self._binary_version: dict[str, str | None] = {}  # sha256 -> what --version answered

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> DeviceBencher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def bench(self, store: Store, model: ModelDir, *, campaign: str | None = None,
              settings: BenchSettings | None = None, update_manifest: bool = True) -> dict[str, Any]:
        """Benchmark ``model``, store one ``measurements`` row and return it (plus ``uploaded``)."""
        s = settings or self.settings
        timeout = self._timeout(s)
        with host_lock(self.home, self.device.name, self.lock_timeout):
            lock = DeviceLock(self.transport, self.device.name, ttl_s=(timeout + 60) * (s.retries + 1),
                              timeout_s=self.lock_timeout)
            lock.acquire()
            try:
                uploaded = self._ensure_files(model)
                attempts = [self._run_once(model, s, timeout)]
                while attempts[-1].get("cv") is not None and attempts[-1]["cv"] > s.cv_threshold \
                        and len(attempts) <= s.retries:
                    attempts.append(self._run_once(model, s, timeout))
            finally:
                try:
                    lock.release()
                except EdgeNASError:
                    pass  # the device went away; the lock is stale and the next taker breaks it
        best = min(attempts, key=lambda r: r.get("cv") if r.get("cv") is not None else float("inf"))
        noisy = best.get("cv") is not None and best["cv"] > s.cv_threshold
        meta = {"attempts_cv": [a.get("cv") for a in attempts], "uploaded": uploaded,
                "host": socket.gethostname(), "cv_threshold": s.cv_threshold,
                "settings": s.__dict__}
        record = _store_row(store, self.device.name, model, best, s.threads, noisy, campaign, meta)
        record["uploaded"] = uploaded
        record["attempts"] = len(attempts)
        if update_manifest:
            _record_in_manifest(self.home, model, record)
        return record

    def _timeout(self, s: BenchSettings) -> float:
        """How long one run may take: the runner stops itself at max_secs (counted from the start of
        warm-up); benchmark_model applies max_secs to warm-up and timed runs separately."""
        budget = s.max_secs * (2 if self.binary else 1)
        return budget * 1.2 + 120

    def _binary_digest(self) -> str:
        """sha256 of the registered binary, re-hashed only when the file changed on the host."""
        assert self.binary is not None
        try:
            st = self.binary.stat()
        except OSError as exc:
            raise BenchError(
                f"{self.device.name}: the registered benchmark binary {self.binary} is not readable "
                f"({exc.strerror or exc}); register it again with `edgenas device add "
                f"{self.device.name} ... --benchmark-binary PATH --replace`") from None
        key = (st.st_mtime_ns, st.st_size)
        if self._binary_sha is None or self._binary_sha[0] != key:
            self._binary_sha = (key, sha256_file(self.binary))
        return self._binary_sha[1]

    def _ensure_files(self, model: ModelDir) -> list[str]:
        """Upload the runner (or the benchmark binary) and the model unless the device already has
        them (by sha256)."""
        remote_model = f"{MODEL_CACHE}/{model.sha256}.tflite"
        t = self.transport
        if self.binary is not None:
            tool, tool_local, tool_sha = bmb.REMOTE_PATH, self.binary, self._binary_digest()
        else:
            tool, tool_local, tool_sha = "runner.py", self._runner, self._runner_sha
        res = t.run(["sh", "-c", _SHA_SCRIPT, "sh", t.remote_path(MODEL_CACHE),
                     t.remote_path(tool), t.remote_path(remote_model)], timeout=60)
        if res.rc != 0:
            raise BenchError(f"{self.device.name}: cannot inspect the workdir "
                             f"{self.device.workdir}: {res.stderr.strip()[:300]}")
        have = dict(line.rsplit(" ", 1) for line in res.stdout.strip().splitlines() if " " in line)
        uploaded = []
        if have.get(t.remote_path(tool)) != tool_sha:
            if self.binary is not None:
                self._put_binary(tool_local)
            else:
                t.put(tool_local, tool, timeout=120)
            uploaded.append(tool)
        if have.get(t.remote_path(remote_model)) != model.sha256:
            t.put(model.model_path, remote_model, timeout=600)
            uploaded.append(remote_model)
        self.uploads += len(uploaded)
        return uploaded

    def _put_binary(self, local: Path) -> None:
        """Push the benchmark binary to ``bin/benchmark_model`` and make it executable (an upload does
        not carry the mode over every transport)."""
        t = self.transport
        remote = t.remote_path(bmb.REMOTE_PATH)
        res = t.run(["mkdir", "-p", t.remote_path(posixpath.dirname(bmb.REMOTE_PATH))], timeout=60)
        if res.rc != 0:
            raise BenchError(f"{self.device.name}: cannot create the folder for {remote}: "
                             f"{res.stderr.strip()[:300]}")
        t.put(local, bmb.REMOTE_PATH, timeout=600)
        res = t.run(["chmod", "755", remote], timeout=60)
        if res.rc != 0:
            raise BenchError(f"{self.device.name}: cannot make {remote} executable: "
                             f"{res.stderr.strip()[:300]}")

    def _device_state(self) -> dict[str, Any]:
        """Governor, frequencies, temperatures and the device clock, read with the shell (the runner
        reads the same files itself, but a device measured with the binary has no Python)."""
        res = self.transport.run(["sh", "-c", bmb.STATE_SCRIPT], timeout=60)
        return bmb.parse_state(res.stdout)

    def _binary_runtime_version(self, sha: str) -> str | None:
        """What ``benchmark_model --version`` answers, asked once per build (release builds have no
        such flag: ``None``)."""
        if sha not in self._binary_version:
            res = self.transport.run(bmb.version_argv(f"./{bmb.REMOTE_PATH}"), timeout=60, cwd=".")
            self._binary_version[sha] = bmb.parse_version(res.rc, bmb.combine(res.stdout, res.stderr))
        return self._binary_version[sha]

    def _run_binary_once(self, model: ModelDir, s: BenchSettings, timeout: float) -> dict[str, Any]:
        """One run of LiteRT's benchmark_model, returned in the runner's record shape."""
        name = self.device.name
        remote_model = f"{MODEL_CACHE}/{model.sha256}.tflite"
        binary = f"./{bmb.REMOTE_PATH}"
        argv = bmb.build_argv(binary, remote_model, threads=s.threads, runs=s.runs,
                              min_secs=s.min_secs, max_secs=s.max_secs, warmup_runs=s.warmup_runs,
                              warmup_secs=s.warmup_secs)
        sha = self._binary_digest()
        version = self._binary_runtime_version(sha)
        before = self._device_state()
        res = self.transport.run(argv, timeout=timeout, cwd=".")
        after = self._device_state()
        text = bmb.combine(res.stdout, res.stderr)
        parsed = bmb.parse_output(text)
        if res.rc in (126, 127):
            raise DeviceError(
                f"{name}: the device cannot execute {self.device.workdir}/{bmb.REMOTE_PATH} "
                f"(exit {res.rc}: {bmb.tail(text, 2)}); is {self.binary} built for this device's "
                f"CPU and OS (for example android_arm64)?")
        if res.rc != 0:
            if bmb.is_model_error(parsed["errors"]):
                raise ModelFileError(f"{name}: benchmark_model cannot load {model.model_path} "
                                     f"(sha256 {model.sha256[:12]}): {bmb.tail(text)}")
            raise BenchError(f"{name}: benchmark_model failed (exit {res.rc}): {bmb.tail(text)}")
        ignored = [f for f in parsed["unconsumed_flags"] if f in bmb.PROTOCOL_FLAGS]
        if ignored:
            raise BenchError(
                f"{name}: this benchmark_model build does not know --{', --'.join(ignored)}, so it "
                f"would measure with a different protocol; use a newer LiteRT build")
        protocol = {"warmup_runs": s.warmup_runs, "warmup_secs": s.warmup_secs, "runs": s.runs,
                    "min_secs": s.min_secs, "max_secs": s.max_secs, "seed": None}
        try:
            data = bmb.to_measurement(parsed, threads=s.threads, protocol=protocol)
        except bmb.OutputError as exc:
            raise BenchError(f"{name}: cannot read benchmark_model's output ({exc}): "
                             f"{bmb.tail(text)}") from None
        data.update(
            runtime={"name": bmb.NAME, "module": None, "version": version},
            benchmark_binary={"path": str(self.binary), "sha256": sha,
                              "remote": self.transport.remote_path(bmb.REMOTE_PATH),
                              "argv": argv, "ignored_flags": parsed["unconsumed_flags"]},
            model={"path": remote_model, "sha256": model.sha256,
                   "size_bytes": model.model_path.stat().st_size},
            state_before=before, state_after=after,
            output=text[-20000:],
        )
        return data

    def _run_once(self, model: ModelDir, s: BenchSettings, timeout: float) -> dict[str, Any]:
        if self.binary is not None:
            return self._run_binary_once(model, s, timeout)
        remote_model = f"{MODEL_CACHE}/{model.sha256}.tflite"
        argv = [self.python, "runner.py", "bench", remote_model, *s.argv()]
        res = self.transport.run(argv, timeout=timeout, cwd=".")
        data = last_json(res.stdout)
        name = self.device.name
        if res.rc == 127 and data is None:
            raise DeviceError(f"{name}: no Python at {self.python!r} on the device "
                              f"(set it with `edgenas device add {name} --python ... --replace`, or, "
                              f"for a phone without Python, register LiteRT's benchmark_model with "
                              f"--benchmark-binary PATH)")
        if res.rc != 0 or data is None or "error" in (data or {}):
            why = (data or {}).get("error") or (res.stderr.strip().splitlines() or ["no output"])[-1]
            if res.rc == 3:
                raise ModelFileError(f"{name}: the runner cannot load {model.model_path} "
                                     f"(sha256 {model.sha256[:12]}): {why}")
            if res.rc == 4:
                hint = (data or {}).get("hint")
                raise DeviceError(f"{name}: no usable TFLite runtime: {why}"
                                  + (f"; install one: {hint}" if hint else ""))
            raise BenchError(f"{name}: bench failed (exit {res.rc}): {str(why)[:500]}")
        if data.get("model", {}).get("sha256") not in (None, model.sha256):
            raise BenchError(f"{name}: the device benchmarked a different file than {model.sha256[:12]}")
        return data


def bench_model(store: Store, home: Path, device_name: str, model_dir: Path | str, *,
                threads: int = 1, runs: int = 50, min_secs: float = 1.0, warmup_runs: int = 1,
                warmup_secs: float = 0.5, max_secs: float = 150.0, cv_threshold: float = 0.05,
                retries: int = 1, campaign: str | None = None,
                lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
                update_manifest: bool = True) -> dict[str, Any]:
    """Benchmark the exported model in ``model_dir`` on ``device_name``; store and return the row.

    Raises ModelFileError (corrupt model or manifest), DeviceError (no runtime / no Python),
    TransportError (device unreachable or lost mid-benchmark: nothing is stored), DeviceBusyError.
    """
    model = load_model_dir(model_dir)
    device = get_device(store, device_name)
    settings = BenchSettings(threads, runs, min_secs, warmup_runs, warmup_secs, max_secs,
                             cv_threshold, retries)
    with DeviceBencher(home, device, settings, lock_timeout=lock_timeout) as bencher:
        return bencher.bench(store, model, campaign=campaign)


# ---------------------------------------------------------------------------------------------- store

_ROW_COLUMNS = (
    "device", "arch", "space", "precision", "threads", "runtime", "runtime_version", "model_sha256",
    "source_sha256", "campaign", "median_ms", "p90_ms", "mean_ms", "std_ms", "min_ms", "cv", "init_ms",
    "first_ms", "runs", "peak_rss_kib", "noisy", "governor", "freq_mhz_before", "freq_mhz_after",
    "temp_c_before", "temp_c_after", "result_json", "created_at",
)


def _store_row(store: Store, device: str, model: ModelDir, r: dict[str, Any], threads: int,
               noisy: bool, campaign: str | None, meta: dict[str, Any]) -> dict[str, Any]:
    m = model.manifest
    before, after = r.get("state_before") or {}, r.get("state_after") or {}
    runtime = r.get("runtime") or {}
    row = {
        "device": device,
        "arch": m.get("arch") or "?",
        "space": m.get("space"),
        "precision": m.get("precision") or "?",
        "threads": threads,
        "runtime": runtime.get("name"),
        "runtime_version": runtime.get("version"),
        "model_sha256": model.sha256,
        "source_sha256": (m.get("provenance") or {}).get("source_sha256"),
        "campaign": campaign,
        "median_ms": float(r["median_ms"]),
        "p90_ms": r.get("p90_ms"),
        "mean_ms": r.get("mean_ms"),
        "std_ms": r.get("std_ms"),
        "min_ms": r.get("min_ms"),
        "cv": r.get("cv"),
        "init_ms": r.get("init_ms"),
        "first_ms": r.get("first_inference_ms"),
        "runs": r.get("count"),
        "peak_rss_kib": (r.get("memory") or {}).get("peak_rss_kib"),
        "noisy": int(noisy),
        "governor": _governor(before),
        "freq_mhz_before": _freq_mhz(before),
        "freq_mhz_after": _freq_mhz(after),
        "temp_c_before": _temp_c(before),
        "temp_c_after": _temp_c(after),
        "result_json": json.dumps({**r, "edgenas": meta}),
        "created_at": time.time(),
    }
    with store.transaction() as conn:
        cur = conn.execute(
            f"INSERT INTO measurements ({', '.join(_ROW_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(_ROW_COLUMNS))})",
            tuple(row[c] for c in _ROW_COLUMNS),
        )
        row["id"] = cur.lastrowid
    return row


def _governor(state: dict[str, Any]) -> str | None:
    govs = sorted({c.get("governor") for c in state.get("cpufreq") or [] if c.get("governor")})
    return ",".join(govs) or None


def _freq_mhz(state: dict[str, Any]) -> float | None:
    khz = [c["cur_khz"] for c in state.get("cpufreq") or [] if c.get("cur_khz")]
    return round(sum(khz) / len(khz) / 1000, 1) if khz else None


def _temp_c(state: dict[str, Any]) -> float | None:
    temps = [z["temp_c"] for z in state.get("thermal") or [] if z.get("temp_c") is not None]
    return max(temps) if temps else None


def _record_in_manifest(home: Path, model: ModelDir, record: dict[str, Any]) -> None:
    """``manifest["latency"][device]``: the model folder says where it was measured and how fast.

    Rewritten atomically under a workspace lock (two devices may finish the same model at once)."""
    locks = Path(home) / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks / f"manifest-{model.sha256[:16]}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = model.directory / "manifest.json"
        try:
            manifest = json.loads(path.read_text())
            manifest.setdefault("latency", {})[record["device"]] = {
                k: record[k] for k in ("median_ms", "p90_ms", "cv", "noisy", "threads", "runtime",
                                       "runtime_version", "peak_rss_kib", "created_at")
            }
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
            tmp.write_text(json.dumps(manifest, indent=2))
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only model folder still gets its measurement stored in the workspace
    finally:
        os.close(fd)



def open_bencher(home: Path, device_name: str, settings: BenchSettings | None = None) -> DeviceBencher:
    """A :class:`DeviceBencher` for a registered device (opens the store only to look it up)."""
    with open_store(home) as store:
        device = get_device(store, device_name)
    return DeviceBencher(home, device, settings)


__all__ = ["BenchError", "BenchSettings", "DeviceBencher", "DeviceBusyError", "ModelDir",
           "ModelFileError", "TransportError", "bench_model", "load_model_dir", "open_bencher"]
