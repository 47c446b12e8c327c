"""Benchmark an exported model on a device and store the result with its provenance.

Why it is shaped this way:

* **Through the device session** (:mod:`edgenas.device.session`): the runner and the model are made to
  be on the device by sha256 (one round trip, upload only what differs, free space checked first);
  models live under ``cache/models/<sha256>.tflite``, a cache bounded least-recently-used; the run
  holds the one device lock (host ``flock`` + lock folder on the device) and is the lock holder's job,
  so Ctrl-C or SIGTERM stops the benchmark on the device before the lock is released.
* **Noise is measured, not hidden.**  A run whose CV is above the threshold is repeated; the steadier
  run is kept, and it is flagged ``noisy`` when even that one is above the threshold.
* **A failed benchmark stores nothing.**  The row is written only after the runner's JSON is parsed.
* **Phones without Python** are measured with LiteRT's own ``benchmark_model`` when the device was
  registered with ``--benchmark-binary``: the two are implementations of one :class:`Backend`, so
  everything downstream is unchanged.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from edgenas.core.errors import TransportError
from edgenas.core.files import sha256_file
from edgenas.core.text import printable
from edgenas.device import answers, layout
from edgenas.device.cancel import Cancel
from edgenas.device.lock import DEFAULT_LOCK_TIMEOUT_S, DeviceBusyError
from edgenas.device.registry import Device, get_device, verify_benchmark_binary
from edgenas.device.session import (
    DeviceSession,
    LocalFile,
    ModelFileError,
    NoRuntimeError,
    RunnerError,
    runner_file,
    runner_result,
)
from edgenas.device.transports import Transport
from edgenas.export.package import ModelPackage, PackageError, record_latency
from edgenas.measure import benchmark_model as bmb
from edgenas.records import measurements
from edgenas.records.classes import class_of, format_cpu_set, parse_cpu_set
from edgenas.records.memory import model_memory_kib
from edgenas.records.store import Store, open_store

log = logging.getLogger(__name__)


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
    xnnpack: bool = True
    cpus: str | None = None  # the CPU set the benchmark is pinned to (canonical: 4-7); None: not pinned

    def argv(self) -> list[str]:
        argv = [
            "--threads", str(self.threads), "--runs", str(self.runs), "--min-secs", f"{self.min_secs:g}",
            "--warmup-runs", str(self.warmup_runs), "--warmup-secs", f"{self.warmup_secs:g}",
            "--max-secs", f"{self.max_secs:g}",
        ]
        if self.cpus:
            argv += ["--cpu-affinity", self.cpus]
        return argv if self.xnnpack else [*argv, "--no-xnnpack"]


def for_device(device: Device, settings: BenchSettings) -> BenchSettings:
    """``settings`` as ``device`` is measured.  A device registered ``--no-xnnpack`` (a runtime built
    without it) is never measured with XNNPACK, whatever the caller asked: the profile belongs to the
    device like its CPU does, so bench, measure, search verification and fleet bench all honour it
    here, and the stored row's ``edgenas.settings`` says ``xnnpack: false``.  Likewise the device's
    CPU set (``device.cpus``, which ``bench --cpus``/``measure --cpus`` set for one run): every
    benchmark of a pinned device is pinned, since the set is part of its class."""
    if not device.xnnpack and settings.xnnpack:
        settings = replace(settings, xnnpack=False)
    cpus = getattr(device, "cpus", None)
    if cpus != settings.cpus:
        settings = replace(settings, cpus=cpus)
    return settings


def pinned(device: Device, cpus: str | None) -> Device:
    """``device`` as measured on the CPU set ``cpus`` for one run (``bench``/``measure --cpus``): its
    class, its settings and its rows all say so.  None: as registered."""
    if cpus is None:
        return device
    try:
        return replace(device, cpus=parse_cpu_set(cpus))
    except ValueError as exc:
        raise RunnerError(f"{device.name}: {exc}") from None


# ---------------------------------------------------------------------------------------------- model


# ---------------------------------------------------------------------------------------------- backends


class Backend(Protocol):
    """A way to time a model on a device: the runner, or LiteRT's benchmark_model."""

    def tool(self) -> LocalFile: ...

    def timeout(self, s: BenchSettings) -> float: ...

    def run_once(self, session: DeviceSession, model: ModelPackage, s: BenchSettings,
                 timeout: float, remote: str | None = None) -> dict[str, Any]:
        """Time ``model`` (at ``remote`` on the device; default: its place in the model cache)."""


