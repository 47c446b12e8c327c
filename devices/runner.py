#!/usr/bin/env python3
"""edgenas on-device runner: benchmark and run a TFLite model with whatever runtime the device has.

This file is copied alone onto a device (a Pi, a phone with Termux, the host itself), so it depends on
nothing but the standard library, numpy and one TFLite runtime, runs on Python 3.8+, and never imports
edgenas. Three commands, each printing exactly one JSON object on stdout (human messages go to stderr):

    runner.py info
    runner.py bench MODEL [--threads N] [--warmup-runs N] [--warmup-secs S] [--runs N] [--min-secs S]
                          [--max-secs S] [--no-xnnpack] [--runtime auto|litert|tflite_runtime|tensorflow]
    runner.py predict MODEL INPUT.npy|IMAGE [--top-k K] [--manifest PATH]

Errors print {"error": "...", "kind": "..."} on stdout and exit non-zero: 2 usage, 3 a file given is
unreadable or corrupt (model, manifest, input), 4 no usable runtime (or numpy missing), 5 an optional
dependency is missing (Pillow for images), 1 anything else. See docs/runner.md.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

RUNNER_VERSION = "1.0.0"

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_FILE = 3
EXIT_NO_RUNTIME = 4
EXIT_DEPENDENCY = 5

# Preference order for --runtime auto (design section 6): LiteRT is the maintained successor, then the
# old tflite-runtime (the only wheel for 32-bit Pi OS), then full TensorFlow as the heavy last resort.
RUNTIME_ORDER = ("litert", "tflite_runtime", "tensorflow")
RUNTIME_MODULES = {
    "litert": "ai_edge_litert.interpreter",
    "tflite_runtime": "tflite_runtime.interpreter",
    "tensorflow": "tensorflow",
}
RUNTIME_DISTRIBUTIONS = {
    "litert": ("ai-edge-litert", "ai-edge-litert-nightly"),
    "tflite_runtime": ("tflite-runtime", "tflite-runtime-nightly"),
    "tensorflow": (
        "tensorflow",
        "tensorflow-cpu",
        "tensorflow-aarch64",
        "tensorflow-macos",
        "tf-nightly",
    ),
}
RUNTIME_PIP = {
    "litert": "pip install ai-edge-litert",
    "tflite_runtime": 'pip install tflite-runtime "numpy<2"',
    "tensorflow": "pip install tensorflow",
}
# Testing and diagnosis: pretend these runtimes are absent ("all" or a comma list of runtime names).
HIDE_ENV = "EDGENAS_RUNNER_HIDE_RUNTIMES"

# The JSON goes to a private duplicate of the original stdout; fd 1 itself is pointed at stderr so that
# native libraries printing to stdout cannot corrupt the one JSON object a caller parses.
_JSON_OUT: IO[str] | None = None


class RunnerError(Exception):
    """An expected failure with a machine-readable kind and the exit code the contract assigns it."""

    def __init__(self, message: str, kind: str, code: int, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.code = code
        self.extra = extra


def log(msg: str) -> None:
    """Human messages go to stderr only, so stdout stays one parseable JSON object."""
    sys.stderr.write("runner: " + msg + "\n")
    sys.stderr.flush()


def _protect_stdout() -> None:
    """Keep a private handle on stdout for the JSON and route fd 1 to stderr for everything else."""
    global _JSON_OUT
    if _JSON_OUT is not None:
        return
    try:
        sys.stdout.flush()
        _JSON_OUT = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
        sys.stdout = sys.stderr
    except (OSError, ValueError, AttributeError):
        _JSON_OUT = sys.stdout


def _jsonable(obj: Any) -> Any:
    """numpy scalars/arrays and types appear in interpreter details; make them plain JSON."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, type):
        return getattr(obj, "__name__", str(obj))
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def emit(obj: dict[str, Any], pretty: bool = False) -> None:
    """Write the single JSON result object (NaN/inf are not valid JSON, so they become null)."""
    out = _JSON_OUT if _JSON_OUT is not None else sys.stdout
    text = json.dumps(_finite(obj), default=_jsonable, indent=2 if pretty else None, sort_keys=False)
    out.write(text + "\n")
    out.flush()


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------------------
# System facts: what the device is and what state it is in, read from /proc and /sys where readable.
# ----------------------------------------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _read_int(path: str) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def sha256_file(path: str) -> str:
    """Hash in chunks: models can be larger than a Pi likes to hold twice in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cpu_model() -> dict[str, Any]:
    """CPU and board: x86 has 'model name', ARM boards 'Hardware'/'Model' or a device-tree model."""
    info: dict[str, Any] = {"model": None, "board": None, "cpuinfo_mhz": None}
    text = _read("/proc/cpuinfo") or ""
    mhz: list[float] = []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key in ("model name", "cpu model", "processor") and info["model"] is None and value:
            if key == "processor" and value.isdigit():
                continue
            info["model"] = value
        elif key in ("hardware", "model") and value and not value.isdigit() and info["board"] is None:
            info["board"] = value
        elif key == "cpu mhz":
            try:
                mhz.append(float(value))
            except ValueError:
                pass
    dt_model = _read("/proc/device-tree/model") or _read("/sys/firmware/devicetree/base/model")
    if dt_model:
        info["board"] = dt_model.rstrip("\x00")
    if info["model"] is None:
        info["model"] = platform.processor() or None
    if mhz:
        info["cpuinfo_mhz"] = mhz
    return info


def cores() -> dict[str, Any]:
    """Logical CPUs in the machine and those this process may run on (taskset/cgroups narrow it)."""
    affinity = None
    if hasattr(os, "sched_getaffinity"):
        try:
            affinity = sorted(os.sched_getaffinity(0))
        except OSError:
            affinity = None
    return {
        "count": os.cpu_count(),
        "affinity": affinity,
        "available": len(affinity) if affinity is not None else os.cpu_count(),
    }


def memory() -> dict[str, Any]:
    """Total/available memory (KiB) and a cgroup limit, which on containers is the real ceiling."""
    out: dict[str, Any] = {"total_kib": None, "available_kib": None, "cgroup_limit_bytes": None}
    for line in (_read("/proc/meminfo") or "").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "MemTotal:":
            out["total_kib"] = int(parts[1])
        elif len(parts) >= 2 and parts[0] == "MemAvailable:":
            out["available_kib"] = int(parts[1])
    limit = _read("/sys/fs/cgroup/memory.max") or _read("/sys/fs/cgroup/memory/memory.limit_in_bytes")
    if limit and limit.isdigit() and int(limit) < 2**60:  # cgroup v1 writes "no limit" as ~2**63
        out["cgroup_limit_bytes"] = int(limit)
    if out["total_kib"] is None and hasattr(os, "sysconf"):
        try:
            out["total_kib"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024
        except (ValueError, OSError):
            pass
    return out


def _cpu_index(path: str) -> int:
    m = re.search(r"cpu(\d+)", path)
    return int(m.group(1)) if m else -1


def cpufreq() -> list[dict[str, Any]]:
    """Governor and frequencies per CPU: a 'powersave' or throttled core explains a slow benchmark."""
    rows = []
    for d in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq"), key=_cpu_index):
        rows.append(
            {
                "cpu": _cpu_index(d),
                "governor": _read(d + "/scaling_governor"),
                "cur_khz": _read_int(d + "/scaling_cur_freq"),
                "min_khz": _read_int(d + "/scaling_min_freq"),
                "max_khz": _read_int(d + "/scaling_max_freq"),
            }
        )
    return rows


def thermal() -> list[dict[str, Any]]:
    """Temperatures of the thermal zones in degrees C (the kernel reports millidegrees)."""
    rows = []
    for d in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        milli = _read_int(d + "/temp")
        rows.append(
            {
                "zone": os.path.basename(d),
                "type": _read(d + "/type"),
                "temp_c": milli / 1000.0 if milli is not None else None,
            }
        )
    return rows


def throttled() -> str | None:
    """Raspberry Pi firmware throttle flags (under-voltage, capped, throttled) where vcgencmd exists."""
    exe = shutil.which("vcgencmd")
    if not exe:
        return None
    try:
        res = subprocess.run([exe, "get_throttled"], capture_output=True, text=True, timeout=3)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip().partition("=")[2] or None


def device_state() -> dict[str, Any]:
    """The snapshot taken before and after a benchmark, so a heating or down-clocked run shows."""
    return {"cpufreq": cpufreq(), "thermal": thermal(), "throttled": throttled(), "time": time.time()}


def rss_kib() -> int | None:
    """Current resident set size (KiB) from /proc; None off Linux."""
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("VmRSS:"):
            try:
                return int(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


def peak_rss_kib() -> int | None:
    """Peak RSS of this process; ru_maxrss is KiB on Linux but bytes on macOS."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


