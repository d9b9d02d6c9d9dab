"""Evaluation metrics: streaming accumulators keyed by modality, driven by ``ModalitySpec.metric``.

Every accumulator takes the network's *raw* final output (the formats of :mod:`mtal_models.modalities`),
the batch target and the bool presence flags [B]; absent samples are skipped and their labels never
read. ``compute()`` returns ``{metric_name: float}``. Definitions (dataset-level, i.e. pixels/boxes of
all images pooled before dividing):

- segmentation ``miou``: per-class IoU from the pooled confusion matrix (torchmetrics
  ``MulticlassJaccardIndex``, ``ignore_index`` pixels dropped), averaged over the classes that occur
  in the prediction or the target (classes seen nowhere do not count as 0). Also ``pixel_acc``, and
  ``class_iou``: the IoU of every class id (None for a class seen nowhere).
- binary ``f1``/``iou``: logits > 0 (probability 0.5) against the {0, 1} target, 255 = ignored.
- binary ``odsf`` (edges): optimal dataset-scale F-measure — TP/FP/FN pooled over the dataset for each
  of ``n_thresholds`` probability thresholds, F at the best one. ``tolerance`` (pixels, default 0) is a
  square dilation used for matching: a predicted edge pixel is a hit when a true edge lies within
  ``tolerance`` px, a true edge pixel is recalled when a predicted one does. 0 = exact pixel matching
  (stricter than BSDS's bipartite matching, which needs a boundary-matching library).
- depth ``rmse``: sqrt(mean squared error over valid pixels, target > 0); also ``abs_err``.
- normals ``mean_angle``: mean angle in degrees between the normalised prediction and target over valid
  (non-zero) target pixels (a median would need every pixel kept, so it is not reported).
- detection ``map``: torchmetrics ``MeanAveragePrecision`` (bbox, COCO 0.5:0.95); also ``map_50``,
  and ``degenerate_share``: the share of predicted boxes narrower or lower than 1 px (a collapsed box
  regression gives boxes of zero size, and mAP 0, with high scores; see :func:`box_collapse`).
- edit cost of the prefill, next to these (:mod:`mtal_models.edit_cost`): segmentation
  ``mask_edit_share``; detection ``box_precision``, ``box_recall``, ``box_f1``,
  ``duplicates_per_object``, ``boxes_to_delete_per_image``, ``boxes_to_draw_per_image`` and the
  ``display_threshold`` they were measured at.

:func:`mdsq` combines detection and segmentation relative to fully supervised references (MTC).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassJaccardIndex
from torchmetrics.detection import MeanAveragePrecision

from mtal_models.edit_cost import build_prefill_metric
from mtal_models.modalities import ModalitySpec, unpack_detections
from mtal_models.postprocess import PrefillConfig

__all__ = [
    "BinaryMetric",
    "DepthMetric",
    "DetectionMetric",
    "MetricSet",
    "ModalityMetric",
    "NormalsMetric",
    "SegmentationMetric",
    "box_collapse",
    "build_metric",
    "count_degenerate",
    "mdsq",
    "mdsq_score",
]

MIN_BOX_SIZE = 1.0
"""A predicted box narrower or lower than this (pixels) is degenerate."""
COLLAPSE_SHARE = 0.5
"""Box regression counts as collapsed when at least this share of the predicted boxes is degenerate."""


def count_degenerate(dets: Tensor, min_size: float = MIN_BOX_SIZE) -> tuple[int, int]:
    """Padded detections [B, K, 6 + C] -> (degenerate boxes, predicted boxes); padding rows (class < 0)
    are not counted; a box is degenerate when x2 - x1 or y2 - y1 is below ``min_size`` pixels."""
    real = dets[..., 5] >= 0
    small = ((dets[..., 2] - dets[..., 0]) < min_size) | ((dets[..., 3] - dets[..., 1]) < min_size)
    return int((small & real).sum()), int(real.sum())


def box_collapse(degenerate: int, predicted: int) -> dict[str, Any]:
    """{"predicted", "degenerate", "degenerate_share" (NaN without boxes), "collapsed"}: collapsed when
    at least :data:`COLLAPSE_SHARE` of the predicted boxes are degenerate."""
    share = degenerate / predicted if predicted else math.nan
    return {"predicted": predicted, "degenerate": degenerate, "degenerate_share": share,
            "collapsed": bool(predicted) and share >= COLLAPSE_SHARE}


class ModalityMetric:
    """Base accumulator: ``update`` per batch, ``compute`` at the end, ``reset`` to start again."""

    def __init__(self, spec: ModalitySpec) -> None:
        self.spec = spec

    def update(self, pred: Any, target: Any, present: Tensor) -> None:
        """pred: raw network output for the batch; target: labels [B, ...]; present: bool [B]."""
        present = torch.as_tensor(present, dtype=torch.bool).reshape(-1)
        idx = present.nonzero(as_tuple=True)[0].cpu()
        if idx.numel() == 0:
            return
        if isinstance(pred, Tensor):
            if pred.shape[0] != present.shape[0]:
                raise ValueError(
                    f"modality {self.spec.name!r}: prediction batch {pred.shape[0]} != present [{present.shape[0]}]"
                )
            pred = pred.detach().float().cpu()[idx]
        target = target.detach().cpu()[idx] if isinstance(target, Tensor) else [target[i] for i in idx.tolist()]
        self._update(pred, target)

    def _update(self, pred: Any, target: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute(self) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def reset(self) -> None:
        self.__init__(self.spec)  # type: ignore[misc]


class SegmentationMetric(ModalityMetric):
    """mIoU and pixel accuracy. pred: logits [B, C, H, W]; target: int [B, H, W]."""

    def __init__(self, spec: ModalitySpec) -> None:
        super().__init__(spec)
        self._jaccard = MulticlassJaccardIndex(spec.channels, average="none", ignore_index=spec.ignore_index)

    def _update(self, pred: Tensor, target: Tensor) -> None:
        self.spec.check_prediction(pred)
        self.spec.check_target(target, pred)
        self._jaccard.update(pred.argmax(1), target.long())

    def compute(self) -> dict[str, Any]:
        confmat = self._jaccard.confmat.double()
        if confmat.sum() == 0:
            return {"miou": math.nan, "pixel_acc": math.nan, "class_iou": [None] * self.spec.channels}
        tp = confmat.diag()
        union = confmat.sum(0) + confmat.sum(1) - tp
        seen = union > 0
        per_class = [float(t / u) if u > 0 else None for t, u in zip(tp.tolist(), union.tolist(), strict=True)]
        return {"miou": float((tp[seen] / union[seen]).mean()), "pixel_acc": float(tp.sum() / confmat.sum()),
                "class_iou": per_class}


class BinaryMetric(ModalityMetric):
    """F1/IoU at probability 0.5, and odsF over thresholds. pred: logits [B, 1, H, W]; target {0,1,255}."""

    def __init__(self, spec: ModalitySpec, n_thresholds: int = 99, tolerance: int = 0) -> None:
        super().__init__(spec)
        if tolerance < 0:
            raise ValueError(f"modality {spec.name!r}: tolerance must be >= 0, got {tolerance}")
        self.n_thresholds, self.tolerance = n_thresholds, tolerance
        self.thresholds = torch.linspace(0, 1, n_thresholds + 2, dtype=torch.float64)[1:-1]
        # one row per threshold; columns: matched predicted pixels, predicted pixels, recalled gt pixels, gt pixels
        self._counts = torch.zeros(n_thresholds, 4, dtype=torch.float64)
        self._half = torch.zeros(3, dtype=torch.float64)  # tp, fp, fn at 0.5 (exact pixels)

    def reset(self) -> None:
        self.__init__(self.spec, self.n_thresholds, self.tolerance)  # type: ignore[misc]

    def _dilate(self, mask: Tensor) -> Tensor:
        if self.tolerance == 0:
            return mask
        k = 2 * self.tolerance + 1
        return F.max_pool2d(mask.float(), k, stride=1, padding=self.tolerance) > 0

    def _update(self, pred: Tensor, target: Tensor) -> None:
        self.spec.check_prediction(pred)
        self.spec.check_target(target, pred)
        valid = target != self.spec.ignore_index
        gt = (target == 1) & valid
        prob = pred.sigmoid()
        hard = (prob > 0.5) & valid
        self._half += torch.stack([(hard & gt).sum(), (hard & ~gt).sum(), (~hard & gt).sum()]).double()
        if self.spec.metric != "odsf":
            return
        gt_near = self._dilate(gt)
        for i, th in enumerate(self.thresholds.tolist()):
            p = (prob >= th) & valid
            p_near = self._dilate(p)
            self._counts[i] += torch.stack(
                [(p & gt_near).sum(), p.sum(), (gt & p_near).sum(), gt.sum()]
            ).double()

    def compute(self) -> dict[str, float]:
        tp, fp, fn = self._half.tolist()
        out = {
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else math.nan,
            "iou": tp / (tp + fp + fn) if tp + fp + fn > 0 else math.nan,
        }
        if self.spec.metric == "odsf":
            tp_p, n_p, tp_g, n_g = self._counts.unbind(1)
            precision = torch.where(n_p > 0, tp_p / n_p.clamp_min(1), torch.zeros_like(n_p))
            recall = torch.where(n_g > 0, tp_g / n_g.clamp_min(1), torch.zeros_like(n_g))
            f = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
            out["odsf"] = float(f.max()) if self._counts[:, 3].sum() > 0 or self._counts[:, 1].sum() > 0 else math.nan
        return out


class DepthMetric(ModalityMetric):
    """RMSE and mean absolute error over valid pixels. pred, target: [B, 1, H, W] metres (target <= 0 invalid)."""

    def __init__(self, spec: ModalitySpec) -> None:
        super().__init__(spec)
        self._sq = self._abs = self._n = 0.0

    def _update(self, pred: Tensor, target: Tensor) -> None:
        self.spec.check_prediction(pred)
        self.spec.check_target(target, pred)
        valid = target > 0
        err = (pred - target.float())[valid].double()
        self._sq += float((err**2).sum())
        self._abs += float(err.abs().sum())
        self._n += float(valid.sum())

    def compute(self) -> dict[str, float]:
        if self._n == 0:
            return {"rmse": math.nan, "abs_err": math.nan}
        return {"rmse": math.sqrt(self._sq / self._n), "abs_err": self._abs / self._n}


class NormalsMetric(ModalityMetric):
    """Mean angle error in degrees over valid pixels. pred, target: [B, 3, H, W] (target zero = invalid)."""

    def __init__(self, spec: ModalitySpec) -> None:
        super().__init__(spec)
        self._sum = self._n = 0.0

    def _update(self, pred: Tensor, target: Tensor) -> None:
        self.spec.check_prediction(pred)
        self.spec.check_target(target, pred)
        valid = target.abs().sum(1) > 0  # [B, H, W]
        cos = (F.normalize(pred.double(), dim=1) * F.normalize(target.double(), dim=1)).sum(1).clamp(-1, 1)
        self._sum += float(torch.rad2deg(torch.acos(cos))[valid].sum())
        self._n += float(valid.sum())

    def compute(self) -> dict[str, float]:
        return {"mean_angle": self._sum / self._n if self._n else math.nan}


class DetectionMetric(ModalityMetric):
    """COCO-style mAP. pred: padded detections [B, K, 6 + C]; target: list of {"boxes", "labels"}."""

    def __init__(self, spec: ModalitySpec) -> None:
        super().__init__(spec)
        self._map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox")
        self._n = 0
        self._degenerate = self._predicted = 0

    def _update(self, pred: Tensor, target: list[dict[str, Tensor]]) -> None:
        if not isinstance(pred, Tensor) or pred.dim() != 3 or pred.shape[-1] != 6 + self.spec.channels:
            raise ValueError(
                f"modality {self.spec.name!r}: detections must be [B, K, {6 + self.spec.channels}], "
                f"got {tuple(pred.shape) if isinstance(pred, Tensor) else type(pred).__name__}"
            )
        for t in target:
            if not isinstance(t, Mapping) or "boxes" not in t or "labels" not in t:
                raise ValueError(f"modality {self.spec.name!r}: detection labels must be dicts with boxes and labels")
        preds = [{k: d[k] for k in ("boxes", "scores", "labels")} for d in unpack_detections(pred)]
        targets = [
            {"boxes": t["boxes"].detach().cpu().float().reshape(-1, 4), "labels": t["labels"].detach().cpu().long()}
            for t in target
        ]
        self._map.update(preds, targets)
        self._n += len(targets)
        degenerate, predicted = count_degenerate(pred.detach())
        self._degenerate += degenerate
        self._predicted += predicted

    def compute(self) -> dict[str, float]:
        if self._n == 0:
            return {"map": math.nan, "map_50": math.nan, "degenerate_share": math.nan}
        res = self._map.compute()
        share = self._degenerate / self._predicted if self._predicted else math.nan
        return {"map": float(res["map"]), "map_50": float(res["map_50"]), "degenerate_share": share}


def build_metric(spec: ModalitySpec, **options: Any) -> ModalityMetric:
    """The accumulator for ``spec`` (by kind; ``spec.metric`` picks e.g. odsF for binary edges)."""
    if spec.kind == "segmentation":
        return SegmentationMetric(spec)
    if spec.kind == "binary":
        return BinaryMetric(spec, **options)
    if spec.kind == "depth":
        return DepthMetric(spec)
    if spec.kind == "normals":
        return NormalsMetric(spec)
    return DetectionMetric(spec)


class MetricSet:
    """One accumulator per modality plus the mean multi-task loss.

    ``update(final, labels_values, labels_present, loss=None, n=B, total_loss=None)``; ``compute()`` gives
    ``{modality: {metric: value}, "multi_task_loss": mean loss per sample}`` plus ``"total_loss"`` (mean
    per sample) when any batch gave one (the training objective, e.g. with PAD-Net's initial heads). Segmentation and
    detection modalities also get the edit cost of their prefill (:mod:`mtal_models.edit_cost`, post-
    processed as ``prefill`` says, default :class:`~mtal_models.postprocess.PrefillConfig`).
    """

    def __init__(self, modalities: Mapping[str, ModalitySpec], prefill: PrefillConfig | None = None,
                 **binary_options: Any) -> None:
        self.metrics = {
            name: build_metric(spec, **(binary_options if spec.kind == "binary" else {}))
            for name, spec in modalities.items()
        }
        config = prefill or PrefillConfig()
        self.prefill = {n: m for n, s in modalities.items() if (m := build_prefill_metric(s, config)) is not None}
        self._loss_sum = 0.0
        self._loss_n = 0
        self._total_sum = 0.0
        self._total_n = 0

    def update(
        self,
        final: Mapping[str, Any],
        values: Mapping[str, Any],
        present: Mapping[str, Tensor],
        loss: float | None = None,
        n: int = 0,
        total_loss: float | None = None,
    ) -> None:
        for name, metric in self.metrics.items():
            if name not in values or name not in present:
                continue
            if name not in final:
                raise ValueError(f"modality {name!r}: the network gave no prediction")
            metric.update(final[name], values[name], present[name])
            if name in self.prefill:
                self.prefill[name].update(final[name], values[name], present[name])
        if loss is not None:
            self._loss_sum += float(loss) * n
            self._loss_n += n
        if total_loss is not None:
            self._total_sum += float(total_loss) * n
            self._total_n += n

    def compute(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: m.compute() for name, m in self.metrics.items()}
        for name, m in self.prefill.items():
            out[name].update(m.compute())
        out["multi_task_loss"] = self._loss_sum / self._loss_n if self._loss_n else math.nan
        if self._total_n:
            out["total_loss"] = self._total_sum / self._total_n
        return out


def mdsq(map_: float, miou: float, map_full: float, miou_full: float) -> float:
    """mDSQ = (mAP / mAP_full + mIoU / mIoU_full) / 2 (MTC): 1 = as good as full supervision."""
    if map_full <= 0 or miou_full <= 0:
        raise ValueError(f"mdsq: full-supervision references must be > 0, got mAP={map_full}, mIoU={miou_full}")
    return (map_ / map_full + miou / miou_full) / 2


def mdsq_score(metrics: Mapping[str, Any], reference: Mapping[str, Any],
               modalities: Mapping[str, ModalitySpec]) -> float | None:
    """MTC's mDSQ = (mAP / mAP_full + mIoU / mIoU_full) / 2 against the full-data ``reference``, for a
    det+seg set (one detection and one segmentation modality); None for other modality sets, NaN when a
    value is missing or a reference is 0."""
    det = [n for n, s in modalities.items() if s.kind == "detection"]
    seg = [n for n, s in modalities.items() if s.kind == "segmentation"]
    if len(det) != 1 or len(seg) != 1:
        return None
    try:
        return mdsq(float(metrics[det[0]]["map"]), float(metrics[seg[0]]["miou"]),
                    float(reference[det[0]]["map"]), float(reference[seg[0]]["miou"]))
    except (KeyError, TypeError, ValueError):
        return math.nan

