"""Label Studio JSON <-> numpy labels and predictions: annotations in, pre-annotations out.

Region geometry (brush RLE, polygons, rectangles in percent coordinates) is in
:mod:`backend.labelstudio.regions`; its functions are re-exported here. ``image_rotation`` is ignored (the
backend sees images un-rotated, as stored).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import cv2
import numpy as np

from backend.labelstudio.label_config import ProjectSchema, TagInfo
from backend.labelstudio.regions import (
    box_to_rect,
    check_size,
    class_map_to_rle,
    encode_rle,
    mask_to_polygons,
    mask_to_rle,
    polygon_to_mask,
    rect_to_box,
    rle_to_mask,
)
from mtal_models.data.geometry import class_max
from mtal_models.data.sample import empty_label

__all__ = [
    "annotation_to_labels",
    "SegmentationArgmax",
    "box_to_rect",
    "class_map_to_rle",
    "encode_rle",
    "mask_to_polygons",
    "mask_to_rle",
    "polygon_to_mask",
    "predictions_to_results",
    "rect_to_box",
    "region_id",
    "rle_to_mask",
]

logger = logging.getLogger(__name__)
MAX_REGIONS = 2000  # results per annotation (regions + choices)
_BAND_PIXELS = 1 << 20  # pixels per band of the per-class sums
def _resize_nearest(a: np.ndarray, height: int, width: int) -> np.ndarray:
    if a.shape[:2] == (height, width):
        return a
    return cv2.resize(a, (width, height), interpolation=cv2.INTER_NEAREST)


def _region_mask(res: Mapping[str, Any], tag: TagInfo, height: int, width: int) -> np.ndarray:
    value = res["value"]
    if tag.tag_type == "BrushLabels":
        if value.get("format", "rle") != "rle":
            raise ValueError(f"brush format {value.get('format')!r} is not supported (only 'rle')")
        oh, ow = int(res.get("original_height") or height), int(res.get("original_width") or width)
        mask = rle_to_mask(value["rle"], oh, ow)
        return _resize_nearest(mask.astype(np.uint8), height, width).astype(bool)
    return polygon_to_mask(value["points"], height, width)


def annotation_to_labels(
    result: Sequence[Mapping[str, Any]], schema: ProjectSchema, height: int, width: int
) -> tuple[dict[str, Any], dict[str, bool]]:
    """One annotation's ``result`` list -> (labels, present) for every annotatable modality.

    labels follow :mod:`mtal_models.data.sample`: segmentation int64 [H, W] (0 = background, later
    regions overwrite earlier ones), detection ``{"boxes": float32 [N, 4] xyxy px, "labels": int64 [N]}``;
    a modality that is not present gets :func:`empty_label` (ignore_index everywhere / no boxes).
    present: with the schema's choices tag, the modalities ticked in it (ticked and empty = labelled
    as empty); if the annotation has no choices result at all, or the schema no choices tag, a
    modality is present when it has at least one region. Unknown tags and labels are logged and skipped;
    smart tools' regions (``schema.smart_tools``) are skipped silently.
    """
    check_size(height, width)
    if len(result) > MAX_REGIONS:  # each region may rasterise a full-size mask: bound the work first
        raise ValueError(f"annotation has {len(result)} results; at most {MAX_REGIONS} are accepted")
    kinds = {m: schema.modalities[m].kind for m in schema.annotatable}
    seg = {m: np.zeros((height, width), np.int64) for m, k in kinds.items() if k == "segmentation"}
    boxes: dict[str, list[np.ndarray]] = {m: [] for m in schema.annotatable if m not in seg}
    classes: dict[str, list[int]] = {m: [] for m in boxes}
    has_region: set[str] = set()
    ticked: set[str] | None = None
    for i, res in enumerate(result):
        name = res.get("from_name")
        if schema.choices_tag is not None and name == schema.choices_tag:
            picked = (res.get("value") or {}).get("choices") or []
            ticked = (ticked or set()) | {c for c in picked if c in schema.modalities}
            continue
        tag = schema.tags.get(name)
        if tag is None:
            if name not in schema.smart_tools:  # a smart tool's regions are drawing aids, not labels
                logger.warning("annotation result %d: unknown from_name %r ignored", i, name)
            continue
        try:
            rtype = str(res.get("type", tag.result_type)).lower()
            if rtype != tag.result_type:
                raise ValueError(f"type {rtype!r} does not match <{tag.tag_type}>")
            names = res["value"].get(tag.result_type) or []
            if not names:
                raise ValueError("region has no label")
            cls = schema.class_index(tag.modality, names[0])
            if cls is None:
                raise ValueError(f"label {names[0]!r} is not in <{tag.tag_type} name={tag.name!r}>")
            if tag.modality in seg:
                seg[tag.modality][_region_mask(res, tag, height, width)] = cls
            else:
                box = rect_to_box(res["value"], height, width)
                box[[0, 2]] = box[[0, 2]].clip(0, width)
                box[[1, 3]] = box[[1, 3]].clip(0, height)
                if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
                    raise ValueError("rectangle is empty inside the image")
                boxes[tag.modality].append(box)
                classes[tag.modality].append(cls)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:  # NaN/inf sizes too
            logger.warning("annotation result %d (%s): skipped: %s", i, name, e)
            continue
        has_region.add(tag.modality)

    present = {m: (m in ticked) if ticked is not None else (m in has_region) for m in schema.annotatable}
    if ticked is not None and has_region - ticked:
        unticked = sorted(has_region - ticked)
        logger.warning("regions drawn for unticked modalities %s are ignored (not marked labelled)", unticked)
    labels: dict[str, Any] = {}
    for m in schema.annotatable:
        if not present[m]:
            labels[m] = empty_label(schema.modalities[m], height, width)
        elif m in seg:
            labels[m] = seg[m]
        else:
            labels[m] = {
                "boxes": np.array(boxes[m], np.float32).reshape(-1, 4),
                "labels": np.array(classes[m], np.int64).reshape(-1),
            }
    return labels, present


# ---- predictions -> LS results -------------------------------------------------------------------
def region_id(from_name: str, index: int) -> str:
    """Stable short id (10 hex chars) for the ``index``-th region of tag ``from_name``."""
    return hashlib.sha1(f"{from_name}/{index}".encode()).hexdigest()[:10]


class SegmentationArgmax(NamedTuple):
    """A segmentation prediction already reduced over classes (cheaper to pass than probabilities):
    ``labels`` int [H', W'] class per pixel, ``confidence`` float32 [H', W'] its probability."""

    labels: np.ndarray
    confidence: np.ndarray


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach()
        x = (x.float() if x.is_floating_point() else x).cpu().numpy()
    return np.asarray(x)


def predictions_to_results(
    preds: Mapping[str, Any],
    schema: ProjectSchema,
    height: int,
    width: int,
    requested: Sequence[str] | None = None,
    min_score: float = 0.3,
    input_size: tuple[int, int] | None = None,
    polygon_tolerance: float = 1.0,
) -> list[dict[str, Any]]:
    """Per-modality activated predictions for ONE image -> LS ``result`` list.

    preds: segmentation probabilities [C, H', W'] or a :class:`SegmentationArgmax` (argmax resized
    nearest to [height, width]; BrushLabels: one brush region per non-background class present;
    PolygonLabels: one polygon per connected component of each class, see :func:`mask_to_polygons`,
    simplified with ``polygon_tolerance`` px;
    score = mean max-probability over the region's pixels); detection rows [K, 6 + C]
    (``x1, y1, x2, y2, score, class, probs...`` in pixels of the network input of size ``input_size``
    = (h, w), default (height, width); padding rows (class < 0) and rows with score < ``min_score``
    dropped); depth/normals skipped. ``requested``: modality names to tick in the choices tag
    (ignored when the schema has none).
    """
    check_size(height, width)
    out: list[dict[str, Any]] = []
    for name, pred in preds.items():
        if name not in schema.modalities:
            raise ValueError(f"prediction for unknown modality {name!r}; valid: {list(schema.modalities)}")
        spec = schema.modalities[name]
        if spec.kind not in ("segmentation", "detection"):
            continue  # depth/normals: not annotatable in LS
        tag = schema.tags[name]
        common = {
            "from_name": tag.name,
            "to_name": tag.to_name,
            "original_width": int(width),
            "original_height": int(height),
            "image_rotation": 0,
        }
        if spec.kind == "segmentation":
            if isinstance(pred, SegmentationArgmax):
                cls, conf = _check_argmax(pred, schema, tag)
            else:
                cls, conf = _argmax(_numpy(pred), schema, tag)
            out.extend(_seg_results(cls, conf, schema, tag, common, height, width, polygon_tolerance))
        else:
            out.extend(_det_results(_numpy(pred), schema, tag, common, height, width, min_score, input_size))
    if requested is not None and schema.choices_tag is not None:
        bad = [r for r in requested if r not in schema.modalities]
        if bad:
            raise ValueError(f"requested modalities {bad} are not in the schema; valid: {list(schema.modalities)}")
        out.append(
            {
                "id": region_id(schema.choices_tag, 0),
                "from_name": schema.choices_tag,
                "to_name": schema.image_tag,
                "type": "choices",
                "value": {"choices": list(requested)},
            }
        )
    return out


def _argmax(probs: np.ndarray, schema: ProjectSchema, tag: TagInfo) -> tuple[np.ndarray, np.ndarray]:
    names = schema.class_names(tag.modality)
    if probs.ndim == 4 and probs.shape[0] == 1:
        probs = probs[0]
    if probs.ndim != 3 or probs.shape[0] != len(names) or 0 in probs.shape:
        want = f"[{len(names)}, H, W]"
        raise ValueError(f"modality {tag.modality!r}: segmentation probs must be {want}, got {probs.shape}")
    conf, cls = class_max(probs)  # probs.argmax(0) and its values, faster
    return cls, conf


def _check_argmax(pred: SegmentationArgmax, schema: ProjectSchema, tag: TagInfo) -> tuple[np.ndarray, np.ndarray]:
    n = len(schema.class_names(tag.modality))
    cls, conf = _numpy(pred.labels), _numpy(pred.confidence)
    if cls.ndim != 2 or cls.shape != conf.shape or 0 in cls.shape or cls.dtype.kind not in "iu":
        raise ValueError(
            f"modality {tag.modality!r}: argmax labels (int) and confidence must be the same [H, W], "
            f"got {cls.shape} {cls.dtype} and {conf.shape}"
        )
    if cls.min() < 0 or cls.max() >= n:
        raise ValueError(f"modality {tag.modality!r}: class ids must be in [0, {n}), got {cls.min()}..{cls.max()}")
    if cls.dtype not in (np.uint8, np.int32):
        cls = cls.astype(np.int32)
    return cls, conf.astype(np.float32, copy=False)


def class_sums(cls: np.ndarray, conf: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels per class and the sum of their confidence (int [H, W], float [H, W] -> [n], [n]) for the
    classes 1..n-1; the background's (0) count is the rest of the pixels and its sum is not computed (0:
    it is never a region). Counted in bands of rows over the non-background pixels only (no full-size
    int64/float64 temporaries; a mostly-background map costs little); each class's sum is accumulated
    in float64 in pixel order, as one ``np.bincount`` over the whole map does."""
    counts, sums = np.zeros(n, np.int64), np.zeros(n, np.float64)
    band = max(1, _BAND_PIXELS // max(1, cls.shape[1]))
    for top in range(0, cls.shape[0], band):
        c = cls[top : top + band].reshape(-1)
        fg = np.flatnonzero(c)
        c = c[fg]
        counts += np.bincount(c, minlength=n)[:n]
        sums += np.bincount(c, weights=conf[top : top + band].reshape(-1)[fg], minlength=n)[:n]
    counts[0] = cls.size - counts[1:].sum()
    return counts, sums


def _seg_results(
    cls: np.ndarray,
    conf: np.ndarray,
    schema: ProjectSchema,
    tag: TagInfo,
    common: dict[str, Any],
    height: int,
    width: int,
    polygon_tolerance: float = 1.0,
) -> list[dict[str, Any]]:
    names = schema.class_names(tag.modality)
    cls = _resize_nearest(cls, height, width)
    conf = _resize_nearest(conf, height, width)
    counts, sums = class_sums(cls, conf, len(names))
    present = [c for c in range(1, len(names)) if counts[c]]
    out: list[dict[str, Any]] = []
    if tag.tag_type == "PolygonLabels":
        for c in present:
            for points, score in mask_to_polygons(cls == c, conf, epsilon=polygon_tolerance):
                value = {"points": points, "polygonlabels": [names[c]], "closed": True}
                out.append({"id": region_id(tag.name, len(out)), **common, "type": tag.result_type,
                            "value": value, "score": score})
        return out
    rles = class_map_to_rle(cls, present)  # one pass over the pixels for every class
    for c in present:
        out.append(
            {
                "id": region_id(tag.name, c),
                **common,
                "type": tag.result_type,
                "value": {"format": "rle", "rle": rles[c], tag.result_type: [names[c]]},
                "score": float(sums[c] / counts[c]),
            }
        )
    return out


def _det_results(
    rows: np.ndarray,
    schema: ProjectSchema,
    tag: TagInfo,
    common: dict[str, Any],
    height: int,
    width: int,
    min_score: float,
    input_size: tuple[int, int] | None,
) -> list[dict[str, Any]]:
    names = schema.class_names(tag.modality)
    if rows.ndim == 3 and rows.shape[0] == 1:
        rows = rows[0]
    if rows.ndim != 2 or rows.shape[1] < 6:
        raise ValueError(f"modality {tag.modality!r}: detections must be [K, 6 + C], got {rows.shape}")
    ih, iw = input_size or (height, width)
    check_size(ih, iw)
    scale = np.array([width / iw, height / ih, width / iw, height / ih])
    out = []
    for k, row in enumerate(rows):
        cls, score = int(row[5]), float(row[4])
        if cls < 0 or score < min_score:
            continue
        if cls >= len(names):
            raise ValueError(f"modality {tag.modality!r}: class id {cls} out of range for {len(names)} labels")
        box = row[:4].astype(np.float64) * scale
        box[[0, 2]] = box[[0, 2]].clip(0, width)
        box[[1, 3]] = box[[1, 3]].clip(0, height)
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        out.append(
            {
                "id": region_id(tag.name, k),
                **common,
                "type": tag.result_type,
                "value": {**box_to_rect(box, height, width), tag.result_type: [names[cls]]},
                "score": score,
            }
        )
    return out
