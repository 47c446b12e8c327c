"""TFLite runtimes: which one to use, whether the others import, and interpreters made from them.

Selection order for ``--runtime auto``: ai_edge_litert (LiteRT), then tflite_runtime, then tensorflow.
tflite_runtime is never imported in a process that imported TensorFlow (they ship clashing copies of one
native library), so ``info`` checks the runtimes it did not choose in child processes.  tflite-runtime
2.14 has no flatbuffer verifier and segfaults on a corrupt file, so a model is first loaded in a child
there (:func:`check_load_in_child`).  Python >= 3.8, stdlib at import time.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from edgenas_device.contract import (
    EXIT_FILE,
    EXIT_NO_RUNTIME,
    EXIT_OK,
    EXIT_USAGE,
    LOAD_CHECK,
    RUNTIME_ORDER,
    RunnerError,
    emit,
    log,
    protect_stdout,
    self_command,
)
from edgenas_device.facts import install_hint, numpy_version

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

# Runtimes without a flatbuffer verifier on load: a truncated or corrupt file crashes them.
UNVERIFIED_RUNTIMES = ("tflite_runtime",)


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


def hidden_runtimes() -> set[str]:
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


def _import_runtime(name: str) -> Runtime:
    """Import one runtime in this process; raises whatever the import raises."""
    if name == "litert":
        import ai_edge_litert  # type: ignore[import-not-found]
        from ai_edge_litert import interpreter as mod  # type: ignore[import-not-found]

        version = getattr(ai_edge_litert, "__version__", None) or dist_version(name) or "unknown"
        return Runtime(name, mod, mod.Interpreter, getattr(mod, "OpResolverType", None), version)
    if name == "tflite_runtime":
        import tflite_runtime  # type: ignore[import-not-found]
        from tflite_runtime import interpreter as mod  # type: ignore[import-not-found]

        version = getattr(tflite_runtime, "__version__", None) or dist_version(name) or "unknown"
        return Runtime(name, mod, mod.Interpreter, getattr(mod, "OpResolverType", None), version)
    if name == "tensorflow":
        import tensorflow as tf  # type: ignore[import-not-found]

        resolver = getattr(getattr(tf.lite, "experimental", None), "OpResolverType", None)
        return Runtime(name, tf, tf.lite.Interpreter, resolver, str(tf.__version__))
    raise ValueError("unknown runtime " + name)


def dist_version(name: str) -> str | None:
    """The installed distribution's version, read from metadata without importing the package."""
    from importlib import metadata

    for dist in RUNTIME_DISTRIBUTIONS[name]:
        try:
            return metadata.version(dist)
        except Exception:
            continue
    return None


def installed(name: str) -> bool:
    """Whether the top-level package exists, without importing it (TensorFlow takes seconds)."""
    import importlib.util

    top = RUNTIME_MODULES[name].split(".")[0]
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def _skip_reason(name: str) -> str | None:
    """Why a runtime must not be tried in this process, or None when it may be."""
    if name in hidden_runtimes():
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
name = sys.argv[1]
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


def _start_probe(name: str) -> subprocess.Popen:
    cmd = [sys.executable, "-c", _PROBE_CODE, name, RUNTIME_MODULES[name]]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True
    )


def probe_runtimes(
    chosen: Runtime | None, import_probe: bool, timeout: float, lazy: bool = False
) -> dict[str, Any]:
    """Report every runtime; importability is checked in child processes so that none of them (above all
    TensorFlow next to tflite_runtime) shares this process, and in parallel because TF takes seconds.

    ``lazy``: TensorFlow is only imported (in its child) when no lighter runtime is usable, since the
    runner would never reach it otherwise; it is then reported ``importable: null`` with a note.
    """
    result: dict[str, Any] = {}
    procs: dict[str, subprocess.Popen] = {}
    hidden = hidden_runtimes()
    for name in RUNTIME_ORDER:
        entry: dict[str, Any] = {
            "module": RUNTIME_MODULES[name],
            "installed": installed(name) and name not in hidden,
            "distribution_version": dist_version(name),
            "importable": None,
            "version": None,
        }
        if name in hidden:
            entry["importable"] = False
            entry["error"] = "hidden by " + HIDE_ENV
        elif chosen is not None and chosen.name == name:
            entry["importable"] = True
            entry["version"] = chosen.version
        elif import_probe and entry["installed"] and not (lazy and name == "tensorflow"):
            procs[name] = _start_probe(name)
        elif entry["installed"] is False:
            entry["importable"] = False
        result[name] = entry
    deadline = time.monotonic() + timeout
    _collect(procs, result, deadline, timeout)
    tf = result["tensorflow"]
    if lazy and import_probe and tf["installed"] and tf["importable"] is None and "error" not in tf:
        if any(result[n]["importable"] for n in ("litert", "tflite_runtime")):
            tf["note"] = "not imported: a lighter runtime is usable"
        else:
            _collect({"tensorflow": _start_probe("tensorflow")}, result, deadline, timeout)
    return result


def _collect(
    procs: dict[str, subprocess.Popen], result: dict[str, Any], deadline: float, timeout: float
) -> None:
    for name, proc in procs.items():
        try:
            out, _ = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            found = json.loads(lines[-1]) if lines else {"importable": False}
            result[name].update({k: found[k] for k in ("importable", "version", "error") if k in found})
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            result[name]["error"] = f"import probe timed out after {timeout:.0f} s"
        except ValueError:
            result[name]["importable"] = False


# --- interpreters -----------------------------------------------------------------------------------


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
        text = tmp.read(1 << 20).decode("utf-8", "replace")  # bounded: a chatty runtime cannot flood
        tmp.close()
        if text:
            sys.stderr.write(text)
            sys.stderr.flush()
        sink.extend(text.splitlines())


def check_load_in_child(rt: Runtime, model_path: str, threads: int | None, xnnpack: bool) -> None:
    """Load the model in a child first when the runtime would crash on a corrupt file; turn a crash
    into exit 3 naming the file, instead of a dead runner with no JSON."""
    if rt.name not in UNVERIFIED_RUNTIMES:
        return
    cmd = self_command() + [LOAD_CHECK, model_path, rt.name, str(threads or 0), str(int(xnnpack))]
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


def load_check_main(argv: list[str]) -> int:
    """The child side of :func:`check_load_in_child`: load, allocate, report only the exit code."""
    out = protect_stdout()
    try:
        model_path, name, threads, xnnpack = argv
        rt = select_runtime(name)
        make_interpreter(rt, model_path, int(threads) or None, xnnpack == "1")
    except RunnerError as exc:
        emit({"error": exc.message, "kind": exc.kind}, out)
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
