"""Measurement campaigns: sample subnets, export them, benchmark them on devices, store every result.

How a campaign runs, and why:

* **Sampling covers the space evenly** (:func:`sample_archs`): the smallest and largest arch always,
  an equal quota per resolution, and for the rest a per-sample "size level" that skews each depth,
  kernel and expand choice toward small or large while keeping a random part.  Uniform sampling would
  put almost every subnet near the middle of the latency range (a sum of many independent choices),
  and a predictor trained like that extrapolates badly to the small and large subnets a search ends
  up choosing.  The list depends only on (space, samples, seed), so a re-run asks for the same archs.
* **Exports run in worker processes** (spawn; each keeps the supernet loaded) and are cached
  under ``<home>/cache/exports/<source sha[:12]>/<arch>/<precision>/``: a campaign on another
  device, or a resumed one, exports nothing again.  These are *latency* exports:
  BN is re-calibrated on 64 images (only so that the export's parity check holds on a trained
  supernet) and int8 is calibrated on a few images, because latency does not depend on the weights;
  they are written without a signature table (same operators as shipped models); no accuracy is
  measured and the manifest says so (``provenance.purpose``).  Never ship them.
* **Devices run in parallel, one benchmark at a time each** (:mod:`edgenas.measure.bench` holds the
locks).
  The host itself is benchmarked only once the exports are done, or the exporting workers would share
  its cores with the benchmark and inflate its numbers.
* **Every result is stored as it arrives**, so an interrupted campaign loses at most the benchmarks in
  flight.  Re-run with the same arguments, it skips every (device, space, arch, precision, threads)
  already measured with the device's runtime and runtime version of now, from the same supernet
  (sha256) and with the same bench protocol (runs, min-secs, warm-up, XNNPACK) — a runtime upgrade
  is measured again, the old rows stay (:mod:`edgenas.records.measurements`).  A second run of the
  same campaign in the workspace is refused while the first runs (``locks/campaign-<id>.lock``).
* **Repeats are spread over time** (``repeats=K``): every subnet is measured once in export order, then
  again in a second pass over the whole list, and so on, so that a device that drifts for a minute
  (another job on its core, thermal throttling) spoils one of an arch's K measurements rather than all
  of them; the latency predictor fits the median of an arch's stored measurements.  A resumed
  campaign tops each (device, arch, precision) up to K rows, never beyond.
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from edgenas.core.errors import EdgeNASError
from edgenas.core.files import sha256_file
from edgenas.core.progress import ProgressFn, Reporter, reporter
from edgenas.device.cancel import Cancel, Cancelled
from edgenas.device.errors import RunnerError
from edgenas.device.fanout import DeviceResult, fan_out
from edgenas.device.registry import Device, select_devices
from edgenas.device.session import NoRuntimeError
from edgenas.export.package import PackageError
from edgenas.measure.bench import (
    BenchSettings,
    DeviceBencher,
    DeviceBusyError,
    ModelPackage,
    for_device,
    pinned,
)
from edgenas.measure.plan import (
    DeviceTarget,
    MeasureError,
    campaign_id,
    needed_jobs,
    plan_devices,
    sample_archs,
)
from edgenas.records import measurements
from edgenas.records.classes import class_of
from edgenas.records.store import Store, open_store
from edgenas.space.spec import Arch, SearchSpace

LATENCY_CALIBRATION = 32
# BN statistics sane enough that activations stay in float32's range, so the parity check holds
# (see _export_job); latency does not depend on their accuracy, and at 224 px each image is a
# full forward pass of the subnet
LATENCY_BN_IMAGES = 64
EXPORT_PRECISIONS = ("fp32", "fp16", "int8", "dynamic")


# ------------------------------------------------------------------------------------------- sampling


# -------------------------------------------------------------------------------------------- exports


def export_cache_dir(home: Path) -> Path:
    return Path(home) / "cache" / "exports"


def cached_export(cache: Path, source_sha: str, arch: str, precision: str) -> Path:
    return Path(cache) / source_sha[:12] / arch / precision


def _valid(path: Path) -> ModelPackage | None:
    try:
        return ModelPackage.open(path) if (path / "manifest.json").exists() else None
    except PackageError:
        return None


# Per worker process (spawned): the loaded supernet and calibration data.  A ProcessPoolExecutor
# initializer can only hand state to its tasks through the module, and each process has its own copy.
_WORKER: dict[str, Any] = {}


def _worker_init(ckpt: str, source_sha: str, nice: int, cpus: set[int] | None = None) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if cpus:  # keep off the core the host's own benchmarks run on (see _export_cpus)
        try:
            os.sched_setaffinity(0, cpus)
        except (OSError, AttributeError):
            pass
    if nice:
        try:
            os.nice(nice)  # the host may be benchmarking beside us
        except OSError:
            pass
    import torch

    torch.set_num_threads(1)
    from edgenas.supernets.mbv3 import load_supernet  # lazy: torch stays out of CLI start-up

    net = load_supernet(ckpt)
    data = None
    from edgenas.export.api import training_data_source  # lazy: torch stays out of CLI start-up

    source = training_data_source(net.meta)
    if source:
        try:
            from edgenas.training.data import load_data  # lazy: torch stays out of CLI start-up

            data = load_data(source, size=net.space.resolutions[-1])
        except EdgeNASError:
            data = None
    _WORKER.update(net=net, data=data, ckpt=ckpt, source_sha=source_sha)


def _export_job(arch_id: str, precision: str, final: str, calibration: int) -> str:
    """Export one arch into ``final`` (through a temp folder renamed into place) and return it."""
    import numpy as np

    from edgenas.export.pipeline import export_model  # lazy: torch stays out of CLI start-up

    net = _WORKER["net"]
    arch = net.space.parse(arch_id)
    final_path = Path(final)
    if _valid(final_path) is not None:
        return final
    final_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = final_path.parent / f".{final_path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    if _WORKER["data"] is not None:
        images = _WORKER["data"].calibration_images(calibration, arch.resolution).numpy()
    else:  # latency does not depend on the values; the parity check still runs on these
        images = np.random.default_rng(0).standard_normal(
            (calibration, 3, arch.resolution, arch.resolution)).astype(np.float32)
    last = _WORKER.get("last")  # the previous precision of this subnet: one graph for all of them
    if last is not None and last[0] == (arch_id, calibration):
        model, prepared = last[1], last[2]
    else:
        _WORKER.pop("last", None)
        model = net.extract(arch).eval()
        if _WORKER["data"] is not None:
            # The supernet's BN statistics fit no single subnet; without recalibration activations
            # can grow large enough that float32 rounding alone breaks the parity check.
            from edgenas.training.evaluate import recalibrate_bn  # lazy: torch stays out of CLI start-up

            recalibrate_bn(model, _WORKER["data"].calibration_images(LATENCY_BN_IMAGES,
                                                                     arch.resolution))
        from edgenas.export.pipeline import prepare  # lazy: torch stays out of CLI start-up

        prepared = prepare(model, arch, images)
        _WORKER["last"] = ((arch_id, calibration), model, prepared)
    provenance = {"source": _WORKER["ckpt"], "source_sha256": _WORKER["source_sha"],
                  "source_format": "edgenas-supernet", "purpose": "latency-measurement",
                  "bn_recalibrated": _WORKER["data"] is not None}
    try:
        export_model(model, arch, net.space, list(net.labels), dict(net.normalization), precision,
                     tmp, images, None, provenance, signatures=False, prepared=prepared)
        try:
            os.rename(tmp, final_path)  # atomic; fails if another campaign got there first
        except OSError:
            if _valid(final_path) is None:
                shutil.rmtree(final_path, ignore_errors=True)
                os.rename(tmp, final_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _export_arch_jobs(jobs: list[tuple[str, str]], arch_id: str, calibration: int) -> list[str | None]:
    """Export one subnet at several precisions [(precision, final)] in this worker, reusing its graph;
    the error text of each (None: exported), so one failed precision does not hide the others."""
    errors: list[str | None] = []
    for precision, final in jobs:
        try:
            _export_job(arch_id, precision, final, calibration)
            errors.append(None)
        except Exception as exc:  # noqa: BLE001 - reported per job by the campaign
            errors.append(str(exc) or type(exc).__name__)
    return errors


# ------------------------------------------------------------------------------------------- progress


@dataclass
class DeviceReport:
    """What one device did in a campaign."""

    device: str
    todo: int
    skipped: int
    measured: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    aborted: str | None = None
    seconds: float = 0.0
    served_by: str | None = None  # another device of its class measured for it


@dataclass
class MeasureReport:
    """The campaign's outcome; ``complete`` when every device measured everything it had to."""

    campaign: str
    space: str
    archs: list[str]
    precisions: list[str]
    threads: int
    devices: dict[str, DeviceReport]
    exported: int = 0
    export_cached: int = 0
    export_failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.export_failed and all(
            d.aborted is None and d.failed == 0 and d.measured == d.todo for d in self.devices.values())

    def to_dict(self) -> dict[str, Any]:
        return {"campaign": self.campaign, "space": self.space, "archs": len(self.archs),
                "precisions": self.precisions, "threads": self.threads,
                "exported": self.exported, "export_cached": self.export_cached,
                "export_failed": self.export_failed, "seconds": round(self.seconds, 1),
                "complete": self.complete,
                "devices": {k: vars(v) for k, v in self.devices.items()}}