def runner_facts() -> dict[str, Any]:
    """Which runner this is: edgenas compares the sha256 before pushing a new copy."""
    path = os.path.abspath(__file__)
    try:
        digest: str | None = sha256_file(path)
    except OSError:
        digest = None
    return {"version": RUNNER_VERSION, "sha256": digest, "path": path}


def numpy_version() -> str | None:
    try:
        import numpy
    except ImportError:
        return None
    return str(numpy.__version__)


# ----------------------------------------------------------------------------------------------------
# Runtimes
# ----------------------------------------------------------------------------------------------------


class Runtime:
    """One imported TFLite runtime: its Interpreter class and, when it has one, its OpResolverType."""

    def __init__(self, name: str, module: Any, interpreter_cls: Any, resolver_type: Any, version: str):
        self.name = name
        self.module = module
        self.interpreter_cls = interpreter_cls
        self.resolver_type = resolver_type
        self.version = version

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "module": RUNTIME_MODULES[self.name], "version": self.version}


def _hidden_runtimes() -> set[str]:
    raw = os.environ.get(HIDE_ENV, "")
    names = {p.strip() for p in raw.split(",") if p.strip()}
    return set(RUNTIME_ORDER) if "all" in names else names


def _numpy_major() -> int | None:
    v = numpy_version()
    if v is None:
        return None
    try:
        return int(v.split(".")[0])
    except ValueError:
        return None


def install_hint() -> str:
    """What to pip install on this device: LiteRT wheels exist for Python 3.10+ on 64-bit Linux/macOS."""
    machine = platform.machine().lower()
    is64 = machine in ("x86_64", "amd64", "aarch64", "arm64")
    if sys.version_info >= (3, 10) and is64:
        return "pip install ai-edge-litert"
    hint = 'pip install tflite-runtime "numpy<2"'
    if sys.version_info >= (3, 12):
        hint += " (tflite-runtime has no wheels for Python >= 3.12: use Python <= 3.11 on this device)"
    return hint


