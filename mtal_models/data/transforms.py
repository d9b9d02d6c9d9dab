"""Geometric transforms applied consistently to an image and every modality of a :class:`Sample`.

Labels are resampled with nearest neighbour (class ids, binary maps, depth and normals are never blended
across a boundary); the image uses area/bilinear interpolation. A horizontal flip negates the normals'
x component and mirrors boxes; crops shift and clip boxes and drop boxes left empty. Random transforms
draw from a ``numpy.random.Generator`` passed at call time, so a pipeline is seeded from one place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from mtal_models.data.sample import Sample
from mtal_models.modalities import ModalitySpec

__all__ = ["Compose", "RandomCrop", "RandomHFlip", "Resize", "crop", "hflip", "resize"]

Specs = Mapping[str, ModalitySpec]


def _kind(specs: Specs, name: str) -> str:
    if name not in specs:
        raise ValueError(f"modality {name!r}: no spec given to the transform (known: {sorted(specs)})")
    return specs[name].kind


def _map(sample: Sample, specs: Specs, dense: Callable[[str, np.ndarray], np.ndarray],
         boxes: Callable[[np.ndarray], np.ndarray], image: np.ndarray) -> Sample:
    labels: dict[str, Any] = {}
    for name, lab in sample.labels.items():
        if _kind(specs, name) == "detection":
            b = boxes(np.asarray(lab["boxes"], np.float32).reshape(-1, 4))
            lbl = np.asarray(lab["labels"], np.int64).reshape(-1)
            h, w = image.shape[:2]
            b[:, 0::2] = b[:, 0::2].clip(0, w)
            b[:, 1::2] = b[:, 1::2].clip(0, h)
            keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
            labels[name] = {"boxes": b[keep], "labels": lbl[keep]}
        else:
            labels[name] = dense(name, np.asarray(lab))
    return Sample(sample.id, image, labels, dict(sample.present))


def hflip(sample: Sample, specs: Specs) -> Sample:
    """Mirror left-right: image, dense maps, boxes (x -> W - x), normals' x component negated."""
    w = sample.image.shape[1]

    def dense(name: str, a: np.ndarray) -> np.ndarray:
        out = np.ascontiguousarray(a[:, ::-1])
        if _kind(specs, name) == "normals":
            out[..., 0] *= -1
            out[..., 0] += 0.0  # turn -0.0 into 0.0 so invalid (all-zero) normals stay byte-identical
        return out

    def boxes(b: np.ndarray) -> np.ndarray:
        return np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1).astype(np.float32)

    return _map(sample, specs, dense, boxes, np.ascontiguousarray(sample.image[:, ::-1]))


def crop(sample: Sample, specs: Specs, top: int, left: int, height: int, width: int) -> Sample:
    """Crop the window [top, top+height) x [left, left+width); boxes shifted, clipped, empty ones dropped."""
    h, w = sample.image.shape[:2]
    if not (top >= 0 and left >= 0 and height > 0 and width > 0 and top + height <= h and left + width <= w):
        raise ValueError(f"crop window {(top, left, height, width)} does not fit image {h}x{w} of {sample.id!r}")
    win = (slice(top, top + height), slice(left, left + width))

    def boxes(b: np.ndarray) -> np.ndarray:
        return (b - np.array([left, top, left, top], np.float32)).astype(np.float32)

    return _map(sample, specs, lambda _n, a: np.ascontiguousarray(a[win]), boxes,
                np.ascontiguousarray(sample.image[win]))


def resize(sample: Sample, specs: Specs, height: int, width: int) -> Sample:
    """Resize to height x width: image with area (down) / linear (up), labels nearest, boxes scaled."""
    h, w = sample.image.shape[:2]
    if height <= 0 or width <= 0:
        raise ValueError(f"resize target must be positive, got {height}x{width}")
    sx, sy = width / w, height / h
    interp = cv2.INTER_AREA if sx * sy < 1 else cv2.INTER_LINEAR
    image = cv2.resize(sample.image, (width, height), interpolation=interp)

    def dense(_name: str, a: np.ndarray) -> np.ndarray:
        # cv2 lacks int64 support: index with nearest source coordinates instead (exact for any dtype)
        ys = np.minimum(((np.arange(height) + 0.5) / sy).astype(np.int64), h - 1)
        xs = np.minimum(((np.arange(width) + 0.5) / sx).astype(np.int64), w - 1)
        return np.ascontiguousarray(a[ys][:, xs])

    def boxes(b: np.ndarray) -> np.ndarray:
        return (b * np.array([sx, sy, sx, sy], np.float32)).astype(np.float32)

    return _map(sample, specs, dense, boxes, image)


class Resize:
    """Deterministic resize to (height, width)."""

    def __init__(self, height: int, width: int) -> None:
        self.size = (int(height), int(width))

    def __call__(self, sample: Sample, specs: Specs, rng: np.random.Generator) -> Sample:
        return resize(sample, specs, *self.size)


class RandomCrop:
    """Crop a random (height, width) window; images smaller than that raise ValueError."""

    def __init__(self, height: int, width: int) -> None:
        self.size = (int(height), int(width))

    def __call__(self, sample: Sample, specs: Specs, rng: np.random.Generator) -> Sample:
        h, w = sample.image.shape[:2]
        ch, cw = self.size
        if ch > h or cw > w:
            raise ValueError(f"RandomCrop {ch}x{cw} larger than image {h}x{w} of {sample.id!r}")
        return crop(sample, specs, int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1)), ch, cw)


class RandomHFlip:
    """Flip left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def __call__(self, sample: Sample, specs: Specs, rng: np.random.Generator) -> Sample:
        return hflip(sample, specs) if rng.random() < self.p else sample


class Compose:
    """A seeded pipeline: ``Compose([RandomCrop(96, 96), RandomHFlip()], specs, seed=0)(sample)``."""

    def __init__(self, transforms: Sequence[Any], specs: Specs, seed: int = 0) -> None:
        self.transforms = list(transforms)
        self.specs = specs
        self.rng = np.random.default_rng(seed)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample, self.specs, self.rng)
        return sample