class RunnerBackend:
    """The on-device runner (``runner.pyz bench``): the full protocol, percentiles, runtime facts."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def tool(self) -> LocalFile:

        return runner_file(self.home)

    def timeout(self, s: BenchSettings) -> float:
        return s.max_secs * 1.2 + 120  # the runner stops itself at max_secs from the start of warm-up

    def run_once(self, session: DeviceSession, model: ModelPackage, s: BenchSettings,
                 timeout: float, remote: str | None = None) -> dict[str, Any]:

        remote = remote or layout.cached_model(model.sha256)
        res = session.run([session.python, layout.RUNNER, "bench", remote, *s.argv()], timeout, job=True)
        # bounded before any JSON parser sees it: an answer nested 100 000 deep is refused, not a
        # RecursionError (edgenas.device.answers)
        answers.check_output(session.name, res.stdout, "bench")
        try:
            data = runner_result(session.name, session.python, res, "bench", model=str(model.model_path))
        except ModelFileError as exc:
            raise ModelFileError(f"{exc} (sha256 {model.sha256[:12]})") from None
        # every field the host stores or compares, checked: devices of a class share their rows
        return answers.bench_answer(session.name, data, sha256=model.sha256)


class BinaryBackend:
    """LiteRT's ``benchmark_model`` (a device without Python); its log parsed into a runner record."""

    def __init__(self, device: Device) -> None:
        assert device.benchmark_binary
        self.device = device
        # the real file pinned at registration, re-checked (path and sha256) before every use
        self.binary = verify_benchmark_binary(device)
        self._sha: tuple[tuple[int, int], str] | None = None  # ((mtime_ns, size), sha256)
        self._versions: dict[str, str | None] = {}  # sha256 -> what --version answered

    def digest(self) -> str:
        """sha256 of the registered binary, re-hashed only when the file changed on the host."""
        try:
            st = self.binary.stat()
        except OSError as exc:
            raise RunnerError(
                f"{self.device.name}: the registered benchmark binary {self.binary} is not readable "
                f"({exc.strerror or exc}); register it again with `edgenas device add "
                f"{self.device.name} ... --benchmark-binary PATH --replace`") from None
        key = (st.st_mtime_ns, st.st_size)
        if self._sha is None or self._sha[0] != key:
            self._sha = (key, sha256_file(self.binary))
        return self._sha[1]

    def tool(self) -> LocalFile:
        return LocalFile(self.binary, layout.BENCHMARK_BINARY, self.digest(), mode="755")

    def timeout(self, s: BenchSettings) -> float:
        return s.max_secs * 2 * 1.2 + 120  # max_secs applies to warm-up and timed runs separately

    def _version(self, session: DeviceSession, sha: str) -> str | None:
        if sha not in self._versions:
            res = session.run(bmb.version_argv(f"./{layout.BENCHMARK_BINARY}"), 60)
            self._versions[sha] = bmb.parse_version(res.rc, bmb.combine(res.stdout, res.stderr))
        return self._versions[sha]

    def run_once(self, session: DeviceSession, model: ModelPackage, s: BenchSettings,
                 timeout: float, remote: str | None = None) -> dict[str, Any]:
        name = session.name
        remote_model = remote or layout.cached_model(model.sha256)
        binary = f"./{layout.BENCHMARK_BINARY}"
        argv = bmb.build_argv(binary, remote_model, threads=s.threads, runs=s.runs,
                              min_secs=s.min_secs, max_secs=s.max_secs, warmup_runs=s.warmup_runs,
                              warmup_secs=s.warmup_secs)
        if not s.xnnpack:
            argv.append("--use_xnnpack=false")
        if s.cpus:  # benchmark_model has no affinity flag; taskset's hex mask works on toybox too
            argv = ["taskset", _cpu_mask(s.cpus), *argv]
        sha = self.digest()
        version = self._version(session, sha)
        before = bmb.parse_state(session.sh("state", []).stdout)
        res = session.run(argv, timeout, job=True)
        after = bmb.parse_state(session.sh("state", []).stdout)
        text = bmb.combine(res.stdout, res.stderr)
        parsed = bmb.parse_output(text)
        if res.rc in (126, 127):
            raise NoRuntimeError(
                f"{name}: the device cannot execute {session.path(layout.BENCHMARK_BINARY)} "
                f"(exit {res.rc}: {printable(bmb.tail(text, 2))}); is {self.binary} built for this "
                f"device's CPU and OS (for example android_arm64)?")
        if res.rc != 0:
            if bmb.is_model_error(parsed["errors"]):
                raise ModelFileError(f"{name}: benchmark_model cannot load {model.model_path} "
                                     f"(sha256 {model.sha256[:12]}): {printable(bmb.tail(text))}")
            raise RunnerError(f"{name}: benchmark_model failed (exit {res.rc}): "
                              f"{printable(bmb.tail(text))}")
        ignored = [f for f in parsed["unconsumed_flags"] if f in bmb.PROTOCOL_FLAGS]
        if ignored:
            raise RunnerError(
                f"{name}: this benchmark_model build does not know --{', --'.join(ignored)}, so it "
                f"would measure with a different protocol; use a newer LiteRT build")
        protocol = {"warmup_runs": s.warmup_runs, "warmup_secs": s.warmup_secs, "runs": s.runs,
                    "min_secs": s.min_secs, "max_secs": s.max_secs, "seed": None}
        try:
            data = bmb.to_measurement(parsed, threads=s.threads, protocol=protocol)
        except bmb.OutputError as exc:
            raise RunnerError(f"{name}: cannot read benchmark_model's output ({exc}): "
                              f"{printable(bmb.tail(text))}") from None
        data.update(
            runtime={"name": bmb.NAME, "module": None, "version": version},
            benchmark_binary={"path": str(self.binary), "sha256": sha,
                              "remote": session.path(layout.BENCHMARK_BINARY),
                              "argv": argv, "ignored_flags": parsed["unconsumed_flags"]},
            model={"path": remote_model, "sha256": model.sha256, "size_bytes": model.size_bytes},
            state_before=before, state_after=after,
            output=text[-20000:],
        )
        return answers.bench_answer(name, data, sha256=model.sha256)


