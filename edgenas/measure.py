"""Measurement campaigns: sample subnets, export them, benchmark them on devices, store every result.

How a campaign runs, and why:

* **Sampling covers the space evenly** (:func:`sample_archs`): the smallest and largest arch always,
  an equal quota per resolution, and for the rest a per-sample "size level" that skews each depth,
  kernel and expand choice toward small or large while keeping a random part.  Uniform sampling would
  put almost every subnet near the middle of the latency range (a sum of many independent choices),
  and a predictor trained like that extrapolates badly to the small and large subnets a search ends
  up choosing.  The list depends only on (space, samples, seed), so a re-run asks for the same archs.
* **Exports run in worker processes** (spawn; each imports TensorFlow once and keeps the supernet
  loaded) and are cached under ``<home>/cache/exports/<source sha[:12]>/<arch>/<precision>/``: a
  campaign on another device, or a resumed one, exports nothing again.  These are *latency* exports:
  BN is re-calibrated on 256 images (only so that the export's parity check holds on a trained
  supernet) and int8 is calibrated on a few images, because latency does not depend on the weights;
  they are converted without a signature table (≈3× faster, same operators); no accuracy is
  measured and the manifest says so (``provenance.purpose``).  Never ship them.
* **Devices run in parallel, one benchmark at a time each** (:mod:`edgenas.bench` holds the locks).
  The host itself is benchmarked only once the exports are done, or the exporting workers would share
  its cores with the benchmark and inflate its numbers.
* **Every result is stored as it arrives**, so an interrupted campaign loses at most the benchmarks in
  flight.  Re-run with the same arguments, it skips every (device, space, arch, precision, threads)
  already in the database and measures nothing twice.
* **Repeats are spread over time** (``repeats=K``): every subnet is measured once in export order, then
  again in a second pass over the whole list, and so on, so that a device that drifts for a minute
  (another job on its core, thermal throttling) spoils one of an arch's K measurements rather than all
  of them; the latency predictor fits the median of an arch's stored measurements.  A resumed
  campaign tops each (device, arch, precision) up to K rows, never beyond.
"""

from __future__ import annotations

import hashlib
import os
import queue
import random
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from edgenas.bench import (
    BenchError,
    BenchSettings,
    DeviceBencher,
    DeviceBusyError,
    ModelDir,
    ModelFileError,
    load_model_dir,
)
from edgenas.device.cancel import Cancel, Cancelled
from edgenas.device.session import NoRuntimeError
from edgenas.errors import EdgeNASError
from edgenas.files import sha256_file
from edgenas.registry import Device, select_devices
from edgenas.space import NUM_STAGES, Arch, SearchSpace
from edgenas.store import Store, open_store

LATENCY_CALIBRATION = 32
LATENCY_BN_IMAGES = 256  # enough for stable BN statistics, so the parity check holds; see _export_job
EXPORT_PRECISIONS = ("fp32", "fp16", "int8", "dynamic")


class MeasureError(EdgeNASError):
    """A campaign cannot start (bad arguments, unreadable checkpoint) or could not finish."""


# ------------------------------------------------------------------------------------------- sampling


def sample_archs(space: SearchSpace, n: int, seed: int = 0) -> list[Arch]:
    """``n`` distinct archs covering depth, kernel, expand and resolution evenly (see module doc)."""
    if n < 1:
        raise MeasureError("--samples must be at least 1")
    rng = random.Random(f"edgenas-measure-{space.name}-{seed}")
    out: list[Arch] = []
    seen: set[str] = set()

    def add(arch: Arch) -> None:
        key = arch.to_string()
        if key not in seen and len(out) < n:
            seen.add(key)
            out.append(arch)

    add(space.smallest())
    add(space.largest())
    res = list(space.resolutions)
    # Equal quota per resolution, then a stratified size level in [0, 1] per sample.
    total = max(0, n - len(out))
    res_seq = [res[i % len(res)] for i in range(total)]
    rng.shuffle(res_seq)
    levels = [(i + rng.random()) / max(1, total) for i in range(total)]
    rng.shuffle(levels)
    attempts = 0
    i = 0
    while len(out) < n:
        r = res_seq[i % total] if total else rng.choice(res)
        level = levels[i % total] if total else rng.random()
        add(_leveled(space, rng, r, level))
        i += 1
        attempts += 1
        if attempts > 100 * n:  # a tiny space has fewer distinct archs than asked for
            break
    return out


