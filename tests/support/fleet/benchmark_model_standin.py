#!/usr/bin/env python3
"""A protocol-level stand-in for LiteRT's ``benchmark_model`` binary (tensorflow/lite/tools/benchmark).

The real binary cannot be built or downloaded on the test host (no network, no Bazel/NDK toolchain), so
the tests run this instead.  It is faithful where edgenas depends on the real tool, at the level of its
command line and its log, and it measures for real:

* **Flags** are parsed as ``tflite::Flags::Parse`` does: only ``--name=value`` is understood; numbers
  are read like ``istream >>`` (a valid prefix is enough, text without one is an error), booleans are
  exactly ``true``/``false``.  A bad value prints the usage on ``ERROR:`` and fails.  An unknown
  argument is *not* an error in the real tool: it logs ``WARN: Unconsumed cmdline flags: ...`` and goes
  on, and so does this stand-in (so ``--version``, which release builds lack, ends in the missing
  ``--graph`` error, as with the real binary).
* **Protocol** as ``BenchmarkModel::Run``: load the model and build the interpreter (init time),
  random inputs, then warm-up runs until ``--warmup_runs`` *and* ``--warmup_min_secs``, then timed
  runs until ``--num_runs`` *and* ``--min_secs``, never starting a run once ``--max_secs`` (per phase)
  is past.  Each run is one real ``invoke()`` of a real TFLite interpreter (ai-edge-litert, else
  tflite-runtime, else tf.lite) timed in integer microseconds.
* **Output**: the real ``TFLITE_LOG`` lines (``INFO:``/``WARN:`` on stdout, ``ERROR:`` on stderr, as
  ``tensorflow/lite/tools/logging.h``): the parameters, ``Loaded model``, ``Initialized session in
  X ms.``, ``Running benchmark for at least ...``, the ``Stat<int64_t>`` line (``count= first= curr=
  min= max= avg= std=``, ``(all same)``), ``Inference timings in us: ...``, the memory footprint lines
  (peak from a thread sampling the RSS every ``--memory_footprint_check_interval_ms``).
* **Errors**: a missing file gives ``ERROR: Could not open '...'.`` and ``ERROR: Failed to mmap model
  ...``; a corrupt one the runtime's own message and ``Failed to mmap model``; then ``ERROR:
  Benchmarking failed.`` and exit status 1.

Not imitated: delegates other than the runtime's default XNNPACK, op profiling output, input files.
Run it with an interpreter that has a TFLite runtime and numpy (the tests write a copy whose first line
names such an interpreter).
"""

from __future__ import annotations

import math
import os
import random
import re
import sys
import threading
import time

