"""What an annotator gets as a prefill: post-processing of one image's predictions before they become
pre-annotations. What it costs them to fix the result is measured in :mod:`mtal_models.edit_cost`.
Definitions (docs/models.md, "Edit cost"):

- **Cross-class duplicate suppression** (:func:`suppress_duplicates`): the detector's own NMS is per
  class, so one object can carry a box of every class. Boxes are suppressed across classes with
  ``torchvision.ops.nms`` at IoU ``nms_iou`` (0.5): one box per object, the best-scoring class.
  ``per_class=True`` keeps the detector's per-class boxes (``batched_nms``).
- **Display threshold**: the score above which boxes are shown, chosen on validation images
  (:func:`mtal_models.edit_cost.choose_threshold`); :data:`DEFAULT_THRESHOLD` (0.3) when there is
  nothing to choose on.
- **Speckle removal** (:func:`remove_speckle`): every 8-connected component of a class (background
  included) smaller than ``min_area`` of the image's pixels is repainted with the class of the
  nearest pixel outside the small components.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from torch import Tensor
from torchvision.ops import batched_nms, nms

__all__ = ["DEFAULT_THRESHOLD", "PrefillConfig", "remove_speckle", "suppress_duplicates"]

DEFAULT_THRESHOLD = 0.3
_BAND_PIXELS = 1 << 20  # pixels per band of a bincount
_FEW_VALUES = 8  # up to this many values, counting each by a comparison beats np.bincount


@dataclass(frozen=True)
class PrefillConfig:
    """How predictions become a prefill.

    per_class: keep the detector's per-class boxes (no cross-class suppression).
    nms_iou: IoU above which a lower-scoring box of any class is suppressed.
    threshold: display score threshold of boxes; None = chosen on the evaluated images (max F1).
    min_area: speckle size, a share of the image's pixels (0 = keep every component).
    match_iou: IoU at which a prefilled box counts as the annotator's box.
    """

    per_class: bool = False
    nms_iou: float = 0.5
    threshold: float | None = None
    min_area: float = 0.002
    match_iou: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.nms_iou <= 1 or not 0 < self.match_iou <= 1:
            raise ValueError(f"nms_iou and match_iou must be in (0, 1], got {self.nms_iou}, {self.match_iou}")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1] or None, got {self.threshold}")
        if not 0 <= self.min_area < 1:
            raise ValueError(f"min_area must be in [0, 1), got {self.min_area}")


def suppress_duplicates(rows: Tensor, iou: float = 0.5, per_class: bool = False) -> Tensor:
    """One image's detections [K, 6 + C] (``x1, y1, x2, y2, score, class, probs...``; class < 0 =
    padding) -> the kept rows [K', 6 + C], highest score first. Across classes (``nms``) unless
    ``per_class`` (``batched_nms`` by class, what the detector already did)."""
    if rows.dim() != 2 or rows.shape[1] < 6:
        raise ValueError(f"detections must be [K, 6 + C], got {tuple(rows.shape)}")
    rows = rows[rows[:, 5] >= 0]
    if rows.shape[0] == 0:
        return rows
    boxes, scores = rows[:, :4].float(), rows[:, 4].float()
    keep = batched_nms(boxes, scores, rows[:, 5].long(), iou) if per_class else nms(boxes, scores, iou)
    return rows[keep]


def remove_speckle(classes: np.ndarray, min_area: float) -> np.ndarray:
    """int [H, W] class map -> the same map with every 8-connected component (of any class) smaller
    than ``min_area * H * W`` pixels repainted with the class of the nearest pixel outside such small
    components (``cv2.distanceTransformWithLabels``, 5x5 L2 approximation). Unchanged (the same array)
    when nothing is small, or everything.

    Cost: one histogram of the classes; a map of one class is returned as it is (its one component is
    the image), and a class with fewer than ``min_px`` pixels in all is small as a whole (no component
    search). Every other class present costs one comparison and one ``cv2.connectedComponentsWithStats``
    (BBDT, 16-bit labels where they fit) inside the class's bounding box, the small components marked
    inside their own bounding boxes; a class over half the image (the usual background) is first
    labelled without statistics (~4x cheaper), which is all it costs when it is in one piece. The
    nearest-pixel search runs inside the bounding box of all small pixels grown by one pixel (every
    pixel outside it is a seed, and the nearest seed of a pixel inside lies inside it); only the seeds
    next to small pixels are looked up."""
    cls = np.asarray(classes)
    if cls.ndim != 2 or cls.size == 0:
        raise ValueError(f"class map must be a non-empty [H, W] array, got shape {cls.shape}")
    min_px = math.ceil(min_area * cls.size)
    if min_px <= 1:
        return cls
    present, counts = _histogram(cls)
    if len(present) < 2:  # one class: one component, the image (min_area < 1)
        return cls
    small = np.zeros(cls.shape, bool)
    for c, count in zip(present, counts, strict=True):
        mask = (cls == c).view(np.uint8)
        if count < min_px:  # every component of the class is smaller than the class
            small |= mask.view(bool)
            continue
        x, y, w, h = cv2.boundingRect(mask)
        box = (slice(y, y + h), slice(x, x + w))
        # 8-connected components of an h x w box: at most ceil(h/2) * ceil(w/2), + label 0
        ltype = cv2.CV_16U if -(-h // 2) * -(-w // 2) < 65535 else cv2.CV_32S
        if 2 * count > cls.size:  # most of the image: often one piece; labels only first (~4x cheaper)
            n, _ = cv2.connectedComponentsWithAlgorithm(mask[box], 8, ltype, cv2.CCL_GRANA)
            if n <= 2:  # one component: the whole class, not small
                continue
        _, comp, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(mask[box], 8, ltype, cv2.CCL_GRANA)
        for k in np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] < min_px) + 1:  # label 0: the other classes
            cx, cy, cw, ch = stats[k, :4]
            cut = (slice(cy, cy + ch), slice(cx, cx + cw))
            small[box][cut] |= comp[cut] == k
    if not small.any() or small.all():
        return cls
    x, y, w, h = cv2.boundingRect(small.view(np.uint8))
    box = (slice(max(0, y - 1), y + h + 1), slice(max(0, x - 1), x + w + 1))
    out = cls.copy()
    part, spot = out[box], small[box]
    _, nearest = cv2.distanceTransformWithLabels(spot.view(np.uint8), cv2.DIST_L2, 5,
                                                 labelType=cv2.DIST_LABEL_PIXEL)
    # a seed that is some small pixel's nearest lies within the 5x5 mask's reach of a small pixel
    seeds = cv2.dilate(spot.view(np.uint8), np.ones((5, 5), np.uint8)).view(bool) & ~spot
    lut = np.zeros(int(nearest.max()) + 1, cls.dtype)
    lut[nearest[seeds]] = part[seeds]
    part[spot] = lut[nearest[spot]]
    return out


def _histogram(cls: np.ndarray) -> tuple[list[int], list[int]]:
    """The class ids in an int [H, W] map and their pixel counts, without sorting the pixels: one
    comparison per class for a few classes, ``cv2.calcHist`` for other uint8 maps (exact below 2**24
    pixels), bincounts for small non-negative ids, else ``np.unique``."""
    top = int(cls.max())
    ids_ok = cls.dtype.kind in "iu" and cls.dtype != np.uint64 and (cls.dtype.kind == "u" or cls.min() >= 0)
    if ids_ok and top < _FEW_VALUES:
        hist = _bincount(cls, top + 1)
    elif cls.dtype == np.uint8 and cls.size < 1 << 24:
        hist = cv2.calcHist([cls], [0], None, [256], [0, 256]).reshape(-1).astype(np.int64)
    elif ids_ok and top < 4096:
        hist = _bincount(cls, top + 1)
    else:
        ids, counts = np.unique(cls, return_counts=True)
        return ids.tolist(), counts.tolist()
    ids = np.flatnonzero(hist)
    return ids.tolist(), hist[ids].tolist()


def _bincount(a: np.ndarray, n: int) -> np.ndarray:
    """Counts of the values 0..n-1 of a non-negative int [H, W] array (int64 [n]): one comparison per
    value for a few values (~10x faster than ``np.bincount``, which copies to int64 first), else
    bincounts in bands of rows (no full-size int64 copy)."""
    if n <= _FEW_VALUES:
        return np.array([np.count_nonzero(a == k) for k in range(n)], np.int64)
    out = np.zeros(n, np.int64)
    band = max(1, _BAND_PIXELS // max(1, a.shape[1]))
    for top in range(0, a.shape[0], band):
        out += np.bincount(a[top : top + band].reshape(-1), minlength=n)[:n]
    return out
