"""The runner's entry point: ``python runner.pyz info|bench|predict ...`` (``python -m edgenas_device``).

Each command prints exactly one JSON object on stdout; human messages go to stderr.  Exit codes: 0 ok,
1 internal, 2 usage, 3 a file given is unreadable or invalid, 4 no usable runtime (or numpy), 5 an
optional dependency is missing (Pillow).  See docs/runner.md.  Python >= 3.8.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from edgenas_device import facts
from edgenas_device.contract import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    LOAD_CHECK,
    RUNNER_VERSION,
    RunnerError,
    build_parser,
    emit,
    error_object,
    log,
    protect_stdout,
    runner_facts,
)
from edgenas_device.runtimes import load_check_main, probe_runtimes, select_runtime


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
        "install_hint": facts.install_hint(),
        "runtimes": probe_runtimes(chosen, not args.no_probe, args.probe_timeout, lazy=args.lazy_probe),
        "python": facts.python_facts(),
        "numpy": facts.numpy_version(),
        "platform": facts.platform_facts(),
        "cpu": dict(facts.cpu_model(), **facts.cores()),
        "memory": facts.memory(),
        "state": facts.device_state(),
        "device": facts.summary(),
    }


def _command(name: str) -> Any:
    # Imported per command: `info` on a Pi need not import the bench or predict code.
    if name == "info":
        return cmd_info
    if name == "bench":
        from edgenas_device.timing import cmd_bench

        return cmd_bench
    from edgenas_device.predict import cmd_predict

    return cmd_predict


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [LOAD_CHECK]:
        return load_check_main(argv[1:])
    pretty = "--pretty" in argv
    out = sys.stdout
    try:
        # Parse before protecting stdout, so --help and --version print to the real stdout.
        args = build_parser().parse_args(argv)
        out = protect_stdout()
        emit(_command(args.command)(args), out, pretty)
        return EXIT_OK
    except RunnerError as exc:
        log(exc.message)
        emit(error_object(exc), out, pretty)
        return exc.code
    except KeyboardInterrupt:
        emit(
            {"error": "interrupted", "kind": "interrupted", "runner_version": RUNNER_VERSION},
            out,
            pretty,
        )
        return EXIT_INTERRUPTED
    except Exception as exc:  # the caller still gets one JSON object, and the traceback on stderr
        import traceback

        traceback.print_exc()
        emit(
            {
                "error": type(exc).__name__ + ": " + str(exc),
                "kind": "internal",
                "runner_version": RUNNER_VERSION,
            },
            out,
            pretty,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
