"""How much of a ground-truth mask survives the image geometry: annotation -> network size -> Label
Studio result, on the product's path.

    python -m bench.round_trip [--data-dir ../shared/datasets] [--size 384] [--max-size 1024] [--limit 0]

A Label Studio annotation (brush RLE, polygons or rectangles) is read by
:func:`backend.labelstudio.convert.annotation_to_labels` at the original size, mapped to the network input by
:class:`mtal_models.data.geometry.Fit` (what training and GT substitution see), turned into a perfect
prediction there (one-hot probabilities, boxes with score 1) and converted back to Label Studio results
by :meth:`backend.serving.prefill.Prefill.results` with the task's Fit (bilinear upsampling before the argmax,
boxes mapped back), then read again. Speckle removal is off (it changes content on purpose; this
measures the geometry). mIoU = mean over classes of the IoU pooled over all images (CamVid's
"Unlabelled" pixels left out).

Prints ``METRIC round_trip_miou`` (CamVid val labels, 480x360; skipped with a message when the folder
is absent) with ``round_trip_miou_old`` (the former path: squashed to 256x256 with cv2.INTER_NEAREST and
back) measured side by side, and always ``round_trip_miou_generated`` (a generated 1000x333 label map:
brush, a 6 px bar), ``round_trip_miou_generated_polygon`` (a 16 px bar: see ``POLYGON_BAR``) and
``round_trip_box_iou_generated`` (rectangles).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from backend.labelstudio.convert import annotation_to_labels, mask_to_polygons, mask_to_rle
from backend.labelstudio.label_config import ProjectSchema, parse_label_config
from backend.serving.prefill import Prefill
from mtal_models.data.geometry import DEFAULT_MAX_SIZE, DEFAULT_SIZE, Fit
from mtal_models.postprocess import PrefillConfig

__all__ = ["POLYGON_BAR", "box_iou_min", "generated_labels", "label_config", "miou", "regions", "round_trip"]

GEOMETRY_ONLY = Prefill(PrefillConfig(min_area=0.0))
# polygons: the bar is 16 px, because the polygon codec itself (mask_to_polygons -> polygon_to_mask, 1 px
# simplification, boundary pixels filled) keeps only ~0.91 IoU of a 6 px bar even at the native size
POLYGON_BAR = 16
BOXES = [(3.3, 7.1, 20.5, 33.3, "a"), (50.05, 60.3, 9.97, 30.1, "b"), (80, 1, 0.3, 2.9, "a")]  # x, y, w, h in %


def label_config(tag: str, names: Sequence[str]) -> str:
    """A one-tag config: ``tag`` BrushLabels / PolygonLabels / RectangleLabels over ``names``."""
    labels = "".join(f'<Label value="{n}"/>' for n in names)
    return f'<View><Image name="image" value="$image"/><{tag} name="t" toName="image">{labels}</{tag}></View>'


def regions(classes: np.ndarray, schema: ProjectSchema) -> list[dict[str, Any]]:
    """A class map int [H, W] (0 = background) -> the LS annotation result drawing it with the schema's
    one tag (brush: one RLE per class; polygons: one per connected component)."""
    tag = schema.tags["t"]
    h, w = classes.shape
    names = schema.class_names(tag.modality)
    out: list[dict[str, Any]] = []
    for c in range(1, len(names)):
        mask = classes == c
        if not mask.any():
            continue
        common = {"from_name": "t", "to_name": "image", "type": tag.result_type, "original_width": w,
                  "original_height": h}
        if tag.tag_type == "PolygonLabels":
            for points, _ in mask_to_polygons(mask, min_pixels=1):
                out.append({**common, "value": {"points": points, "polygonlabels": [names[c]]}})
        else:
            out.append({**common, "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [names[c]]}})
    return out


def round_trip(result: list[dict[str, Any]], schema: ProjectSchema, height: int, width: int,
               fit_for: Callable[[int, int], Fit]) -> tuple[Any, Any]:
    """(label read from ``result`` at the original size, the same after the round trip); labels in
    :mod:`mtal_models.data.sample` format of the schema's one modality."""
    name = schema.tags["t"].modality
    spec = schema.modalities[name]
    labels, _ = annotation_to_labels(result, schema, height, width)
    fit = fit_for(height, width)
    if spec.kind == "segmentation":
        net = fit.label(labels[name], spec.ignore_index).astype(np.int64)
        net[net == spec.ignore_index] = 0
        pred: Any = torch.nn.functional.one_hot(torch.from_numpy(net), spec.channels).permute(2, 0, 1).float()
    else:
        boxes = fit.boxes_to_input(labels[name]["boxes"])
        rows = np.zeros((len(boxes), 6 + spec.channels), np.float32)
        rows[:, :4], rows[:, 4], rows[:, 5] = boxes, 1.0, labels[name]["labels"]
        pred = rows
    back = GEOMETRY_ONLY.results({name: pred}, schema, height, width, fit=fit)
    again, _ = annotation_to_labels(back, schema, height, width)
    return labels[name], again[name]


