#!/usr/bin/env python3
"""A stand-in Android device: speaks the ADB transport protocol on a TCP port, so the *real* adb server
can ``adb connect`` to it and the real adb client (or edgenas) can use it.

What it implements is what edgenas uses, at the protocol level (see AOSP ``adb/protocol.txt``,
``SERVICES.TXT``, ``SYNC.TXT``): CNXN without AUTH; OPEN/OKAY/WRTE/CLSE streams with per-write flow
control; ``shell,v2`` (stdout/stderr/exit packets, stdin and close-stdin) and plain ``shell:``;
``sync:`` with STAT, LIST, SEND/DATA/DONE, RECV and QUIT.  Commands run with ``/bin/sh -c`` in the
device's own directory (``--root``); relative sync paths resolve there too.  ``getprop`` answers from
``<root>.props`` (``name=value`` lines, ``ro.serialno`` written at start from ``--serialno``) and reads
it on every call, so a test can turn the device into "another phone at the same address".

Run: ``adb_device.py --root DIR [--port N] [--serialno NAME]``.  It prints ``PORT <n>`` once listening.
"""

from __future__ import annotations

import argparse
import os
import queue
import socket
import stat
import struct
import subprocess
import sys
import threading

A_SYNC, A_CNXN, A_OPEN, A_OKAY = 0x434E5953, 0x4E584E43, 0x4E45504F, 0x59414B4F
A_CLSE, A_WRTE, A_AUTH = 0x45534C43, 0x45545257, 0x48545541
A_VERSION = 0x01000001
MAX_PAYLOAD = 256 * 1024
FEATURES = "shell_v2,cmd"
SYNC_DATA_MAX = 64 * 1024


class Stream:
    """One OPEN-ed service: an inbox of host writes and flow-controlled writes back to the host."""

    def __init__(self, dev: Connection, local_id: int, remote_id: int) -> None:
        self.dev, self.local_id, self.remote_id = dev, local_id, remote_id
        self.inbox: queue.Queue[bytes | None] = queue.Queue()
        self.buf = b""
        self.may_send = threading.Event()
        self.may_send.set()
        self.closed = False
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self.lock:
            for i in range(0, len(data), self.dev.max_payload):
                self.may_send.wait()
                if self.closed:
                    raise BrokenPipeError
                self.may_send.clear()
                self.dev.send(A_WRTE, self.local_id, self.remote_id, data[i : i + self.dev.max_payload])

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.inbox.get()
            if chunk is None:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.may_send.set()
            self.dev.send(A_CLSE, self.local_id, self.remote_id)
        self.dev.streams.pop(self.local_id, None)


