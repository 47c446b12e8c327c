"""One contract for every way of reaching a device: local, SSH (real sshd) and ADB (the real adb server
and client against the fleet's emulated device), held to the same tests.

The device's files are host paths here (the fleet runs on this machine), so the tests look at what
really landed on the "device" and can act as its disk (corrupting an upload in flight).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgenas.core.errors import TransportError
from edgenas.device.transports.adb import AdbTransport
from edgenas.device.transports.base import OutputLimitError, Transport
from edgenas.device.transports.local import LocalTransport
from edgenas.device.transports.ssh import SSHTransport

pytestmark = [pytest.mark.fleet, pytest.mark.usefixtures("user_home")]

REPO = Path(__file__).resolve().parents[2]
TEMP_RE = re.compile(r"^\.model\.bin\.edgenas-tmp-[0-9a-f]{8}$")
MIB = 1024 * 1024


def make_transport(spec: dict) -> Transport:
    """A transport from a JSON-able spec (also used by the child process that is killed mid-put)."""
    if spec["kind"] == "local":
        return LocalTransport("local", workdir=spec["workdir"])
    if spec["kind"] == "ssh":
        return SSHTransport(
            "ssh",
            spec["host"],
            spec["port"],
            spec["user"],
            spec["key"],
            known_hosts=Path(spec["known_hosts"]),
            workdir=spec["workdir"],
            connect_timeout=5,
            accept_new_host_key=True,
        )
    return AdbTransport("adb", spec["serial"], workdir=spec["workdir"], connect_timeout=5)


def child_put(spec_json: str, src: str, remote: str) -> None:
    """Entry point of the child process: one put, then exit."""
    with make_transport(json.loads(spec_json)) as t:
        t.put(src, remote, timeout=120)


@dataclass
class Device:
    kind: str
    spec: dict
    root: Path  # the host path of the transport's workdir
    shape: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def transport(self) -> Transport:
        return make_transport(self.spec)

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if ".edgenas-tmp-" in p.name)


@pytest.fixture(params=["local", "ssh", "adb"])
def device(request, fleet, workspace, tmp_path) -> Iterator[Device]:
    sub = f"contract-{secrets.token_hex(3)}"
    if request.param == "local":
        root = tmp_path / sub
        root.mkdir()
        dev = Device("local", {"kind": "local", "workdir": str(root)}, root)
    elif request.param == "ssh":
        s = fleet.ssh["ssh1"]
        spec = {"kind": "ssh", "host": s.host, "port": s.port, "user": s.user, "key": str(s.client_key),
                "known_hosts": str(workspace / "known_hosts"), "workdir": f"edgenas/{sub}"}
        root = s.workdir / sub
        shape = (lambda: fleet.bandwidth(s, "200mbit")) if s.netns else contextlib.nullcontext
        dev = Device("ssh", spec, root, shape)
    else:
        a = fleet.adb["adb1"]
        root = a.root / sub
        dev = Device("adb", {"kind": "adb", "serial": a.serial, "workdir": str(root)}, root)
    with dev.transport() as t:
        assert t.run(["mkdir", "-p", t.remote_path(".")]).rc == 0  # created by the device's user
    yield dev
    with dev.transport() as t:
        t.run(["rm", "-rf", t.remote_path(".")])


def blob(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------- put


def test_put_is_atomic_for_a_concurrent_reader(device, tmp_path):
    old, new = tmp_path / "old.bin", tmp_path / "new.bin"
    versions = {blob(old, 3 * MIB), blob(new, 3 * MIB)}
    final = device.root / "model.bin"
    seen: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(digest(final))  # never missing, never partial

    with device.transport() as t:
        t.put(old, "model.bin")
        thread = threading.Thread(target=reader)
        thread.start()
        try:
            for src in (new, old, new, old):
                t.put(src, "model.bin")
        finally:
            stop.set()
            thread.join()
    assert seen and set(seen) <= versions
    assert digest(final) == digest(old) and device.leftovers() == []


def test_put_killed_midway_leaves_the_old_file_and_only_a_hidden_temp(device, tmp_path):
    old, big, new = tmp_path / "old.bin", tmp_path / "big.bin", tmp_path / "new.bin"
    blob(old, 1000)
    blob(big, 48 * MIB)
    blob(new, 2000)
    final = device.root / "model.bin"
    with device.transport() as t:
        t.put(old, "model.bin")
    with device.shape():
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; from tests.system.test_transport_contract import "
             "child_put; child_put(*sys.argv[1:])", json.dumps(device.spec), str(big), "model.bin"],
            cwd=REPO,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            temps = [p for p in device.root.iterdir() if TEMP_RE.match(p.name)]
            if temps and temps[0].stat().st_size > 0:
                break
            time.sleep(0.002)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL, "the put finished before it could be killed"
    assert digest(final) == digest(old)  # the final name still holds the complete old file
    assert all(TEMP_RE.match(name) for name in device.leftovers())  # hidden, recognisable: ignored
    with device.transport() as t:  # and the next put completes
        t.put(new, "model.bin")
    assert digest(final) == digest(new)


def test_corruption_on_the_device_is_caught_before_the_rename_and_cleaned(device, tmp_path):
    """The device's disk flips a byte of the upload while it is being written: the sha256 check must
    refuse it, the final name keep the old file, and the temporary file be removed."""
    old, big = tmp_path / "old.bin", tmp_path / "big.bin"
    blob(old, 1000)
    blob(big, 24 * MIB)
    final = device.root / "model.bin"
    with device.transport() as t:
        t.put(old, "model.bin")
        for _attempt in range(5):
            hit = threading.Event()
            stop = threading.Event()

            def corrupter(hit: threading.Event = hit, stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    for p in device.root.iterdir():
                        if not TEMP_RE.match(p.name):
                            continue
                        with contextlib.suppress(OSError), open(p, "r+b") as fh:
                            size = os.fstat(fh.fileno()).st_size
                            if 0 < size < big.stat().st_size:  # mid-transfer
                                first = fh.read(1)
                                fh.seek(0)
                                fh.write(bytes([first[0] ^ 0xFF]))
                                hit.set()
                                return
                    time.sleep(0.0005)

            thread = threading.Thread(target=corrupter)
            with device.shape():
                thread.start()
                try:
                    t.put(big, "model.bin")
                    error = None
                except TransportError as exc:
                    error = exc
                finally:
                    stop.set()
                    thread.join()
            if hit.is_set():
                if error is None and digest(final) != digest(big):
                    # the flip landed after the check and the rename (a loaded host delayed the
                    # corrupter): a finished file was corrupted, not an upload; try again
                    t.put(old, "model.bin")
                    continue
                break
        else:
            pytest.skip("the upload was never caught mid-transfer on this machine")
    assert error is not None and re.search(r"sha256|corrupt", str(error)), error
    assert "nothing was written under the final name" in str(error)
    assert digest(final) == digest(old)
    assert device.leftovers() == []


def test_failed_put_cleans_its_temp_file(device, tmp_path):
    """The upload lands but cannot be moved into place (a directory has the final name): an error,
    no temporary file left behind (ADB used to leave them), the directory untouched."""
    src = tmp_path / "m.bin"
    blob(src, 200_000)
    with device.transport() as t:
        assert t.run(["mkdir", "-p", "model.bin"], cwd=".").rc == 0
        assert t.run(["touch", "model.bin/keep"], cwd=".").rc == 0
        with pytest.raises(TransportError):
            t.put(src, "model.bin")
    assert device.leftovers() == []
    assert sorted(p.name for p in (device.root / "model.bin").iterdir()) == ["keep"]


def test_put_of_a_missing_local_file_is_one_clear_error(device, tmp_path):
    with device.transport() as t, pytest.raises(TransportError, match="nope.bin"):
        t.put(tmp_path / "nope.bin", "model.bin")
    assert device.leftovers() == [] and not (device.root / "model.bin").exists()


# ------------------------------------------------------------------------------------------- get


def test_get_is_bounded_and_writes_nothing_on_failure(device, tmp_path):
    src = tmp_path / "m.bin"
    want = blob(src, 300_000)
    with device.transport() as t:
        t.put(src, "model.bin")
        t.get("model.bin", tmp_path / "back.bin", max_bytes=300_000)
        assert digest(tmp_path / "back.bin") == want
        with pytest.raises(OutputLimitError, match="max_bytes=299999"):
            t.get("model.bin", tmp_path / "big.bin", max_bytes=299_999)
        with pytest.raises(TransportError):
            t.get("missing.bin", tmp_path / "missing.bin")
    assert not (tmp_path / "big.bin").exists() and not (tmp_path / "missing.bin").exists()
    assert not [p for p in tmp_path.iterdir() if ".edgenas-tmp-" in p.name]


# ------------------------------------------------------------------------------------------- run


def test_run_timeout_is_an_error_within_its_bound_and_the_transport_recovers(device):
    with device.transport() as t:
        t0 = time.monotonic()
        with pytest.raises(TransportError, match="timed out after 1.5 s"):
            # `; true` keeps sh as the parent: a child of the command holds the output pipes.
            t.run(["sh", "-c", "sleep 30; true"], timeout=1.5)
        elapsed = time.monotonic() - t0
        assert elapsed < 6, f"{elapsed:.1f} s"  # a correctness bound, not a speed goal
        assert t.run(["echo", "again"]).stdout == "again\n"


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_output_is_bounded_the_command_stopped_and_the_transport_recovers(device, stream):
    redirect = "" if stream == "stdout" else " >&2"
    with device.transport() as t:
        limit = {f"max_{stream}": MIB}
        with pytest.raises(OutputLimitError, match=rf"more than 1 MiB to {stream}.*max_{stream}="):
            t.run(["sh", "-c", f"yes{redirect}"], timeout=60, **limit)  # endless output
        ok = t.run(["sh", "-c", f"head -c 500000 /dev/zero{redirect}"], **limit)
        assert len(getattr(ok, stream)) == 500_000
        assert t.run(["echo", "again"]).stdout == "again\n"


def test_argv_is_passed_literally_never_through_a_shell(device):
    tricky = ["a b", "$(touch pwned1)", "`touch pwned2`", "x; touch pwned3", "'single'", '"double"',
              "|", "&&", "*", "~", "$HOME", "back\\slash", "new\nline", "", "-n"]
    with device.transport() as t:
        rc, out, _ = t.run(["printf", "%s\\0", *tricky], cwd=".")
        assert rc == 0 and out.split("\0")[:-1] == tricky
        assert t.run(["mkdir", "-p", "dir with space; touch pwned4"], cwd=".").rc == 0
        assert t.run(["pwd"], cwd="dir with space; touch pwned4").stdout.strip().endswith(
            "dir with space; touch pwned4"
        )
    assert not [p for p in device.root.rglob("pwned*")]
