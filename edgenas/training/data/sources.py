"""Data sources: the embedded digits, an ImageFolder directory, a CIFAR-10 python-pickle directory.

Each loader returns a :class:`RawData` of square ``uint8`` NCHW tensors already split into train and
validation, so the rest of the pipeline (augmentation, normalisation, batching) is source-agnostic.
Splits that the source does not provide are made with a fixed seed, so the validation set never
depends on the training seed and accuracies stay comparable between runs.
"""

from __future__ import annotations

import io
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgenas.core.errors import DataError
from edgenas.core.threads import usable_cores
from edgenas.training.data.transforms import square_uint8

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SPLIT_SEED = 0
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")


@dataclass
class RawData:
    """Decoded images of one data set; ``flip``/``crop_scale`` say which augmentations fit it."""

    name: str
    labels: list[str]
    train_x: torch.Tensor  # uint8 N,3,S,S
    train_y: torch.Tensor  # int64 N
    val_x: torch.Tensor
    val_y: torch.Tensor
    flip: bool
    crop_scale: tuple[float, float]


def split_indices(labels: np.ndarray, val_fraction: float, seed: int = SPLIT_SEED
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A stratified, seeded train/val split (each class keeps ``val_fraction`` of its images)."""
    rng = np.random.RandomState(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction))
        if len(idx) > 1:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


# ------------------------------------------------------------------------------------------ digits


def _digits_table() -> np.ndarray:
    """The digits as scikit-learn ships them: 1797 rows of 64 pixels (0..16) and the label.

    Read from the package's data file without importing scikit-learn, whose import (2 s of CPU) was
    most of the data step of every command that trains or evaluates on the default data; the
    package's own loader is the fallback should the file move."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    origin = Path(spec.origin).parent if spec is not None and spec.origin else None
    path = origin / "datasets" / "data" / "digits.csv.gz" if origin else None
    if path is not None and path.is_file():
        table = np.loadtxt(path, delimiter=",")
        if table.shape == (1797, 65):
            return table
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.column_stack([bunch.data, bunch.target])


def load_digits_data(size: int, val_fraction: float = 0.2) -> RawData:
    """scikit-learn's 8×8 handwritten digits (1797 images, grey 0..16), upsampled and made RGB.

    No horizontal flip: a mirrored digit is a different (or no) digit.
    """
    table = _digits_table()
    pixels = table[:, :64].reshape(-1, 8, 8)
    grey = torch.from_numpy((pixels * (255.0 / 16.0)).round().astype(np.uint8))
    images = square_uint8(grey.unsqueeze(1).repeat(1, 3, 1, 1), size)
    y = table[:, 64].astype(np.int64)
    tr, va = split_indices(y, val_fraction)
    yt = torch.from_numpy(y)
    return RawData("digits", [str(i) for i in range(10)], images[tr], yt[tr], images[va], yt[va],
                   flip=False, crop_scale=(0.6, 1.0))


# ------------------------------------------------------------------------------------- ImageFolder


def _decode(path: Path, size: int) -> np.ndarray:
    """Decode one file to a ``size``×``size`` RGB array: shorter side resized, centre crop."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            img = img.convert("RGB")
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: unreadable or truncated image ({exc})") from None
    w, h = img.size
    if w == 0 or h == 0:
        raise DataError(f"{path}: empty image ({w}x{h})")
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _scan_classes(root: Path) -> dict[str, list[Path]]:
    classes = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{d}: class folder has no images (*.jpg, *.png, ...)")
        classes[d.name] = files
    if not classes:
        raise DataError(f"{root}: no class folders with images found "
                        "(expected ROOT/<class name>/<image>.jpg|png)")
    if len(classes) == 1:
        only = next(iter(classes))
        raise DataError(f"{root}: only one class ({only!r}); need at least two class folders")
    return classes


def _decode_files(files: list[str], size: int) -> torch.Tensor:
    """Decode into one preallocated array (a list of arrays then ``np.stack`` would peak at 2×),
    one thread per core: Pillow releases the GIL while it decodes and resizes."""
    out = np.empty((len(files), 3, size, size), dtype=np.uint8)

    def one(i: int) -> None:
        out[i] = _decode(Path(files[i]), size)

    with ThreadPoolExecutor(usable_cores()) as pool:
        for _ in pool.map(one, range(len(files))):  # re-raises the first bad image's DataError
            pass
    return torch.from_numpy(out)


@dataclass
class FolderFiles:
    """An ImageFolder's files and labels, split, without decoding anything (cheap at any size)."""

    name: str
    labels: list[str]
    train_files: list[str]
    train_y: torch.Tensor
    val_files: list[str]
    val_y: torch.Tensor


def _flatten(classes: dict[str, list[Path]], labels: list[str]) -> tuple[list[str], np.ndarray]:
    files, ys = [], []
    for name, paths in classes.items():
        files += [str(p) for p in paths]
        ys += [labels.index(name)] * len(paths)
    return files, np.asarray(ys, dtype=np.int64)


def scan_image_folder(root: Path, val_fraction: float = 0.2) -> FolderFiles:
    """The files of ``root`` split exactly as :func:`load_image_folder` splits the images."""
    _check_root(root)
    val_dir = next((root / n for n in ("val", "validation", "test") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and val_dir is not None:
        train_classes = _scan_classes(root / "train")
        val_classes = _scan_classes(val_dir)
        labels = sorted(train_classes)
        unknown = sorted(set(val_classes) - set(train_classes))
        if unknown:
            raise DataError(f"{val_dir}: classes not in the training folder: {', '.join(unknown)}")
        tf, ty = _flatten(train_classes, labels)
        vf, vy = _flatten(val_classes, labels)
    else:
        classes = _scan_classes(root)
        labels = sorted(classes)
        files, y = _flatten(classes, labels)
        tr, va = split_indices(y, val_fraction)
        tf, ty, vf, vy = [files[i] for i in tr], y[tr], [files[i] for i in va], y[va]
    return FolderFiles(f"folder:{root}", labels, tf, torch.from_numpy(ty), vf,
                       torch.from_numpy(vy))


def _check_root(root: Path) -> None:
    if not root.exists():
        raise DataError(f"{root}: no such directory")
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (expected an ImageFolder root or 'digits')")


def decode_folder(files: FolderFiles, size: int) -> RawData:
    """Decode a scanned ImageFolder into memory, train and val each straight into its own array
    (no decode-all-then-split copy, so the peak is the decoded size, not twice it)."""
    return RawData(files.name, files.labels, _decode_files(files.train_files, size),
                   files.train_y, _decode_files(files.val_files, size), files.val_y,
                   flip=True, crop_scale=(0.35, 1.0))


def load_image_folder(root: Path, size: int, val_fraction: float = 0.2) -> RawData:
    """``root/<class>/*.jpg|png``; uses ``root/train`` and ``root/val`` when both exist."""
    return decode_folder(scan_image_folder(root, val_fraction), size)


# ------------------------------------------------------------------------------------------ CIFAR


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickle CIFAR batches without executing arbitrary code: only numpy array rebuilding."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # type: ignore[override]
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(path: Path) -> dict:
    try:
        data = _NumpyOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a readable CIFAR-10 python batch ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a CIFAR-10 python batch (expected a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def is_cifar_dir(root: Path) -> bool:
    return root.is_dir() and (any((root / f).exists() for f in CIFAR_FILES)
                              or (root / "cifar-10-batches-py").is_dir())


def _cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    d = _unpickle(path)
    if "data" not in d or "labels" not in d:
        raise DataError(f"{path}: CIFAR-10 batch lacks 'data' or 'labels'")
    x = np.asarray(d["data"], dtype=np.uint8)
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: CIFAR-10 data must be N×3072 uint8, got {x.shape}")
    y = np.asarray(d["labels"], dtype=np.int64)
    if len(y) != len(x):
        raise DataError(f"{path}: {len(x)} images but {len(y)} labels")
    return torch.from_numpy(x.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(y)


def load_cifar10(root: Path, size: int) -> RawData:
    """The python-pickle CIFAR-10 folder (``cifar-10-batches-py``); stored at native 32×32.

    Kept at 32 px even for larger spaces: batches are resized to the active resolution on the fly,
    so memory stays at 180 MB instead of several GB.
    """
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    missing = [f for f in CIFAR_FILES if not (root / f).is_file()]
    if missing:
        raise DataError(f"{root}: incomplete CIFAR-10 folder, missing {', '.join(missing)}")
    meta = _unpickle(root / "batches.meta")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get("label_names", [])]
    parts = [_cifar_batch(root / f"data_batch_{i}") for i in range(1, 6)]
    tx = torch.cat([p[0] for p in parts])
    ty = torch.cat([p[1] for p in parts])
    vx, vy = _cifar_batch(root / "test_batch")
    num = int(max(ty.max(), vy.max())) + 1
    if len(names) < num:
        names += [str(i) for i in range(len(names), num)]
    del size  # kept native; see docstring
    return RawData(f"cifar10:{root}", names[:num], tx, ty, vx, vy, flip=True,
                   crop_scale=(0.5, 1.0))
