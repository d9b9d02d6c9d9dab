"""What Label Studio's smart tools send and get back (issue #31): the ``context`` of an interactive
``/predict`` -> prompts, and a region found by the network -> Label Studio results.

With the backend added ``is_interactive: true``, the editor POSTs ``/api/ml/{id}/interactive-annotating``
``{"task": id, "context": {"result": [regions just drawn]}}`` and Label Studio forwards it to ``/predict``
as ``params.context`` (the task with its annotations, predictions and drafts in ``tasks``). A region of a
smart tool (:class:`backend.labelstudio.smart_tags.SmartTool`) is a prompt:

- a rectangle (``rectanglelabels`` / ``rectangle``): ``value`` {x, y, width, height, rotation} in percent
  of the image (a rotated box counts by its axis-aligned bounding box), its label in
  ``value.rectanglelabels`` or ``value.labels`` (often none: then the tool's only label, or every label
  of its modalities, the class with the most probability inside the box winning);
- keypoints (``keypointlabels`` / ``keypoint``): ``value`` {x, y} in percent, ``is_positive`` (top level
  or in ``value``; default true), the label in ``value.keypointlabels`` or ``value.labels``. All keypoints
  of one label form one prompt.

Regions of other tags (the annotator's own drawing) are not prompts and are left out. A context that is
not an object, a ``result`` that is not a list, a region that is not an object or lacks finite ``x`` /
``y`` (``width`` / ``height`` for a rectangle), or a label no modality has, is a :class:`ContextError`
naming it (answered 400).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backend.labelstudio.convert import SegmentationArgmax, predictions_to_results
from backend.labelstudio.label_config import BACKGROUND, ProjectSchema
from backend.labelstudio.regions import mask_to_rle, rect_to_box

__all__ = ["ContextError", "Prompt", "box_results", "drawn_regions", "fresh_ids", "mask_results", "parse_context",
           "targets"]

MAX_REGIONS = 256
_BOX_TYPES = ("rectanglelabels", "rectangle")
_POINT_TYPES = ("keypointlabels", "keypoint")


class ContextError(ValueError):
    """An interactive context the backend cannot answer; the message names the offending part."""


@dataclass
class Prompt:
    """One thing the annotator asked for with a smart tool. Coordinates in percent of the image.

    ``kind``: ``"box"`` (``box`` = x, y, width, height) or ``"points"`` (``points`` = (x, y, positive));
    ``labels``: the candidate labels (one when the region carried it)."""

    tool: str
    kind: str
    labels: tuple[str, ...]
    box: tuple[float, float, float, float] | None = None
    points: list[tuple[float, float, bool]] = field(default_factory=list)
    rotation: float = 0.0

    def box_pixels(self, height: int, width: int) -> tuple[float, float, float, float]:
        """xyxy in pixels of a ``height`` x ``width`` image (a rotated box: its axis-aligned bounding box)."""
        assert self.box is not None
        x, y, w, h = self.box
        if self.rotation % 360 == 0:
            return x * width / 100, y * height / 100, (x + w) * width / 100, (y + h) * height / 100
        x0, y0, x1, y1 = rect_to_box({"x": x, "y": y, "width": w, "height": h, "rotation": self.rotation},
                                     height, width).tolist()
        return x0, y0, x1, y1

    def point_pixels(self, height: int, width: int, positive: bool) -> list[tuple[float, float]]:
        """(x, y) in pixels of the positive (or negative) points."""
        return [(x * width / 100, y * height / 100) for x, y, pos in self.points if pos is positive]


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ContextError(f"{where} must be a finite number, got {str(value)[:40]!r}")
    return float(value)


def _region_labels(region: Mapping[str, Any], value: Mapping[str, Any], where: str) -> tuple[str, ...]:
    raw = value.get(str(region.get("type"))) if isinstance(region.get("type"), str) else None
    raw = raw if raw is not None else value.get("labels")
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(lb, str) for lb in raw):
        raise ContextError(f"{where}.value labels must be a list of strings")
    return tuple(raw)


def parse_context(context: Any, schema: ProjectSchema) -> list[Prompt]:
    """The prompts in an interactive ``context`` (module docstring), in the order drawn; [] when no
    region is a smart tool's. Raises :class:`ContextError`."""
    if not isinstance(context, Mapping):
        raise ContextError(f"params.context must be an object, got {type(context).__name__}")
    result = context.get("result")
    if not isinstance(result, list):
        raise ContextError(f"params.context.result must be a list, got {type(result).__name__}")
    if len(result) > MAX_REGIONS:
        raise ContextError(f"params.context.result has {len(result)} regions; at most {MAX_REGIONS}")
    boxes: list[Prompt] = []
    points: dict[tuple[str, tuple[str, ...]], Prompt] = {}
    for i, region in enumerate(result):
        where = f"context.result[{i}]"
        if not isinstance(region, Mapping):
            raise ContextError(f"{where} must be an object, got {type(region).__name__}")
        tool = schema.smart_tools.get(str(region.get("from_name")))
        kind = region.get("type")
        if tool is None or kind not in _BOX_TYPES + _POINT_TYPES:
            continue  # the annotator's own regions are not prompts
        value = region.get("value")
        if not isinstance(value, Mapping):
            raise ContextError(f"{where}.value must be an object")
        x, y = _number(value.get("x"), f"{where}.value.x"), _number(value.get("y"), f"{where}.value.y")
        labels = _region_labels(region, value, where) or tool.labels or _modality_labels(schema, tool.modalities)
        for lb in labels:
            if not targets(schema, tool.modalities, lb):
                known = sorted({lb for m in tool.modalities for lb in schema.class_names(m)} - {BACKGROUND})
                raise ContextError(f"{where}: label {lb[:80]!r} of smart tool {tool.name!r} is in no modality; "
                                   f"known labels: {known}")
        if kind in _BOX_TYPES:
            w, h = _number(value.get("width"), f"{where}.value.width"), _number(value.get("height"),
                                                                                  f"{where}.value.height")
            if w < 0 or h < 0:
                raise ContextError(f"{where}: width and height must be >= 0")
            rotation = _number(value.get("rotation", 0) or 0, f"{where}.value.rotation")
            if max(abs(x), abs(y), w, h, abs(rotation)) > 1e6:  # percent: anything larger is garbage
                raise ContextError(f"{where}: coordinates out of range")
            boxes.append(Prompt(tool.name, "box", labels, box=(x, y, w, h), rotation=rotation))
        else:
            positive = region.get("is_positive", value.get("is_positive", True))
            if not isinstance(positive, bool):
                raise ContextError(f"{where}.is_positive must be true or false")
            if len(labels) != 1:
                raise ContextError(f"{where}: a keypoint needs one label (value.keypointlabels); smart tool "
                                   f"{tool.name!r} has {list(labels)}")
            prompt = points.setdefault((tool.name, labels), Prompt(tool.name, "points", labels))
            prompt.points.append((x, y, positive))
    return boxes + list(points.values())


