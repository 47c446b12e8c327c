"""Shared fixtures.  The device fleet (real sshd and adb devices) is one session fixture, built on first
use by a ``@pytest.mark.fleet`` test and torn down at the end of the session (under pytest-xdist, once
per worker that runs such a test: the workers' fleets share nothing).

``make test`` runs three xdist workers, handing out whole modules (``--dist loadfile``).  The modules
that take longest are collected first (:data:`LONGEST_FIRST`) so that no long module starts last while
the other workers sit idle."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fleet import Fleet
from tests.support.fleet.arm_fixture import arm_fleet  # noqa: F401  (session fixture: emulated Pis)
from tests.support.fleet.fleet import standing
from tests.support.tiny import Tiny, build_tiny_supernet

REPO = Path(__file__).resolve().parent.parent
LITERT_PYTHON = REPO / ".venv" / "bin" / "python"  # ai-edge-litert, numpy 2 (and TensorFlow)
TFLITE_PYTHON = REPO / ".venv-tflite" / "bin" / "python"  # tflite-runtime 2.14, numpy < 2
# 15 % of one CPU: where the CFS bandwidth limit overruns (a 25 % quota may run only ≈2× slower), so
# the slow device is given less to land near the ≈4× a 25 % quota gives on bare metal.
SLOW_QUOTA = 0.15

# The modules with the longest run, longest first (the rest keep their order after them).  A wrong or
# stale entry costs only balance between the workers, never a test.
LONGEST_FIRST = (
    "system/test_faults.py",
    "system/test_arm_fleet.py",
    "integration/test_train.py",
    "integration/test_quickstart.py",
    "integration/test_fleet_specialize.py",
    "integration/test_train_memory_limit.py",
    "system/test_bench_measure.py",
    "system/test_arm_fleet_ops.py",
    "integration/test_pretrained_path.py",
    "integration/test_measure_resume.py",
    "integration/test_export.py",
    "integration/test_accuracy_predictor.py",
    "integration/test_evaluate.py",
    "integration/test_transfer_predictor.py",
    "integration/test_train_torchrun.py",
    "system/test_fleet.py",
    "integration/test_memory_budget.py",
    "integration/test_train_stream_scale.py",
    "integration/test_data_stream.py",
)


def pytest_configure(config: pytest.Config) -> None:
    """One compute thread per process for torch (OpenMP), MKL and OpenBLAS, here and in every process
    a test starts: the workers share two cores with device processes, and OpenMP threads that spin
    while they wait for a core turn a module's seconds into minutes.  Runs before collection imports
    torch.  A test about threads passes them explicitly (``bench --threads``, TFLite's thread pool)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Reorder whole modules, longest first (a stable sort: tests inside a module keep their order)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def key(item: pytest.Item) -> int:
        module = Path(str(item.path)).relative_to(REPO / "tests").as_posix()
        return rank.get(module, len(rank))

    items.sort(key=key)


@pytest.fixture(scope="session")
def fleet() -> Iterator[Fleet]:
    """SSH devices ssh1 (LiteRT), ssh2 (tflite-runtime), slow (ssh2's Python under a CPU quota on one
    core) and victim (for destructive faults); ADB devices adb1 and adb2 (adb2 for kill/restart)."""
    for python in (LITERT_PYTHON, TFLITE_PYTHON):
        if not python.exists():
            pytest.fail(f"the fleet needs {python}: run `make setup` first", pytrace=False)
    with pytest.MonkeyPatch.context() as mp:

        def build(fleet: Fleet) -> None:
            fleet.add_ssh("ssh1", str(LITERT_PYTHON))
            fleet.add_ssh("ssh2", str(TFLITE_PYTHON))
            fleet.add_ssh("slow", str(TFLITE_PYTHON), cpu_quota=SLOW_QUOTA, cpus="0")
            fleet.add_ssh("victim", str(TFLITE_PYTHON))
            fleet.add_adb("adb1", str(TFLITE_PYTHON))
            fleet.add_adb("adb2", str(TFLITE_PYTHON))
            assert fleet.adb_server is not None
            # edgenas and the adb client find the fleet's private adb server through this variable.
            mp.setenv("ANDROID_ADB_SERVER_PORT", str(fleet.adb_server.port))

        with standing("the test fleet", build) as fleet:
            yield fleet


@pytest.fixture(scope="session")
def tiny_supernet(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    """The run's seed-0 mbv3-tiny supernet (digits labels, random weights) and its shared export
    cache, built once for both xdist workers (tests/support/tiny.py)."""
    return build_tiny_supernet(tmp_path_factory)


@pytest.fixture
def user_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty $HOME, so the real ~/.ssh/config and ~/.ssh/known_hosts never leak into a test."""
    home = tmp_path / "userhome"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A fresh edgenas workspace (``--home``)."""
    path = tmp_path / "ws"
    path.mkdir()
    return path
