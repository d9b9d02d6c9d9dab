"""What it costs an annotator to fix a prefill (edit cost), and the display threshold chosen from it.

Measures of the edits an annotator has to make to a prefill post-processed as in
:mod:`mtal_models.postprocess`. Definitions (docs/models.md, "Edit cost"):

- **Display threshold** (:func:`choose_threshold`): the score above which boxes are shown, chosen on
  validation images as the grid value (0.05, 0.10, ... 0.95) with the highest F1 at IoU 0.5 (ties: the
  middle of the tied values); :data:`~mtal_models.postprocess.DEFAULT_THRESHOLD` (0.3) when there is
  nothing to choose on.
- **Mask edit share**: the share of labelled pixels whose prefilled class is wrong (the pixels an
  annotator repaints), pooled over images.
- **Boxes**: a prefilled box is a hit when it has the class of a still unmatched ground-truth box with
  IoU >= 0.5 (greedy by score). precision = hits / shown boxes, recall = hits / ground-truth boxes;
  boxes to delete = shown boxes that are not hits, boxes to draw = ground-truth boxes without a hit
  (both per image); duplicates per object = sum over ground-truth boxes of (shown boxes of any class
  whose best IoU is with that object, at IoU >= 0.5) - 1, divided by the number of ground-truth boxes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from mtal_models.modalities import ModalitySpec
from mtal_models.postprocess import DEFAULT_THRESHOLD, PrefillConfig, remove_speckle, suppress_duplicates

__all__ = [
    "THRESHOLD_GRID",
    "BoxCounts",
    "BoxPrefillMetric",
    "MaskEditMetric",
    "build_prefill_metric",
    "choose_threshold",
    "count_box_edits",
]

THRESHOLD_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))


@dataclass
class BoxCounts:
    """Box edit counts pooled over images (see the module docstring)."""

    hits: int = 0
    shown: int = 0
    objects: int = 0
    duplicates: int = 0
    images: int = 0

    def __iadd__(self, other: BoxCounts) -> BoxCounts:
        self.hits += other.hits
        self.shown += other.shown
        self.objects += other.objects
        self.duplicates += other.duplicates
        self.images += other.images
        return self

    @property
    def f1(self) -> float:
        denom = self.shown + self.objects
        return 2 * self.hits / denom if denom else math.nan

    def summary(self) -> dict[str, float]:
        """precision, recall, duplicates per object, boxes to delete / draw per image (NaN when undefined)."""
        def ratio(a: float, b: float) -> float:
            return a / b if b else math.nan

        return {
            "box_precision": ratio(self.hits, self.shown),
            "box_recall": ratio(self.hits, self.objects),
            "box_f1": self.f1,
            "duplicates_per_object": ratio(self.duplicates, self.objects),
            "boxes_to_delete_per_image": ratio(self.shown - self.hits, self.images),
            "boxes_to_draw_per_image": ratio(self.objects - self.hits, self.images),
        }


def count_box_edits(boxes: Tensor, scores: Tensor, labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
                    iou: float = 0.5) -> BoxCounts:
    """One image: shown boxes [N, 4] xyxy with scores [N] and classes [N] against ground truth
    [M, 4] / [M] -> BoxCounts (greedy class-aware matching by score at ``iou``)."""
    n, m = int(boxes.shape[0]), int(gt_boxes.shape[0])
    counts = BoxCounts(shown=n, objects=m, images=1)
    if n == 0 or m == 0:
        return counts
    ious = box_iou(boxes.float().reshape(-1, 4), gt_boxes.float().reshape(-1, 4))  # [N, M]
    best_iou, best_gt = ious.max(1)
    on = torch.bincount(best_gt[best_iou >= iou], minlength=m)
    counts.duplicates = int((on - 1).clamp_min(0).sum())
    same = labels.long().reshape(-1, 1) == gt_labels.long().reshape(1, -1)
    cand = torch.where(same & (ious >= iou), ious, torch.full_like(ious, -1.0))
    taken = torch.zeros(m, dtype=torch.bool)
    for i in torch.argsort(scores.float(), descending=True, stable=True).tolist():
        row = cand[i].masked_fill(taken, -1.0)
        j = int(row.argmax())
        if row[j] >= 0:
            taken[j] = True
            counts.hits += 1
    return counts


def _counts_at(images: Sequence[tuple[Tensor, Mapping[str, Tensor]]], threshold: float, iou: float) -> BoxCounts:
    total = BoxCounts()
    for rows, gt in images:
        shown = rows[rows[:, 4] >= threshold]
        total += count_box_edits(shown[:, :4], shown[:, 4], shown[:, 5], gt["boxes"], gt["labels"], iou)
    return total


def choose_threshold(images: Sequence[tuple[Tensor, Mapping[str, Tensor]]], iou: float = 0.5,
                     grid: Sequence[float] = THRESHOLD_GRID) -> float | None:
    """The display threshold with the highest F1 at ``iou`` over ``images``: pairs of (already
    suppressed rows [K, 6 + C], ground truth {"boxes" [M, 4], "labels" [M]}). When several grid values
    tie, the middle one (lower middle for an even count): on a few validation images a whole range of
    thresholds scores the same, and its middle stays clear of the scores that bound it. None when the
    images hold neither a box nor a ground-truth box (nothing to choose on). When no threshold gives a
    hit, every one ties at F1 = 0 and the middle of the grid (0.5) is chosen: fewer wrong boxes than
    0.3 would show."""
    f1 = {t: _counts_at(images, t, iou).f1 for t in sorted(grid)}
    f1 = {t: v for t, v in f1.items() if not math.isnan(v)}
    if not f1:
        return None
    best = max(f1.values())
    tied = [t for t, v in f1.items() if v == best]
    return tied[(len(tied) - 1) // 2]


class _Accumulator:
    """Shared presence handling (like :class:`mtal_models.metrics.ModalityMetric`)."""

    def __init__(self, spec: ModalitySpec, config: PrefillConfig) -> None:
        self.spec, self.config = spec, config

    def update(self, pred: Tensor, target: Tensor | Sequence[Mapping[str, Tensor]], present: Tensor) -> None:
        """pred: raw network output [B, ...]; target: labels of the batch; present: bool [B]."""
        idx = torch.as_tensor(present, dtype=torch.bool).reshape(-1).nonzero(as_tuple=True)[0].cpu().tolist()
        for i in idx:
            self._one(pred[i].detach().float().cpu(), target[i])

    def _one(self, pred: Tensor, target: object) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class MaskEditMetric(_Accumulator):
    """``mask_edit_share``: logits [B, C, H, W] -> argmax -> speckle removal, against int [B, H, W]
    targets (``ignore_index`` pixels are not labelled and do not count)."""

    def __init__(self, spec: ModalitySpec, config: PrefillConfig) -> None:
        super().__init__(spec, config)
        self.wrong = self.labelled = 0

    def _one(self, pred: Tensor, target: object) -> None:
        cls = remove_speckle(pred.argmax(0).numpy().astype(np.int32), self.config.min_area)
        tgt = np.asarray(torch.as_tensor(target).cpu())
        valid = tgt != self.spec.ignore_index
        self.wrong += int(((cls != tgt) & valid).sum())
        self.labelled += int(valid.sum())

    def compute(self) -> dict[str, float]:
        return {"mask_edit_share": self.wrong / self.labelled if self.labelled else math.nan}


class BoxPrefillMetric(_Accumulator):
    """Box edit counts: detections [B, K, 6 + C] -> suppression (per the config) -> display threshold
    (the config's, or chosen on these images) against targets [{"boxes", "labels"}]. ``compute`` also
    gives ``display_threshold`` (NaN: nothing to choose on, :data:`DEFAULT_THRESHOLD` was used)."""

    def __init__(self, spec: ModalitySpec, config: PrefillConfig) -> None:
        super().__init__(spec, config)
        self.images: list[tuple[Tensor, dict[str, Tensor]]] = []

    def _one(self, pred: Tensor, target: object) -> None:
        if not isinstance(target, Mapping):
            raise ValueError(f"modality {self.spec.name!r}: detection labels must be dicts with boxes and labels")
        rows = suppress_duplicates(pred, self.config.nms_iou, self.config.per_class)
        gt = {"boxes": torch.as_tensor(target["boxes"]).float().reshape(-1, 4).cpu(),
              "labels": torch.as_tensor(target["labels"]).long().reshape(-1).cpu()}
        self.images.append((rows[:, :6], gt))

    def compute(self) -> dict[str, float]:
        chosen = self.config.threshold
        if chosen is None:
            chosen = choose_threshold(self.images, self.config.match_iou)
        used = DEFAULT_THRESHOLD if chosen is None else chosen
        out = _counts_at(self.images, used, self.config.match_iou).summary() if self.images else {
            k: math.nan for k in BoxCounts().summary()}
        return {**out, "display_threshold": math.nan if chosen is None else float(chosen)}


def build_prefill_metric(spec: ModalitySpec, config: PrefillConfig) -> MaskEditMetric | BoxPrefillMetric | None:
    """The edit-cost accumulator of ``spec`` (segmentation, detection), None for other kinds."""
    if spec.kind == "segmentation":
        return MaskEditMetric(spec, config)
    if spec.kind == "detection":
        return BoxPrefillMetric(spec, config)
    return None
