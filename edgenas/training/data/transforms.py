"""Batched image transforms on tensors (no torchvision): resize, random-resized-crop, flip, normalise.

Images are stored as ``uint8`` NCHW tensors; every transform works on a whole batch at once so the
per-image Python overhead that dominates small-image training on a CPU disappears.  All randomness
comes from an explicit :class:`torch.Generator`, which is what makes a resumed run bit-identical.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float32 [0, 1]."""
    return images.float().div_(255.0)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of a float NCHW batch to ``size``×``size`` (antialiased when shrinking)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    shrink = images.shape[-1] > size or images.shape[-2] > size
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=shrink)


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std per channel; ``mean``/``std`` are 3-element tensors."""
    return (images - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def random_resized_crop(images: torch.Tensor, size: int, generator: torch.Generator,
                        scale: tuple[float, float] = (0.35, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        flip: bool = False) -> torch.Tensor:
    """Crop a random area fraction/aspect of each image and resize it to ``size`` (one grid_sample).

    The crop box is expressed as an affine map in normalised coordinates, so crop, resize and the
    optional horizontal flip are a single batched ``grid_sample`` instead of a loop over images.
    """
    n = images.shape[0]
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(area * aspect).clamp(max=1.0)
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - h)
    sign = torch.ones(n)
    if flip:
        sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta.to(images.device), [n, images.shape[1], size, size],
                         align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


def square_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 NCHW batch to ``size``×``size`` and return uint8 (used once, at load time)."""
    out = resize(to_float(images), size)
    return out.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)


def compute_normalization(images: torch.Tensor, chunk_elements: int = 1 << 24
                          ) -> dict[str, list[float]]:
    """Per-channel mean/std of uint8 NCHW images in [0, 1].

    Chunked by element count (16 M per chunk, 128 MB as float64): a fixed number of images per
    chunk would take 5 GB per chunk at 224 px and dwarf the data set itself.
    """
    per_image = max(1, int(images[0].numel())) if images.shape[0] else 1
    chunk = max(1, chunk_elements // per_image)
    total = torch.zeros(3, dtype=torch.float64)
    sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    for i in range(0, images.shape[0], chunk):
        x = images[i:i + chunk].double().div_(255.0)
        total += x.sum((0, 2, 3))
        sq += x.square_().sum((0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (sq / count - mean * mean).clamp(min=1e-8).sqrt().clamp(min=1e-3)
    return {"mean": [round(float(v), 6) for v in mean], "std": [round(float(v), 6) for v in std]}
