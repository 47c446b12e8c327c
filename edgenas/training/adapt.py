"""Start training from a pretrained supernet: keep its body, give it a head for the data's labels.

``supernet train --init CKPT`` takes an edgenas supernet checkpoint or a once-for-all MobileNetV3
state dict (``supernet import-ofa``'s input, converted on the fly).  Every weight except the final
linear classifier is copied; the classifier is kept only when the data's labels are exactly the
checkpoint's, and otherwise replaced by a freshly initialised one for the data's labels (the old
head is dropped: its classes mean nothing for the new data).  The checkpoint's input normalisation is
kept, because the body's first layers learned on inputs normalised that way.  Training then follows
the adaptation schedule (:data:`edgenas.training.schedule.ADAPT_SCHEDULE`): the first phase adapts
the full network (new head and body), which then becomes the distillation teacher
of subnets sampled from the whole space -- the pretrained body already serves every one of them,
so the staged shrinking is not repeated.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgenas.core.errors import CheckpointError
from edgenas.supernets.checkpoint import load_checkpoint, read_torch_file
from edgenas.supernets.mbv3 import MobileNetV3Supernet, load_supernet

HEAD = ("classifier.weight", "classifier.bias")


def load_init(path: str | Path, space_name: str) -> MobileNetV3Supernet:
    """The supernet in ``path``: an edgenas checkpoint, or an OFA state dict (imported for
    ``space_name`` when that is an ``mbv3-w*`` space, else ``mbv3-w1.0``)."""
    path = Path(path)
    try:
        load_checkpoint(path)
    except CheckpointError as exc:
        if "once-for-all" not in str(exc):
            raise
        from edgenas.supernets.ofa_import import import_ofa

        space = space_name if space_name.startswith("mbv3-w") else "mbv3-w1.0"
        return import_ofa(read_torch_file(path), space)
    return load_supernet(path)


def adopt_init(net: MobileNetV3Supernet, init: MobileNetV3Supernet, source: str) -> str:
    """Copy ``init``'s weights into the fresh ``net`` (same space); return what was done, in words."""
    if init.space.to_json() != net.space.to_json():
        raise CheckpointError(f"{source}: its space {init.space.name} differs from the training "
                              f"space {net.space.name}")
    same = list(init.labels) == list(net.labels)
    state = init.state_dict()
    own = net.state_dict()
    with torch.no_grad():
        for key, value in state.items():
            if key in HEAD and not same:
                continue
            own[key].copy_(value)
    net.normalization = dict(init.normalization)
    net.meta["init"] = {"source": str(source), "space": init.space.name,
                        "old_labels": init.num_classes, "head": "kept" if same else "replaced",
                        "origin": init.meta.get("origin", "edgenas")}
    params = sum(v.numel() for k, v in state.items() if k not in HEAD)
    if same:
        return (f"init: all weights from {source} ({init.space.name}, {init.num_classes} classes, "
                "same labels: head kept)")
    shown = ", ".join(init.labels[:5]) + (", ..." if len(init.labels) > 5 else "")
    new = ", ".join(net.labels[:5]) + (", ..." if len(net.labels) > 5 else "")
    return (f"init: body from {source} ({init.space.name}, {params / 1e6:.1f} M weights); its "
            f"{init.num_classes}-class head ({shown}) does not match the data's labels "
            f"({net.num_classes}: {new}) and is replaced by a new head; normalisation kept from "
            "the checkpoint")


__all__ = ["adopt_init", "load_init"]
