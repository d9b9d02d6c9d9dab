"""A PNG of a task's pre-annotation beside its ground truth, drawn over the photo, to look at.

    python scripts/overlay.py --image photo.jpg --config config.xml --task task.json --out overlay.png
    python scripts/overlay.py --camvid ../shared/datasets/camvid --name 0016E5_07959 --out overlay.png

``--task``: a Label Studio task as exported (JSON): the left panel draws its first prediction's
``result``, the right panel its latest annotation's (or an empty panel). Brush and polygon regions are
filled in a fixed colour per label with their outline, rectangles outlined; every region is read by the
backend's own converter (:func:`backend.labelstudio.convert.annotation_to_labels`) at the photo's displayed size
(EXIF applied), so the picture shows what Label Studio shows.

``--camvid``: a CamVid val image (``--name``, default the first): the ground truth is its label map as
brush regions; the "pre-annotation" is that ground truth sent through the image geometry and back
(:func:`bench.round_trip.round_trip` at ``--size``) -- a check that regions land where the annotator
sees them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.labelstudio.convert import annotation_to_labels  # noqa: E402
from backend.labelstudio.label_config import ProjectSchema, parse_label_config  # noqa: E402
from backend.labelstudio.tasks import latest_annotation  # noqa: E402

_RNG = np.random.default_rng(7)
PALETTE = _RNG.integers(40, 256, (256, 3)).astype(np.uint8)


def draw(image: np.ndarray, result: Sequence[Mapping[str, Any]], schema: ProjectSchema, title: str) -> np.ndarray:
    """uint8 [H, W, 3] photo + LS results -> the photo with masks blended (alpha 0.45), outlines and boxes."""
    h, w = image.shape[:2]
    out = image.copy()
    labels, present = annotation_to_labels(list(result), schema, h, w)
    for name, spec in schema.modalities.items():
        if not present.get(name):
            continue
        if spec.kind == "segmentation":
            cls = np.asarray(labels[name])
            fg = (cls > 0) & (cls != spec.ignore_index)
            colour = PALETTE[np.clip(cls, 0, 255)]
            out[fg] = (0.55 * out[fg] + 0.45 * colour[fg]).astype(np.uint8)
            edges = cv2.morphologyEx(cls.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
            out[edges & fg] = colour[edges & fg]
        elif spec.kind == "detection":
            for box, c in zip(labels[name]["boxes"], labels[name]["labels"], strict=True):
                x1, y1, x2, y2 = (int(round(v)) for v in box)
                cv2.rectangle(out, (x1, y1), (x2, y2), tuple(int(v) for v in PALETTE[int(c) + 1]), 2)
    cv2.putText(out, title, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
    return out


def side_by_side(image: np.ndarray, schema: ProjectSchema, prediction: Sequence[Mapping[str, Any]],
                 truth: Sequence[Mapping[str, Any]] | None) -> np.ndarray:
    """[H, 2W + 8, 3]: pre-annotation left, ground truth right (grey when there is none)."""
    left = draw(image, prediction, schema, "pre-annotation")
    right = draw(image, truth, schema, "ground truth") if truth is not None else np.full_like(image, 128)
    gap = np.full((image.shape[0], 8, 3), 255, np.uint8)
    return np.concatenate([left, gap, right], axis=1)


def load_photo(path: Path) -> np.ndarray:
    """The photo as Label Studio displays it (EXIF orientation applied), uint8 [H, W, 3]."""
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def from_task(args: argparse.Namespace) -> tuple[np.ndarray, ProjectSchema, list[Any], list[Any] | None]:
    task = json.loads(Path(args.task).read_text())
    schema = parse_label_config(Path(args.config).read_text())
    preds = task.get("predictions") or []
    prediction = preds[0].get("result", []) if preds else []
    ann = latest_annotation(task)
    return load_photo(Path(args.image)), schema, prediction, (ann or {}).get("result")


def from_camvid(args: argparse.Namespace) -> tuple[np.ndarray, ProjectSchema, list[Any], list[Any] | None]:
    from backend.serving.prefill import Prefill
    from bench.round_trip import label_config, regions
    from mtal_models.data.geometry import Fit
    from mtal_models.postprocess import PrefillConfig

    root = Path(args.camvid)
    names = sorted(p.stem for p in (root / "val").glob("*.png"))
    name = args.name or names[0]
    image = load_photo(root / "val" / f"{name}.png")
    raw = np.asarray(Image.open(root / "valannot" / f"{name}.png"), np.int64)
    cls = np.where(raw == 11, 0, raw + 1)
    classes = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
               "Bicyclist"]
    schema = parse_label_config(label_config("BrushLabels", classes))
    truth = regions(cls, schema)
    import torch

    fit = Fit.for_size(*cls.shape, args.size, max(args.size, 1024))
    net = fit.label(cls, 0)
    probs = torch.nn.functional.one_hot(torch.from_numpy(net), len(classes) + 1).permute(2, 0, 1).float()
    prediction = Prefill(PrefillConfig(min_area=0.0)).results({"t": probs}, schema, *cls.shape, fit=fit)
    return image, schema, prediction, truth


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image")
    ap.add_argument("--config")
    ap.add_argument("--task")
    ap.add_argument("--camvid")
    ap.add_argument("--name")
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.camvid:
        image, schema, prediction, truth = from_camvid(args)
    elif args.image and args.config and args.task:
        image, schema, prediction, truth = from_task(args)
    else:
        ap.error("give --image, --config and --task, or --camvid")
    Image.fromarray(side_by_side(image, schema, prediction, truth)).save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