def _cpu_mask(cpus: str) -> str:
    """A CPU set as ``taskset``'s hex mask (``4-7`` -> ``f0``)."""
    from edgenas.records.classes import cpu_list

    return format(sum(1 << c for c in cpu_list(cpus)), "x")


def backend_for(device: Device, home: Path) -> Backend:
    """The runner, or benchmark_model for a device registered with ``--benchmark-binary``."""
    return BinaryBackend(device) if device.benchmark_binary else RunnerBackend(home)


# ---------------------------------------------------------------------------------------------- bench


class DeviceBencher:
    """One device and one session, reused for many benchmarks (a campaign's per-device worker).

    Each benchmark takes the device lock for itself, so other commands can use the device between
    the benchmarks of a long campaign.  Not thread-safe: give each thread its own.
    """

    def __init__(self, home: Path, device: Device, settings: BenchSettings | None = None, *,
                 lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
                 transport: Transport | None = None, cancel: Cancel | None = None,
                 session: DeviceSession | None = None, cache_mib: int | None = None) -> None:
        self.home = Path(home)
        self.device = device
        self.settings = for_device(device, settings or BenchSettings())
        self.session = session or DeviceSession(self.home, device, cancel=cancel,
                                                lock_timeout=lock_timeout, transport=transport)
        self._own_session = session is None
        if self._own_session:
            self.session.__enter__()
        self.backend = backend_for(device, self.home)
        self.cache_mib = device_cache_mib(device) if cache_mib is None else cache_mib

    @property
    def uploads(self) -> int:
        return len(self.session.uploads)

    @property
    def transport(self) -> Transport:
        return self.session.transport

    def close(self) -> None:
        if self._own_session:
            self.session.close()

    def __enter__(self) -> DeviceBencher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def runtime(self) -> tuple[str, str | None]:
        """(name, version) of the runtime this device's benchmarks use now, named as a stored row
        names it: a resumed campaign counts only rows of this runtime as done (an upgrade is measured
        again)."""
        backend = self.backend
        if isinstance(backend, BinaryBackend):
            with self.session.locked():
                self.session.ensure([backend.tool()])
                return bmb.NAME, _bounded(backend._version(self.session, backend.digest()))
        with answers.refuse_deep(self.device.name, "info"):
            rt = self.session.runner("info", ["--no-probe"]).get("runtime")
        if not isinstance(rt, dict) or not rt.get("name"):
            raise NoRuntimeError(f"{self.device.name}: no usable TFLite runtime (the runner names none; "
                                 f"`edgenas device check {self.device.name}` says what to install)")
        name = answers.name(self.device.name, "info", "runtime.name", rt["name"], required=True)
        version = answers.name(self.device.name, "info", "runtime.version", rt.get("version"))
        assert name is not None
        return name, version

    def bench(self, store: Store, model: ModelPackage, *, campaign: str | None = None,
              settings: BenchSettings | None = None, update_manifest: bool = True,
              remote: str | None = None) -> dict[str, Any]:
        """Benchmark ``model``, store one ``measurements`` row and return it (plus ``uploaded``).

        ``remote``: a model already on the device (a deployed version, checked by sha256 on the
        device by whoever names it) is timed where it is; nothing of the model is transferred."""
        s = for_device(self.device, settings or self.settings)
        timeout = self.backend.timeout(s)
        session = self.session
        with session.locked(ttl_s=timeout * (s.retries + 1) + 120):
            files = [self.backend.tool()]
            if remote is None:
                files.append(LocalFile(model.model_path, layout.cached_model(model.sha256),
                                       model.sha256))
            uploaded = session.ensure(files)
            if remote is None:
                touch_and_prune(session, self.cache_mib, keep=f"{model.sha256}.tflite")
            best, attempts = steadiest(
                lambda: self.backend.run_once(session, model, s, timeout, remote), s)
        noisy = best.get("cv") is not None and best["cv"] > s.cv_threshold
        meta = {"attempts_cv": [a.get("cv") for a in attempts], "uploaded": uploaded,
                "host": socket.gethostname(), "cv_threshold": s.cv_threshold,
                "settings": s.__dict__}
        record = _store_row(store, self.device, model, best, s.threads, noisy, campaign, meta)
        record["uploaded"] = uploaded
        record["attempts"] = len(attempts)
        if update_manifest:
            _record_in_manifest(self.home, model, record)
        return record