def _leveled(space: SearchSpace, rng: random.Random, resolution: int, level: float) -> Arch:
    """One arch whose choices lean toward index ``level * (len - 1)``; half of them stay random."""

    def pick(choices: Sequence[int]) -> int:
        if rng.random() < 0.5:
            return rng.choice(choices)
        idx = level * (len(choices) - 1) + rng.uniform(-0.5, 0.5)
        return choices[min(len(choices) - 1, max(0, round(idx)))]

    blocks = []
    for _ in range(NUM_STAGES):
        depth = pick(space.depth_choices)
        blocks.append(tuple((pick(space.kernel_choices), pick(space.expand_choices))
                            for _ in range(depth)))
    return space.validate(Arch(resolution, tuple(blocks)))


# -------------------------------------------------------------------------------------------- exports


def export_cache_dir(home: Path) -> Path:
    return Path(home) / "cache" / "exports"


def cached_export(cache: Path, source_sha: str, arch: str, precision: str) -> Path:
    return Path(cache) / source_sha[:12] / arch / precision


def _valid(path: Path) -> ModelDir | None:
    try:
        return load_model_dir(path) if (path / "manifest.json").exists() else None
    except ModelFileError:
        return None


# Per worker process (spawned): the loaded supernet and calibration data.  A ProcessPoolExecutor
# initializer can only hand state to its tasks through the module, and each process has its own copy.
_WORKER: dict[str, Any] = {}


