"""One sample (numpy, as stored or fetched) and the batch the networks eat (torch).

Per-modality label formats in a :class:`Sample` (no batch axis; see :mod:`mtal_models.modalities`):

- segmentation: integer [H, W] class ids, ``ignore_index`` (255) = unlabelled pixel
- binary:       uint8 [H, W] in {0, 1}, 255 = unlabelled pixel
- depth:        float32 [H, W] metres, <= 0 = invalid
- normals:      float32 [H, W, 3] unit vectors (x right, y down, z towards the camera), 0 = invalid
- detection:    {"boxes": float32 [N, 4] x1, y1, x2, y2 in pixels, "labels": int64 [N] class ids}

``present[name]`` says whether the label of ``name`` is real (partial labels). A modality absent
from ``labels`` is treated as not present.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtal_models.modalities import ModalitySpec
from mtal_models.nets.base import Labels

__all__ = ["Batch", "Sample", "collate", "empty_label", "pad_sample"]


@dataclass
class Sample:
    """image: uint8 [H, W, 3] RGB; labels and present keyed by modality name."""

    id: str
    image: np.ndarray
    labels: dict[str, Any] = field(default_factory=dict)
    present: dict[str, bool] = field(default_factory=dict)

    def is_present(self, name: str) -> bool:
        return bool(self.present.get(name, False)) and name in self.labels


@dataclass
class Batch:
    """images: float [B, 3, H, W] in [0, 1]; labels: :class:`Labels`; ids: B sample ids."""

    images: Tensor
    labels: Labels
    ids: list[str]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.images.to(device), self.labels.to(device), self.ids)


def empty_label(spec: ModalitySpec, height: int, width: int) -> Any:
    """A placeholder label of ``spec``'s format for an absent modality (never read by losses)."""
    if spec.kind == "segmentation" or spec.kind == "binary":
        return np.full((height, width), spec.ignore_index, dtype=np.uint8 if spec.kind == "binary" else np.int64)
    if spec.kind == "depth":
        return np.zeros((height, width), np.float32)
    if spec.kind == "normals":
        return np.zeros((height, width, 3), np.float32)
    return {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros((0,), np.int64)}


def _to_tensor(spec: ModalitySpec, label: Any) -> Any:
    if spec.kind == "segmentation":
        return torch.as_tensor(np.asarray(label), dtype=torch.int64)
    if spec.kind in ("binary", "depth"):
        return torch.as_tensor(np.asarray(label), dtype=torch.float32)[None]
    if spec.kind == "normals":
        return torch.as_tensor(np.asarray(label), dtype=torch.float32).permute(2, 0, 1)
    return {
        "boxes": torch.as_tensor(np.asarray(label["boxes"]), dtype=torch.float32).reshape(-1, 4),
        "labels": torch.as_tensor(np.asarray(label["labels"]), dtype=torch.int64).reshape(-1),
    }


def pad_sample(sample: Sample, modalities: Mapping[str, ModalitySpec], height: int, width: int) -> Sample:
    """Pad bottom and right to ``height`` x ``width``: image with 0, dense labels with their
    placeholder value (:func:`empty_label`: ignored by losses and metrics); boxes unchanged."""
    h, w = sample.image.shape[:2]
    if (h, w) == (height, width):
        return sample
    if h > height or w > width:
        raise ValueError(f"cannot pad {h}x{w} of {sample.id!r} to the smaller {height}x{width}")
    image = np.zeros((height, width, *sample.image.shape[2:]), sample.image.dtype)
    image[:h, :w] = sample.image
    labels: dict[str, Any] = {}
    for name, lab in sample.labels.items():
        spec = modalities.get(name)
        if spec is None or spec.kind == "detection":
            labels[name] = lab
            continue
        arr = np.asarray(lab)
        out = np.asarray(empty_label(spec, height, width)).astype(arr.dtype)
        out[:h, :w] = arr
        labels[name] = out
    return Sample(sample.id, image, labels, dict(sample.present))


def collate(samples: Sequence[Sample], modalities: Mapping[str, ModalitySpec]) -> Batch:
    """Stack samples into a :class:`Batch`; absent labels become placeholders. Samples of different
    sizes (photographs with their aspect ratio kept) are padded bottom/right to the largest height and
    width among them (:func:`pad_sample`)."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    h = max(s.image.shape[0] for s in samples)
    w = max(s.image.shape[1] for s in samples)
    samples = [pad_sample(s, modalities, h, w) for s in samples]
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2)
    values: dict[str, Any] = {}
    present: dict[str, Tensor] = {}
    for name, spec in modalities.items():
        flags = [s.is_present(name) for s in samples]
        items = [
            _to_tensor(spec, s.labels[name] if f else empty_label(spec, h, w))
            for s, f in zip(samples, flags, strict=True)
        ]
        values[name] = items if spec.kind == "detection" else torch.stack(items)
        present[name] = torch.tensor(flags, dtype=torch.bool)
    return Batch(images.float().div_(255.0), Labels(values, present), [s.id for s in samples])