# -------------------------------------------------------------------------------------------- measure


def resume_key(device: Device, space: str, threads: int, source_sha: str,
               runtime: tuple[str, str | None], settings: BenchSettings) -> measurements.ResumeKey:
    """What a stored row must share to count as done for this campaign on ``device``: its class (a
    row from any device of the class counts), its runtime and version *now* (a runtime upgrade is
    measured again), the supernet, and the protocol as the device is measured (a ``--no-xnnpack``
    device without XNNPACK)."""
    return measurements.ResumeKey(class_of(device), space, threads, source_sha, runtime[0], runtime[1],
                                  measurements.Protocol.of(for_device(device, settings)))


def measure(store: Store, home: Path, source_ckpt: Path | str, devices: Iterable[str], samples: int,
            precisions: Sequence[str] = ("fp32",), threads: int = 1, seed: int = 0, workers: int = 2,
            progress: bool | ProgressFn = True, *, export_cache: Path | None = None,
            settings: BenchSettings | None = None, archs: Sequence[Arch | str] | None = None,
            stream: IO[str] | None = None, repeats: int = 1,
            export_workers: ExportWorkers | None = None) -> MeasureReport:
    """Run (or resume) a campaign; see the module docstring.  ``devices`` are names or groups.

    ``workers`` export processes (0: export in this process); ``export_workers`` keeps them for the
    caller's next call (its owner closes them).  ``archs`` replaces the sampled list.
    ``repeats``: measurements per (device, arch, precision), taken in successive passes.
    ``progress``: a callback receiving :class:`edgenas.core.progress.Progress` events, or True to render
    them on ``stream`` (stderr), False to log them at DEBUG.
    Returns a :class:`MeasureReport`; device failures are reported there, not raised, so one dead
    device does not stop the others.
    """
    from edgenas.supernets.checkpoint import load_checkpoint  # lazy: torch stays out of CLI start-up

    started = time.monotonic()
    home = Path(home)
    source_ckpt = Path(source_ckpt).resolve()
    precisions = [p.strip() for p in precisions if p.strip()]
    if repeats < 1:  # before the device round trips plan_devices would refuse it after
        raise MeasureError("--repeats must be at least 1")
    bad = [p for p in precisions if p not in EXPORT_PRECISIONS]
    if bad or not precisions:
        raise MeasureError(f"unknown precision {', '.join(bad) or '(none)'} "
                           f"(one of {', '.join(EXPORT_PRECISIONS)})")
    devs = select_devices(store, list(devices))
    if settings is not None and settings.cpus:  # measure --cpus: every device pinned for this run
        devs = [pinned(d, settings.cpus) for d in devs]
    if not devs:
        raise MeasureError("no devices to measure on (give --device NAME or --group G)")
    ckpt = load_checkpoint(source_ckpt)
    space = SearchSpace.from_spec(ckpt["space"])
    source_sha = sha256_file(source_ckpt)
    if archs is not None:
        arch_list = [space.parse(a) if isinstance(a, str) else space.validate(a) for a in archs]
    else:
        arch_list = sample_archs(space, samples, seed)
    arch_ids = [a.to_string() for a in arch_list]
    cid = campaign_id(source_sha, space.name, len(arch_ids), seed, precisions, threads, repeats)
    settings = settings or BenchSettings(threads=threads)
    if settings.threads != threads:
        settings = BenchSettings(**{**settings.__dict__, "threads": threads})
    cache = Path(export_cache) if export_cache else export_cache_dir(home)
    say = reporter(progress, stream)

    jobs = [(a, p) for a in arch_ids for p in precisions]
    stop = threading.Event()
    cancel = Cancel()
    # Before any device is touched: a second run of this campaign stops here, with one clear line.
    campaign_lock = _campaign_lock(home, cid)
    reports: dict[str, DeviceReport] = {}
    try:
        runtimes = _device_runtimes(home, devs, settings, cancel)
        by_name = {d.name: d for d in devs}
        targets = [DeviceTarget(d.name, class_of(d), runtimes[d.name]) for d in devs]
        plans = plan_devices(jobs, targets, repeats, lambda t: measurements.done_counts(
            store, resume_key(by_name[t.name], space.name, threads, source_sha, t.runtime, settings)))
        for t in targets:
            p = plans[t.name]
            if p.aborted:  # unreachable, or no runtime: reported, nothing exported for it
                reports[t.name] = DeviceReport(t.name, 0, 0, aborted=p.aborted)
                say(t.name, f"ABORTED: {p.aborted}", level="error")
            elif p.served_by:  # one device measures for its whole class (edgenas.records.classes)
                reports[t.name] = DeviceReport(t.name, 0, 0, served_by=p.served_by)
                say(t.name, f"class {t.device_class}: measured on {p.served_by}")
            else:
                reports[t.name] = DeviceReport(t.name, p.left, p.already)
                name, version = t.runtime
                say(t.name, f"{p.left} to measure, {p.already} subnet(s) already measured"
                            + (f" {repeats} times" if repeats > 1 else "")
                            + f" with {name} {version or ''}".rstrip())
    except BaseException:
        os.close(campaign_lock)
        raise
    todo = {name: p.todo for name, p in plans.items()}
    needed = needed_jobs(jobs, plans)
    report = MeasureReport(cid, space.name, arch_ids, list(precisions), threads, reports)

    exports_done = threading.Event()
    export_cpus = _export_cpus(workers, threads) if any(d.kind == "local" for d in devs) else None
    queues: dict[str, queue.Queue] = {d.name: queue.Queue() for d in devs}
    # Not daemon threads: on Ctrl-C/SIGTERM each worker's session stops its benchmark on the device
    # and releases the device lock before the process exits (see the except clause below).
    threads_ = [
        threading.Thread(target=_device_worker, name=f"measure-{d.name}",
                         args=(home, d, settings, cid, queues[d.name], reports[d.name], stop,
                               exports_done if d.kind == "local" and not export_cpus else None, say,
                               dict(todo[d.name]), cancel))
        for d in devs
    ]
    for t in threads_:
        t.start()

    def deliver(job: tuple[str, str], model_dir: Path) -> None:
        for name, items in todo.items():
            if job in items:
                queues[name].put((job, model_dir))

    pool = None
    try:
        pending: list[tuple[tuple[str, str], Path]] = []
        for job in needed:
            final = cached_export(cache, source_sha, *job)
            if _valid(final) is not None:
                report.export_cached += 1
                deliver(job, final)
            else:
                pending.append((job, final))
        if pending:
            say("export", f"{len(pending)} to export ({report.export_cached} cached), "
                          f"{workers or 'no'} worker process(es)")
        if pending and workers > 0:
            if export_workers is not None:  # the caller's, kept across its calls
                pool = export_workers.get(source_ckpt, source_sha, workers, export_cpus)
            else:
                pool = _new_pool(source_ckpt, source_sha, _pool_size(workers, export_cpus, len(pending)),
                                 export_cpus)
        _run_exports(pending, pool, str(source_ckpt), source_sha, report, deliver, say, stop)
        exports_done.set()
        for q in queues.values():
            q.put(None)
        while any(t.is_alive() for t in threads_):
            for t in threads_:
                t.join(timeout=0.2)
    except BaseException:
        stop.set()
        exports_done.set()
        for q in queues.values():
            q.put(None)
        cancel.cancel()  # stop every device's benchmark and release its lock, all at once
        for t in threads_:
            t.join(timeout=30)
        raise
    finally:
        if pool is not None and export_workers is None:
            _shutdown(pool)
        os.close(campaign_lock)
        report.seconds = time.monotonic() - started
    return report


