"""Interactive pre-annotation, the ML side (issue #31): one class's region from the network's
segmentation probabilities and what the annotator drew (a box, positive and negative points).
Arrays in, arrays out; Label Studio's JSON is the backend's business (``backend/labelstudio/interactive.py``).

- :func:`class_evidence`: the class's probability, or its margin over the best other class, at the
  original image size (bilinear, as the prefill upsamples), for one class only.
- :func:`box_region`: the object inside a box: pixels whose class probability is at least
  :data:`BOX_THRESHOLD` (0.3, the BoxMask threshold of the MTC paper: the box says the class is there,
  so a pixel need not win the argmax), the largest 8-connected component inside the box (the object
  the box was drawn around; a neighbour cut by the box edge is smaller), its holes under the prefill's
  speckle size filled (the prefill's cleaning; other small patches are not the largest component).
- :func:`points_region`: the connected region of the class through the positive points: the
  8-connected components of the pixels where the class wins the argmax that hold a positive point (a
  point up to :data:`SNAP_FRACTION` of the image's diagonal off the class snaps to its nearest class
  pixel); a component that also holds a negative point loses every pixel nearer to a negative point
  than to any positive one (so a negative point on a touching object cuts it off); small holes filled.
- :func:`refine_box`: the detector's box of the class that overlaps the drawn one best, when it lies
  mostly inside it (at least :data:`MATCH_INSIDE` of its area; drawn boxes are loose, so an IoU of
  :data:`MATCH_IOU` = 0.3 suffices), else the tight box of the mask, else the drawn box.
- :class:`FeatureCache`: a thread-safe LRU of per-image trunk features, bounded in bytes and entries,
  so that a second click on the same photo runs only the heads.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from mtal_models.data.geometry import Fit

__all__ = ["BOX_THRESHOLD", "SNAP_FRACTION", "FeatureCache", "box_region", "class_evidence", "nbytes",
           "points_region", "refine_box"]

BOX_THRESHOLD = 0.3
SNAP_FRACTION = 0.02
MATCH_IOU = 0.3
MATCH_INSIDE = 0.7


def class_evidence(probs: Tensor, cls: int, fit: Fit, margin: bool = False) -> np.ndarray:
    """float32 [height, width] at the original size: class ``cls``'s probability, or with ``margin`` its
    probability minus the best other class's (>= 0 where it wins the argmax).

    probs: one image's probabilities [C, H', W'] at the network size (padding included or not); cropped
    to the resized image and upsampled bilinearly (pixel centres, as :meth:`Fit.probs_to_original`)."""
    p = fit.crop(torch.as_tensor(probs)).float()
    if p.dim() != 3 or tuple(p.shape[1:]) != fit.resized or not 0 <= cls < p.shape[0]:
        raise ValueError(f"probs must be [C, >={fit.resized_height}, >={fit.resized_width}] with class {cls} < C, "
                         f"got {tuple(torch.as_tensor(probs).shape)}")
    one = p[cls]
    if margin:  # the best other class, without copying the other channels
        parts = [q.amax(0) for q in (p[:cls], p[cls + 1:]) if q.shape[0]]
        best = torch.maximum(*parts) if len(parts) == 2 else parts[0] if parts else torch.zeros_like(one)
        one = one - best
    arr = np.ascontiguousarray(one.numpy(), dtype=np.float32)
    if (fit.height, fit.width) == fit.resized:
        return arr
    return cv2.resize(arr, (fit.width, fit.height), interpolation=cv2.INTER_LINEAR)


def _box_slices(box: Sequence[float], height: int, width: int) -> tuple[slice, slice] | None:
    """xyxy pixels (float) -> the integer rows/cols it covers, clipped; None when it covers no pixel."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return None
    c0, r0 = max(0, math.floor(min(x0, x1))), max(0, math.floor(min(y0, y1)))
    c1, r1 = min(width, math.ceil(max(x0, x1))), min(height, math.ceil(max(y0, y1)))
    if c1 <= c0 or r1 <= r0:
        return None
    return slice(r0, r1), slice(c0, c1)


