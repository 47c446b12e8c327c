"""ADB devices: the real adb server (a child process on its own port, so it never touches the user's
server on 5037) connected to protocol-level device emulators (:mod:`tests.support.fleet.adb_device`).

Emulators listen on kernel-chosen loopback ports, which are never in 5555-5585: the adb server would
otherwise adopt them as emulators by itself.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.fleet.system import FleetError, free_port, record_process, sh, wait_port

EMULATOR = Path(__file__).with_name("adb_device.py")


class AdbServer:
    """``adb -P PORT server nodaemon`` as our child; ``env`` points adb clients (and edgenas) at it."""

    def __init__(self, run_dir: Path) -> None:
        self.port = free_port()
        self.run_dir = run_dir
        self.env = dict(os.environ, ANDROID_ADB_SERVER_PORT=str(self.port))
        log = run_dir / "adb-server.log"
        with open(log, "ab") as fh:
            self.proc = subprocess.Popen(
                ["adb", "-P", str(self.port), "server", "nodaemon"],
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        record_process(run_dir, self.proc.pid)
        wait_port("127.0.0.1", self.port, 20, self.proc, log)

    def adb(self, *args: str, check: bool = True, timeout: float = 20) -> str:
        return sh(
            ["adb", "-P", str(self.port), *args], check=check, timeout=timeout, env=self.env
        ).stdout

    def state(self, serial: str) -> str:
        out = sh(["adb", "-P", str(self.port), "-s", serial, "get-state"], check=False, env=self.env)
        return out.stdout.strip() or "missing"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@dataclass
class AdbDevice:
    """One emulated device; ``root`` is its own directory (commands run there)."""

    name: str
    root: Path
    server: AdbServer
    python: str
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def serial(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, connect: bool = True, timeout: float = 15.0) -> None:
        """Start the emulator (same port as before on a restart); ``connect`` also runs ``adb connect``
        and waits until the server lists it as ``device``."""
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.root.parent / f"{self.name}-emulator.log"
        with open(log, "ab") as fh:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(EMULATOR),
                    "--root",
                    str(self.root),
                    "--port",
                    str(self.port),
                    "--serialno",
                    self.name,
                ],
                stdout=subprocess.PIPE,
                stderr=fh,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        record_process(self.server.run_dir, self.proc.pid)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("PORT "):
            self.kill()
            raise FleetError(f"ADB emulator {self.name} did not start: {log.read_text()[-1000:]}")
        self.port = int(line.split()[1])
        wait_port("127.0.0.1", self.port, timeout, self.proc, log)
        if connect:
            self.server.adb("connect", self.serial)
            deadline = time.monotonic() + timeout
            while self.server.state(self.serial) != "device":
                if time.monotonic() > deadline:
                    raise FleetError(f"adb server does not list {self.serial} as a device")
                time.sleep(0.05)

    def kill(self) -> None:
        """Crash the device (SIGKILL to the emulator and the commands it runs)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def freeze(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGCONT)