def _export_cpus(workers: int, threads: int = 1) -> set[int] | None:
    """The cores export workers may use while this host is also being benchmarked: all but the
    benchmark's ``threads``, so the two overlap (the benchmark starts with the first export instead
    of after the last) without sharing a core.  None (wait for the exports instead) when no core is
    left over — a 2-thread benchmark beside an export on 2 cores read 6-11 % slow, the larger subnets
    most (issue 29) — and for in-process exports.  ``threads`` 0 (the runtime's choice) takes all."""
    try:
        cpus = set(os.sched_getaffinity(0))
    except (OSError, AttributeError):
        return None
    if workers <= 0 or threads <= 0 or len(cpus) <= threads:
        return None
    return set(sorted(cpus)[:len(cpus) - threads])


def _campaign_lock(home: Path, cid: str) -> int:
    """Refuse a second run of the same campaign in this workspace while the first one runs: both would
    measure what neither has stored yet, and store every row twice.  (The device lock keeps different
    campaigns from overlapping on one device.)  Returns the descriptor to close at the end."""
    import fcntl

    locks = home / "locks"
    locks.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(locks / f"campaign-{cid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise MeasureError(f"campaign {cid} is already running in this workspace (another "
                           "`edgenas measure` with the same arguments); wait for it, or resume it "
                           "later") from None
    return fd


def _device_runtimes(home: Path, devs: Sequence[Device], settings: BenchSettings,
                     cancel: Cancel) -> dict[str, tuple[str, str | None] | str]:
    """Each device's runtime (name, version) now, asked in parallel before anything is exported: what
    a stored row must have been measured with to count as done.  A device that cannot answer maps to
    the one-line reason (it is reported aborted, and nothing is exported for it alone)."""

    def work(dev: Device, cancel: Cancel) -> DeviceResult:
        with DeviceBencher(home, dev, settings, cancel=cancel) as bencher:
            return DeviceResult(dev.name, "ok", extra={"runtime": bencher.runtime()})

    fan = fan_out(devs, work, parallel=min(16, max(1, len(devs))), max_fail_percent=100.0, cancel=cancel)
    return {r.device: r.extra["runtime"] if r.status == "ok" else (r.reason or "failed")
            for r in fan.results}


def _run_exports(pending: list[tuple[tuple[str, str], Path]], pool: Any, ckpt: str, source_sha: str,
                 report: MeasureReport, deliver: Callable[[tuple[str, str], Path], None],
                 say: Reporter, stop: threading.Event) -> None:
    """Export ``pending`` (in ``pool``'s worker processes, or here if None), delivering each as it
    lands."""
    if not pending:
        return
    total = len(pending)

    def landed(job: tuple[str, str], final: Path, error: BaseException | None) -> None:
        if error is None and _valid(final) is not None:
            report.exported += 1
            deliver(job, final)
            say("export", f"{job[0]} {job[1]}", done=report.exported, total=total)
        else:
            msg = str(error) if error else "export produced no valid model"
            report.export_failed[f"{job[0]}/{job[1]}"] = msg
            say("export", f"FAILED {job[0]} {job[1]}: {msg}", level="error")

    if pool is None:
        _worker_init(ckpt, source_sha, 0)
        for job, final in pending:
            if stop.is_set():
                break
            try:
                _export_job(job[0], job[1], str(final), LATENCY_CALIBRATION)
                landed(job, final, None)
            except Exception as exc:  # noqa: BLE001 - one bad export must not stop the campaign
                landed(job, final, exc)
        return
    from concurrent.futures import as_completed

    by_arch: dict[str, list[tuple[tuple[str, str], Path]]] = {}
    for job, final in pending:  # every precision of a subnet in one task: one graph, converted N times
        by_arch.setdefault(job[0], []).append((job, final))
    futures = {pool.submit(_export_arch_jobs, [(job[1], str(final)) for job, final in items], arch,
                           LATENCY_CALIBRATION): items for arch, items in by_arch.items()}
    for fut in as_completed(futures):
        items = futures[fut]
        errors = fut.result() if fut.exception() is None else [str(fut.exception())] * len(items)
        for (job, final), err in zip(items, errors):
            landed(job, final, None if err is None else MeasureError(err))


def _pool_size(workers: int, cpus: set[int] | None, jobs: int | None = None) -> int:
    """Export workers to start: at most ``workers``, one per core they may use, one per job known."""
    return min(workers, len(cpus) if cpus else workers, jobs if jobs is not None else workers)


def _new_pool(source_ckpt: Path, source_sha: str, n: int, cpus: set[int] | None) -> Any:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init,
                               initargs=(str(source_ckpt), source_sha, 10, cpus))