def steadiest(run: Callable[[], dict[str, Any]], s: BenchSettings
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run a benchmark, and again (at most ``s.retries`` more times) while the last run's coefficient
    of variation is over ``s.cv_threshold``; (the run with the lowest CV, every run).  A burst of
    other work on the device spoils one run, not the row; a run without a CV is never repeated and
    never preferred."""
    attempts = [run()]
    while attempts[-1].get("cv") is not None and attempts[-1]["cv"] > s.cv_threshold \
            and len(attempts) <= s.retries:
        attempts.append(run())
    best = min(attempts, key=lambda r: r.get("cv") if r.get("cv") is not None else float("inf"))
    return best, attempts


def device_cache_mib(device: Device) -> int:
    """The device's model-cache bound (``device add --cache-mib``), or the default."""
    return layout.DEFAULT_CACHE_MIB if device.cache_mib is None else int(device.cache_mib)


def touch_and_prune(session: DeviceSession, cache_mib: int, keep: str,
                    folder: str = layout.MODEL_CACHE) -> str:
    """Mark ``folder/keep`` as just used; trim ``folder`` to ``cache_mib``, least recently used first."""
    session.run(["touch", "-c", "--", f"{folder}/{keep}"])
    res = session.sh("prune", [session.path(folder), str(cache_mib * 1024), keep])
    return res.stdout.strip()


def bench_model(store: Store, home: Path, device_name: str, model_dir: Path | str, *,
                threads: int = 1, runs: int = 50, min_secs: float = 1.0, warmup_runs: int = 1,
                warmup_secs: float = 0.5, max_secs: float = 150.0, cv_threshold: float = 0.05,
                retries: int = 1, campaign: str | None = None,
                lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
                update_manifest: bool = True, cpus: str | None = None) -> dict[str, Any]:
    """Benchmark the exported model in ``model_dir`` on ``device_name``; store and return the row.

    Raises ModelFileError (corrupt model or manifest), DeviceError (no runtime / no Python),
    TransportError (device unreachable or lost mid-benchmark: nothing is stored), DeviceBusyError.
    ``cpus``: pin this benchmark to a CPU set (else the device's own, if it has one).
    """
    model = ModelPackage.open(model_dir)
    device = pinned(get_device(store, device_name), cpus)
    settings = BenchSettings(threads, runs, min_secs, warmup_runs, warmup_secs, max_secs,
                             cv_threshold, retries)
    with DeviceBencher(home, device, settings, lock_timeout=lock_timeout) as bencher:
        return bencher.bench(store, model, campaign=campaign)


# ---------------------------------------------------------------------------------------------- store

def _store_row(store: Store, device: Device, model: ModelPackage, r: dict[str, Any], threads: int,
               noisy: bool, campaign: str | None, meta: dict[str, Any]) -> dict[str, Any]:
    """Store the kept run as one ``measurements`` row (:mod:`edgenas.records.measurements` owns the
    SQL), stamped with the device's class, and return the row as a dict, its ``id`` and raw
    ``result_json`` included."""

    m = model.data
    before, after = r.get("state_before") or {}, r.get("state_after") or {}
    runtime = r.get("runtime") or {}
    stored = measurements.insert(store, measurements.Measurement(
        device=device.name,
        device_class=class_of(device),
        arch=m.get("arch") or "?",
        space=m.get("space"),
        precision=m.get("precision") or "?",
        threads=threads,
        runtime=_bounded(runtime.get("name")),
        runtime_version=_bounded(runtime.get("version")),
        model_sha256=model.sha256,
        source_sha256=(m.get("provenance") or {}).get("source_sha256"),
        campaign=campaign,
        median_ms=float(r["median_ms"]),
        p90_ms=r.get("p90_ms"),
        mean_ms=r.get("mean_ms"),
        std_ms=r.get("std_ms"),
        min_ms=r.get("min_ms"),
        cv=r.get("cv"),
        init_ms=r.get("init_ms"),
        first_ms=r.get("first_inference_ms"),
        runs=r.get("count"),
        peak_rss_kib=(r.get("memory") or {}).get("peak_rss_kib"),
        noisy=noisy,
        governor=_governor(before),
        freq_mhz_before=_freq_mhz(before),
        freq_mhz_after=_freq_mhz(after),
        temp_c_before=_temp_c(before),
        temp_c_after=_temp_c(after),
        protocol=measurements.Protocol.of(meta["settings"]),
        cpus=_ran_on(device, r),
        memory_kib=model_memory_kib(r),
        result_json=json.dumps({**r, "edgenas": meta}),
    ))
    return {**stored.to_dict(), "result_json": stored.result_json}


def _ran_on(device: Device, r: dict[str, Any]) -> str | None:
    """The CPU set a pinned benchmark ran on, as the runner reports it (its ``cpu_affinity``); a
    runner that pinned to another set than asked is refused (the row would lie about its class)."""
    cpus = getattr(device, "cpus", None)
    if not cpus:
        return None
    seen = r.get("cpu_affinity")
    if isinstance(seen, list) and seen and all(isinstance(c, int) and not isinstance(c, bool)
                                               for c in seen):
        got = format_cpu_set(seen)
        if got != cpus:
            raise RunnerError(f"{device.name}: the benchmark was to run on CPUs {cpus} but ran on "
                              f"{got[:80]}; nothing was stored")
    return cpus


def _bounded(value: Any) -> str | None:
    """A device-supplied name or version as a short printable string (None stays None).  Answers
    are checked before they get here (:func:`edgenas.device.answers.bench_answer`); this is the
    last guard for what reaches a row: escaped control characters, never raw ones."""
    return None if value is None else printable(str(value), limit=64)


def _governor(state: dict[str, Any]) -> str | None:
    govs = sorted({c.get("governor") for c in state.get("cpufreq") or [] if c.get("governor")})
    return ",".join(govs) or None


def _freq_mhz(state: dict[str, Any]) -> float | None:
    khz = [c["cur_khz"] for c in state.get("cpufreq") or [] if c.get("cur_khz")]
    return round(sum(khz) / len(khz) / 1000, 1) if khz else None


def _temp_c(state: dict[str, Any]) -> float | None:
    temps = [z["temp_c"] for z in state.get("thermal") or [] if z.get("temp_c") is not None]
    return max(temps) if temps else None


def _record_in_manifest(home: Path, model: ModelPackage, record: dict[str, Any]) -> None:
    """``manifest["latency"][device]``: the model folder says where it was measured and how fast (a
    read-only folder still gets its measurement stored in the workspace)."""
    try:
        record_latency(model, record["device"], record, lock_dir=Path(home) / "locks")
    except PackageError as exc:
        log.warning("latency for %s not recorded in %s: %s", record["device"], model.directory, exc)


def open_bencher(home: Path, device_name: str, settings: BenchSettings | None = None) -> DeviceBencher:
    """A :class:`DeviceBencher` for a registered device (opens the store only to look it up)."""
    with open_store(home) as store:
        device = get_device(store, device_name)
    return DeviceBencher(home, device, settings)


__all__ = ["BenchSettings", "DeviceBencher", "DeviceBusyError", "ModelPackage",
           "ModelFileError", "TransportError", "bench_model", "open_bencher", "pinned"]
