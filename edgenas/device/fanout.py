"""One operation on many devices at once: the per-device result, the parallel fan-out with a failure
budget and cancellation, and the device session each operation works through.

Fleet verbs (push, rollback, status, bench, predict) and measurement campaigns share it: each gives
a function of (device, cancel) that returns a :class:`DeviceResult`; :func:`fan_out` runs them in
parallel, stops starting new devices once the failure budget is spent or the command is cancelled,
and turns an exception on one device into that device's ``failed`` row (never the whole command's).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgenas.core.errors import EdgeNASError
from edgenas.device.cancel import Cancel
from edgenas.device.connect import open_transport
from edgenas.device.registry import Device
from edgenas.device.session import DeviceSession
from edgenas.device.transports import Transport


class FanOutError(EdgeNASError):
    """A fan-out's options are out of range (``--parallel``, ``--max-fail-percent``)."""

STATUSES = ("ok", "unchanged", "failed", "rolled-back", "skipped")
DEFAULT_PARALLEL = 8
# A rollout stops starting new devices once more than this share failed: a broken model must not reach
# the whole fleet (Ansible's default of no limit let it).  --max-fail-percent 100 restores that.
DEFAULT_MAX_FAIL_PERCENT = 10.0
LOCK_WAIT_S = 600.0


@dataclass
class DeviceResult:
    """The outcome of one operation on one device (one row of the result table)."""

    device: str
    status: str  # ok | unchanged | failed | rolled-back | skipped
    model: str | None = None
    version: str | None = None
    sha256: str | None = None
    previous_sha256: str | None = None
    reason: str | None = None
    seconds: float = 0.0
    bytes_sent: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """Failed, or rolled back after its health check failed: either way not on the new model."""
        return self.status in ("failed", "rolled-back")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def short_error(exc: BaseException, device: str | None = None) -> str:
    """One line for the table: the message, without the device-name prefix transports add (the table
    already has a device column)."""
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    if device and text.startswith(f"{device}: "):
        text = text[len(device) + 2:]
    return text




@dataclass
class FanOut:
    """Results in the order the devices were given, and whether the failure limit stopped the run."""

    results: list[DeviceResult]
    limit_reached: bool = False

    @property
    def failures(self) -> int:
        return sum(r.failed for r in self.results)

    @property
    def ok(self) -> bool:
        return not self.limit_reached and self.failures == 0


def fan_out(
    devices: Sequence[Device],
    work: Callable[[Device, Cancel], DeviceResult],
    *,
    parallel: int = DEFAULT_PARALLEL,
    max_fail_percent: float = DEFAULT_MAX_FAIL_PERCENT,
    on_result: Callable[[DeviceResult], None] | None = None,
    cancel: Cancel | None = None,
) -> FanOut:
    """Run ``work`` on every device, at most ``parallel`` at once.

    ``work`` should return a DeviceResult (``failed`` included) rather than raise; anything it raises is
    turned into a failed result for that device.  Once failures exceed ``max_fail_percent`` of all
    devices, devices not started yet are returned as ``skipped``.  ``on_result`` is called in the
    calling thread as each device finishes (the workspace database is written there: SQLite
    connections stay in the thread that opened them).

    On Ctrl-C or SIGTERM (KeyboardInterrupt here, in the main thread) every device session opened with
    ``cancel`` stops its remote job and releases its lock before this returns the interrupt.
    """
    cancel = cancel or Cancel()
    if parallel < 1:
        raise FanOutError(f"--parallel must be at least 1 (got {parallel})")
    if not 0 <= max_fail_percent <= 100:
        raise FanOutError(f"--max-fail-percent must be within 0..100 (got {max_fail_percent:g})")
    total = len(devices)
    results: dict[str, DeviceResult] = {}
    pending = list(devices)
    limit_reached = False
    failures = 0

    def guarded(dev: Device) -> DeviceResult:
        start = time.monotonic()
        try:
            result = work(dev, cancel)
        except EdgeNASError as exc:
            result = DeviceResult(dev.name, "failed", reason=short_error(exc, dev.name))
        except Exception as exc:  # noqa: BLE001 - one device's bug must not sink the others
            result = DeviceResult(dev.name, "failed", reason=f"internal error: {exc!r}")
        if not result.seconds:
            result.seconds = round(time.monotonic() - start, 3)
        return result

    with ThreadPoolExecutor(max_workers=min(parallel, max(total, 1))) as pool:
        running: dict[Future[DeviceResult], Device] = {}
        try:
            while pending or running:
                while pending and len(running) < parallel and not limit_reached:
                    dev = pending.pop(0)
                    running[pool.submit(guarded, dev)] = dev
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    dev = running.pop(fut)
                    result = fut.result()
                    results[dev.name] = result
                    failures += result.failed
                    if on_result is not None:
                        on_result(result)
                    if total and failures * 100.0 / total > max_fail_percent:
                        limit_reached = True
        except BaseException:
            pending.clear()
            cancel.cancel()  # every device: stop the remote job and release the lock, at once
            raise
        limit_reached = limit_reached and bool(pending)  # the limit stopped nothing: not "reached"
        for dev in pending:
            results[dev.name] = DeviceResult(
                dev.name,
                "skipped",
                reason=f"not started: more than {max_fail_percent:g}% of devices failed",
            )
    return FanOut([results[d.name] for d in devices], limit_reached)


def session_for(home: Path, device: Device, cancel: Cancel,
                opener: Callable[[Device, Path], Transport] = open_transport) -> DeviceSession:
    """The device session a fleet verb works through (its lock is the one every verb takes)."""
    return DeviceSession(home, device, cancel=cancel, lock_timeout=LOCK_WAIT_S, opener=opener)


def device_step(home: Path, device: Device, result: DeviceResult, work: Callable[[DeviceSession], None],
                cancel: Cancel | None = None,
                opener: Callable[[Device, Path], Transport] = open_transport) -> DeviceResult:
    """The frame of one fleet operation on one device: ``work`` runs timed, through the device's session,
    holding its lock; an edgenas error (connecting included) becomes the row's ``failed`` status and
    one-line reason instead of an exception, so one dead device never stops the others."""
    start = time.monotonic()
    try:
        with session_for(home, device, cancel or Cancel(), opener) as session, session.locked():
            work(session)
    except EdgeNASError as exc:
        result.status, result.reason = "failed", short_error(exc, device.name)
    result.seconds = round(time.monotonic() - start, 3)
    return result