class ExportWorkers:
    """Export worker processes kept across the :func:`measure` calls of one job (the rounds of an
    adaptive campaign): each worker imports torch and TensorFlow and loads the supernet once — 10 to
    30 s on a 2-core host — instead of once per call.  Use as a context manager: leaving it stops the
    workers (also on Ctrl-C: no TensorFlow process outlives the job).  A broken pool (a worker
    killed, e.g. out of memory) is replaced on the next call."""

    def __init__(self) -> None:
        self._pool: Any = None
        self._key: tuple[str, str, int, frozenset[int]] | None = None
        self.starts = 0  # pools started: 1 for a whole campaign unless one broke

    def get(self, source_ckpt: Path, source_sha: str, workers: int, cpus: set[int] | None) -> Any:
        key = (str(source_ckpt), source_sha, workers, frozenset(cpus or ()))
        if self._pool is not None and (key != self._key or getattr(self._pool, "_broken", False)):
            self.close()
        if self._pool is None:
            self._pool = _new_pool(source_ckpt, source_sha, _pool_size(workers, cpus), cpus)
            self._key, self.starts = key, self.starts + 1
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            _shutdown(self._pool)
            self._pool = None

    def __enter__(self) -> ExportWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shutdown(pool: Any) -> None:
    """Stop the export workers now (an interrupted campaign must not leave TensorFlow processes)."""
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        if proc.is_alive():
            proc.terminate()
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        proc.join(timeout=5)


