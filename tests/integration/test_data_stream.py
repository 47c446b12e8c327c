"""The streamed ImageFolder pipeline: same split as in memory, exact order and resume, real workers.

The folders are real JPEG files written with Pillow; batches are decoded by real DataLoader worker
processes.  The large-data-set test (20 000 JPEGs under a memory limit) is in
tests/integration/test_train_stream_scale.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgenas.training.data import DataError, StreamedImageData, load_data
from edgenas.training.data.stream import BatchOrder, StepBatchSampler, decode_center, decode_train
from edgenas.training.train import TrainConfig, Trainer, step_resolution, train_supernet


def make_folder(root: Path, classes: int = 3, per_class: int = 24, size: tuple[int, int] = (40, 30),
                seed: int = 0) -> Path:
    """JPEGs whose colour depends on the class, so a network can learn them."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.zeros((size[1], size[0], 3), dtype=np.float64)
            base[..., c % 3] = 180
            img = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i:05d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("imgs"))


def test_streamed_split_matches_the_in_memory_split(folder: Path) -> None:
    mem = load_data(folder, 32, mode="memory")
    stream = load_data(folder, 32, mode="stream", workers=0)
    assert isinstance(stream, StreamedImageData) and stream.streamed and not mem.streamed
    assert (stream.num_train, stream.num_val) == (mem.num_train, mem.num_val)
    assert torch.equal(stream.train_y, mem.train_y) and torch.equal(stream.val_y, mem.val_y)
    assert stream.describe()["mode"] == "stream" and mem.describe()["mode"] == "memory"
    # the red class is red after normalisation statistics measured on a sample
    assert stream.normalization["mean"][0] > stream.normalization["mean"][2] - 0.2


def test_stream_refuses_sources_it_cannot_stream() -> None:
    with pytest.raises(DataError, match="only an ImageFolder can be streamed"):
        load_data("digits", 32, mode="stream")
    with pytest.raises(DataError, match="data mode must be one of"):
        load_data("digits", 32, mode="disk")


def test_decoders_give_the_requested_size_and_are_seeded(folder: Path) -> None:
    path = str(next(folder.rglob("*.jpg")))
    assert decode_center(path, 24).shape == (3, 24, 24)
    a = decode_train(path, 28, 7, (0.35, 1.0), True)
    assert a.shape == (3, 28, 28) and a.dtype == np.uint8
    assert np.array_equal(a, decode_train(path, 28, 7, (0.35, 1.0), True))
    assert not np.array_equal(a, decode_train(path, 28, 8, (0.35, 1.0), True))


def _order(n: int, gb: int, world: int, rank: int) -> BatchOrder:
    return BatchOrder(n, gb, world, rank,
                      lambda e: torch.randperm(n, generator=torch.Generator().manual_seed(e)))


def _take(sampler: StepBatchSampler, k: int) -> list[list[tuple[int, int, int]]]:
    it = iter(sampler)
    return [next(it) for _ in range(k)]


def test_sampler_resumes_mid_epoch_and_ranks_are_disjoint() -> None:
    res = lambda step: step_resolution(0, step, (24, 28, 32))  # noqa: E731
    full = _take(StepBatchSampler(_order(50, 8, 1, 0), 0, 0, 0, res, 5), 15)
    # resume at step 9 from the counters the trainer would have saved
    order, epoch, pos, perm = _order(50, 8, 1, 0), 0, 0, _order(50, 8, 1, 0).perm(0)
    for _ in range(9):
        _, epoch, pos, perm, _ = order.next(epoch, pos, perm)
    again = _take(StepBatchSampler(order, epoch, pos, 9, res, 5), 6)
    assert again == full[9:]
    assert {r for batch in full for _, r, _ in batch} == {24, 28, 32}  # elastic resolution
    # two ranks: disjoint halves of each global batch, together the single-process batch
    r0 = _take(StepBatchSampler(_order(50, 8, 2, 0), 0, 0, 0, res, 5), 10)
    r1 = _take(StepBatchSampler(_order(50, 8, 2, 1), 0, 0, 0, res, 5), 10)
    for a, b, whole in zip(r0, r1, full):
        ia, ib = {i for i, _, _ in a}, {i for i, _, _ in b}
        assert not ia & ib and ia | ib == {i for i, _, _ in whole}
        assert len(ia) == len(ib) == 4


def _cfg(out: Path, folder: Path) -> TrainConfig:
    return TrainConfig(out=str(out), space="mbv3-tiny", data=str(folder), epochs=0.6,
                       batch_size=8, data_mode="stream", workers=1)


@pytest.mark.slow
def test_streamed_training_resumes_exactly(folder: Path, tmp_path: Path) -> None:
    """Stop after a few steps, resume in a fresh trainer: same weights as an uninterrupted run."""
    straight = train_supernet(_cfg(tmp_path / "a.pt", folder), progress=False,
                              handle_signals=False)
    assert straight.steps >= 6

    def stop(trainer: Trainer) -> None:
        if trainer.global_step == 3:
            trainer.stop_requested = True

    from edgenas.training.train import TrainingInterrupted

    with pytest.raises(TrainingInterrupted):
        train_supernet(_cfg(tmp_path / "b.pt", folder), progress=False, handle_signals=False,
                       on_step=stop)
    resumed = train_supernet(_cfg(tmp_path / "b.pt", folder), resume=True, progress=False,
                             handle_signals=False)
    assert resumed.steps == straight.steps
    a = torch.load(tmp_path / "a.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
