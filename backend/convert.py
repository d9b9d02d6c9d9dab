"""Label Studio JSON <-> numpy labels and predictions. All LS region formats live here.

Coordinates: LS stores rectangles and polygons in percent of the image (0-100) and brush masks as
RLE of an RGBA byte array [H, W, 4] (``label_studio_sdk.converter.brush``). Pixel boxes are
``x1, y1, x2, y2`` in continuous pixel coordinates (pixel ``i`` covers ``[i, i + 1)``).

- Brush: a pixel belongs to the region where its alpha byte is > 0 (as the SDK's COCO exporter
  reads it); we encode masks with all four bytes 255. Encoding uses :func:`encode_rle`, a vectorised
  re-implementation of ``label_studio_sdk.converter.brush.encode_rle`` that produces the same bytes
  (the SDK builds a Python bit string: ~10x slower; tests compare both on random masks).
- Rotated rectangles: ``x, y`` is the top-left corner before rotation, ``rotation`` degrees clockwise
  around that corner, applied in pixel space; :func:`rect_to_box` returns the axis-aligned box of
  the rotated rectangle.
- Polygons: vertices scaled to pixels, moved to pixel-centre coordinates (-0.5) and filled with
  ``cv2.fillPoly`` (boundary pixels included, so a polygon may cover half a pixel more per edge).
  Predicted polygons (PolygonLabels tags) go the other way: the outer contour of each connected
  component of a class, through the centres of its boundary pixels, simplified with
  ``cv2.approxPolyDP`` (holes are not represented).
- ``image_rotation`` is ignored (the backend sees images un-rotated, as stored).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import cv2
import numpy as np
from label_studio_sdk.converter.brush import decode_rle

from backend.labeling import ProjectSchema, TagInfo
from mtal_models.data.sample import empty_label

__all__ = [
    "annotation_to_labels",
    "SegmentationArgmax",
    "box_to_rect",
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
_SHIFT = 8  # sub-pixel bits for cv2.fillPoly
_RUN_PIECE = 1 << 16  # longest run one 16-bit RLE length field holds
_POLY_EPSILON = 1.0  # cv2.approxPolyDP tolerance, pixels of the original image
_MIN_POLY_PIXELS = 8  # smaller predicted components are dropped (also below 0.01 % of the image)


def _check_size(height: int, width: int) -> None:
    if int(height) <= 0 or int(width) <= 0:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")


# ---- brush ---------------------------------------------------------------------------------------
def encode_rle(values: np.ndarray | Sequence[int]) -> list[int]:
    """Flat uint8 array [N] (N >= 1) -> LS RLE bytes, identical to
    ``label_studio_sdk.converter.brush.encode_rle(values)`` (word size 8, run-length fields of 3, 4, 8
    and 16 bits; runs over 2**16 split like the SDK does; same zero padding, including its extra zero
    byte when the bit count is already a multiple of 8).

    It exists for speed: the SDK appends to a Python bit string per run, which dominated /predict's
    overhead; this builds every token's bit field with numpy and packs them in one go (~10-20x faster).
    ``label_studio_sdk`` stays the reference: tests assert byte equality on many random arrays."""
    flat = np.asarray(values)
    if flat.ndim != 1 or flat.size == 0:
        raise ValueError(f"rle input must be a non-empty flat array, got shape {flat.shape}")
    if flat.dtype != np.uint8:
        if flat.min() < 0 or flat.max() > 255:
            raise ValueError("rle values must be bytes (0-255)")
        flat = flat.astype(np.uint8)
    lengths, vals = _runs(flat)
    return _encode_runs(lengths, vals, flat.size)


def _runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat [N] -> (run lengths int64 [R], run values int64 [R])."""
    ends = np.append(np.flatnonzero(flat[1:] != flat[:-1]), flat.size - 1)
    return np.diff(ends, prepend=-1), flat[ends].astype(np.int64)


