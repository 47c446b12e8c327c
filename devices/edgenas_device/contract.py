"""The runner's output contract: one JSON object on stdout, an error kind and an exit code per failure.

Why a module of its own: the host parses what this module writes (``edgenas`` maps the exit codes and
kinds to its own errors), so the codes, the error type and the argument parser live in one place that
both sides import.  Python >= 3.8, stdlib only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import IO, Any

RUNNER_VERSION = "1.1.0"

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_FILE = 3
EXIT_NO_RUNTIME = 4
EXIT_DEPENDENCY = 5
EXIT_INTERRUPTED = 130

# Preference order for --runtime auto (design section 6): LiteRT is the maintained successor, then the
# old tflite-runtime (the only wheel for 32-bit Pi OS), then full TensorFlow as the heavy last resort.
RUNTIME_ORDER = ("litert", "tflite_runtime", "tensorflow")

# The hidden first argument of the child that loads a model before the parent does (runtimes.py).
LOAD_CHECK = "_load-check"

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


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


def protect_stdout() -> IO[str]:
    """Return a private handle on the original stdout for the JSON, and route fd 1 to stderr.

    Native libraries (TFLite, TensorFlow) print to fd 1; after this nothing but the JSON written to the
    returned stream can reach the caller's stdout.  Call once per process, from ``main``.
    """
    try:
        sys.stdout.flush()
        out = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        return out
    except (OSError, ValueError, AttributeError):
        return sys.stdout


def _jsonable(obj: Any) -> Any:
    """numpy scalars/arrays and types appear in interpreter details; make them plain JSON."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, type):
        return getattr(obj, "__name__", str(obj))
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def finite(obj: Any) -> Any:
    """NaN and infinities are not JSON: they become null, recursively."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def emit(obj: dict[str, Any], out: IO[str], pretty: bool = False) -> None:
    """Write the single JSON result object to ``out`` (the stream :func:`protect_stdout` returned)."""
    text = json.dumps(finite(obj), default=_jsonable, indent=2 if pretty else None, sort_keys=False)
    out.write(text + "\n")
    out.flush()


def error_object(exc: RunnerError) -> dict[str, Any]:
    """The JSON an expected failure prints: error, kind, runner_version and the error's extra fields."""
    return dict({"error": exc.message, "kind": exc.kind, "runner_version": RUNNER_VERSION}, **exc.extra)


# --- which runner this is ---------------------------------------------------------------------------


def archive_path() -> str | None:
    """The zipapp this code runs from (``runner.pyz``), or None when it runs from a source folder."""
    archive = getattr(globals().get("__loader__"), "archive", None)
    return os.path.abspath(archive) if isinstance(archive, str) else None


def source_sha256(package_dir: str = _PACKAGE_DIR) -> str:
    """A hash of the package's ``*.py`` sources (names and bytes, sorted): the runner's identity when it
    runs from a source folder rather than a zipapp.  The host's app builder keys its cache on the same
    hash."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(package_dir)):
        if name.endswith(".py"):
            with open(os.path.join(package_dir, name), "rb") as f:
                data = f.read()
            h.update(name.encode("utf-8") + b"\0" + str(len(data)).encode("ascii") + b"\0" + data)
    return h.hexdigest()


def sha256_file(path: str) -> str:
    """Hash in chunks: models can be larger than a Pi likes to hold twice in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def runner_facts() -> dict[str, Any]:
    """``{version, sha256, path}``: from a zipapp the archive and its sha256 (what the host pushed and
    compares), from a source folder that folder and :func:`source_sha256`."""
    archive = archive_path()
    digest: str | None
    if archive is not None:
        try:
            digest = sha256_file(archive)
        except OSError:
            digest = None
        return {"version": RUNNER_VERSION, "sha256": digest, "path": archive}
    try:
        digest = source_sha256()
    except OSError:
        digest = None
    return {"version": RUNNER_VERSION, "sha256": digest, "path": _PACKAGE_DIR}


def self_command() -> list[str]:
    """The argv that runs this same runner again in a child (before its own arguments).

    From a zipapp: ``python runner.pyz``.  From a source folder: ``python -c`` with the folder's parent
    put first on ``sys.path``, so the child runs these very files and not another installed copy.
    """
    cmd = [sys.executable] + (["-I"] if sys.flags.isolated else [])
    archive = archive_path()
    if archive is not None:
        return cmd + [archive]
    parent = os.path.dirname(_PACKAGE_DIR)
    code = (
        "import sys; sys.path.insert(0, " + repr(parent) + "); "
        "from edgenas_device.__main__ import main; sys.exit(main())"
    )
    return cmd + ["-c", code]


# --- the command line -------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse prints usage errors as text; the contract wants a JSON object on stdout and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise RunnerError(self.prog + ": " + message, "usage", EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    """``info``, ``bench`` and ``predict`` with their options (docs/runner.md)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--runtime",
        choices=("auto",) + RUNTIME_ORDER,
        default="auto",
        help="TFLite runtime: auto tries litert, then tflite_runtime, then tensorflow",
    )
    common.add_argument("--pretty", action="store_true", help="indent the JSON for people")

    p = _Parser(
        prog="runner",
        description="edgenas on-device runner: benchmark and run a TFLite model with whatever "
        "runtime the device has.",
    )
    p.add_argument("--version", action="version", version=RUNNER_VERSION)
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    sub.required = True

    pi = sub.add_parser("info", parents=[common], help="describe the device and the runtimes")
    pi.add_argument(
        "--no-probe", action="store_true", help="do not import the other runtimes to check them"
    )
    pi.add_argument(
        "--lazy-probe",
        action="store_true",
        help="do not import TensorFlow to check it when a lighter runtime is usable",
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