# (name, type, default, description for LogParams or None): BenchmarkModel, BenchmarkTfLiteModel and the
# delegate providers built into a default CPU build, in the real tool's order.
FLAGS = [
    ("num_runs", "int32", 50, "Min num runs"),
    ("min_secs", "float", 1.0, "Min runs duration (seconds)"),
    ("max_secs", "float", 150.0, "Max runs duration (seconds)"),
    ("run_delay", "float", -1.0, "Inter-run delay (seconds)"),
    ("run_frequency", "float", -1.0, "Number of prorated runs per second"),
    ("num_threads", "int32", -1, "Num threads"),
    ("use_caching", "bool", False, "Use caching"),
    ("benchmark_name", "string", "", "Benchmark name"),
    ("output_prefix", "string", "", "Output prefix"),
    ("warmup_runs", "int32", 1, "Min warmup runs"),
    ("warmup_min_secs", "float", 0.5, "Min warmup runs duration (seconds)"),
    ("verbose", "bool", False, None),
    ("dry_run", "bool", False, "Run w/o invoking kernels"),
    ("report_peak_memory_footprint", "bool", False, "Report the peak memory footprint"),
    ("memory_footprint_check_interval_ms", "int32", 50, "Memory footprint check interval (ms)"),
    ("gpu_invoke_loop_times", "int32", 1, None),
    ("graph", "string", "", "Graph"),
    ("input_layer", "string", "", "Input layers"),
    ("input_layer_shape", "string", "", "Input shapes"),
    ("input_layer_value_range", "string", "", "Input value ranges"),
    ("input_layer_value_files", "string", "", "Input value files"),
    ("allow_fp16", "bool", False, "Allow fp16"),
    ("require_full_delegation", "bool", False, "Require full delegation"),
    ("enable_op_profiling", "bool", False, "Enable op profiling"),
    ("max_profiling_buffer_entries", "int32", 1024, "Max profiling buffer entries"),
    ("profiling_output_csv_file", "string", "", "CSV File to export profiling data to"),
    ("print_preinvoke_state", "bool", False, "Print pre-invoke interpreter state"),
    ("print_postinvoke_state", "bool", False, "Print post-invoke interpreter state"),
    ("help", "bool", False, None),
    ("use_xnnpack", "bool", False, "Use xnnpack"),
]
_INT = re.compile(r"\s*[-+]?\d+")
_FLOAT = re.compile(r"\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class Failed(Exception):
    """kTfLiteError: the tool logs ``Benchmarking failed.`` and exits with EXIT_FAILURE."""


def log(severity: str, message: str) -> None:
    stream = sys.stderr if severity in ("ERROR", "FATAL") else sys.stdout
    stream.write(f"{severity}: {message}\n")
    stream.flush()


def fmt(value: float) -> str:
    """A double as ``std::ostream <<`` writes it by default (6 significant digits, %g)."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return format(value, ".6g")


def parse_value(kind: str, text: str):
    """``ParseFlag<T>``: ``stream >> value``; fails only when nothing could be read and text remains."""
    if kind == "string":
        return text
    if kind == "bool":
        if text not in ("true", "false"):
            raise ValueError(text)
        return text == "true"
    m = (_INT if kind == "int32" else _FLOAT).match(text)
    if not m:
        if text.strip() == "":
            return 0 if kind == "int32" else 0.0  # extraction hit EOF: accepted, value 0
        raise ValueError(text)
    return int(m.group()) if kind == "int32" else float(m.group())


def usage(argv0: str) -> str:
    lines = [f"usage: {argv0}", "Flags:"]
    for name, kind, default, _desc in FLAGS:
        shown = ("true" if default else "false") if kind == "bool" else (
            fmt(default) if kind == "float" else str(default))
        lines.append(f"\t--{name}={shown}\t{kind}\t")
    return "\n".join(lines)


def parse_flags(argv: list[str]) -> tuple[dict, set[str]]:
    params = {name: default for name, _kind, default, _desc in FLAGS}
    kinds = {name: kind for name, kind, _default, _desc in FLAGS}
    given: set[str] = set()
    ok = True
    unknown: list[str] = []
    args = argv[1:]
    for i, arg in enumerate(args):
        if arg == "--":
            unknown.extend(args[i:])
            break
        for name in kinds:
            prefix = f"--{name}="
            if arg.startswith(prefix):
                try:
                    params[name] = parse_value(kinds[name], arg[len(prefix):])
                    given.add(name)
                except ValueError:
                    ok = False
                break
        else:
            unknown.append(arg)
    if not ok or params["help"] or (unknown and unknown[0] == "--help"):
        log("ERROR", usage(argv[0]))
        raise Failed
    if unknown:
        log("WARN", "Unconsumed cmdline flags: " + " ".join(unknown))
    return params, given


def log_params(params: dict, given: set[str]) -> None:
    verbose = params["verbose"]
    log("INFO", f"Log parameter values verbosely: [{int(verbose)}]")
    for name, kind, _default, desc in FLAGS:
        if desc is None or not (verbose or name in given or name == "graph"):
            continue
        value = params[name]
        shown = str(int(value)) if kind == "bool" else fmt(value) if kind == "float" else str(value)
        log("INFO", f"{desc}: [{shown}]")


def rss_kb() -> int:
    """The process footprint as ``profiling::memory::GetMemoryUsage`` reads it on Linux (RSS, KB)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return 0


class PeakMonitor(threading.Thread):
    """``MemoryUsageMonitor``: samples the footprint every ``interval_ms`` on its own thread."""

    def __init__(self, interval_ms: int) -> None:
        super().__init__(daemon=True)
        self.interval = max(1, interval_ms) / 1000.0
        self.peak_kb = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak_kb = max(self.peak_kb, rss_kb())
            self.done.wait(self.interval)

    def stop(self) -> float:
        self.done.set()
        self.join()
        return self.peak_kb / 1024.0


class Stat:
    """``tensorflow::Stat<int64_t>``: integer samples, double average, integer population std."""

    def __init__(self) -> None:
        self.count = 0
        self.first = self.newest = self.sum = 0
        self.min = None
        self.max = None
        self.squared_sum = 0.0

    def update(self, v: int) -> None:
        if self.count == 0:
            self.first = v
        self.newest = v
        self.min = v if self.min is None else min(self.min, v)
        self.max = v if self.max is None else max(self.max, v)
        self.count += 1
        self.sum += v
        self.squared_sum += float(v) * v

    def avg(self) -> float:
        return self.sum / self.count if self.count else float("nan")

    def all_same(self) -> bool:
        return self.count == 0 or self.min == self.max

    def std(self) -> int:
        if self.all_same():
            return 0
        return int(math.sqrt(max(0.0, self.squared_sum / self.count - self.avg() ** 2)))

    def __str__(self) -> str:
        if self.count == 0:
            return "count=0"
        if self.all_same():
            return f"count={self.count} curr={self.newest}" + ("(all same)" if self.count > 1 else "")
        return (f"count={self.count} first={self.first} curr={self.newest} min={self.min} "
                f"max={self.max} avg={fmt(self.avg())} std={self.std()}")


def now_us() -> int:
    return time.monotonic_ns() // 1000


def load_runtime():
    """The Interpreter class and OpResolverType of the first TFLite runtime that imports."""
    try:
        from ai_edge_litert import interpreter as mod
    except ImportError:
        try:
            from tflite_runtime import interpreter as mod
        except ImportError:
            import tensorflow as tf

            mod = tf.lite
            return tf.lite.Interpreter, getattr(tf.lite.experimental, "OpResolverType", None)
    return mod.Interpreter, getattr(mod, "OpResolverType", None)


def random_inputs(interpreter, rng: random.Random) -> list:
    """``CreateRandomTensorData``: floats in [-0.5, 0.5), int8 in [-127, 127], uint8 in [0, 254],
    other ints in [0, 99], bools 0/1."""
    import numpy as np

    data = []
    for detail in interpreter.get_input_details():
        shape, dtype = [max(1, int(d)) for d in detail["shape"]], np.dtype(detail["dtype"])
        seed = rng.randrange(2**32)
        gen = np.random.default_rng(seed)
        if dtype.kind == "f":
            arr = gen.uniform(-0.5, 0.5, shape).astype(dtype)
        elif dtype == np.int8:
            arr = gen.integers(-127, 128, shape).astype(dtype)
        elif dtype == np.uint8:
            arr = gen.integers(0, 255, shape).astype(dtype)
        elif dtype == np.bool_:
            arr = gen.integers(0, 2, shape).astype(dtype)
        else:
            arr = gen.integers(0, 100, shape).astype(dtype)
        data.append((detail["index"], arr))
    return data


def run_phase(interpreter, inputs, min_runs: int, min_secs: float, max_secs: float, params: dict,
              dry_run: bool) -> Stat:
    """``BenchmarkModel::Run(min_num_times, min_secs, max_secs, ...)``."""
    log("INFO", f"Running benchmark for at least {min_runs} iterations and at least {fmt(min_secs)} "
                f"seconds but terminate if exceeding {fmt(max_secs)} seconds.")
    stats = Stat()
    start = now_us()
    min_finish, max_finish = start + int(min_secs * 1e6), start + int(max_secs * 1e6)
    delay, frequency = params["run_delay"], params["run_frequency"]
    gap = 1.0 / frequency if frequency > 0 else 0.0
    next_finish = start * 1e-6 + gap
    run, now = 0, start
    while (run < min_runs or now < min_finish) and now <= max_finish:
        for index, arr in inputs:  # ResetInputsAndOutputs: outside the timed region
            interpreter.set_tensor(index, arr)
        t0 = now_us()
        if not dry_run:
            interpreter.invoke()
        t1 = now_us()
        stats.update(t1 - t0)
        if frequency > 0:
            delay = next_finish - now_us() * 1e-6
            next_finish += gap
        if delay > 0:
            time.sleep(delay)
        now = now_us()
        run += 1
    log("INFO", f"{stats}\n")  # the real tool appends std::endl to this line: an empty line follows
    return stats


def benchmark(params: dict, given: set[str]) -> None:
    graph = params["graph"]
    if not graph:
        log("ERROR", "Please specify the name of your TF Lite input file with --graph")
        raise Failed
    log_params(params, given)
    monitor = None
    if params["report_peak_memory_footprint"]:
        monitor = PeakMonitor(params["memory_footprint_check_interval_ms"])
        monitor.start()
    try:
        model_size_mb = os.path.getsize(graph) / 1e6
    except OSError:
        model_size_mb = -1 / 1e6  # ifstream::tellg() of a file that does not open
    interpreter_cls, resolver = load_runtime()  # linked into the real binary: not part of init
    start_kb = rss_kb()
    t_init = now_us()
    # LoadModel: FlatBufferModel::BuildFromFile (mmap), then the interpreter with the op resolver.
    try:
        with open(graph, "rb"):
            pass
    except OSError:
        log("ERROR", f"Could not open '{graph}'.")
        log("ERROR", f"Failed to mmap model {graph}")
        raise Failed from None
    kwargs = {"model_path": graph}
    if params["num_threads"] != -1:
        kwargs["num_threads"] = params["num_threads"]
    if "use_xnnpack" in given and not params["use_xnnpack"]:
        if resolver is None:
            log("ERROR", "this runtime cannot run without its default delegates")
            raise Failed
        kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interpreter = interpreter_cls(**kwargs)
    except (ValueError, RuntimeError) as exc:
        message = str(exc).strip() or type(exc).__name__
        for line in message.splitlines():
            log("ERROR", line)
        if "op" in message.lower() and "find" in message.lower():
            log("ERROR", "Failed to initialize the interpreter")
        else:
            log("ERROR", f"Failed to mmap model {graph}")
        raise Failed from None
    log("INFO", f"Loaded model {graph}")
    log("INFO", "Going to apply 0 delegates one after another.")
    try:
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        log("ERROR", str(exc).strip())
        log("ERROR", "Failed to allocate tensors!")
        raise Failed from None
    init_us = now_us() - t_init
    init_kb = rss_kb() - start_kb
    if model_size_mb > 0:
        log("INFO", f"The input model file size (MB): {fmt(model_size_mb)}")
    else:
        log("WARN", "Failed to get the input model file size.")
    log("INFO", f"Initialized session in {fmt(init_us / 1e3)}ms.")

    inputs = random_inputs(interpreter, random.Random())
    warmup_runs, warmup_secs = params["warmup_runs"], params["warmup_min_secs"]
    runs, min_secs = params["num_runs"], params["min_secs"]
    if params["dry_run"]:
        warmup_runs, warmup_secs, runs, min_secs = 0, -1.0, 0, -1.0
    try:
        warmup = run_phase(interpreter, inputs, warmup_runs, warmup_secs, params["max_secs"], params,
                           params["dry_run"])
        timed = run_phase(interpreter, inputs, runs, min_secs, params["max_secs"], params,
                          params["dry_run"])
    except (ValueError, RuntimeError) as exc:
        log("ERROR", str(exc).strip())  # the interpreter's own report of the failed node
        raise Failed from None
    overall_kb = rss_kb() - start_kb
    peak_mb = monitor.stop() if monitor is not None else -1e-6

    log("INFO", f"Inference timings in us: Init: {init_us}, First inference: {warmup.first}, "
                f"Warmup (avg): {fmt(warmup.avg())}, Inference (avg): {fmt(timed.avg())}")
    log("INFO", "Note: as the benchmark tool itself affects memory footprint, the following is only "
                "APPROXIMATE to the actual memory footprint of the model at runtime. Take the "
                "information at your discretion.")
    log("INFO", f"Memory footprint delta from the start of the tool (MB): init={fmt(init_kb / 1024.0)} "
                f"overall={fmt(overall_kb / 1024.0)}")
    if peak_mb > 0:
        log("INFO", f"Overall peak memory footprint (MB) via periodic monitoring: {fmt(peak_mb)}")
        rss_mb = rss_kb() // 1024
        log("INFO", "Memory status at the end of exeution:")  # sic, as the real tool prints it
        log("INFO", f"- VmRSS              : {rss_mb} MB")


def main(argv: list[str]) -> int:
    log("INFO", "STARTING!")
    try:
        params, given = parse_flags(argv)
        benchmark(params, given)
    except Failed:
        log("ERROR", "Benchmarking failed.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
