"""Supernet checkpoints: plain dicts of tensors and JSON-able values, loadable with ``weights_only``.

A checkpoint carries everything needed to rebuild the supernet without outside context: the full
search-space spec, class labels and input normalisation.  Writes are atomic (temp file + rename) so
an interrupted save never leaves a truncated file under the final name.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from edgenas.core.errors import CheckpointError
from edgenas.core.files import atomic_write

if TYPE_CHECKING:
    from edgenas.supernets.mbv3 import MobileNetV3Supernet

FORMAT = "edgenas-supernet"
VERSION = 1


def make_checkpoint(net: MobileNetV3Supernet, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "space": net.space.to_json(),
        "num_classes": net.num_classes,
        "labels": list(net.labels),
        "normalization": {k: list(map(float, v)) for k, v in net.normalization.items()},
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "meta": dict(meta or {}),
    }


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through :func:`edgenas.core.files.atomic_write` (temp file, fsync, rename)."""
    return atomic_write(Path(path), lambda handle: torch.save(obj, handle))


def save_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> Path:
    return atomic_torch_save(checkpoint, path)


def read_torch_file(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` with the failure modes turned into clear errors."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "unpickling failed"
        if "weights_only" in str(exc) or "global" in str(exc).lower():
            raise CheckpointError(
                f"{path}: refusing to load: the file contains Python objects that are not plain "
                "tensors/values (loaded with weights_only=True for safety)"
            ) from None
        raise CheckpointError(f"{path}: corrupt or not a PyTorch file ({reason})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: corrupt or not a PyTorch file ({first})") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check the envelope of an edgenas checkpoint (not the weights yet)."""
    data = read_torch_file(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        hint = ""
        if isinstance(data, dict) and any(str(k).startswith(("blocks.", "first_conv"))
                                          for k in _keys(data)):
            hint = " (it looks like a once-for-all state dict: use `edgenas supernet import-ofa`)"
        raise CheckpointError(f"{path}: not an edgenas supernet checkpoint{hint}")
    version = data.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is newer than this edgenas "
            f"understands ({VERSION}); upgrade edgenas"
        )
    for key in ("space", "num_classes", "labels", "normalization", "state_dict"):
        if key not in data:
            raise CheckpointError(f"{path}: checkpoint is missing {key!r}")
    return data


def _keys(data: dict[str, Any]) -> list[str]:
    inner = data.get("state_dict", data)
    return list(inner.keys()) if isinstance(inner, dict) else []


def apply_state_dict(net: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly, listing missing, unexpected and mis-shaped keys in one error."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shaped = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or extra or shaped:
        parts = []
        for title, items in (("missing", missing), ("unexpected", extra), ("mis-shaped", shaped)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8
                                                else "")
                parts.append(f"{title}: {shown}")
        raise CheckpointError(f"{source}: weights do not fit the network: " + "; ".join(parts))
    net.load_state_dict(state)
