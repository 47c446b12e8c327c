"""Transport costs on the test fleet: connect, warm command round trip, 5 MB upload throughput.

    .venv/bin/python benchmarks/transports.py [--runs 50] [--out benchmarks/results/transports.json]

Stands up a small fleet (one SSH device in a network namespace, one ADB device behind the real adb
server; needs root, as the test fleet does) and measures the local, SSH and ADB transports the same way:

* connect: a fresh transport until its first ``true`` has returned (TCP, SSH handshake and auth, or
  the adb server's transport selection), median of 5;
* round trip: a warm connection running ``true``, median of ``--runs`` (the goal is <= 10 ms);
* upload: ``put`` of a 5 MB random file (temp name, sha256 check, rename included), best of 3.

An extra SSH row with TCP_NODELAY switched off shows why edgenas sets it (design §5).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgenas.device.transports.adb import AdbTransport  # noqa: E402
from edgenas.device.transports.base import Transport  # noqa: E402
from edgenas.device.transports.local import LocalTransport  # noqa: E402
from edgenas.device.transports.ssh import SSHTransport  # noqa: E402

UPLOAD_BYTES = 5 * 1024 * 1024


def measure(make: Callable[[], Transport], payload: Path, runs: int, nodelay: bool = True) -> dict:
    connects = []
    for _ in range(5):
        t0 = time.perf_counter()
        with make() as t:
            t.run(["true"], timeout=30)
            connects.append(time.perf_counter() - t0)
    with make() as t:
        t.run(["true"], timeout=30)
        if not nodelay:
            t._client.get_transport().sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        rtts = []
        for _ in range(runs):
            t0 = time.perf_counter()
            t.run(["true"], timeout=30)
            rtts.append(time.perf_counter() - t0)
        uploads = []
        for i in range(3):
            t0 = time.perf_counter()
            t.put(payload, f"bench-{i}.bin", timeout=120)
            uploads.append(time.perf_counter() - t0)
        t.run(["rm", "-f", "bench-0.bin", "bench-1.bin", "bench-2.bin"], cwd=".", timeout=30)
    return {
        "connect_ms": round(statistics.median(connects) * 1000, 2),
        "rtt_ms_median": round(statistics.median(rtts) * 1000, 2),
        "rtt_ms_p90": round(sorted(rtts)[int(0.9 * (len(rtts) - 1))] * 1000, 2),
        "upload_mb_s": round(UPLOAD_BYTES / 1e6 / min(uploads), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "transports.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgenas-bench-"))
    payload = work / "payload.bin"
    payload.write_bytes(os.urandom(UPLOAD_BYTES))
    (work / "local").mkdir()
    results: dict[str, dict] = {}
    results["local"] = measure(
        lambda: LocalTransport("local", workdir=str(work / "local")), payload, args.runs
    )
    fleet = None
    if os.geteuid() == 0:
        from tests.support.fleet import Fleet

        fleet = Fleet()
    else:
        print("not root: the SSH and ADB rows need the test fleet (run as root)", file=sys.stderr)
    try:
        if fleet is not None:
            py = str(REPO / ".venv-tflite" / "bin" / "python")
            dev = fleet.add_ssh("bench", py)
            adev = fleet.add_adb("bench", py)
            assert fleet.adb_server is not None
            os.environ["ANDROID_ADB_SERVER_PORT"] = str(fleet.adb_server.port)

            def make_ssh() -> SSHTransport:
                return SSHTransport(
                    "bench",
                    dev.host,
                    dev.port,
                    dev.user,
                    str(dev.client_key),
                    known_hosts=work / "known_hosts",
                    workdir="edgenas",
                    accept_new_host_key=True,
                )

            results["ssh"] = measure(make_ssh, payload, args.runs)
            results["ssh_without_tcp_nodelay"] = measure(
                make_ssh, payload, min(args.runs, 20), nodelay=False
            )
            (adev.root / "w").mkdir(exist_ok=True)
            results["adb"] = measure(
                lambda: AdbTransport("bench", adev.serial, workdir=str(adev.root / "w")),
                payload,
                args.runs,
            )
    finally:
        if fleet is not None:
            fleet.teardown()
    header = f"{'transport':<26}{'connect ms':>12}{'rtt ms':>10}{'rtt p90':>10}{'upload MB/s':>13}"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(
            f"{name:<26}{r['connect_ms']:>12}{r['rtt_ms_median']:>10}{r['rtt_ms_p90']:>10}"
            f"{r['upload_mb_s']:>13}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "host": platform.node(),
                "cpus": os.cpu_count(),
                "time": time.time(),
                "upload_bytes": UPLOAD_BYTES,
                "results": results,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