class Connection:
    """One transport connection from the adb server."""

    def __init__(
        self, sock: socket.socket, root: str, serialno: str, env: dict[str, str] | None = None
    ) -> None:
        self.sock, self.root, self.serialno = sock, root, serialno
        self.env = env
        self.send_lock = threading.Lock()
        self.streams: dict[int, Stream] = {}
        self.next_id = 1
        self.max_payload = MAX_PAYLOAD

    def send(self, cmd: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        header = struct.pack("<6I", cmd, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF, cmd ^ 0xFFFFFFFF)
        with self.send_lock:
            self.sock.sendall(header + data)

    def recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def serve(self) -> None:
        try:
            while True:
                cmd, arg0, arg1, length, _check, magic = struct.unpack("<6I", self.recv_exact(24))
                if magic != cmd ^ 0xFFFFFFFF:
                    return
                data = self.recv_exact(length) if length else b""
                self.dispatch(cmd, arg0, arg1, data)
        except (EOFError, OSError):
            pass
        finally:
            for s in list(self.streams.values()):
                s.closed = True
                s.may_send.set()
                s.inbox.put(None)
            self.sock.close()

    def dispatch(self, cmd: int, arg0: int, arg1: int, data: bytes) -> None:
        if cmd == A_CNXN:
            self.max_payload = min(MAX_PAYLOAD, arg1 or MAX_PAYLOAD)
            banner = (
                f"device::ro.product.name=edgenas_fake;ro.product.model={self.serialno};"
                f"ro.product.device=edgenas_fake;features={FEATURES}"
            )
            self.send(A_CNXN, min(arg0, A_VERSION), MAX_PAYLOAD, banner.encode())
        elif cmd == A_OPEN:
            service = data.rstrip(b"\0").decode("utf-8", "replace")
            handler = self.handler_for(service)
            if handler is None:
                self.send(A_CLSE, 0, arg0)
                return
            stream = Stream(self, self.next_id, arg0)
            self.next_id += 1
            self.streams[stream.local_id] = stream
            self.send(A_OKAY, stream.local_id, arg0)
            threading.Thread(
                target=self.run_handler, args=(handler, stream, service), daemon=True
            ).start()
        elif cmd == A_WRTE:
            stream = self.streams.get(arg1)
            if stream is not None:
                stream.inbox.put(data)
                self.send(A_OKAY, arg1, arg0)
        elif cmd == A_OKAY:
            stream = self.streams.get(arg1)
            if stream is not None:
                stream.may_send.set()
        elif cmd == A_CLSE:
            stream = self.streams.pop(arg1, None)
            if stream is not None:
                stream.closed = True
                stream.may_send.set()
                stream.inbox.put(None)

    def handler_for(self, service: str):
        if service.startswith("shell") and ":" in service:
            return shell_service
        if service == "sync:":
            return sync_service
        if service.startswith("exec:"):
            return exec_service
        return None

    def run_handler(self, handler, stream: Stream, service: str) -> None:
        try:
            handler(self, stream, service)
        except (EOFError, OSError):
            pass
        finally:
            try:
                stream.close()
            except OSError:
                pass


def _spawn(dev: Connection, command: str, stderr: int) -> subprocess.Popen:
    return subprocess.Popen(
        ["/bin/sh", "-c", command],
        cwd=dev.root,
        env=dev.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
    )


def _pump(src, emit) -> None:
    for chunk in iter(lambda: os.read(src.fileno(), 65536), b""):
        emit(chunk)


def shell_service(dev: Connection, stream: Stream, service: str) -> None:
    options, _, command = service.partition(":")
    if "v2" not in options.split(","):
        return exec_service(dev, stream, "exec:" + command, merge=True)
    proc = _spawn(dev, command, subprocess.PIPE)

    def packet(kind: int):
        return lambda chunk: stream.write(struct.pack("<BI", kind, len(chunk)) + chunk)

    def stdin_pump() -> None:
        try:
            while True:
                kind, length = struct.unpack("<BI", stream.read_exact(5))
                payload = stream.read_exact(length)
                if kind == 0 and proc.stdin:
                    proc.stdin.write(payload)
                    proc.stdin.flush()
                elif kind == 4 and proc.stdin:
                    proc.stdin.close()
        except (EOFError, OSError, ValueError):
            if stream.closed and proc.poll() is None:
                proc.kill()  # the host went away: like adbd, do not leave the command running

    threading.Thread(target=stdin_pump, daemon=True).start()
    readers = [
        threading.Thread(target=_pump, args=(proc.stdout, packet(1)), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, packet(2)), daemon=True),
    ]
    for t in readers:
        t.start()
    for t in readers:
        t.join()
    rc = proc.wait()
    stream.write(struct.pack("<BI", 3, 1) + bytes([rc & 0xFF if rc >= 0 else 128 - rc]))


def exec_service(dev: Connection, stream: Stream, service: str, merge: bool = False) -> None:
    proc = _spawn(dev, service.partition(":")[2], subprocess.STDOUT if merge else subprocess.DEVNULL)
    assert proc.stdin is not None
    proc.stdin.close()
    _pump(proc.stdout, stream.write)
    proc.wait()


def _path(dev: Connection, raw: bytes) -> str:
    path = raw.decode("utf-8", "replace")
    return path if os.path.isabs(path) else os.path.join(dev.root, path)