def _device_worker(home: Path, device: Device, settings: BenchSettings, campaign: str,
                   items: queue.Queue, rep: DeviceReport, stop: threading.Event,
                   wait_for: threading.Event | None, say: Reporter,
                   left: dict[tuple[str, str], int], cancel: Cancel) -> None:
    """Benchmark everything queued for one device, one at a time, storing each result at once; then
    the further passes of a repeated campaign (``left``: measurements still owed per job)."""
    if rep.todo == 0:
        return
    if wait_for is not None and not wait_for.is_set():
        say(device.name, "waiting for the exports to finish (this host is the device)")
        wait_for.wait()
    t0 = time.monotonic()
    try:
        with open_store(home) as store, DeviceBencher(home, device, settings,
                                                      cancel=cancel) as bencher:

            def one(job: tuple[str, str], model_dir: Path) -> None:
                arch, precision = job
                left[job] -= 1
                try:
                    rec = bencher.bench(store, ModelPackage.open(model_dir), campaign=campaign)
                except (DeviceBusyError, NoRuntimeError, Cancelled):
                    raise
                except RunnerError as exc:  # this model failed; the device is fine
                    rep.failed += 1
                    rep.errors.append(f"{arch} {precision}: {exc}")
                    say(device.name, f"FAILED {arch} {precision}: {exc}", level="error")
                    left[job] = 0  # a model that fails once fails again: no further passes
                    return
                rep.measured += 1
                eta = (time.monotonic() - t0) / rep.measured * (rep.todo - rep.measured - rep.failed)
                say(device.name,
                    f"{arch} {precision}: {rec['median_ms']:.3f} ms (CV {100 * (rec['cv'] or 0):.1f} %"
                    f"{', noisy' if rec['noisy'] else ''})  ETA {eta:.0f} s",
                    done=rep.measured + rep.failed, total=rep.todo)

            delivered: list[tuple[tuple[str, str], Path]] = []
            while not stop.is_set():
                item = items.get()
                if item is None:
                    break
                delivered.append(item)
                one(*item)
            while not stop.is_set() and any(left[job] > 0 for job, _ in delivered):
                for job, model_dir in delivered:  # one more pass over the whole list
                    if stop.is_set():
                        break
                    if left[job] > 0:
                        one(job, model_dir)
    except EdgeNASError as exc:
        rep.aborted = str(exc)
        say(device.name, f"ABORTED after {rep.measured} measurement(s): {exc}", level="error")
    except Exception as exc:  # noqa: BLE001 - a bug must still leave a reason in the report
        rep.aborted = f"internal error: {exc!r}"
        say(device.name, f"ABORTED after {rep.measured} measurement(s): {rep.aborted}",
            level="error")
    finally:
        rep.seconds = time.monotonic() - t0


# -------------------------------------------------------------------------------------- measurements

MEASUREMENT_FIELDS = measurements.FIELDS  # the columns of `measurements export`


def list_measurements(store: Store, device: str | None = None, precision: str | None = None,
                      threads: int | None = None, space: str | None = None,
                      campaign: str | None = None) -> list[dict[str, Any]]:
    """Stored measurements (without the raw runner JSON), oldest first, filtered as given."""
    return [m.to_dict() for m in measurements.find(store, device, precision, threads, space, campaign)]


__all__ = ["MeasureError", "MeasureReport", "list_measurements", "measure", "sample_archs"]
