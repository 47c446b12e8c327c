"""Two real processes under ``torchrun`` (gloo, CPU): train, save, get killed, resume, finish.

The job trains from a streamed JPEG folder with a decoding worker per rank.  Each rank appends the
image indices of every step to its own file, so the test can check that the ranks never share an
image within a step.  The whole process group is SIGKILLed once a training state exists; the rerun
with ``resume`` must finish, and its checkpoint must load in this single process with
``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from edgenas.supernets import load_supernet
from tests.integration.test_data_stream import make_folder

DRIVER = r"""
import json, os, sys
from edgenas.training.train import TrainConfig, train_supernet
root, out, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
rank = int(os.environ["RANK"])
seen = open(f"{out}.rank{rank}.jsonl", "a")
def record(trainer):
    seen.write(json.dumps([trainer.global_step - 1, trainer.last_indices.tolist()]) + "\n")
    seen.flush()
cfg = TrainConfig(out=out, space="mbv3-tiny", data=root, epochs=3, batch_size=8,
                  data_mode="stream", workers=1)
train_supernet(cfg, resume=resume, progress=False, save_seconds=0, threads=1, on_step=record)
"""

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"


def _launch(tmp: Path, folder: Path, resume: bool) -> subprocess.Popen[str]:
    (tmp / "driver.py").write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).parents[2])}
    return subprocess.Popen(
        [TORCHRUN, "--standalone", "--nproc-per-node", "2", str(tmp / "driver.py"), str(folder),
         str(tmp / "sn.pt"), "1" if resume else "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)


@pytest.mark.slow
def test_two_processes_train_are_killed_resume_and_finish(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", classes=3, per_class=40)
    state = tmp_path / "sn.pt.state"
    first = _launch(tmp_path, folder, resume=False)
    deadline = time.monotonic() + 180
    while not state.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, first.communicate()[0][-3000:]
    os.killpg(first.pid, signal.SIGKILL)  # the launcher and both ranks, no chance to save
    first.wait(30)
    saved = torch.load(state, weights_only=True)
    killed_at = saved["counters"]["global_step"]
    assert killed_at >= 1 and saved["config"]["data_mode"] == "stream"

    second = _launch(tmp_path, folder, resume=True)
    output, _ = second.communicate(timeout=300)
    assert second.returncode == 0, output[-3000:]
    assert not state.exists()  # removed on success

    net = load_supernet(tmp_path / "sn.pt")  # one process, weights_only=True inside
    assert net.meta["training"]["world_size"] == 2 and net.meta["training"]["complete"]
    total = net.meta["training"]["steps"]
    assert killed_at < total  # the kill really interrupted training
    raw = torch.load(tmp_path / "sn.pt", weights_only=True)
    assert set(raw["state_dict"]) == set(net.state_dict())

    steps: dict[int, list[set[int]]] = {}
    for rank in (0, 1):
        for line in (tmp_path / f"sn.pt.rank{rank}.jsonl").read_text().splitlines():
            step, idx = json.loads(line)
            steps.setdefault(step, [set(), set()])[rank] |= set(idx)
    # every step after the resume point ran, on both ranks, with disjoint images
    assert set(range(killed_at, total)) <= set(steps)
    for step, (a, b) in steps.items():
        assert a and b and not a & b, step
