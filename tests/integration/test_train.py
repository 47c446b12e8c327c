"""Progressive-shrinking training: the schedule, the loss falling, and exact resume after a kill.

Runs on a small slice of the embedded digits with one CPU thread.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from edgenas.core.progress import Progress
from edgenas.space.spec import SearchSpace
from edgenas.supernets.checkpoint import load_checkpoint
from edgenas.supernets.mbv3 import load_supernet
from edgenas.training.data import load_data
from edgenas.training.schedule import DEFAULT_SCHEDULE, Phase, PhasePlan, lr_at, make_plan
from edgenas.training.train import TrainConfig, TrainingInterrupted, state_path, train_supernet

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def small_digits():
    return load_data("digits", 32, limit=192)


# ---------------------------------------------------------------------------------- schedule


def test_default_schedule_is_progressive_shrinking() -> None:
    space = SearchSpace.load("mbv3-tiny")
    names = [p.name for p in DEFAULT_SCHEDULE]
    assert names == ["full", "kernel", "depth-1", "depth-2", "expand-1", "expand-2"]
    full = DEFAULT_SCHEDULE[0].choices(space)
    assert full == ((7,), (4,), (6,)) and not DEFAULT_SCHEDULE[0].kd
    assert DEFAULT_SCHEDULE[2].choices(space)[1] == (3, 4)
    assert DEFAULT_SCHEDULE[3].choices(space)[1] == (2, 3, 4)
    assert DEFAULT_SCHEDULE[4].choices(space)[2] == (4, 6) and DEFAULT_SCHEDULE[4].reorder
    assert DEFAULT_SCHEDULE[5].choices(space)[2] == (3, 4, 6) and DEFAULT_SCHEDULE[5].reorder
    assert sum(p.share for p in DEFAULT_SCHEDULE) == pytest.approx(1.0)


def test_time_budget_allocates_phase_time_by_share() -> None:
    cost = {p.name: 0.1 * (i + 1) for i, p in enumerate(DEFAULT_SCHEDULE)}
    plans = make_plan(DEFAULT_SCHEDULE, 1000, 64, seconds=600,
                      step_seconds=lambda p: cost[p.name])
    for plan in plans:
        assert plan.steps * cost[plan.phase.name] == pytest.approx(600 * plan.phase.share, rel=0.05)
    by_epochs = make_plan(DEFAULT_SCHEDULE, 640, 64, epochs=10)
    assert sum(p.steps for p in by_epochs) == pytest.approx(100, abs=3)
    assert by_epochs[0].lr == DEFAULT_SCHEDULE[0].lr
    assert make_plan(DEFAULT_SCHEDULE, 640, 128, epochs=1)[0].lr == 2 * DEFAULT_SCHEDULE[0].lr


def test_lr_warms_up_then_decays_to_zero() -> None:
    plan = PhasePlan(Phase("p", 1, 1, 1, share=1, lr=0.2, warmup=0.1), 100, 0.2)
    lrs = [lr_at(plan, s) for s in range(100)]
    assert lrs[0] < lrs[9] == pytest.approx(0.2)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.001


# ---------------------------------------------------------------------------------- training


def test_loss_falls_and_checkpoint_loads(tmp_path: Path, small_digits) -> None:
    losses: list[float] = []
    full_only = [asdict(Phase("full", 1, 1, 1, share=1.0, lr=0.1, kd=False))]
    cfg = TrainConfig(out=str(tmp_path / "net.pt"), batch_size=32, epochs=4, schedule=full_only)
    events: list[Progress] = []
    result = train_supernet(cfg, data=small_digits, progress=events.append,
                            on_step=lambda t: losses.append(t._last_loss))
    assert len(losses) == 24
    # progress goes through edgenas.core.progress: one counted "train" event per step, then the result
    steps = [e for e in events if e.done is not None]
    assert [(e.source, e.done, e.total) for e in steps] == [("train", i, 24) for i in range(1, 25)]
    assert "loss" in steps[-1].message and "ETA" in steps[-1].message
    assert events[0].message.startswith("training ") and events[0].done is None
    assert events[-1].message.startswith("done in ") and "val top-1" in events[-1].message
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2
    net = load_supernet(result.out)
    assert net.meta["data"] == "digits" and net.meta["training"]["complete"]
    assert set(net.meta["val_top1"]) == {"min", "max"}
    assert net.normalization == small_digits.normalization
    assert not state_path(result.out).exists()  # finished: no state left behind
    log = [json.loads(line) for line in (tmp_path / "net.pt.log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "start" and log[-1]["event"] == "done"


def test_in_process_interrupt_and_resume_match(tmp_path: Path, small_digits) -> None:
    schedule = [asdict(p) for p in (
        Phase("full", 1, 1, 1, share=0.4, lr=0.1, kd=False),
        Phase("kernel", 3, 1, 1, share=0.2, lr=0.05),
        Phase("expand", 3, 3, 3, share=0.4, lr=0.05, subnets=2, reorder=True, include_min=True),
    )]

    def config(name: str) -> TrainConfig:
        return TrainConfig(out=str(tmp_path / name), batch_size=32, epochs=2, schedule=schedule)

    ref = train_supernet(config("ref.pt"), data=small_digits, progress=False)

    def stop_at_7(trainer) -> None:  # mid "kernel" phase: teacher and optimizer state in play
        if trainer.global_step == 7:
            trainer.stop_requested = True

    with pytest.raises(TrainingInterrupted, match="--resume"):
        train_supernet(config("cut.pt"), data=small_digits, progress=False, on_step=stop_at_7)
    assert state_path(tmp_path / "cut.pt").exists()
    resumed = train_supernet(config("cut.pt"), data=small_digits, progress=False, resume=True)
    assert resumed.steps == ref.steps
    _assert_same_weights(ref.out, resumed.out)


def _assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"]
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.allclose(sa[key].float(), sb[key].float(), atol=1e-5, rtol=1e-4), key


# ------------------------------------------------------------------- a real process, killed


# --calib: the final evaluation re-estimates BN on 32 of the training images (fewer than --limit)
CLI_ARGS = ["--data", "digits", "--limit", "64", "--batch-size", "16", "--epochs", "6",
            "--threads", "1", "--seed", "3", "--calib", "32"]


def _cli(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", "from edgenas.cli import main; main()",
                             "supernet", "train",
                             "--out", str(out), *CLI_ARGS, *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _checkpoints(out: Path) -> list[int]:
    log = Path(str(out) + ".log.jsonl")
    if not log.exists():
        return []
    return [rec["step"] for rec in map(json.loads, log.read_text().splitlines())
            if rec["event"] == "checkpoint"]


def _wait_for_checkpoint(out: Path, proc: subprocess.Popen, min_step: int,
                         timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training ended before step {min_step}: {proc.stderr.read()}")
        if any(step >= min_step for step in _checkpoints(out)):
            return
        time.sleep(0.05)
    pytest.fail("no checkpoint in time")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> tuple[Path, str]:
    """The uninterrupted run the killed ones must reproduce, with its progress on (stderr a pipe)."""
    out = tmp_path_factory.mktemp("ref") / "net.pt"
    proc = _cli(out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out, err


def test_cli_run_killed_twice_resumes_to_the_same_weights(tmp_path: Path,
                                                         reference_run: tuple[Path, str]) -> None:
    """SIGTERM (a clean stop that says how to resume), then SIGKILL of the resumed run (nothing but
    the last epoch's state survives), then a resume to the end: the weights and the final
    evaluation are the uninterrupted run's."""
    reference, _ = reference_run
    total = load_supernet(reference).meta["training"]["steps"]
    out = tmp_path / "net.pt"
    proc = _cli(out, "--quiet")
    _wait_for_checkpoint(out, proc, 6)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "--resume" in err
    assert state_path(out).exists() and not out.exists()
    stopped = max(_checkpoints(out))
    assert stopped < total

    proc = _cli(out, "--quiet", "--resume")
    _wait_for_checkpoint(out, proc, stopped + 1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert state_path(out).exists() and not out.exists()

    proc = _cli(out, "--quiet", "--resume")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    _assert_same_weights(reference, out)
    ref_meta, meta = load_supernet(reference).meta, load_supernet(out).meta
    assert meta["val_top1"] == ref_meta["val_top1"]
    assert meta["training"]["steps"] == total


def test_resume_without_state_is_a_clear_error(tmp_path: Path) -> None:
    proc = _cli(tmp_path / "none.pt", "--resume")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "nothing to resume" in err


def test_cli_progress_off_a_terminal_is_a_few_plain_lines(reference_run: tuple[Path, str]) -> None:
    """Without --quiet and with stderr not a terminal (CI, a pipe, a log file): the run's start, a
    step line at most every few seconds (not one per step) and its result, each on its own line,
    nothing redrawn."""
    out, stderr = reference_run
    lines = stderr.splitlines()
    assert "\r" not in stderr
    assert lines[0].startswith("[train] training ") and lines[-1].startswith("[train] done in ")
    steps = [line for line in lines if line.startswith("[train] ") and " img/s " in line]
    total = int(steps[-1].split()[1].split("/")[1])
    assert steps[-1].split()[1] == f"{total}/{total}"  # the last step is always shown
    assert total > 10 and len(steps) < total  # throttled: not one line per step
    # --calib: the final evaluation re-estimated BN on 32 of the training images
    assert load_supernet(out).meta["val_calib_images"] == 32