def _encode_runs(lengths: np.ndarray, vals: np.ndarray, n: int) -> list[int]:
    """Maximal runs (lengths, byte values) of an [n] array -> the SDK's RLE bytes (see encode_rle)."""
    long_run = lengths > 256
    pieces = np.where(long_run, -(-lengths // _RUN_PIECE), 1)  # ceil(len / 2**16) 16-bit pieces
    run = np.repeat(np.arange(lengths.size), pieces)
    piece = np.arange(run.size) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    last = piece == pieces[run] - 1
    size = np.where(last, lengths[run] - (pieces[run] - 1) * _RUN_PIECE, _RUN_PIECE)
    m, v, big = size - 1, vals[run], long_run[run]
    # token = flag bit, 2-bit size index, length - 1, 8-bit value; single values: flag 0, index 0, 0
    code = np.select(
        [big, size == 1, size <= 8, size <= 16],
        [(0b111 << 24) | (m << 8) | v, v, (0b100 << 11) | (m << 8) | v, (0b101 << 12) | (m << 8) | v],
        (0b110 << 16) | (m << 8) | v,
    )
    nbits = np.select([big, size <= 8, size <= 16], [27, 14, 15], 19)
    # header: value count (32 bits), word size - 1 (5 bits), the four run-length field sizes - 1
    codes = np.concatenate([np.array([n, 7, 2, 3, 7, 15], np.int64), code])
    nbits = np.concatenate([np.array([32, 5, 4, 4, 4, 4], np.int64), nbits])
    total = int(nbits.sum())
    ends_bits = np.cumsum(nbits)
    token = np.repeat(np.arange(codes.size), nbits)
    shift = np.repeat(ends_bits - 1, nbits) - np.arange(total)
    bits = np.zeros(total + 8 - total % 8, np.uint8)
    bits[:total] = (codes[token] >> shift) & 1
    return np.packbits(bits).tolist()


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """bool [H, W] -> LS brush RLE (list of byte values) of the RGBA layer, foreground = 255; the same
    bytes as ``label_studio_sdk.converter.brush.mask2rle(mask * 255)``."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"brush mask must be a non-empty [H, W] array, got shape {mask.shape}")
    # the runs of the 4-byte-per-pixel array are the pixel runs, 4x longer: encode those directly
    lengths, vals = _runs(mask.astype(bool).reshape(-1))
    return _encode_runs(lengths * 4, vals * 255, mask.size * 4)


def rle_to_mask(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """LS brush RLE -> bool [height, width] (alpha > 0)."""
    _check_size(height, width)
    if not rle:
        raise ValueError("brush rle is empty")
    try:
        flat = decode_rle(bytes(int(v) for v in rle))
    except (ValueError, IndexError) as e:
        raise ValueError(f"brush rle cannot be decoded: {e}") from e
    if flat.size != height * width * 4:
        raise ValueError(f"brush rle holds {flat.size} bytes, expected {height}x{width}x4 = {height * width * 4}")
    return flat.reshape(height, width, 4)[:, :, 3] > 0


# ---- polygons and rectangles ---------------------------------------------------------------------
def polygon_to_mask(points_percent: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Polygon vertices ``[[x%, y%], ...]`` -> bool [height, width] filled mask."""
    _check_size(height, width)
    pts = np.asarray(points_percent, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3 or not np.isfinite(pts).all():
        raise ValueError(f"polygon points must be >= 3 finite [x, y] pairs, got shape {pts.shape}")
    px = pts * np.array([width / 100.0, height / 100.0]) - 0.5
    fixed = np.round(px * (1 << _SHIFT)).astype(np.int32)
    out = np.zeros((height, width), np.uint8)
    cv2.fillPoly(out, [fixed], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return out.astype(bool)


def rect_to_box(value: Mapping[str, Any], height: int, width: int) -> np.ndarray:
    """LS rectangle value (percent ``x, y, width, height``, ``rotation`` degrees clockwise around the
    top-left corner) -> float32 [4] ``x1, y1, x2, y2`` pixels of its axis-aligned bounding box (not clipped)."""
    _check_size(height, width)
    try:
        x, y = float(value["x"]) * width / 100, float(value["y"]) * height / 100
        w, h = float(value["width"]) * width / 100, float(value["height"]) * height / 100
        angle = math.radians(float(value.get("rotation", 0) or 0))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"rectangle value needs numeric x, y, width, height: {e}") from e
    if w < 0 or h < 0:
        raise ValueError(f"rectangle width/height must be >= 0, got {value['width']}, {value['height']}")
    c, s = math.cos(angle), math.sin(angle)
    # corners relative to the anchor, rotated clockwise on screen (y points down)
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
    rot = np.stack([corners[:, 0] * c - corners[:, 1] * s, corners[:, 0] * s + corners[:, 1] * c], axis=1)
    rot += (x, y)
    return np.array([rot[:, 0].min(), rot[:, 1].min(), rot[:, 0].max(), rot[:, 1].max()], dtype=np.float32)


def box_to_rect(box: Sequence[float] | np.ndarray, height: int, width: int) -> dict[str, float]:
    """Pixel box ``x1, y1, x2, y2`` -> LS rectangle value ``{x, y, width, height, rotation: 0}`` in percent."""
    _check_size(height, width)
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b.shape != (4,) or not np.isfinite(b).all() or b[2] < b[0] or b[3] < b[1]:
        raise ValueError(f"box must be finite x1, y1, x2, y2 with x2 >= x1 and y2 >= y1, got {b.tolist()}")
    return {
        "x": float(b[0] * 100 / width),
        "y": float(b[1] * 100 / height),
        "width": float((b[2] - b[0]) * 100 / width),
        "height": float((b[3] - b[1]) * 100 / height),
        "rotation": 0.0,
    }


# ---- annotations -> labels -----------------------------------------------------------------------
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
    modality is present when it has at least one region. Unknown tags and labels are logged and skipped.
    """
    _check_size(height, width)
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
        except (KeyError, TypeError, ValueError, AttributeError) as e:
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
) -> list[dict[str, Any]]:
    """Per-modality activated predictions for ONE image -> LS ``result`` list.

    preds: segmentation probabilities [C, H', W'] or a :class:`SegmentationArgmax` (argmax resized
    nearest to [height, width]; BrushLabels: one brush region per non-background class present;
    PolygonLabels: one polygon per connected component of each class, see :func:`mask_to_polygons`;
    score = mean max-probability over the region's pixels); detection rows [K, 6 + C]
    (``x1, y1, x2, y2, score, class, probs...`` in pixels of the network input of size ``input_size``
    = (h, w), default (height, width); padding rows (class < 0) and rows with score < ``min_score``
    dropped); depth/normals skipped. ``requested``: modality names to tick in the choices tag
    (ignored when the schema has none).
    """
    _check_size(height, width)
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
            out.extend(_seg_results(cls, conf, schema, tag, common, height, width))
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
    cls = probs.argmax(0)
    conf = np.take_along_axis(probs, cls[None], 0)[0]
    return cls.astype(np.int32), conf.astype(np.float32)


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
    return cls.astype(np.int32, copy=False), conf.astype(np.float32, copy=False)


def _seg_results(
    cls: np.ndarray,
    conf: np.ndarray,
    schema: ProjectSchema,
    tag: TagInfo,
    common: dict[str, Any],
    height: int,
    width: int,
) -> list[dict[str, Any]]:
    names = schema.class_names(tag.modality)
    cls = _resize_nearest(cls, height, width)
    conf = _resize_nearest(conf, height, width)
    counts = np.bincount(cls.reshape(-1), minlength=len(names))
    sums = np.bincount(cls.reshape(-1), weights=conf.reshape(-1), minlength=len(names))
    out: list[dict[str, Any]] = []
    for c in range(1, len(names)):
        if counts[c] == 0:
            continue
        mask = cls == c
        if tag.tag_type == "PolygonLabels":
            for points, score in mask_to_polygons(mask, conf):
                value = {"points": points, "polygonlabels": [names[c]], "closed": True}
                out.append({"id": region_id(tag.name, len(out)), **common, "type": tag.result_type,
                            "value": value, "score": score})
            continue
        out.append(
            {
                "id": region_id(tag.name, c),
                **common,
                "type": tag.result_type,
                "value": {"format": "rle", "rle": mask_to_rle(mask), tag.result_type: [names[c]]},
                "score": float(sums[c] / counts[c]),
            }
        )
    return out


def mask_to_polygons(
    mask: np.ndarray,
    confidence: np.ndarray | None = None,
    epsilon: float = _POLY_EPSILON,
    min_pixels: int | None = None,
) -> list[tuple[list[list[float]], float]]:
    """bool [H, W] -> one LS polygon per 8-connected component: (``[[x%, y%], ...]``, score).

    The outer contour (``cv2.findContours``, external only: holes are filled) runs through the
    centres of the component's boundary pixels, simplified by ``cv2.approxPolyDP`` with ``epsilon``
    pixels; so :func:`polygon_to_mask` of the points gives back the component (up to the
    simplification). score: mean ``confidence`` [H, W] over the component's pixels (1.0 without it).
    Components under ``min_pixels`` pixels (default: max(8, 0.01 % of the image)) are dropped.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"polygon mask must be a non-empty [H, W] array, got shape {mask.shape}")
    h, w = mask.shape
    if confidence is not None and np.shape(confidence) != mask.shape:
        raise ValueError(f"confidence shape {np.shape(confidence)} does not match the mask {mask.shape}")
    if min_pixels is None:
        min_pixels = max(_MIN_POLY_PIXELS, int(1e-4 * h * w))
    m8 = mask.astype(np.uint8)
    n, comp, stats, _ = cv2.connectedComponentsWithStats(m8, connectivity=8)
    if confidence is not None:
        means = np.bincount(comp.reshape(-1), weights=np.asarray(confidence).reshape(-1), minlength=n)
        means = means / np.maximum(stats[:, cv2.CC_STAT_AREA], 1)
    contours, _ = cv2.findContours(m8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    scale = np.array([100.0 / w, 100.0 / h])
    out: list[tuple[list[list[float]], float]] = []
    for contour in contours:
        x, y = contour[0, 0]
        k = int(comp[y, x])
        if k == 0 or stats[k, cv2.CC_STAT_AREA] < min_pixels:
            continue
        poly = cv2.approxPolyDP(contour, epsilon, True).reshape(-1, 2)
        if len(poly) < 3:
            continue
        points = ((poly.astype(np.float64) + 0.5) * scale).round(4).tolist()
        out.append((points, float(means[k]) if confidence is not None else 1.0))
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
    _check_size(ih, iw)
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
