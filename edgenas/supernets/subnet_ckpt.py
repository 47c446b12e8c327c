"""Subnet checkpoints: one extracted (and maybe fine-tuned) static MobileNetV3, self-describing.

Like supernet checkpoints they hold only tensors and JSON-able values (``weights_only`` loadable) and
carry the search-space spec, arch id, labels and normalisation, so the exporter can rebuild the
exact network without the supernet it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from edgenas.core.errors import CheckpointError, SpecError
from edgenas.space.plan import net_plan
from edgenas.space.spec import Arch, SearchSpace
from edgenas.supernets.checkpoint import apply_state_dict, atomic_torch_save, read_torch_file
from edgenas.supernets.static import MobileNetV3

FORMAT = "edgenas-subnet"
VERSION = 1


@dataclass
class SubnetCheckpoint:
    model: MobileNetV3
    arch: Arch
    space: SearchSpace
    labels: list[str]
    normalization: dict[str, list[float]]
    meta: dict[str, Any] = field(default_factory=dict)


def save_subnet(path: str | Path, model: nn.Module, arch: Arch, space: SearchSpace,
                labels: list[str], normalization: dict[str, list[float]],
                meta: dict[str, Any] | None = None) -> Path:
    """Write a subnet checkpoint atomically."""
    data = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch.to_string(),
        "space": space.to_json(),
        "num_classes": len(labels),
        "labels": list(labels),
        "normalization": {k: [float(v) for v in vals] for k, vals in normalization.items()},
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    return atomic_torch_save(data, path)


def load_subnet(path: str | Path) -> SubnetCheckpoint:
    """Rebuild the static subnet of a checkpoint written by :func:`save_subnet` (eval mode)."""
    data = read_torch_file(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        hint = (" (it is a supernet checkpoint: use `edgenas subnet train` to extract one)"
                if isinstance(data, dict) and data.get("format") == "edgenas-supernet" else "")
        raise CheckpointError(f"{path}: not an edgenas subnet checkpoint{hint}")
    if not isinstance(data.get("version"), int) or data["version"] > VERSION:
        raise CheckpointError(f"{path}: subnet checkpoint version {data.get('version')!r} is newer "
                              "than this edgenas understands; upgrade edgenas")
    for key in ("arch", "space", "labels", "normalization", "state_dict"):
        if key not in data:
            raise CheckpointError(f"{path}: subnet checkpoint is missing {key!r}")
    try:
        space = SearchSpace.from_spec(data["space"])
        arch = space.validate(Arch.from_string(data["arch"]))
    except (SpecError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid space or arch in subnet checkpoint: {exc}") from None
    labels = list(data["labels"])
    model = MobileNetV3(net_plan(space, arch), len(labels), space.dropout)
    apply_state_dict(model, data["state_dict"], str(path))
    model.eval()
    return SubnetCheckpoint(model, arch, space, labels, dict(data["normalization"]),
                            dict(data.get("meta") or {}))
