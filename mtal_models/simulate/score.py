"""The multi-task score and the labels-to-target measure.

Score of modality t: its headline metric (``ModalitySpec.metric``: mIoU, F1, odsF, mAP higher = better;
RMSE, mean angle lower = better) relative to the full-data reference model of the same seed:
``value / full`` for higher-is-better metrics, ``full / value`` for errors. The multi-task score is the
mean over modalities, so 1.0 = as good as the model trained on every label, and "95% of the full-data
score" means a multi-task score of 0.95.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mtal_models.metrics import mdsq_score
from mtal_models.modalities import ModalitySpec

__all__ = ["HIGHER_IS_BETTER", "flat_metrics", "headline", "labels_to_target", "mdsq_score", "task_scores"]

HIGHER_IS_BETTER = {"miou": True, "f1": True, "odsf": True, "map": True, "rmse": False, "mean_angle": False}
# the edit cost of the prefill (mtal_models.edit_cost), reported next to the headline metrics
EDIT_COST = ("mask_edit_share", "box_precision", "box_recall", "duplicates_per_object", "display_threshold")


def headline(spec: ModalitySpec) -> str:
    """The metric that represents ``spec`` in the score."""
    if spec.metric not in HIGHER_IS_BETTER:
        raise ValueError(f"modality {spec.name!r}: metric {spec.metric!r} has no score direction")
    return spec.metric


def _value(metrics: Mapping[str, Any], spec: ModalitySpec) -> float:
    key = headline(spec)
    try:
        return float(metrics[spec.name][key])
    except (KeyError, TypeError):
        raise ValueError(f"metrics: no {key!r} for modality {spec.name!r}") from None


def task_scores(
    metrics: Mapping[str, Any], reference: Mapping[str, Any], modalities: Mapping[str, ModalitySpec]
) -> dict[str, float]:
    """``{modality: relative score, "multi_task": mean}``; NaN where a value is missing or the reference is 0."""
    out: dict[str, float] = {}
    for name, spec in modalities.items():
        value, full = _value(metrics, spec), _value(reference, spec)
        num, den = (value, full) if HIGHER_IS_BETTER[spec.metric] else (full, value)
        out[name] = num / den if den > 0 and math.isfinite(num) and math.isfinite(den) else math.nan
    vals = list(out.values())
    out["multi_task"] = sum(vals) / len(vals)
    return out


def flat_metrics(metrics: Mapping[str, Any], modalities: Mapping[str, ModalitySpec]) -> dict[str, float | None]:
    """``{"<modality>_<headline metric>": value, "<modality>_<edit cost>": value, "<modality>_iou_<class id>":
    value (segmentation; None for a class seen nowhere), "multi_task_loss": value,
    "total_loss": value}`` for CSV rows (the papers' final-stage loss, and the training objective with
    PAD-Net's initial heads; edit-cost keys: :data:`EDIT_COST`, where the modality has them)."""
    row = {f"{n}_{headline(s)}": _value(metrics, s) for n, s in modalities.items()}
    for n in modalities:
        row.update({f"{n}_{k}": float(v) for k, v in (metrics.get(n) or {}).items()
                    if k in EDIT_COST and isinstance(v, int | float)})
        per_class = (metrics.get(n) or {}).get("class_iou") or []
        row.update({f"{n}_iou_{c}": None if v is None else float(v) for c, v in enumerate(per_class)})
    row["multi_task_loss"] = float(metrics.get("multi_task_loss", math.nan))
    row["total_loss"] = float(metrics.get("total_loss", math.nan))
    return row


def labels_to_target(labels: Sequence[float], scores: Sequence[float], target: float) -> float | None:
    """Labels at which the curve (labels increasing) first reaches ``target``, linearly interpolated
    between the two rounds around the crossing; the first point when it already starts above; None when
    never reached."""
    if len(labels) != len(scores):
        raise ValueError(f"labels_to_target: {len(labels)} label counts but {len(scores)} scores")
    for i, (x, y) in enumerate(zip(labels, scores, strict=True)):
        if math.isfinite(y) and y >= target:
            if i == 0:
                return float(x)
            x0, y0 = float(labels[i - 1]), float(scores[i - 1])
            if not math.isfinite(y0) or y == y0:
                return float(x)
            return x0 + (target - y0) * (float(x) - x0) / (y - y0)
    return None