def miou(pairs: Sequence[tuple[np.ndarray, np.ndarray]], n_classes: int, ignore: int | None = None) -> float:
    """Mean over classes present of IoU pooled over (truth, prediction) class maps."""
    inter, union = np.zeros(n_classes), np.zeros(n_classes)
    for truth, pred in pairs:
        keep = truth != ignore if ignore is not None else np.ones(truth.shape, bool)
        t, p = truth[keep], pred[keep]
        for c in range(n_classes):
            a, b = t == c, p == c
            inter[c] += (a & b).sum()
            union[c] += (a | b).sum()
    seen = union > 0
    return float((inter[seen] / union[seen]).mean())


def generated_labels(height: int = 333, width: int = 1000, bar: int = 6) -> np.ndarray:
    """A class map int64 [height, width] with 4 classes of varied shapes: an ellipse, a thin slanted
    bar (``bar`` px), a triangle, small squares (known answer for the round trip)."""
    out = np.zeros((height, width), np.uint8)
    cv2.ellipse(out, (int(width * 0.25), height // 2), (int(width * 0.15), height // 3), 20, 0, 360, 1, -1)
    cv2.line(out, (int(width * 0.45), 10), (int(width * 0.55), height - 10), 2, bar)
    tri = np.array([[int(width * 0.65), height - 20], [int(width * 0.95), height - 40], [int(width * 0.8), 30]])
    cv2.fillPoly(out, [tri.astype(np.int32)], 3)
    for k in range(5):
        x = int(width * 0.05) + 40 * k
        out[20:34, x:x + 14] = 3
    return out.astype(np.int64)


def _generated(size: int, max_size: int) -> dict[str, float]:
    fit_for = _fit_for(size, max_size)
    out = {}
    for tag, key, bar in (("BrushLabels", "round_trip_miou_generated", 6),
                          ("PolygonLabels", "round_trip_miou_generated_polygon", POLYGON_BAR)):
        cls = generated_labels(bar=bar)
        h, w = cls.shape
        schema = parse_label_config(label_config(tag, ["a", "b", "c"]))
        truth, back = round_trip(regions(cls, schema), schema, h, w, fit_for)
        out[key] = miou([(truth, back)], 4)
    h, w = 333, 1000
    schema = parse_label_config(label_config("RectangleLabels", ["a", "b"]))
    rects = [{"from_name": "t", "to_name": "image", "type": "rectanglelabels", "original_width": w,
              "original_height": h, "value": {"x": x, "y": y, "width": bw, "height": bh,
                                               "rectanglelabels": [lab]}}
             for x, y, bw, bh, lab in BOXES]
    truth, back = round_trip(rects, schema, h, w, fit_for)
    out["round_trip_box_iou_generated"] = box_iou_min(truth["boxes"], back["boxes"])
    return out


def box_iou_min(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest IoU of matching rows of two [N, 4] xyxy arrays (0 when the counts differ)."""
    if len(a) != len(b) or not len(a):
        return 0.0
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    lo, hi = np.maximum(a[:, :2], b[:, :2]), np.minimum(a[:, 2:], b[:, 2:])
    inter = np.clip(hi - lo, 0, None).prod(1)
    union = (a[:, 2:] - a[:, :2]).prod(1) + (b[:, 2:] - b[:, :2]).prod(1) - inter
    return float((inter / union).min())


def _fit_for(size: int, max_size: int) -> Callable[[int, int], Fit]:
    return lambda h, w: Fit.for_size(h, w, size, max_size)


def camvid(folder: Path, size: int, max_size: int, limit: int) -> tuple[float, float, int]:
    """(mIoU through the geometry, mIoU through the old square nearest path, images) on CamVid val."""
    files = sorted((folder / "valannot").glob("*.png"))[: limit or None]
    schema = parse_label_config(label_config("BrushLabels", [f"c{k}" for k in range(11)]))
    fit_for = _fit_for(size, max_size)
    new, old = [], []
    for f in files:
        raw = np.asarray(Image.open(f), np.int64)  # 0..10 classes, 11 unlabelled
        cls = np.where(raw == 11, 0, raw + 1)
        truth, back = round_trip(regions(cls, schema), schema, *cls.shape, fit_for)
        new.append((raw, np.where(back == 0, 11, back - 1)))
        small = cv2.resize(raw.astype(np.uint8), (256, 256), interpolation=cv2.INTER_NEAREST)
        old.append((raw, cv2.resize(small, raw.shape[::-1], interpolation=cv2.INTER_NEAREST).astype(np.int64)))
    return miou(new, 11, ignore=11), miou(old, 11, ignore=11), len(files)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    ap.add_argument("--size", type=int, default=DEFAULT_SIZE)
    ap.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE)
    ap.add_argument("--limit", type=int, default=0, help="CamVid val images (0 = all 101)")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    folder = args.data_dir / "camvid"
    if (folder / "valannot").is_dir():
        new, old, n = camvid(folder, args.size, args.max_size, args.limit)
        print(f"METRIC round_trip_miou={new:.4f}  # CamVid val, {n} label maps 480x360, shorter side {args.size}")
        print(f"METRIC round_trip_miou_old={old:.4f}  # the former path: 256x256 INTER_NEAREST and back")
    else:
        print(f"round_trip_miou: skipped, no CamVid under {folder} (the generated case still runs)")
    for key, value in _generated(args.size, args.max_size).items():
        print(f"METRIC {key}={value:.4f}  # generated 1000x333")
    print(f"# {time.monotonic() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
