"""The prefill an annotator sees: post-processing of one image's predictions before they become
Label Studio results, the one step both /predict and the ranking job go through.

Per modality, at the network's input size (so it does not depend on how the original image maps to it):

- detection rows [K, 6 + C]: duplicates suppressed across classes (one box per object, its best
  class; ``MTAL_PREFILL_PER_CLASS=true`` keeps the detector's per-class boxes), then the boxes below
  the version's display threshold dropped. The threshold is chosen per version on its validation
  tasks (max F1 at IoU 0.5, :func:`mtal_models.edit_cost.choose_threshold`) and stored in the version's
  metadata under ``prefill_thresholds``; 0.3 for versions without one (initial versions, trainings
  without validation tasks).
- segmentation: the argmax with speckle removed (8-connected components of any class under
  ``MTAL_PREFILL_MIN_AREA`` of the image's pixels take the class of the nearest pixel outside them)
  at the size the regions are encoded (the original image's), before brush RLE or polygons are
  encoded, so no region and no patch of a region that Label Studio receives is smaller; polygons are
  then simplified by :func:`backend.labelstudio.regions.mask_to_polygons` (1 px tolerance).

With the task's :class:`mtal_models.data.geometry.Fit` (what /predict and ranking pass), segmentation
probabilities are cropped to the image, upsampled bilinearly to the original size and only then
reduced to classes (:meth:`Fit.probs_to_original`, in bands of rows). Speckle is removed twice: on
the argmax at the network size (cheap; its repainting carried to the original pixels nearest to it),
then on the class map at the original size, where bilinear upsampling cuts new fragments along class
boundaries (issue #32: 212 of 393 patches of a CamVid demo's regions were under 0.2 % before this
second pass). Repainted pixels keep their own probability as confidence. Boxes are mapped back
through the same Fit. Modalities are converted one at a time, so one full-size class map and
confidence map exist at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from backend.labelstudio.convert import SegmentationArgmax, predictions_to_results
from backend.labelstudio.label_config import ProjectSchema
from backend.settings import Settings
from mtal_models.data.geometry import Fit, class_max
from mtal_models.postprocess import DEFAULT_THRESHOLD, PrefillConfig, remove_speckle, suppress_duplicates

__all__ = ["Prefill", "config_from", "prefill_thresholds"]

META_KEY = "prefill_thresholds"


def prefill_thresholds(val_metrics: Mapping[str, Any] | None, schema: ProjectSchema) -> dict[str, float]:
    """Display thresholds to store with a version: ``{detection modality: threshold}`` from its
    validation metrics (``display_threshold``); modalities without one are left out (they use 0.3)."""
    out: dict[str, float] = {}
    for name, spec in schema.modalities.items():
        value = ((val_metrics or {}).get(name) or {}).get("display_threshold")
        if spec.kind == "detection" and isinstance(value, int | float) and math.isfinite(value):
            out[name] = float(value)
    return out


@dataclass(frozen=True)
class Prefill:
    """Post-processing options of one model version: ``config`` (suppression, speckle), the display
    threshold per detection modality (missing: :data:`DEFAULT_THRESHOLD`) and the polygon
    simplification tolerance in pixels of the original image."""

    config: PrefillConfig = PrefillConfig()
    thresholds: Mapping[str, float] = field(default_factory=dict)
    polygon_tolerance: float = 1.0

    @classmethod
    def for_version(cls, settings: Settings, metadata: Mapping[str, Any] | None) -> Prefill:
        """From the settings (``prefill_per_class``, ``prefill_min_area``, ``prefill_polygon_tolerance``)
        and a version's metadata."""
        stored = (metadata or {}).get(META_KEY) or {}
        thresholds = {str(k): float(v) for k, v in stored.items() if isinstance(v, int | float)}
        return cls(config_from(settings), thresholds, settings.prefill_polygon_tolerance)

    def threshold(self, modality: str) -> float:
        return float(self.thresholds.get(modality, DEFAULT_THRESHOLD))

    def clean(self, preds: Mapping[str, Any], schema: ProjectSchema, fit: Fit | None = None,
              size: tuple[int, int] | None = None) -> dict[str, Any]:
        """One image's activated predictions (segmentation probs [C, H, W] or SegmentationArgmax,
        detection rows [K, 6 + C]; tensors or arrays) -> the same modalities, post-processed; with
        ``fit``, segmentation probabilities come back as a SegmentationArgmax at the original size;
        without, segmentation comes back at ``size`` = (height, width) (nearest; default: its own)."""
        out: dict[str, Any] = {}
        for name, pred in preds.items():
            kind = schema.modalities[name].kind if name in schema.modalities else None
            if kind == "detection":
                rows = torch.as_tensor(np.asarray(pred.cpu() if hasattr(pred, "cpu") else pred), dtype=torch.float32)
                rows = rows[0] if rows.dim() == 3 and rows.shape[0] == 1 else rows
                if rows.dim() == 2 and rows.shape[1] >= 6:
                    rows = suppress_duplicates(rows, self.config.nms_iou, self.config.per_class)
                    rows = rows[rows[:, 4] >= self.threshold(name)]
                out[name] = rows.numpy()
            elif kind == "segmentation" and fit is not None and not isinstance(pred, SegmentationArgmax):
                out[name] = self._upsampled_mask(pred, fit)
            elif kind == "segmentation":
                out[name] = self._clean_mask(pred, size)
            else:
                out[name] = pred
        return out

    def _clean_mask(self, pred: Any, size: tuple[int, int] | None = None) -> Any:
        if isinstance(pred, SegmentationArgmax):
            cls, conf = np.asarray(pred.labels), np.asarray(pred.confidence)
        else:
            probs = np.asarray(pred.float().cpu() if hasattr(pred, "cpu") else pred)
            if probs.ndim == 4 and probs.shape[0] == 1:
                probs = probs[0]
            if probs.ndim != 3 or 0 in probs.shape:
                return pred  # predictions_to_results raises the clear error
            conf, cls = class_max(probs)
        if cls.ndim != 2 or cls.size == 0:
            return pred
        if size is not None and cls.shape != tuple(size):  # the size the regions are encoded at
            cls = cv2.resize(cls, size[::-1], interpolation=cv2.INTER_NEAREST)
            conf = cv2.resize(conf, size[::-1], interpolation=cv2.INTER_NEAREST)
        return SegmentationArgmax(remove_speckle(cls, self.config.min_area), conf)

    def _upsampled_mask(self, pred: Any, fit: Fit) -> Any:
        """probs [C, H', W'] at the network size -> SegmentationArgmax at the original size, speckle
        removed at both sizes (see the module docstring)."""
        probs = torch.as_tensor(np.asarray(pred) if not isinstance(pred, torch.Tensor) else pred)
        if probs.dim() == 4 and probs.shape[0] == 1:
            probs = probs[0]
        if probs.dim() != 3 or 0 in probs.shape:
            return pred  # predictions_to_results raises the clear error
        best, net = class_max(fit.crop(probs))  # torch.max(probs, 0)'s values and classes, faster
        cleaned = remove_speckle(net, self.config.min_area)
        if fit.resized == (fit.height, fit.width):  # no resize (bench.serve's images): the network-size
            return SegmentationArgmax(cleaned, best)  # argmax is the original's, cleaned once
        override = None if cleaned is net else np.where(cleaned != net, cleaned.astype(np.int32), -1)
        cls, conf = fit.probs_to_original(probs, override)
        return SegmentationArgmax(remove_speckle(cls, self.config.min_area), conf)

    def results(self, preds: Mapping[str, Any], schema: ProjectSchema, height: int, width: int,
                requested: Sequence[str] | None = None,
                input_size: tuple[int, int] | None = None, fit: Fit | None = None) -> list[dict[str, Any]]:
        """:func:`backend.labelstudio.convert.predictions_to_results` of the post-processed predictions (the
        thresholds are applied here, per modality), one modality at a time. ``fit``: the task's
        geometry (then ``input_size`` is its resized size); without it, boxes are in pixels of an
        ``input_size`` input and masks are resized nearest."""
        if fit is not None:
            height, width, input_size = fit.height, fit.width, fit.resized
        out: list[dict[str, Any]] = []
        for name, pred in preds.items():
            one = self.clean({name: pred}, schema, fit, (height, width))
            out.extend(predictions_to_results(one, schema, height, width, min_score=0.0, input_size=input_size,
                                              polygon_tolerance=self.polygon_tolerance))
            del one
        if requested is not None:
            out.extend(predictions_to_results({}, schema, height, width, requested=requested))
        return out


def config_from(settings: Settings) -> PrefillConfig:
    """The core's :class:`PrefillConfig` from the backend settings."""
    return PrefillConfig(per_class=settings.prefill_per_class, min_area=settings.prefill_min_area)