def _worker_init(ckpt: str, source_sha: str, nice: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if nice:
        try:
            os.nice(nice)  # the host may be benchmarking beside us
        except OSError:
            pass
    import torch

    torch.set_num_threads(1)
    from edgenas.supernets.checkpoint import load_supernet

    net = load_supernet(ckpt)
    data = None
    from edgenas.export.api import training_data_source

    source = training_data_source(net.meta)
    if source:
        try:
            from edgenas.data import load_data

            data = load_data(source, size=net.space.resolutions[-1])
        except EdgeNASError:
            data = None
    _WORKER.update(net=net, data=data, ckpt=ckpt, source_sha=source_sha)


def _export_job(arch_id: str, precision: str, final: str, calibration: int) -> str:
    """Export one arch into ``final`` (through a temp folder renamed into place) and return it."""
    import numpy as np

    from edgenas.export import export_model

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
    model = net.extract(arch).eval()
    if _WORKER["data"] is not None:
        # The supernet's BN statistics fit no single subnet; without recalibration activations
        # can grow large enough that float32 rounding alone breaks the parity check.
        from edgenas.evaluate import recalibrate_bn

        recalibrate_bn(model, _WORKER["data"].calibration_images(LATENCY_BN_IMAGES, arch.resolution))
    provenance = {"source": _WORKER["ckpt"], "source_sha256": _WORKER["source_sha"],
                  "source_format": "edgenas-supernet", "purpose": "latency-measurement",
                  "bn_recalibrated": _WORKER["data"] is not None}
    try:
        export_model(model, arch, net.space, list(net.labels), dict(net.normalization), precision,
                     tmp, images, None, provenance, signatures=False)
        try:
            os.rename(tmp, final_path)  # atomic; fails if another campaign got there first
        except OSError:
            if _valid(final_path) is None:
                shutil.rmtree(final_path, ignore_errors=True)
                os.rename(tmp, final_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# ------------------------------------------------------------------------------------------- progress


class _Progress:
    """One line per event per device on stderr, e.g. ``[ssh1] 4/12 r28-...: 1.23 ms``."""

    def __init__(self, enabled: bool, stream: IO[str] | None = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.lock = threading.Lock()

    def __call__(self, who: str, text: str) -> None:
        if self.enabled:
            with self.lock:
                self.stream.write(f"[{who}] {text}\n")
                self.stream.flush()


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


def campaign_id(source_sha: str, space: str, samples: int, seed: int, precisions: Sequence[str],
                threads: int, repeats: int = 1) -> str:
    key = f"{source_sha}|{space}|{samples}|{seed}|{','.join(precisions)}|{threads}"
    key += f"|x{repeats}" if repeats > 1 else ""  # ids of single-pass campaigns stay as they were
    return "c-" + hashlib.sha256(key.encode()).hexdigest()[:10]


def done_counts(store: Store, device: str, space: str, threads: int) -> dict[tuple[str, str], int]:
    """How many measurements this device already has per (arch, precision) at these threads: what a
    resume does not measure again."""
    rows = store.query("SELECT arch, precision, COUNT(*) AS n FROM measurements "
                       "WHERE device = ? AND space = ? AND threads = ? GROUP BY arch, precision",
                       (device, space, threads))
    return {(r["arch"], r["precision"]): int(r["n"]) for r in rows}


def measure(store: Store, home: Path, source_ckpt: Path | str, devices: Iterable[str], samples: int,
            precisions: Sequence[str] = ("fp32",), threads: int = 1, seed: int = 0, workers: int = 2,
            progress: bool = True, *, export_cache: Path | None = None,
            settings: BenchSettings | None = None, archs: Sequence[Arch | str] | None = None,
            stream: IO[str] | None = None, repeats: int = 1) -> MeasureReport:
    """Run (or resume) a campaign; see the module docstring.  ``devices`` are names or groups.

    ``workers`` export processes (0: export in this process).  ``archs`` replaces the sampled list.
    ``repeats``: measurements per (device, arch, precision), taken in successive passes.
    Returns a :class:`MeasureReport`; device failures are reported there, not raised, so one dead
    device does not stop the others.
    """
    from edgenas.supernets.checkpoint import load_checkpoint

    started = time.monotonic()
    home = Path(home)
    source_ckpt = Path(source_ckpt).resolve()
    precisions = [p.strip() for p in precisions if p.strip()]
    if repeats < 1:
        raise MeasureError("--repeats must be at least 1")
    bad = [p for p in precisions if p not in EXPORT_PRECISIONS]
    if bad or not precisions:
        raise MeasureError(f"unknown precision {', '.join(bad) or '(none)'} "
                           f"(one of {', '.join(EXPORT_PRECISIONS)})")
    devs = select_devices(store, list(devices))
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
    say = _Progress(progress, stream)

    jobs = [(a, p) for a in arch_ids for p in precisions]
    reports: dict[str, DeviceReport] = {}
    todo: dict[str, dict[tuple[str, str], int]] = {}  # device -> job -> measurements still to take
    for d in devs:
        done = done_counts(store, d.name, space.name, threads)
        todo[d.name] = {j: repeats - done.get(j, 0) for j in jobs if done.get(j, 0) < repeats}
        left = sum(todo[d.name].values())
        reports[d.name] = DeviceReport(d.name, left, len(jobs) - len(todo[d.name]))
        say(d.name, f"{left} to measure, {len(jobs) - len(todo[d.name])} subnet(s) already measured"
                    + (f" {repeats} times" if repeats > 1 else ""))
    needed = [j for j in jobs if any(j in todo[d] for d in todo)]
    report = MeasureReport(cid, space.name, arch_ids, list(precisions), threads, reports)

    stop = threading.Event()
    cancel = Cancel()
    exports_done = threading.Event()
    queues: dict[str, queue.Queue] = {d.name: queue.Queue() for d in devs}
    # Not daemon threads: on Ctrl-C/SIGTERM each worker's session stops its benchmark on the device
    # and releases the device lock before the process exits (see the except clause below).
    threads_ = [
        threading.Thread(target=_device_worker, name=f"measure-{d.name}",
                         args=(home, d, settings, cid, queues[d.name], reports[d.name], stop,
                               exports_done if d.kind == "local" else None, say,
                               dict(todo[d.name]), cancel))
        for d in devs
    ]
    campaign_lock = _campaign_lock(home, cid)
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
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            pool = ProcessPoolExecutor(max_workers=min(workers, len(pending)),
                                       mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_worker_init,
                                       initargs=(str(source_ckpt), source_sha, 10))
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
        if pool is not None:
            _shutdown(pool)
        os.close(campaign_lock)
        report.seconds = time.monotonic() - started
    return report


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


def _run_exports(pending: list[tuple[tuple[str, str], Path]], pool: Any, ckpt: str, source_sha: str,
                 report: MeasureReport, deliver: Callable[[tuple[str, str], Path], None],
                 say: _Progress, stop: threading.Event) -> None:
    """Export ``pending`` (in ``pool``'s worker processes, or here if None), delivering each as it
    lands."""
    if not pending:
        return
    total = len(pending)

    def landed(job: tuple[str, str], final: Path, error: BaseException | None) -> None:
        if error is None and _valid(final) is not None:
            report.exported += 1
            deliver(job, final)
            say("export", f"{report.exported}/{total} {job[0]} {job[1]}")
        else:
            msg = str(error) if error else "export produced no valid model"
            report.export_failed[f"{job[0]}/{job[1]}"] = msg
            say("export", f"FAILED {job[0]} {job[1]}: {msg}")

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

    futures = {pool.submit(_export_job, job[0], job[1], str(final), LATENCY_CALIBRATION): (job, final)
               for job, final in pending}
    for fut in as_completed(futures):
        job, final = futures[fut]
        landed(job, final, fut.exception())


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
                   wait_for: threading.Event | None, say: _Progress,
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
                    rec = bencher.bench(store, load_model_dir(model_dir), campaign=campaign)
                except (DeviceBusyError, NoRuntimeError, Cancelled):
                    raise
                except BenchError as exc:  # this model failed; the device is fine
                    rep.failed += 1
                    rep.errors.append(f"{arch} {precision}: {exc}")
                    say(device.name, f"FAILED {arch} {precision}: {exc}")
                    left[job] = 0  # a model that fails once fails again: no further passes
                    return
                rep.measured += 1
                eta = (time.monotonic() - t0) / rep.measured * (rep.todo - rep.measured - rep.failed)
                say(device.name,
                    f"{rep.measured + rep.failed}/{rep.todo} {arch} {precision}: "
                    f"{rec['median_ms']:.3f} ms (CV {100 * (rec['cv'] or 0):.1f} %"
                    f"{', noisy' if rec['noisy'] else ''})  ETA {eta:.0f} s")

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
        say(device.name, f"ABORTED after {rep.measured} measurement(s): {exc}")
    except Exception as exc:  # noqa: BLE001 - a bug must still leave a reason in the report
        rep.aborted = f"internal error: {exc!r}"
        say(device.name, f"ABORTED after {rep.measured} measurement(s): {rep.aborted}")
    finally:
        rep.seconds = time.monotonic() - t0


# -------------------------------------------------------------------------------------- measurements

MEASUREMENT_FIELDS = (
    "id", "device", "arch", "space", "precision", "threads", "runtime", "runtime_version",
    "model_sha256", "source_sha256", "campaign", "median_ms", "p90_ms", "mean_ms", "std_ms", "min_ms",
    "cv", "init_ms", "first_ms", "runs", "peak_rss_kib", "noisy", "governor", "freq_mhz_before",
    "freq_mhz_after", "temp_c_before", "temp_c_after", "created_at",
)


def list_measurements(store: Store, device: str | None = None, precision: str | None = None,
                      threads: int | None = None, space: str | None = None,
                      campaign: str | None = None) -> list[dict[str, Any]]:
    """Stored measurements (without the raw runner JSON), oldest first, filtered as given."""
    where, params = [], []
    for column, value in (("device", device), ("precision", precision), ("threads", threads),
                          ("space", space), ("campaign", campaign)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    sql = f"SELECT {', '.join(MEASUREMENT_FIELDS)} FROM measurements"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return [dict(r) for r in store.query(sql + " ORDER BY id", tuple(params))]


__all__ = ["MeasureError", "MeasureReport", "list_measurements", "measure", "sample_archs"]
