"""``bench``: the benchmark protocol of LiteRT's ``benchmark_model``, so numbers compare with papers'.

Init (interpreter + allocate), one first inference reported alone, a warm-up of at least N runs *and* S
seconds, then timed runs of at least N runs *and* S seconds, capped by ``--max-secs`` from the start of
the warm-up; each run timed around ``invoke()`` alone.  numpy is imported only when a command runs, so
the host can import this module cheaply.  Python >= 3.8.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from typing import Any

from edgenas_device import facts
from edgenas_device.contract import EXIT_FILE, EXIT_INTERNAL, EXIT_USAGE, RunnerError, runner_facts
from edgenas_device.manifest import ManifestError, check_model_file
from edgenas_device.runtimes import (
    check_load_in_child,
    make_interpreter,
    op_summary,
    select_runtime,
    tensor_details,
)


def check_model(path: str, sha256: str | None = None, size: int | None = None) -> dict[str, Any]:
    """``{path, sha256, size_bytes}`` of a model file checked by the package rules (manifest.py): a
    regular file with the TFLite identifier (and the sha256/size a manifest records), refused with exit
    3 naming the file before a native loader sees it."""
    if not os.path.exists(path):
        raise RunnerError("model file not found: " + path, "model_unreadable", EXIT_FILE, path=path)
    try:
        checked = check_model_file(path, sha256, size)
    except ManifestError as exc:
        corrupt = exc.field in ("model.sha256", "model.bytes") or "TFLite" in exc.reason
        raise RunnerError(
            "model file " + path + ": " + exc.reason,
            "model_corrupt" if corrupt else "model_unreadable",
            EXIT_FILE,
            path=path,
        ) from None
    return {"path": os.path.abspath(path), "sha256": checked.sha256, "size_bytes": checked.size}


def random_input(detail: dict[str, Any], rng: Any) -> Any:
    """Seeded random data of the input's dtype and shape (benchmark timing does not depend on values)."""
    import numpy as np

    shape = tuple(int(s) for s in detail["shape"])
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        low, high = int(info.min), int(info.max) + 1
        if dtype.itemsize > 2:  # wide ints are usually indices or ids: keep them small and valid
            low, high = 0, 100
        return rng.integers(low, high, size=shape, dtype=dtype)
    if dtype.kind == "b":
        return rng.random(size=shape) < 0.5
    raise RunnerError("cannot fill an input of dtype " + str(dtype), "unsupported_model", EXIT_FILE)


def stats(times_ms: list[float]) -> dict[str, Any]:
    """Summary statistics as benchmark_model reports them (population std), plus p90 and CV."""
    import numpy as np

    if not times_ms:
        return {"count": 0}
    a = np.asarray(times_ms, dtype=np.float64)
    mean = float(a.mean())
    std = float(a.std())
    return {
        "count": int(a.size),
        "median_ms": float(np.median(a)),
        "p90_ms": float(np.percentile(a, 90)),
        "mean_ms": mean,
        "std_ms": std,
        "min_ms": float(a.min()),
        "max_ms": float(a.max()),
        "cv": std / mean if mean > 0 else 0.0,
    }


def timed_loop(
    invoke: Callable[[], None], min_runs: int, min_secs: float, max_secs: float
) -> list[float]:
    """Run until at least min_runs and at least min_secs, stopping once max_secs is spent (but never
    with zero runs when min_runs > 0): the loop condition of LiteRT's benchmark_model."""
    times: list[float] = []
    start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        if len(times) >= min_runs and elapsed >= min_secs:
            break
        if times and elapsed >= max_secs:
            break
        if min_runs <= 0 and min_secs <= 0:
            break
        t0 = time.perf_counter()
        invoke()
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def threads_arg(threads: int) -> int | None:
    """--threads 0 or -1 leaves the choice to the runtime; anything else is passed through."""
    return None if threads <= 0 else threads


def set_affinity(spec: str | None) -> list[int] | None:
    """Pin this process to the given CPUs (e.g. '2,3' or '0-3'), for steadier numbers on big.LITTLE."""
    if not spec:
        return None
    cpus: set[int] = set()
    try:
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            if int(hi or lo) - int(lo) > 4096:
                raise ValueError(spec)
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError as exc:
        raise RunnerError("bad --cpu-affinity " + repr(spec), "usage", EXIT_USAGE) from exc
    if not hasattr(os, "sched_setaffinity"):
        raise RunnerError("--cpu-affinity is not supported on this OS", "unsupported_option", EXIT_USAGE)
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as exc:
        raise RunnerError(
            "cannot pin to CPUs " + spec + ": " + str(exc), "unsupported_option", EXIT_USAGE
        ) from exc
    return sorted(os.sched_getaffinity(0))