def _fill_holes(mask: np.ndarray, min_px: int) -> np.ndarray:
    """bool [H, W] -> the same with every hole (4-connected background enclosed by the mask) smaller than
    ``min_px`` pixels filled, in place; worked inside the mask's bounding box."""
    if min_px <= 1 or not mask.any():
        return mask
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    box = (slice(y, y + h), slice(x, x + w))
    holes = ~mask[box]
    n, comp, stats, _ = cv2.connectedComponentsWithStats(holes.view(np.uint8), connectivity=4)
    x0, y0, cw, ch, area = (stats[:, i] for i in range(5))
    fill = (area < min_px) & (x0 > 0) & (y0 > 0) & (x0 + cw < w) & (y0 + ch < h)  # small and enclosed
    fill[0] = False  # the mask itself
    if fill.any():
        mask[box] |= fill[comp]
    return mask


def box_region(prob: np.ndarray, box: Sequence[float], *, threshold: float = BOX_THRESHOLD,
               min_area: float = 0.002) -> np.ndarray:
    """The object inside ``box``: bool [H, W] (all False when no pixel of the box reaches ``threshold``).

    prob: float [H, W] the class's probability at the image's size (:func:`class_evidence`); box: xyxy
    in pixels of that size (clipped); min_area: speckle size, a share of the image's pixels: holes smaller
    than that are filled (the prefill's speckle removal; the other small patches are not the largest
    component anyway, and the object itself is kept however small: the annotator pointed at it)."""
    h, w = prob.shape
    out = np.zeros((h, w), bool)
    cut = _box_slices(box, h, w)
    if cut is None:
        return out
    fg = np.ascontiguousarray(prob[cut] >= threshold)
    n, comp, stats, _ = cv2.connectedComponentsWithStats(fg.view(np.uint8), connectivity=8)
    if n > 1:
        best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        out[cut] = comp == best
        _fill_holes(out, math.ceil(min_area * h * w))
    return out


def points_region(margin: np.ndarray, positives: Sequence[Sequence[float]],
                  negatives: Sequence[Sequence[float]] = (), *, min_area: float = 0.002) -> np.ndarray:
    """The connected region of the class through the positive points, negatives excluded: bool [H, W].

    margin: float [H, W] the class's probability minus the best other's (:func:`class_evidence` with
    ``margin``); points: (x, y) in pixels of that size; min_area: speckle size, a share of the image's
    pixels (holes smaller than that are filled, as in :func:`box_region`)."""
    h, w = margin.shape
    fg = np.ascontiguousarray(margin >= 0)
    pos, neg = _points(positives, h, w), _points(negatives, h, w)
    out = np.zeros((h, w), bool)
    if not len(pos):
        return out
    radius = max(3.0, SNAP_FRACTION * math.hypot(h, w))
    _, comp = cv2.connectedComponents(fg.view(np.uint8), connectivity=8)
    keep = {k for x, y in pos if (k := _label_near(comp, x, y, radius))}
    hit = {int(comp[y, x]) for x, y in neg} & keep
    if hit:  # a negative point on a chosen component: split it (Voronoi between positive and negative points)
        for k in hit:
            x, y, bw, bh = cv2.boundingRect((comp == k).view(np.uint8))
            box = (slice(y, y + bh), slice(x, x + bw))
            ys, xs = np.ogrid[y: y + bh, x: x + bw]
            fg[box] &= ~((comp[box] == k) & (_nearest_sq(xs, ys, neg) < _nearest_sq(xs, ys, pos)))
        _, comp = cv2.connectedComponents(fg.view(np.uint8), connectivity=8)
        keep = {k for x, y in pos if (k := _label_near(comp, x, y, radius))}
    for k in keep:
        out |= comp == k
    return _fill_holes(out, math.ceil(min_area * h * w))


def _points(points: Sequence[Sequence[float]], h: int, w: int) -> np.ndarray:
    """float (x, y) points -> int [N, 2] pixel columns/rows, clipped into the image."""
    arr = np.asarray(points, np.float64).reshape(-1, 2)
    arr = arr[np.isfinite(arr).all(1)]
    cols = np.clip(np.floor(arr[:, 0]), 0, w - 1)
    rows = np.clip(np.floor(arr[:, 1]), 0, h - 1)
    return np.stack([cols, rows], 1).astype(np.int64)


