"""Two augmented views of each image, and where they overlap: the input of the dense self-supervised
pretraining (:mod:`mtal_models.training.pretrain`).

Each view is a random resized crop (area fraction in ``scale``, aspect ratio in [3/4, 4/3] of the view's),
maybe mirrored, with colour jitter (brightness, contrast, saturation) and sometimes grey. The second crop
is drawn until it overlaps the first by at least ``min_overlap`` of the smaller crop's area (a few tries,
then the first crop again), so every pair has a region seen twice. :func:`overlap_grids` gives, for an
``S x S`` grid of points in that region, each point's position in both views (``grid_sample``
coordinates, mirroring included): the known pixel correspondence of DenseSiam's / PixPro's dense loss.

Pure torch on CPU tensors; every random draw comes from the ``generator`` passed in, so a step is
reproducible from its seed. Geometric augmentation only moves pixels; photometric jitter is applied per
view after the crop (the #30 strong augmentation could share :func:`jitter`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ViewPair", "as_image_tensor", "jitter", "overlap_grids", "random_crop_box", "two_views"]

_TRIES = 10


@dataclass
class ViewPair:
    """first, second: views [B, 3, h, w] in [0, 1]; grid_first, grid_second: [B, S, S, 2] positions of the
    same image points in each view (x, y in [-1, 1], ``F.grid_sample`` with ``align_corners=False``)."""

    first: Tensor
    second: Tensor
    grid_first: Tensor
    grid_second: Tensor


def as_image_tensor(image: Tensor | np.ndarray) -> Tensor:
    """A pool image -> float [3, H, W] in [0, 1]: uint8 [H, W, 3] arrays (``Sample.image``) or float/uint8
    tensors [3, H, W]. Raises ValueError for anything else."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"pool image arrays must be [H, W, 3] RGB, got shape {image.shape}")
        t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    elif isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"pool image tensors must be [3, H, W], got shape {tuple(image.shape)}")
        t = image
    else:
        raise ValueError(f"pool images must be numpy arrays or tensors, got {type(image).__name__}")
    t = t.float() / 255.0 if not t.is_floating_point() else t.float()
    if min(t.shape[1:]) < 2:
        raise ValueError(f"pool image too small to crop: {tuple(t.shape)}")
    return t


def random_crop_box(
    height: int, width: int, aspect: float, scale: tuple[float, float], generator: torch.Generator
) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) pixel box of a random crop with area fraction in ``scale`` and
    width/height ratio in [3/4, 4/3] x ``aspect`` (the view's), clipped to the image."""
    u = torch.rand(3, generator=generator).tolist()
    area = (scale[0] + (scale[1] - scale[0]) * u[0]) * height * width
    ratio = aspect * math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[1])
    h = int(round(min(height, max(2.0, math.sqrt(area / ratio)))))
    w = int(round(min(width, max(2.0, math.sqrt(area * ratio)))))
    v = torch.rand(2, generator=generator).tolist()
    top, left = int(v[0] * (height - h + 1)), int(v[1] * (width - w + 1))
    return top, left, top + h, left + w


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection area of two boxes over the smaller box's area."""
    h = min(a[2], b[2]) - max(a[0], b[0])
    w = min(a[3], b[3]) - max(a[1], b[1])
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return max(0, h) * max(0, w) / smaller


def jitter(view: Tensor, generator: torch.Generator, strength: float = 0.4, grey_p: float = 0.2) -> Tensor:
    """Colour jitter of one view [3, h, w] in [0, 1]: brightness, contrast and saturation factors drawn in
    [1 - strength, 1 + strength], applied in that order, then grey with probability ``grey_p``."""
    f = (1 - strength + 2 * strength * torch.rand(3, generator=generator)).tolist()
    grey_w = torch.tensor([0.299, 0.587, 0.114], dtype=view.dtype).view(3, 1, 1)
    x = view * f[0]
    mean = (x * grey_w).sum(0).mean()
    x = (x - mean) * f[1] + mean
    grey = (x * grey_w).sum(0, keepdim=True)
    x = (x - grey) * f[2] + grey
    if float(torch.rand(1, generator=generator)) < grey_p:
        x = (x * grey_w).sum(0, keepdim=True).expand(3, -1, -1)
    return x.clamp(0.0, 1.0)


def overlap_grids(
    boxes: list[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]],
    flips: list[tuple[bool, bool]],
    grid: int,
) -> tuple[Tensor, Tensor]:
    """For each image's two crop boxes (pixels) and mirror flags: an ``grid x grid`` lattice of cell
    centres over the boxes' intersection, as positions in view 1 and view 2: two [B, S, S, 2] tensors
    (x, y in [-1, 1]). Boxes that do not intersect give the lattice of the first box in both (a pair
    of identical crops has them)."""
    out: list[list[Tensor]] = [[], []]
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    for (a, b), flip in zip(boxes, flips, strict=True):
        top, left = max(a[0], b[0]), max(a[1], b[1])
        bottom, right = min(a[2], b[2]), min(a[3], b[3])
        if bottom <= top or right <= left:
            top, left, bottom, right = a
        ys = top + (bottom - top) * centres  # image pixel coordinates (continuous)
        xs = left + (right - left) * centres
        for v, (box, mirrored) in enumerate(zip((a, b), flip, strict=True)):
            gy = (ys - box[0]) / (box[2] - box[0]) * 2 - 1
            gx = (xs - box[1]) / (box[3] - box[1]) * 2 - 1
            if mirrored:
                gx = -gx
            yy, xx = torch.meshgrid(gy, gx, indexing="ij")
            out[v].append(torch.stack([xx, yy], dim=-1))
    return torch.stack(out[0]), torch.stack(out[1])


def two_views(
    images: list[Tensor],
    size: tuple[int, int],
    generator: torch.Generator,
    scale: tuple[float, float] = (0.3, 1.0),
    min_overlap: float = 0.3,
    grid: int = 7,
    strength: float = 0.4,
    grey_p: float = 0.2,
) -> ViewPair:
    """Two augmented views of every image (each float [3, H, W] in [0, 1], any size) at ``size`` (h, w),
    with the lattice of corresponding points (see the module docstring); ``strength``, ``grey_p``: of
    :func:`jitter` (0, 0: geometry only)."""
    h, w = size
    views: list[list[Tensor]] = [[], []]
    boxes, flips = [], []
    for image in images:
        height, width = image.shape[-2:]
        first = random_crop_box(height, width, w / h, scale, generator)
        second = first
        for _ in range(_TRIES):
            cand = random_crop_box(height, width, w / h, scale, generator)
            if _overlap(first, cand) >= min_overlap:
                second = cand
                break
        pair_flips = tuple(bool(f) for f in (torch.rand(2, generator=generator) < 0.5).tolist())
        for v, (box, mirrored) in enumerate(zip((first, second), pair_flips, strict=True)):
            crop = image[None, :, box[0] : box[2], box[1] : box[3]]
            view = F.interpolate(crop, size=size, mode="bilinear", align_corners=False, antialias=True)[0]
            view = view.flip(-1) if mirrored else view
            views[v].append(jitter(view, generator, strength, grey_p))
        boxes.append((first, second))
        flips.append(pair_flips)
    grid_first, grid_second = overlap_grids(boxes, flips, grid)
    return ViewPair(torch.stack(views[0]), torch.stack(views[1]), grid_first, grid_second)