def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Time a model with the benchmark_model protocol: init, first inference, warm-up, timed runs."""
    if args.runs < 1:
        raise RunnerError("--runs must be at least 1", "usage", EXIT_USAGE)
    if min(args.warmup_runs, args.warmup_secs, args.min_secs) < 0 or args.max_secs <= 0:
        raise RunnerError("run counts and durations must be >= 0 (--max-secs > 0)", "usage", EXIT_USAGE)
    model = check_model(args.model)
    rt = select_runtime(args.runtime)
    import numpy as np

    affinity = set_affinity(args.cpu_affinity)
    state_before = facts.device_state()
    rss_before = facts.rss_kib()
    # The model's peak memory is the peak RSS above rss_before: reset the high-water mark here, so
    # neither the imports before nor a launching process's peak (ru_maxrss survives exec) count.
    peak_reset = facts.reset_peak_rss()
    check_load_in_child(rt, args.model, threads_arg(args.threads), not args.no_xnnpack)
    t0 = time.perf_counter()
    interp, log_lines = make_interpreter(rt, args.model, threads_arg(args.threads), not args.no_xnnpack)
    init_ms = (time.perf_counter() - t0) * 1000.0
    rss_after_init = facts.rss_kib()

    rng = np.random.default_rng(args.seed)
    inputs = interp.get_input_details()
    for d in inputs:
        interp.set_tensor(d["index"], random_input(d, rng))

    def invoke() -> None:
        interp.invoke()

    try:
        t0 = time.perf_counter()
        invoke()
        first_ms = (time.perf_counter() - t0) * 1000.0
        warm_start = time.perf_counter()
        warmup = timed_loop(invoke, args.warmup_runs, args.warmup_secs, args.max_secs)
        left = max(0.0, args.max_secs - (time.perf_counter() - warm_start))
        times = timed_loop(invoke, args.runs, args.min_secs, max(left, 1e-9))
    except RuntimeError as exc:
        raise RunnerError("inference failed: " + str(exc), "inference_failed", EXIT_INTERNAL) from exc
    rss_after = facts.rss_kib()
    state_after = facts.device_state()
    for d in interp.get_output_details():
        interp.get_tensor(d["index"])  # touch outputs, as a real caller would

    return {
        "command": "bench",
        "runner": runner_facts(),
        "model": model,
        "runtime": rt.describe(),
        "threads": args.threads if args.threads > 0 else None,
        "threads_requested": args.threads,
        "xnnpack": not args.no_xnnpack,
        "op_resolver": "AUTO" if not args.no_xnnpack else "BUILTIN_WITHOUT_DEFAULT_DELEGATES",
        "delegation": op_summary(interp, log_lines, not args.no_xnnpack),
        "cpu_affinity": affinity if affinity is not None else facts.cores()["affinity"],
        "protocol": {
            "warmup_runs": args.warmup_runs,
            "warmup_secs": args.warmup_secs,
            "runs": args.runs,
            "min_secs": args.min_secs,
            "max_secs": args.max_secs,
            "seed": args.seed,
        },
        "init_ms": init_ms,
        "first_inference_ms": first_ms,
        "warmup": {"count": len(warmup), "mean_ms": float(np.mean(warmup)) if warmup else None},
        # A microsecond model runs 10^5 times a second: list at most --max-times-listed of them (the
        # first ones, in order), while the statistics use every run.
        "times_ms": times[: args.max_times_listed] if args.max_times_listed > 0 else times,
        "times_listed_all": args.max_times_listed <= 0 or len(times) <= args.max_times_listed,
        **stats(times),
        "inputs": tensor_details(inputs),
        "outputs": tensor_details(interp.get_output_details()),
        "memory": {
            "peak_rss_kib": facts.peak_rss_kib(),
            "rss_before_kib": rss_before,
            "rss_after_init_kib": rss_after_init,
            "rss_after_kib": rss_after,
            "hwm_kib": facts.hwm_kib(),
            "hwm_reset": peak_reset,
        },
        "state_before": state_before,
        "state_after": state_after,
        "python": platform.python_version(),
        "numpy": facts.numpy_version(),
        "machine": platform.machine(),
    }
