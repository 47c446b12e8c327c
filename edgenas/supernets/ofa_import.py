"""Import the published once-for-all MobileNetV3 state dicts into an edgenas supernet.

The OFA checkpoints (``ofa_mbv3_d234_e346_k357_w1.0`` / ``_w1.2``) name their tensors after the
original module tree: ``first_conv``, ``blocks.0`` (the fixed first block), ``blocks.1..20`` (four
per stage), ``final_expand_layer``, ``feature_mix_layer``, ``classifier``.  Two spellings exist in
the wild: the older ``blocks.N.mobile_inverted_conv.*`` with single ``.bn.`` / ``.conv.`` levels, and
the newer ``blocks.N.conv.*`` with doubled ``.bn.bn.`` / ``.conv.conv.`` inside elastic blocks.
Both are normalised to one collapsed form before mapping.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from edgenas.core.errors import ImportOFAError
from edgenas.space.spec import SearchSpace
from edgenas.supernets.checkpoint import read_torch_file
from edgenas.supernets.mbv3 import MobileNetV3Supernet

IMAGENET_NORMALIZATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
_BN = ("weight", "bias", "running_mean", "running_var")


def _collapse(key: str) -> str:
    """One spelling for both OFA layouts (and DataParallel's ``module.`` prefix)."""
    if key.startswith("module."):
        key = key[len("module."):]
    key = key.replace(".mobile_inverted_conv.", ".conv.")
    for doubled in (".bn.bn.", ".conv.conv.", ".linear.linear."):
        key = key.replace(doubled, doubled[: len(doubled) // 2 + 1])
    return key


def key_map(space: SearchSpace) -> dict[str, str]:
    """Collapsed OFA key → edgenas supernet key, for every tensor the import needs."""
    mapping: dict[str, str] = {"first_conv.conv.weight": "stem.0.weight"}
    mapping.update({f"first_conv.bn.{p}": f"stem.1.{p}" for p in _BN})
    first = "blocks.0.conv"
    mapping[f"{first}.depth_conv.conv.weight"] = "first_block.depthwise.0.weight"
    mapping[f"{first}.point_linear.conv.weight"] = "first_block.project.0.weight"
    for p in _BN:
        mapping[f"{first}.depth_conv.bn.{p}"] = f"first_block.depthwise.1.{p}"
        mapping[f"{first}.point_linear.bn.{p}"] = f"first_block.project.1.{p}"
    kernels = space.kernel_choices
    for s, stage in enumerate(space.stages):
        for j in range(space.max_depth):
            src = f"blocks.{1 + s * space.max_depth + j}.conv"
            dst = f"stages.{s}.{j}"
            mapping[f"{src}.inverted_bottleneck.conv.weight"] = f"{dst}.expand_conv.weight"
            mapping[f"{src}.depth_conv.conv.weight"] = f"{dst}.dw_conv.weight"
            mapping[f"{src}.point_linear.conv.weight"] = f"{dst}.project_conv.weight"
            for p in _BN:
                mapping[f"{src}.inverted_bottleneck.bn.{p}"] = f"{dst}.expand_bn.{p}"
                mapping[f"{src}.depth_conv.bn.{p}"] = f"{dst}.dw_bn.{p}"
                mapping[f"{src}.point_linear.bn.{p}"] = f"{dst}.project_bn.{p}"
            for big, small in zip(kernels[1:], kernels[:-1]):
                mapping[f"{src}.depth_conv.conv.{big}to{small}_matrix"] = (
                    f"{dst}.kernel_transforms.{big}to{small}")
            if stage.se:
                for part in ("reduce", "expand"):
                    for p in ("weight", "bias"):
                        mapping[f"{src}.depth_conv.se.fc.{part}.{p}"] = f"{dst}.se_{part}.{p}"
    mapping["final_expand_layer.conv.weight"] = "head_expand.0.weight"
    mapping.update({f"final_expand_layer.bn.{p}": f"head_expand.1.{p}" for p in _BN})
    mapping["feature_mix_layer.conv.weight"] = "feature_mix.weight"
    mapping["classifier.linear.weight"] = "classifier.weight"
    mapping["classifier.linear.bias"] = "classifier.bias"
    return mapping


_MATRIX = re.compile(r"\.depth_conv\.conv\.\d+to\d+_matrix$")


def import_ofa(source: str | Path | dict[str, Any], space: SearchSpace | str = "mbv3-w1.0",
               labels: list[str] | None = None) -> MobileNetV3Supernet:
    """Build an edgenas supernet holding the weights of an OFA MobileNetV3 state dict.

    ``source`` is a path to the ``.pth`` file (a bare state dict or ``{"state_dict": ...}``) or
    the dict itself.  Missing, unexpected and mis-shaped keys are reported together.  A checkpoint
    trained without kernel transformation (no ``*_matrix`` keys at all) imports with identity
    matrices, which is exactly what centre-cropping means.
    """
    if not isinstance(space, SearchSpace):
        space = SearchSpace.load(space)
    raw = read_torch_file(source) if isinstance(source, (str, Path)) else source
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ImportOFAError(f"{source}: not a state dict of tensors")
    state = {_collapse(k): v for k, v in raw.items() if not k.endswith("num_batches_tracked")}

    mapping = key_map(space)
    if not any(_MATRIX.search(k) for k in state):
        mapping = {k: v for k, v in mapping.items() if not _MATRIX.search(k)}
    weight = state.get("classifier.linear.weight")
    if weight is None or weight.dim() != 2:
        raise ImportOFAError(f"{source}: missing classifier.linear.weight; not an OFA MobileNetV3")
    num_classes = int(weight.shape[0])
    net = MobileNetV3Supernet(space, num_classes, labels, IMAGENET_NORMALIZATION)
    own = net.state_dict()

    missing = sorted(set(mapping) - set(state))
    extra = sorted(set(state) - set(mapping))
    shaped = sorted(
        f"{k} {tuple(state[k].shape)} (expected {tuple(own[mapping[k]].shape)})"
        for k in set(mapping) & set(state) if state[k].shape != own[mapping[k]].shape
    )
    if missing or extra or shaped:
        lines = [f"{source}: this state dict does not fit the {space.name} supernet"]
        for title, items in (("missing keys", missing), ("unexpected keys", extra),
                             ("mis-shaped keys", shaped)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:10])
                             + (" ..." if len(items) > 10 else ""))
        raise ImportOFAError("\n".join(lines))

    with torch.no_grad():
        for ofa_key, own_key in mapping.items():
            own[own_key].copy_(state[ofa_key].to(own[own_key].dtype))
    net.load_state_dict(own)
    net.meta = {"imported_from": str(source) if isinstance(source, (str, Path)) else "state_dict",
                "origin": "once-for-all"}
    net.eval()
    return net