def drawn_regions(context: Mapping[str, Any], schema: ProjectSchema) -> list[Mapping[str, Any]]:
    """The context's regions of modality tags (what the annotator drew, not a smart tool's prompt); call
    after :func:`parse_context` has checked the context."""
    return [r for r in context["result"] if isinstance(r, Mapping) and r.get("from_name") in schema.tags]


def _modality_labels(schema: ProjectSchema, modalities: Sequence[str]) -> tuple[str, ...]:
    """The labels of the modalities (class names without background), in order, each once."""
    out: dict[str, None] = {}
    for m in modalities:
        out.update((lb, None) for lb in schema.class_names(m) if lb != BACKGROUND)
    return tuple(out)


def targets(schema: ProjectSchema, modalities: Sequence[str], label: str) -> list[tuple[str, int]]:
    """(modality, class id) of every modality in ``modalities`` with class ``label`` (segmentation first)."""
    out = [(m, schema.class_index(m, label)) for m in modalities if m in schema.modalities]
    found = [(m, int(c)) for m, c in out if c is not None and label != BACKGROUND]
    return sorted(found, key=lambda mc: schema.modalities[mc[0]].kind != "segmentation")


def fresh_ids(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every region a new id: the editor adds them to what is drawn, where ids must not repeat."""
    for r in results:
        r["id"] = uuid.uuid4().hex[:10]
    return results


def mask_results(schema: ProjectSchema, modality: str, cls: int, mask: np.ndarray,
                 confidence: np.ndarray | None = None) -> list[dict[str, Any]]:
    """A bool [H, W] region of class ``cls`` -> the modality's results (one brush region, or one polygon
    per connected component); score = mean ``confidence`` over the region (default 1)."""
    h, w = mask.shape
    tag = schema.tags[modality]
    if tag.tag_type == "BrushLabels":  # one region: encoded directly (no per-class pass over the image)
        score = float(confidence[mask].mean()) if confidence is not None and mask.any() else 1.0
        value = {"format": "rle", "rle": mask_to_rle(mask), tag.result_type: [schema.class_names(modality)[cls]]}
        return fresh_ids([{"from_name": tag.name, "to_name": tag.to_name, "original_width": w,
                            "original_height": h, "image_rotation": 0, "type": tag.result_type, "value": value,
                            "score": score}])
    labels = np.where(mask, np.uint8(cls), np.uint8(0)) if cls < 256 else np.where(mask, cls, 0).astype(np.int32)
    conf = np.ones((h, w), np.float32) if confidence is None else confidence.astype(np.float32, copy=False)
    return fresh_ids(predictions_to_results({modality: SegmentationArgmax(labels, conf)}, schema, h, w))


def box_results(schema: ProjectSchema, modality: str, cls: int, box: Sequence[float], score: float,
                height: int, width: int) -> list[dict[str, Any]]:
    """A box xyxy in pixels of a ``height`` x ``width`` image -> the detection modality's rectangle."""
    n = schema.modalities[modality].channels
    row = np.zeros((1, 6 + n), np.float32)
    row[0, :4] = np.clip(np.asarray(box, np.float64), 0, [width, height, width, height])
    row[0, 4], row[0, 5] = score, cls
    row[0, 6 + cls] = score
    return fresh_ids(predictions_to_results({modality: row}, schema, height, width, min_score=0.0))