def _import_runtime(name: str) -> Runtime:
    """Import one runtime in this process; raises whatever the import raises."""
    if name == "litert":
        import ai_edge_litert  # type: ignore[import-not-found]
        from ai_edge_litert import interpreter as mod  # type: ignore[import-not-found]

        version = getattr(ai_edge_litert, "__version__", None) or _dist_version(name) or "unknown"
        return Runtime(name, mod, mod.Interpreter, getattr(mod, "OpResolverType", None), version)
    if name == "tflite_runtime":
        import tflite_runtime  # type: ignore[import-not-found]
        from tflite_runtime import interpreter as mod  # type: ignore[import-not-found]

        version = getattr(tflite_runtime, "__version__", None) or _dist_version(name) or "unknown"
        return Runtime(name, mod, mod.Interpreter, getattr(mod, "OpResolverType", None), version)
    if name == "tensorflow":
        import tensorflow as tf  # type: ignore[import-not-found]

        resolver = getattr(getattr(tf.lite, "experimental", None), "OpResolverType", None)
        return Runtime(name, tf, tf.lite.Interpreter, resolver, str(tf.__version__))
    raise ValueError("unknown runtime " + name)


def _dist_version(name: str) -> str | None:
    try:
        from importlib import metadata
    except ImportError:  # Python < 3.8
        return None
    for dist in RUNTIME_DISTRIBUTIONS[name]:
        try:
            return metadata.version(dist)
        except Exception:
            continue
    return None


def _installed(name: str) -> bool:
    """Whether the top-level package exists, without importing it (TensorFlow takes seconds)."""
    import importlib.util

    top = RUNTIME_MODULES[name].split(".")[0]
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def _skip_reason(name: str) -> str | None:
    """Why a runtime must not be tried in this process, or None when it may be."""
    if name in _hidden_runtimes():
        return "hidden by " + HIDE_ENV
    if name == "tflite_runtime":
        if "tensorflow" in sys.modules:
            return "TensorFlow is already imported in this process; tflite_runtime must not join it"
        major = _numpy_major()
        if major is not None and major >= 2:
            return (
                "tflite-runtime cannot run models beside numpy "
                + str(numpy_version())
                + ' (needs "numpy<2")'
            )
    return None


def select_runtime(requested: str) -> Runtime:
    """Import the first usable runtime in preference order, or the one forced with --runtime."""
    if numpy_version() is None:
        raise RunnerError(
            "numpy is not importable by " + sys.executable + "; install it: " + install_hint(),
            "numpy_missing",
            EXIT_NO_RUNTIME,
            hint=install_hint(),
        )
    order = RUNTIME_ORDER if requested == "auto" else (requested,)
    attempts: dict[str, str] = {}
    for name in order:
        reason = _skip_reason(name)
        if reason is not None:
            attempts[name] = reason
            continue
        try:
            return _import_runtime(name)
        except Exception as exc:  # a broken wheel raises more than ImportError
            attempts[name] = (
                type(exc).__name__ + ": " + str(exc).splitlines()[0] if str(exc) else repr(exc)
            )
    if requested == "auto":
        hint = install_hint()
        msg = "no TFLite runtime is usable by " + sys.executable + "; install one: " + hint
    else:
        hint = RUNTIME_PIP[requested]
        msg = "runtime " + requested + " is not usable by " + sys.executable + " (" + attempts[requested]
        msg += "); install it: " + hint
    raise RunnerError(msg, "no_runtime", EXIT_NO_RUNTIME, hint=hint, attempts=attempts)


_PROBE_CODE = r"""
import json, sys
name, module = sys.argv[1], sys.argv[2]
try:
    if name == "litert":
        import ai_edge_litert as m
        from ai_edge_litert import interpreter
    elif name == "tflite_runtime":
        import tflite_runtime as m
        from tflite_runtime import interpreter
    else:
        import tensorflow as m
        m.lite.Interpreter
    print(json.dumps({"importable": True, "version": str(getattr(m, "__version__", None))}))
except Exception as exc:
    print(json.dumps({"importable": False, "error": type(exc).__name__ + ": " + str(exc)[:300]}))
"""


def probe_runtimes(chosen: Runtime | None, import_probe: bool, timeout: float) -> dict[str, Any]:
    """Report every runtime; importability is checked in child processes so that none of them (above all
    TensorFlow next to tflite_runtime) shares this process, and in parallel because TF takes seconds."""
    result: dict[str, Any] = {}
    procs: dict[str, subprocess.Popen] = {}
    hidden = _hidden_runtimes()
    for name in RUNTIME_ORDER:
        entry: dict[str, Any] = {
            "module": RUNTIME_MODULES[name],
            "installed": _installed(name) and name not in hidden,
            "distribution_version": _dist_version(name),
            "importable": None,
            "version": None,
        }
        if name in hidden:
            entry["importable"] = False
            entry["error"] = "hidden by " + HIDE_ENV
        elif chosen is not None and chosen.name == name:
            entry["importable"] = True
            entry["version"] = chosen.version
        elif import_probe and entry["installed"]:
            cmd = [sys.executable, "-c", _PROBE_CODE, name, RUNTIME_MODULES[name]]
            procs[name] = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                text=True,
            )
        elif entry["installed"] is False:
            entry["importable"] = False
        result[name] = entry
    deadline = time.monotonic() + timeout
    for name, proc in procs.items():
        try:
            out, _ = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            result[name].update(json.loads(lines[-1]) if lines else {"importable": False})
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            result[name]["error"] = f"import probe timed out after {timeout:.0f} s"
        except ValueError:
            result[name]["importable"] = False
    return result


# ----------------------------------------------------------------------------------------------------
# Models and interpreters
# ----------------------------------------------------------------------------------------------------