def sync_service(dev: Connection, stream: Stream, service: str) -> None:
    while True:
        cmd, length = stream.read_exact(4), struct.unpack("<I", stream.read_exact(4))[0]
        if cmd == b"QUIT":
            return
        arg = stream.read_exact(length)
        if cmd == b"STAT":
            try:
                st = os.stat(_path(dev, arg))
                stream.write(
                    b"STAT" + struct.pack("<III", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime))
                )
            except OSError:
                stream.write(b"STAT" + struct.pack("<III", 0, 0, 0))
        elif cmd == b"LIST":
            base = _path(dev, arg)
            for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
                st = os.lstat(os.path.join(base, name))
                raw = name.encode()
                stream.write(
                    b"DENT"
                    + struct.pack(
                        "<IIII", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime), len(raw)
                    )
                    + raw
                )
            stream.write(b"DONE" + bytes(16))
        elif cmd == b"SEND":
            path, _, mode = arg.rpartition(b",")
            sync_receive_file(dev, stream, _path(dev, path), int(mode or b"420"))
        elif cmd == b"RECV":
            sync_send_file(stream, _path(dev, arg))
        else:
            stream.write(b"FAIL" + struct.pack("<I", 15) + b"unknown command")
            return


def sync_receive_file(dev: Connection, stream: Stream, path: str, mode: int) -> None:
    error = None
    fh = None
    try:
        os.makedirs(os.path.dirname(path) or dev.root, exist_ok=True)
        fh = open(path, "wb")
    except OSError as exc:
        error = str(exc)
    while True:  # the host sends all the data before it reads our answer
        cmd, length = stream.read_exact(4), struct.unpack("<I", stream.read_exact(4))[0]
        if cmd == b"DONE":
            break
        data = stream.read_exact(length)
        if fh is not None and cmd == b"DATA":
            fh.write(data)
    if fh is not None:
        fh.close()
        os.chmod(path, stat.S_IMODE(mode) or 0o644)
        os.utime(path, (length, length))
    if error:
        msg = error.encode()
        stream.write(b"FAIL" + struct.pack("<I", len(msg)) + msg)
    else:
        stream.write(b"OKAY" + struct.pack("<I", 0))


def sync_send_file(stream: Stream, path: str) -> None:
    try:
        fh = open(path, "rb")
    except OSError as exc:
        msg = str(exc).encode()
        stream.write(b"FAIL" + struct.pack("<I", len(msg)) + msg)
        return
    with fh:
        for chunk in iter(lambda: fh.read(SYNC_DATA_MAX), b""):
            stream.write(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
    stream.write(b"DONE" + struct.pack("<I", 0))


GETPROP = r"""#!/bin/sh
# getprop [NAME]: the emulated device's properties ($EDGENAS_FAKE_PROPS holds name=value lines).
if [ $# -eq 0 ]; then sed 's/^\([^=]*\)=\(.*\)$/[\1]: [\2]/' "$EDGENAS_FAKE_PROPS"; exit 0; fi
while IFS= read -r line; do
  case $line in "$1="*) printf '%s\n' "${line#*=}"; exit 0;; esac
done < "$EDGENAS_FAKE_PROPS"
echo
"""


def properties_env(root: str, serialno: str) -> dict[str, str]:
    """Install ``getprop`` beside the device root; returns the environment its commands run with."""
    props, bindir = root + ".props", root + ".bin"
    if not os.path.exists(props):
        with open(props, "w") as fh:
            fh.write(f"ro.serialno={serialno}\nro.product.model={serialno}\n")
    os.makedirs(bindir, exist_ok=True)
    getprop = os.path.join(bindir, "getprop")
    with open(getprop, "w") as fh:
        fh.write(GETPROP)
    os.chmod(getprop, 0o755)
    return dict(os.environ, PATH=f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                EDGENAS_FAKE_PROPS=props)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="the device's directory (commands run here)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: let the kernel choose")
    parser.add_argument("--serialno", default="edgenas-fake")
    args = parser.parse_args()
    os.makedirs(args.root, exist_ok=True)
    root = os.path.abspath(args.root)
    env = properties_env(root, args.serialno)
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((args.host, args.port))
    server.listen(16)
    print(f"PORT {server.getsockname()[1]}", flush=True)
    while True:
        sock, _ = server.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(sock, root, args.serialno, env)
        threading.Thread(target=conn.serve, daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
