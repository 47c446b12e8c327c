"""Data sources, transforms and their errors (no training here; each test takes well under a second)."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgenas.training.data import DataError, compute_normalization, load_data
from edgenas.training.data import transforms as T


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", 32)


def test_digits_split_is_deterministic_and_disjoint(digits) -> None:
    again = load_data("digits", 32)
    assert digits.num_classes == 10 and digits.num_train + digits.num_val == 1797
    assert torch.equal(digits.train_x, again.train_x) and torch.equal(digits.val_y, again.val_y)
    assert digits.train_x.dtype == torch.uint8 and tuple(digits.train_x.shape[1:]) == (3, 32, 32)
    assert 300 < digits.num_val < 400
    assert not digits.flip  # a mirrored digit is not the same digit
    # every class is in both splits (stratified)
    assert set(digits.val_y.tolist()) == set(range(10))


def test_digits_are_scikit_learns_read_without_importing_it(monkeypatch) -> None:
    """The default data is read from scikit-learn's data file directly (its import was 2 s of every
    training command's start-up): the same images and labels as its own loader, in the same order."""
    from sklearn.datasets import load_digits

    from edgenas.training.data.sources import _digits_table, load_digits_data

    bunch = load_digits()
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # its loader cannot be imported now
    table = _digits_table()
    assert np.array_equal(table[:, :64], bunch.data) and np.array_equal(table[:, 64], bunch.target)
    loaded = load_digits_data(8)
    assert loaded.train_x.shape[0] + loaded.val_x.shape[0] == 1797


def test_normalization_is_computed_from_training_images(digits) -> None:
    norm = digits.normalization
    x = digits.train_x.double() / 255
    assert norm["mean"][0] == pytest.approx(float(x[:, 0].mean()), abs=1e-4)
    assert norm["std"][0] == pytest.approx(float(x[:, 0].std()), abs=1e-3)
    batch = digits.prepare(digits.train_x, 32)
    assert float(batch.mean()) == pytest.approx(0.0, abs=1e-3)


def test_train_batches_follow_resolution_and_generator(digits) -> None:
    idx = torch.arange(16)
    a, ya = digits.train_batch(idx, 24, torch.Generator().manual_seed(3))
    b, _ = digits.train_batch(idx, 24, torch.Generator().manual_seed(3))
    c, _ = digits.train_batch(idx, 28, torch.Generator().manual_seed(4))
    assert a.shape == (16, 3, 24, 24) and c.shape == (16, 3, 28, 28)
    assert torch.equal(a, b) and torch.equal(ya, digits.train_y[:16])


def test_full_crop_without_flip_is_a_plain_resize() -> None:
    x = torch.rand(4, 3, 16, 16)
    out = T.random_resized_crop(x, 16, torch.Generator().manual_seed(0), scale=(1, 1),
                                ratio=(1, 1))
    assert torch.allclose(out, x, atol=1e-5)
    flipped = T.random_resized_crop(x, 16, torch.Generator().manual_seed(0), scale=(1, 1),
                                    ratio=(1, 1), flip=True)
    for i in range(4):  # each image is either unchanged or mirrored
        assert (torch.allclose(flipped[i], x[i], atol=1e-5)
                or torch.allclose(flipped[i], x[i].flip(-1), atol=1e-5))


def test_calibration_images_are_seeded_and_capped(digits) -> None:
    cal = digits.calibration_images(2000, 24)
    assert cal.shape == (digits.num_train, 3, 24, 24)  # fewer than 2000: all of them
    small = digits.calibration_images(100, 28)
    assert small.shape == (100, 3, 28, 28)
    assert torch.equal(digits.calibration_indices(100), digits.calibration_indices(100))


def _png(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_image_folder_mixed_sizes(tmp_path: Path) -> None:
    for i in range(5):
        _png(tmp_path / "cat" / f"{i}.png", (20 + i * 7, 30), (200, 10, 10))
        _png(tmp_path / "dog" / f"{i}.jpg", (40, 17 + i), (10, 10, 200))
    data = load_data(tmp_path, 24)
    assert data.labels == ["cat", "dog"] and data.flip
    assert data.num_train + data.num_val == 10 and data.train_x.shape[1:] == (3, 24, 24)
    red = data.train_x[data.train_y == 0].float().mean((0, 2, 3))
    assert red[0] > 150 and red[2] < 60


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such"):
        load_data(tmp_path / "missing", 24)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        load_data(tmp_path / "empty", 24)
    _png(tmp_path / "one" / "only" / "a.png", (8, 8), (1, 2, 3))
    with pytest.raises(DataError, match="only one class"):
        load_data(tmp_path / "one", 24)
    root = tmp_path / "bad"
    for c in ("a", "b"):
        for i in range(3):
            _png(root / c / f"{i}.png", (16, 16), (i, i, i))
    full = (root / "b" / "1.png").read_bytes()
    (root / "b" / "1.png").write_bytes(full[: len(full) // 2])  # truncated
    with pytest.raises(DataError, match=r"b/1\.png.*truncated|b/1\.png"):
        load_data(root, 24)
    (root / "b" / "1.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"1\.png"):
        load_data(root, 24)


def _cifar_dir(root: Path, per_batch: int = 20) -> Path:
    root.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.randint(0, 256, (per_batch, 3072)).astype(np.uint8),
                 b"labels": list(rng.randint(0, 10, per_batch))}
        (root / name).write_bytes(pickle.dumps(batch))
    names = [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                  "horse", "ship", "truck")]
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    return root


def test_cifar_directory(tmp_path: Path) -> None:
    root = _cifar_dir(tmp_path / "cifar-10-batches-py")
    data = load_data(tmp_path, 32)  # the parent folder works too
    assert data.num_train == 100 and data.num_val == 20 and data.labels[0] == "airplane"
    raw = pickle.loads((root / "data_batch_1").read_bytes())[b"data"][0]
    assert torch.equal(data.train_x[0].flatten(), torch.from_numpy(raw))
    (root / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing data_batch_3"):
        load_data(root, 32)


def test_cifar_refuses_code_in_pickles(tmp_path: Path) -> None:
    root = _cifar_dir(tmp_path / "c")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (root / "data_batch_2").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match="data_batch_2"):
        load_data(root, 32)


def test_compute_normalization_guards_constant_images() -> None:
    norm = compute_normalization(torch.full((4, 3, 8, 8), 7, dtype=torch.uint8))
    assert min(norm["std"]) >= 1e-3