def check_model_file(path: str) -> dict[str, Any]:
    """Refuse what is plainly not a TFLite flatbuffer before a native loader sees it, naming the file."""
    if not os.path.exists(path):
        raise RunnerError("model file not found: " + path, "model_unreadable", EXIT_FILE, path=path)
    if not os.path.isfile(path):
        raise RunnerError("model path is not a file: " + path, "model_unreadable", EXIT_FILE, path=path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
        size = os.path.getsize(path)
        digest = sha256_file(path)
    except OSError as exc:
        raise RunnerError(
            "cannot read model file " + path + ": " + str(exc), "model_unreadable", EXIT_FILE, path=path
        ) from exc
    # Every TFLite flatbuffer carries the file identifier "TFL3" at bytes 4..8.
    if size < 8 or head[4:8] != b"TFL3":
        raise RunnerError(
            "model file "
            + path
            + " is not a TFLite flatbuffer (no TFL3 identifier; "
            + str(size)
            + " bytes): corrupt, truncated or another format",
            "model_corrupt",
            EXIT_FILE,
            path=path,
            size_bytes=size,
        )
    return {"path": os.path.abspath(path), "sha256": digest, "size_bytes": size}


@contextlib.contextmanager
def capture_native_stderr(sink: list[str]) -> Iterator[None]:
    """Collect what native code writes to fd 2 (TFLite logs delegate creation there), then replay it, so
    the benchmark can say whether XNNPACK was actually applied instead of guessing."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        tmp = tempfile.TemporaryFile(mode="w+b")
        os.dup2(tmp.fileno(), 2)
    except (OSError, AttributeError, ValueError):
        yield
        return
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, 2)
        os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode("utf-8", "replace")
        tmp.close()
        if text:
            sys.stderr.write(text)
            sys.stderr.flush()
        sink.extend(text.splitlines())


# Runtimes without a flatbuffer verifier on load: a truncated or corrupt file crashes them
# (tflite-runtime 2.14 segfaults), so the model is first loaded in a child whose crash costs nothing.
UNVERIFIED_RUNTIMES = ("tflite_runtime",)
LOAD_CHECK = "_load-check"


def check_load_in_child(rt: Runtime, model_path: str, threads: int | None, xnnpack: bool) -> None:
    """Load the model in a child first when the runtime would crash on a corrupt file; turn a crash
    into exit 3 naming the file, instead of a dead runner with no JSON."""
    if rt.name not in UNVERIFIED_RUNTIMES:
        return
    cmd = [sys.executable] + (["-I"] if sys.flags.isolated else [])
    cmd += [
        os.path.abspath(__file__),
        LOAD_CHECK,
        model_path,
        rt.name,
        str(threads or 0),
        str(int(xnnpack)),
    ]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        log("could not check the model in a child process (" + str(exc) + "); loading it directly")
        return
    if res.returncode == 0:
        return
    if res.returncode < 0 or res.returncode >= 128:
        sig = -res.returncode if res.returncode < 0 else res.returncode - 128
        raise RunnerError(
            "runtime "
            + rt.name
            + " crashed (signal "
            + str(sig)
            + ") loading model "
            + model_path
            + ": the file is corrupt or truncated",
            "model_corrupt",
            EXIT_FILE,
            path=model_path,
        )
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    try:
        err = json.loads(lines[-1])
    except (IndexError, ValueError):
        err = {"error": "model check failed: " + res.stderr.strip()[-500:], "kind": "model_unloadable"}
    code = res.returncode if res.returncode in (EXIT_USAGE, EXIT_FILE, EXIT_NO_RUNTIME) else EXIT_FILE
    raise RunnerError(str(err.get("error")), str(err.get("kind")), code, path=model_path)


def _load_check_main(argv: list[str]) -> int:
    """The child side of check_load_in_child: load, allocate, report nothing but the exit code."""
    _protect_stdout()
    try:
        model_path, name, threads, xnnpack = argv
        rt = select_runtime(name)
        make_interpreter(rt, model_path, int(threads) or None, xnnpack == "1")
    except RunnerError as exc:
        emit({"error": exc.message, "kind": exc.kind})
        return exc.code
    return EXIT_OK


def make_interpreter(
    rt: Runtime, model_path: str, threads: int | None, xnnpack: bool
) -> tuple[Any, list[str]]:
    """Create and allocate an interpreter; returns it with the native log lines emitted meanwhile."""
    kwargs: dict[str, Any] = {"model_path": model_path}
    if threads is not None:
        kwargs["num_threads"] = threads
    if not xnnpack:
        member = getattr(rt.resolver_type, "BUILTIN_WITHOUT_DEFAULT_DELEGATES", None)
        if member is None:
            raise RunnerError(
                "--no-xnnpack is not supported by runtime "
                + rt.name
                + " "
                + rt.version
                + " (it has no OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)",
                "unsupported_option",
                EXIT_USAGE,
            )
        kwargs["experimental_op_resolver_type"] = member
    lines: list[str] = []
    try:
        with capture_native_stderr(lines):
            interp = rt.interpreter_cls(**kwargs)
            _resize_dynamic_inputs(interp)
            interp.allocate_tensors()
    except TypeError as exc:
        raise RunnerError(
            "runtime " + rt.name + " " + rt.version + " rejected the interpreter options: " + str(exc),
            "unsupported_option",
            EXIT_USAGE,
        ) from exc
    except (ValueError, RuntimeError) as exc:
        raise RunnerError(
            "runtime " + rt.name + " cannot load model " + model_path + ": " + str(exc).strip(),
            "model_unloadable",
            EXIT_FILE,
            path=model_path,
        ) from exc
    return interp, lines


def _resize_dynamic_inputs(interp: Any) -> None:
    """Dynamic dimensions (-1 in shape_signature) get 1, as benchmark_model does without input shapes."""
    for d in interp.get_input_details():
        sig = d.get("shape_signature")
        if sig is not None and any(int(s) < 0 for s in sig):
            interp.resize_tensor_input(d["index"], [1 if int(s) < 0 else int(s) for s in sig])


def tensor_details(details: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The parts of TFLite's tensor details a caller needs: name, shape, dtype and quantization."""
    out = []
    for d in details:
        scale, zero_point = d.get("quantization", (0.0, 0))
        qp = d.get("quantization_parameters") or {}
        scales = qp.get("scales")
        out.append(
            {
                "name": d.get("name"),
                "index": int(d["index"]),
                "shape": [int(s) for s in d["shape"]],
                "dtype": getattr(d["dtype"], "__name__", str(d["dtype"])),
                "quantization": {
                    "scale": float(scale),
                    "zero_point": int(zero_point),
                    "per_channel": scales is not None and len(scales) > 1,
                },
            }
        )
    return out


def op_summary(interp: Any, log_lines: list[str], xnnpack_requested: bool) -> dict[str, Any]:
    """Which ops the model has and into how many delegate partitions they fell: int8 HARD_SWISH, for
    instance, is not taken by XNNPACK and splits the graph, which is why int8 can be slower than fp32."""
    ops: dict[str, int] = {}
    partitions = None
    getter = getattr(interp, "_get_ops_details", None)
    if getter is not None:
        try:
            partitions = 0
            for op in getter():
                name = str(op.get("op_name"))
                if name == "DELEGATE":
                    partitions += 1
                else:
                    ops[name] = ops.get(name, 0) + 1
        except Exception:
            ops, partitions = {}, None
    created = any("XNNPACK delegate" in ln for ln in log_lines)
    applied: bool | None
    if not xnnpack_requested:
        applied = False
    elif partitions is not None:
        applied = partitions > 0
    else:
        applied = True if created else None
    return {
        "op_counts": ops,
        "delegate_partitions": partitions,
        "xnnpack_delegate_created": created,
        "xnnpack_applied": applied,
    }


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


def _stats(times_ms: list[float]) -> dict[str, Any]:
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


def _timed_loop(
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


def _threads_arg(threads: int) -> int | None:
    """--threads 0 or -1 leaves the choice to the runtime; anything else is passed through."""
    return None if threads <= 0 else threads


def _set_affinity(spec: str | None) -> list[int] | None:
    """Pin this process to the given CPUs (e.g. '2,3' or '0-3'), for steadier numbers on big.LITTLE."""
    if not spec:
        return None
    cpus: set[int] = set()
    try:
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
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


# ----------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> dict[str, Any]:
    """Describe the device and every runtime; a missing runtime is a finding here, not an error."""
    chosen = None
    runtime_error = None
    try:
        chosen = select_runtime(args.runtime)
    except RunnerError as exc:
        runtime_error = {"error": exc.message, "kind": exc.kind}
    return {
        "command": "info",
        "runner": runner_facts(),
        "runtime": chosen.describe() if chosen else None,
        "runtime_error": runtime_error,
        "install_hint": install_hint(),
        "runtimes": probe_runtimes(chosen, not args.no_probe, args.probe_timeout),
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "numpy": numpy_version(),
        "platform": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
            "pointer_bits": 64 if sys.maxsize > 2**32 else 32,
            "libc": " ".join(platform.libc_ver()).strip() or None,
        },
        "cpu": dict(cpu_model(), **cores()),
        "memory": memory(),
        "state": device_state(),
    }


def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Time a model with the benchmark_model protocol: init, first inference, warm-up, timed runs."""
    if args.runs < 1:
        raise RunnerError("--runs must be at least 1", "usage", EXIT_USAGE)
    if min(args.warmup_runs, args.warmup_secs, args.min_secs) < 0 or args.max_secs <= 0:
        raise RunnerError("run counts and durations must be >= 0 (--max-secs > 0)", "usage", EXIT_USAGE)
    model = check_model_file(args.model)
    rt = select_runtime(args.runtime)
    import numpy as np

    affinity = _set_affinity(args.cpu_affinity)
    state_before = device_state()
    rss_before = rss_kib()
    check_load_in_child(rt, args.model, _threads_arg(args.threads), not args.no_xnnpack)
    t0 = time.perf_counter()
    interp, log_lines = make_interpreter(rt, args.model, _threads_arg(args.threads), not args.no_xnnpack)
    init_ms = (time.perf_counter() - t0) * 1000.0
    rss_after_init = rss_kib()

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
        warmup = _timed_loop(invoke, args.warmup_runs, args.warmup_secs, args.max_secs)
        left = max(0.0, args.max_secs - (time.perf_counter() - warm_start))
        times = _timed_loop(invoke, args.runs, args.min_secs, max(left, 1e-9))
    except RuntimeError as exc:
        raise RunnerError("inference failed: " + str(exc), "inference_failed", EXIT_INTERNAL) from exc
    rss_after = rss_kib()
    state_after = device_state()
    for d in interp.get_output_details():
        interp.get_tensor(d["index"])  # touch outputs, as a real caller would

    stats = _stats(times)
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
        "cpu_affinity": affinity if affinity is not None else cores()["affinity"],
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
        **stats,
        "inputs": tensor_details(inputs),
        "outputs": tensor_details(interp.get_output_details()),
        "memory": {
            "peak_rss_kib": peak_rss_kib(),
            "rss_before_kib": rss_before,
            "rss_after_init_kib": rss_after_init,
            "rss_after_kib": rss_after,
        },
        "state_before": state_before,
        "state_after": state_after,
        "python": platform.python_version(),
        "numpy": numpy_version(),
        "machine": platform.machine(),
    }


# --- predict -----------------------------------------------------------------------------------------


def load_manifest(model_path: str, explicit: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """The manifest beside the model (or --manifest); a missing default is None, a missing --manifest
    an error."""
    path = explicit or os.path.join(os.path.dirname(os.path.abspath(model_path)), "manifest.json")
    if not os.path.exists(path):
        if explicit:
            raise RunnerError("manifest not found: " + path, "manifest_invalid", EXIT_FILE, path=path)
        log("no manifest.json beside the model: no normalisation, labels are class indices")
        return None, None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise RunnerError(
            "manifest " + path + " is unreadable or not JSON: " + str(exc),
            "manifest_invalid",
            EXIT_FILE,
            path=path,
        ) from exc
    if not isinstance(data, dict):
        raise RunnerError(
            "manifest " + path + " is not a JSON object", "manifest_invalid", EXIT_FILE, path=path
        )
    return data, os.path.abspath(path)


def _manifest_error(path: str | None, msg: str) -> RunnerError:
    return RunnerError("manifest " + str(path) + ": " + msg, "manifest_invalid", EXIT_FILE, path=path)


def manifest_preprocessing(man: dict[str, Any] | None, path: str | None) -> dict[str, Any]:
    """Read labels, size, layout and normalisation from a manifest, tolerating the usual spellings."""
    pre: dict[str, Any] = {
        "labels": None,
        "size": None,
        "layout": None,
        "mean": None,
        "std": None,
        "npy_normalized": True,
        "output_is_probabilities": False,
        "precision": None,
    }
    if man is None:
        return pre
    inp = man.get("input") if isinstance(man.get("input"), dict) else {}
    norm = man.get("normalization") or man.get("normalisation") or inp.get("normalization") or {}
    if not isinstance(norm, dict):
        norm = {}

    labels = man.get("labels", man.get("classes", man.get("class_names")))
    if isinstance(labels, str):  # a file of labels, one a line, relative to the manifest
        lpath = os.path.join(os.path.dirname(str(path)), labels)
        text = _read(lpath)
        if text is None:
            raise _manifest_error(path, "labels file " + lpath + " is unreadable")
        labels = [ln.strip() for ln in text.splitlines() if ln.strip()]
    elif isinstance(labels, dict):
        try:
            labels_by_index = {int(k): str(v) for k, v in labels.items()}
        except ValueError as exc:
            raise _manifest_error(path, "labels object keys must be class indices") from exc
        labels = (
            [labels_by_index.get(i) for i in range(max(labels_by_index) + 1)] if labels_by_index else []
        )
    elif labels is not None and not isinstance(labels, list):
        raise _manifest_error(path, "labels must be a list, an object or a file name")
    pre["labels"] = [None if v is None else str(v) for v in labels] if labels is not None else None

    size = inp.get("size", man.get("input_size", inp.get("resolution")))
    if isinstance(size, (int, float)) and not isinstance(size, bool):
        pre["size"] = [int(size), int(size)]
    elif (
        isinstance(size, list) and len(size) >= 2 and all(isinstance(s, (int, float)) for s in size[:2])
    ):
        pre["size"] = [int(size[0]), int(size[1])]
    elif size is not None:
        raise _manifest_error(path, "input size must be a number or [H, W]")
    layout = inp.get("layout", man.get("layout"))
    pre["layout"] = str(layout).upper() if layout else None

    for key in ("mean", "std"):
        value = inp.get(key, norm.get(key, man.get(key)))
        if value is None:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [float(value)] * 3
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, (int, float)) for v in value)
        ):
            raise _manifest_error(path, key + " must be a number or a list of numbers")
        pre[key] = [float(v) for v in value]
    # Some tools write mean/std on the 0..255 scale; the runner works on 0..1 pixels.
    scale_255 = any(v > 1.0 for v in (pre["mean"] or []) + (pre["std"] or []))
    if scale_255:
        pre["mean"] = [v / 255.0 for v in pre["mean"]] if pre["mean"] else None
        pre["std"] = [v / 255.0 for v in pre["std"]] if pre["std"] else None
    pre["normalisation_scale"] = "0-255 (converted)" if scale_255 else "0-1"
    if pre["std"] and any(v == 0 for v in pre["std"]):
        raise _manifest_error(path, "std must not contain 0")

    npy = inp.get("npy", inp.get("npy_normalized"))
    if npy is False or (isinstance(npy, str) and npy.lower() in ("pixels", "raw", "unnormalized")):
        pre["npy_normalized"] = False
    out = man.get("output") if isinstance(man.get("output"), dict) else {}
    activation = str(out.get("activation", man.get("output_activation", ""))).lower()
    pre["output_is_probabilities"] = (
        activation in ("softmax", "probabilities") or out.get("softmax") is True
    )
    pre["precision"] = man.get("precision")
    return pre


def _model_layout(shape: list[int], manifest_layout: str | None) -> str:
    if manifest_layout in ("NHWC", "NCHW"):
        return manifest_layout
    if len(shape) == 4 and shape[-1] not in (1, 3) and shape[1] in (1, 3):
        return "NCHW"
    return "NHWC"


def _normalise(pixels: Any, pre: dict[str, Any]) -> Any:
    """(pixels in 0..1 - mean) / std, per channel, on an NHWC float array."""
    import numpy as np

    x = pixels.astype(np.float32)
    if pre["mean"] is not None:
        x = x - np.asarray(pre["mean"], dtype=np.float32)[: x.shape[-1]]
    if pre["std"] is not None:
        x = x / np.asarray(pre["std"], dtype=np.float32)[: x.shape[-1]]
    return x


def read_input(
    path: str, hw: tuple[int, int], channels: int, pre: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """Return a float NHWC batch ready for quantization, and a note of what was done to get it."""
    import numpy as np

    if not os.path.isfile(path):
        raise RunnerError("input file not found: " + path, "input_unreadable", EXIT_FILE, path=path)
    note: dict[str, Any] = {"path": os.path.abspath(path)}
    if path.lower().endswith(".npy"):
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise RunnerError(
                "input " + path + " is not a readable .npy array: " + str(exc),
                "input_unreadable",
                EXIT_FILE,
            ) from exc
        note["kind"] = "npy"
        note["given_shape"] = list(arr.shape)
        note["given_dtype"] = str(arr.dtype)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise RunnerError(
                "input " + path + " has shape " + str(list(arr.shape)) + "; expected HWC or NHWC",
                "input_invalid",
                EXIT_FILE,
            )
        if arr.shape[-1] != channels and arr.shape[1] == channels:
            arr = arr.transpose(0, 2, 3, 1)
            note["transposed_from"] = "NCHW"
        if tuple(arr.shape[1:3]) != tuple(hw) or arr.shape[-1] != channels:
            raise RunnerError(
                "input "
                + path
                + " has shape "
                + str(note["given_shape"])
                + " but the model takes "
                + str([hw[0], hw[1], channels])
                + " (HWC); .npy inputs are not resized",
                "input_invalid",
                EXIT_FILE,
            )
        if arr.dtype == np.uint8:
            note["preprocessing"] = "uint8 pixels / 255, then mean/std"
            return _normalise(arr / 255.0, pre), note
        if not pre["npy_normalized"]:
            note["preprocessing"] = "0..1 pixels (manifest), then mean/std"
            return _normalise(arr, pre), note
        note["preprocessing"] = "none (taken as already normalised)"
        return arr.astype(np.float32), note

    try:
        from PIL import Image  # type: ignore[import-not-found]
    except ImportError as exc:
        raise RunnerError(
            "Pillow is not installed, so images cannot be decoded: pass a .npy array (float NHWC,"
            " already normalised) instead, or pip install Pillow",
            "pillow_missing",
            EXIT_DEPENDENCY,
            hint="pip install Pillow",
        ) from exc
    try:
        with Image.open(path) as img:
            note["given_size"] = [img.height, img.width]
            rgb = img.convert("RGB").resize((hw[1], hw[0]), Image.BILINEAR)
            pixels = np.asarray(rgb, dtype=np.float32) / 255.0
    except (OSError, ValueError) as exc:
        raise RunnerError(
            "input " + path + " is neither .npy nor an image Pillow can read: " + str(exc),
            "input_unreadable",
            EXIT_FILE,
        ) from exc
    note["kind"] = "image"
    note["preprocessing"] = f"RGB, bilinear resize to {hw[0]}x{hw[1]}, /255, then mean/std"
    if channels == 1:
        pixels = pixels.mean(axis=-1, keepdims=True)
    return _normalise(pixels[None], pre), note


def quantize(x: Any, detail: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    """Float → the input's integer type with the interpreter's own scale/zero-point (authoritative)."""
    import numpy as np

    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if dtype.kind == "f":
        return x.astype(dtype), None
    if dtype.kind not in "iu" or not scale:
        raise RunnerError(
            "model input dtype " + str(dtype) + " has no quantization scale; cannot feed float data",
            "unsupported_model",
            EXIT_FILE,
        )
    info = np.iinfo(dtype)
    q = np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)
    return q, {"scale": float(scale), "zero_point": int(zero_point), "dtype": str(dtype)}


def dequantize(y: Any, detail: dict[str, Any]) -> tuple[Any, bool]:
    import numpy as np

    scale, zero_point = detail.get("quantization", (0.0, 0))
    if np.dtype(detail["dtype"]).kind in "iu" and scale:
        return (y.astype(np.float32) - zero_point) * scale, True
    return y.astype(np.float32), False


def softmax(z: Any) -> Any:
    import numpy as np

    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def cmd_predict(args: argparse.Namespace) -> dict[str, Any]:
    """Classify one input (or a batch in a .npy) with the manifest's preprocessing; top-k as JSON."""
    if args.top_k < 1:
        raise RunnerError("--top-k must be at least 1", "usage", EXIT_USAGE)
    model = check_model_file(args.model)
    man, man_path = load_manifest(args.model, args.manifest)
    pre = manifest_preprocessing(man, man_path)
    rt = select_runtime(args.runtime)
    import numpy as np

    check_load_in_child(rt, args.model, _threads_arg(args.threads), True)
    interp, _ = make_interpreter(rt, args.model, _threads_arg(args.threads), True)
    in_details = interp.get_input_details()
    if len(in_details) != 1:
        raise RunnerError(
            f"predict handles single-input models; this one has {len(in_details)} inputs",
            "unsupported_model",
            EXIT_FILE,
        )
    ind = in_details[0]
    shape = [int(s) for s in ind["shape"]]
    if len(shape) != 4:
        raise RunnerError(
            f"model input shape {shape} is not an image batch", "unsupported_model", EXIT_FILE
        )
    layout = _model_layout(shape, pre["layout"])
    h, w, c = (shape[1], shape[2], shape[3]) if layout == "NHWC" else (shape[2], shape[3], shape[1])
    if pre["size"] is not None and pre["size"] != [h, w]:
        log(
            "manifest input size {} differs from the model's {}; using the model's".format(
                pre["size"], [h, w]
            )
        )

    x, note = read_input(args.input, (h, w), c, pre)
    outd = interp.get_output_details()[0]
    results = []
    quant_note = None
    dequantized = False
    for sample in x:
        batch = sample[None]
        if layout == "NCHW":
            batch = batch.transpose(0, 3, 1, 2)
        q, quant_note = quantize(batch, ind)
        interp.set_tensor(ind["index"], q)
        interp.invoke()
        raw = interp.get_tensor(outd["index"])
        y, dequantized = dequantize(raw, outd)
        logits = y.reshape(-1)
        probs = logits if pre["output_is_probabilities"] else softmax(logits)
        k = min(args.top_k, probs.size)
        order = np.argsort(-probs, kind="stable")[:k]
        labels = pre["labels"]
        results.append(
            {
                "top_k": [
                    {
                        "index": int(i),
                        "label": labels[i] if labels is not None and i < len(labels) else None,
                        "probability": float(probs[i]),
                        "score": float(logits[i]),
                    }
                    for i in order
                ]
            }
        )
    if pre["labels"] is not None and len(pre["labels"]) != int(np.prod(outd["shape"][1:])):
        log(
            "manifest has {} labels but the model outputs {} classes".format(
                len(pre["labels"]), int(np.prod(outd["shape"][1:]))
            )
        )
    return {
        "command": "predict",
        "runner": runner_facts(),
        "model": model,
        "manifest": man_path,
        "precision": pre["precision"],
        "runtime": rt.describe(),
        "input": dict(
            note,
            layout=layout,
            model_shape=shape,
            quantization=quant_note,
            mean=pre["mean"],
            std=pre["std"],
        ),
        "output": {
            "shape": [int(s) for s in outd["shape"]],
            "dtype": getattr(outd["dtype"], "__name__", str(outd["dtype"])),
            "dequantized": dequantized,
            "softmax_applied": not pre["output_is_probabilities"],
        },
        "batch": len(results),
        "predictions": results,
        "top1": results[0]["top_k"][0] if results else None,
    }


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse prints usage errors as text; the contract wants a JSON object on stdout and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise RunnerError(self.prog + ": " + message, "usage", EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--runtime",
        choices=("auto",) + RUNTIME_ORDER,
        default="auto",
        help="TFLite runtime: auto tries litert, then tflite_runtime, then tensorflow",
    )
    common.add_argument("--pretty", action="store_true", help="indent the JSON for people")

    p = _Parser(prog="runner.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=RUNNER_VERSION)
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    sub.required = True

    pi = sub.add_parser("info", parents=[common], help="describe the device and the runtimes")
    pi.add_argument(
        "--no-probe", action="store_true", help="do not import the other runtimes to check them"
    )
    pi.add_argument(
        "--probe-timeout", type=float, default=120.0, help="seconds per runtime import probe"
    )

    pb = sub.add_parser("bench", parents=[common], help="time a model (benchmark_model protocol)")
    pb.add_argument("model")
    pb.add_argument("--threads", type=int, default=1, help="interpreter threads (0: runtime default)")
    pb.add_argument("--warmup-runs", type=int, default=1)
    pb.add_argument("--warmup-secs", type=float, default=0.5)
    pb.add_argument("--runs", type=int, default=50, help="at least this many timed runs")
    pb.add_argument("--min-secs", type=float, default=1.0, help="and at least this long")
    pb.add_argument("--max-secs", type=float, default=150.0, help="but stop after this long")
    pb.add_argument(
        "--no-xnnpack", action="store_true", help="builtin kernels only, no default delegates"
    )
    pb.add_argument("--seed", type=int, default=0, help="seed of the random input data")
    pb.add_argument("--cpu-affinity", default=None, help="pin to CPUs, e.g. 0-3 or 2,3")
    pb.add_argument(
        "--max-times-listed", type=int, default=2000, help="per-run times listed in the JSON (0: all)"
    )

    pp = sub.add_parser("predict", parents=[common], help="classify an image or a .npy array")
    pp.add_argument("model")
    pp.add_argument("input")
    pp.add_argument("--top-k", type=int, default=5)
    pp.add_argument("--manifest", default=None, help="default: manifest.json beside the model")
    pp.add_argument("--threads", type=int, default=1)
    return p


COMMANDS = {"info": cmd_info, "bench": cmd_bench, "predict": cmd_predict}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [LOAD_CHECK]:
        return _load_check_main(argv[1:])
    pretty = "--pretty" in argv
    try:
        # Parse before protecting stdout, so --help and --version print to the real stdout.
        args = build_parser().parse_args(argv)
        _protect_stdout()
        emit(COMMANDS[args.command](args), pretty)
        return EXIT_OK
    except RunnerError as exc:
        log(exc.message)
        emit(
            dict(
                {"error": exc.message, "kind": exc.kind, "runner_version": RUNNER_VERSION}, **exc.extra
            ),
            pretty,
        )
        return exc.code
    except KeyboardInterrupt:
        emit({"error": "interrupted", "kind": "interrupted", "runner_version": RUNNER_VERSION}, pretty)
        return 130
    except Exception as exc:  # the caller still gets one JSON object, and the traceback on stderr
        import traceback

        traceback.print_exc()
        emit(
            {
                "error": type(exc).__name__ + ": " + str(exc),
                "kind": "internal",
                "runner_version": RUNNER_VERSION,
            },
            pretty,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
