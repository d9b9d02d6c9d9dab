"""A PNG grid of samples with every modality coloured, for people to look at the data.

One row per sample: the image (with boxes of detection modalities drawn on it), then one cell per
dense modality: segmentation in a fixed palette, binary maps white on black, depth with the viridis
colour map (near = dark), normals as ``(n + 1) / 2`` RGB. Absent labels are drawn as a grey cell.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from mtal_models.data.files import save_png
from mtal_models.data.sample import Sample
from mtal_models.modalities import ModalitySpec

__all__ = ["colorize", "render_grid", "save_grid"]


def _palette(n: int = 256) -> np.ndarray:
    rng = np.random.default_rng(12345)
    pal = rng.integers(40, 256, (n, 3)).astype(np.uint8)
    pal[255] = (0, 0, 0)
    return pal


_PALETTE = _palette()


def colorize(spec: ModalitySpec, label: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] RGB rendering of a dense label in ``spec``'s format."""
    a = np.asarray(label)
    if spec.kind == "segmentation":
        return _PALETTE[np.clip(a, 0, 255).astype(np.int64)]
    if spec.kind == "binary":
        out = np.where(a == 1, 255, 0).astype(np.uint8)
        rgb = np.repeat(out[..., None], 3, 2)
        rgb[a == spec.ignore_index] = (90, 0, 0)
        return rgb
    if spec.kind == "depth":
        valid = a > 0
        hi = float(a[valid].max()) if valid.any() else 1.0
        g = (np.clip(a / max(hi, 1e-6), 0, 1) * 255).astype(np.uint8)
        rgb = cv2.applyColorMap(g, cv2.COLORMAP_VIRIDIS)[..., ::-1].copy()
        rgb[~valid] = 0
        return rgb
    if spec.kind == "normals":
        return ((np.clip(a, -1, 1) + 1) * 127.5).astype(np.uint8)
    raise ValueError(f"modality {spec.name!r}: kind {spec.kind} has no dense colouring")


def _draw_boxes(image: np.ndarray, det: Mapping[str, np.ndarray]) -> np.ndarray:
    out = np.ascontiguousarray(image.copy())
    for box, lab in zip(np.asarray(det["boxes"]).reshape(-1, 4), np.asarray(det["labels"]).reshape(-1), strict=True):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        color = tuple(int(c) for c in _PALETTE[int(lab) % 255])
        cv2.rectangle(out, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), color, 1)
    return out


def render_grid(samples: Sequence[Sample], modalities: Mapping[str, ModalitySpec], cell: int = 128) -> np.ndarray:
    """uint8 [rows * cell, cols * cell, 3] RGB: one row per sample, columns = image + dense modalities."""
    if not samples:
        raise ValueError("render_grid: no samples given")
    dense = [n for n, s in modalities.items() if s.dense]
    rows = []
    for s in samples:
        img = s.image
        for n, spec in modalities.items():
            if spec.kind == "detection" and s.is_present(n):
                img = _draw_boxes(img, s.labels[n])
        cells = [img]
        for n in dense:
            if s.is_present(n):
                cells.append(colorize(modalities[n], s.labels[n]))
            else:
                cells.append(np.full(s.image.shape, 128, np.uint8))
        interp = cv2.INTER_NEAREST
        rows.append(np.concatenate([cv2.resize(c, (cell, cell), interpolation=interp) for c in cells], 1))
    header = np.zeros((14, rows[0].shape[1], 3), np.uint8)
    for k, name in enumerate(["image", *dense]):
        cv2.putText(header, name[: max(1, cell // 8)], (k * cell + 2, 11), cv2.FONT_HERSHEY_PLAIN, 0.8,
                    (255, 255, 255), 1)
    return np.concatenate([header, *rows], 0)


def save_grid(path: str | Path, samples: Sequence[Sample], modalities: Mapping[str, ModalitySpec],
              cell: int = 128) -> np.ndarray:
    """Render :func:`render_grid` and write it as a PNG at ``path``; returns the grid."""
    grid = render_grid(samples, modalities, cell)
    save_png(Path(path), grid)
    return grid