def _nearest_sq(xs: np.ndarray, ys: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Squared distance of each pixel to its nearest point [N, 2]: xs [1, w] and ys [h, 1] (a grid,
    ``np.ogrid``) -> [h, w]."""
    best = np.full(np.broadcast_shapes(xs.shape, ys.shape), np.inf, np.float32)
    for px, py in points:
        np.minimum(best, (xs - px).astype(np.float32) ** 2 + (ys - py).astype(np.float32) ** 2, out=best)
    return best


def _label_near(comp: np.ndarray, x: int, y: int, radius: float) -> int:
    """The component label at (x, y), else the one of the nearest labelled pixel within ``radius``, else 0."""
    if comp[y, x]:
        return int(comp[y, x])
    r = int(math.ceil(radius))
    rows, cols = slice(max(0, y - r), y + r + 1), slice(max(0, x - r), x + r + 1)
    ys, xs = np.nonzero(comp[rows, cols])
    if not len(ys):
        return 0
    d = (ys + rows.start - y) ** 2 + (xs + cols.start - x) ** 2
    i = int(np.argmin(d))
    return int(comp[rows, cols][ys[i], xs[i]]) if d[i] <= radius * radius else 0


def _overlap(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(IoU, share of each box inside b) of boxes a [N, 4] with one box b [4] (xyxy)."""
    ix = np.clip(np.minimum(a[:, 2], b[2]) - np.maximum(a[:, 0], b[0]), 0, None)
    iy = np.clip(np.minimum(a[:, 3], b[3]) - np.maximum(a[:, 1], b[1]), 0, None)
    inter = ix * iy
    own = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    union = own + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / np.maximum(union, 1e-9), inter / np.maximum(own, 1e-9)


def refine_box(drawn: Sequence[float], detections: np.ndarray | None, cls: int,
               mask: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """(box float [4] xyxy, how it was found: ``"detector"``, ``"mask"`` or ``"drawn"``).

    detections: rows [K, 6 + C] (``x1, y1, x2, y2, score, class, ...``) in the drawn box's pixels, or
    None; the row of class ``cls`` with the highest IoU with ``drawn`` is taken when that IoU is at least
    :data:`MATCH_IOU` and :data:`MATCH_INSIDE` of the row's box lies inside ``drawn``; else the tight box
    of ``mask`` (bool [H, W]) when it has pixels; else ``drawn``."""
    box = np.asarray(drawn, np.float64).reshape(4)
    if detections is not None and len(detections):
        rows = np.asarray(detections, np.float64)
        rows = rows[rows[:, 5] == cls]
        if len(rows):
            ious, inside = _overlap(rows[:, :4], box)
            ious = np.where(inside >= MATCH_INSIDE, ious, 0.0)
            i = int(np.argmax(ious))
            if ious[i] >= MATCH_IOU:
                return rows[i, :4].copy(), "detector"
    if mask is not None and mask.any():
        x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
        return np.array([x, y, x + w, y + h], np.float64), "mask"
    return box, "drawn"


def nbytes(value: Any) -> int:
    """Bytes held by the tensors/arrays in ``value`` (nested tuples, lists and dicts)."""
    if isinstance(value, Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(nbytes(v) for v in value)
    return 0


class FeatureCache:
    """A thread-safe LRU of per-image features: at most ``max_entries`` entries and ``max_bytes`` bytes
    (sizes from :func:`nbytes`; an entry larger than ``max_bytes`` is not kept). Keys: anything hashable,
    e.g. (model version, image URL)."""

    def __init__(self, max_bytes: int, max_entries: int = 64) -> None:
        if max_bytes < 0 or max_entries < 0:
            raise ValueError(f"FeatureCache bounds must be >= 0, got {max_bytes} bytes, {max_entries} entries")
        self.max_bytes, self.max_entries = int(max_bytes), int(max_entries)
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> Any | None:
        """The value under ``key`` (now the most recent), or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: Hashable, value: Any) -> None:
        """Keep ``value`` under ``key``, evicting the least recently used entries beyond the bounds."""
        size = nbytes(value)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            if size > self.max_bytes or self.max_entries == 0:
                return
            self._items[key] = (value, size)
            self.bytes += size
            while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self.bytes -= dropped

    def get_or_put(self, key: Hashable, compute: Callable[[], Any]) -> tuple[Any, bool]:
        """(value, True) from the cache, else (``compute()``, False) after keeping it."""
        value = self.get(key)
        if value is not None:
            return value, True
        value = compute()
        self.put(key, value)
        return value, False
