"""Regenerate the golden LS fixtures: ``.venv/bin/python -m tests.backend.labelstudio.golden.make_golden``.

Annotation fixtures are built from shapes whose pixels are known by construction; brush RLE comes
from ``label_studio_sdk.converter.brush.mask2rle`` (not from backend code), so the expectations do
not depend on the code under test. ``predictions.json`` is a snapshot of ``predictions_to_results``
for the fixed inputs of :func:`prediction_inputs` (the tests also check it by decoding).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from label_studio_sdk.converter.brush import mask2rle

HERE = Path(__file__).parent
H, W = 40, 60
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="semantic" toName="image">
    <Label value="road" background="#ff0000"/>
    <Label value="Straße 🚗" background="#00ff00"/>
  </BrushLabels>
  <RectangleLabels name="boxes" toName="image"><Label value="car"/><Label value="person"/></RectangleLabels>
  <PolygonLabels name="parts" toName="image"><Label value="wheel"/></PolygonLabels>
  <KeyPointLabels name="kp" toName="image"><Label value="nose"/></KeyPointLabels>
  <Choices name="mtal_labelled" toName="image" choice="multiple" showInline="true">
    <Choice value="semantic"/><Choice value="boxes"/><Choice value="parts"/>
  </Choices>
  <View style="display: none"><Image name="depth" value="$depth"/></View>
</View>"""


def _brush(rid: str, label: str, mask: np.ndarray) -> dict:
    h, w = mask.shape
    return {
        "id": rid,
        "from_name": "semantic",
        "to_name": "image",
        "type": "brushlabels",
        "origin": "manual",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {
            "format": "rle",
            "rle": [int(v) for v in mask2rle(mask.astype(np.uint8) * 255)],
            "brushlabels": [label],
        },
    }


def _rect(rid: str, label: str, x: float, y: float, w: float, h: float, rotation: float = 0) -> dict:
    return {
        "id": rid,
        "from_name": "boxes",
        "to_name": "image",
        "type": "rectanglelabels",
        "origin": "manual",
        "original_width": W,
        "original_height": H,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation, "rectanglelabels": [label]},
    }


def _choices(values: list[str]) -> dict:
    return {
        "id": "ch0",
        "from_name": "mtal_labelled",
        "to_name": "image",
        "type": "choices",
        "origin": "manual",
        "value": {"choices": values},
    }


def full_annotation() -> dict:
    road = np.zeros((H, W), bool)
    road[30:40, :] = True  # 600 px
    strasse = np.zeros((H, W), bool)
    strasse[5:15, 10:30] = True  # 200 px
    road2 = np.zeros((H, W), bool)
    road2[10:15, 20:30] = True  # 50 px, drawn later: overwrites Straße
    result = [
        _brush("b1", "road", road),
        _brush("b2", "Straße 🚗", strasse),
        _brush("b3", "road", road2),
        # wheel polygon: pixels x in [30, 45), y in [20, 40)
        {
            "id": "p1",
            "from_name": "parts",
            "to_name": "image",
            "type": "polygonlabels",
            "original_width": W,
            "original_height": H,
            "image_rotation": 0,
            "value": {"points": [[50.0, 50.0], [75.0, 50.0], [75.0, 100.0], [50.0, 100.0]], "closed": True,
                      "polygonlabels": ["wheel"]},
        },
        _rect("r1", "car", 10.0, 25.0, 20.0, 50.0),  # px [6, 10, 18, 30]
        # anchor (30, 4) px, 6 px wide, 10 px high, 90° clockwise -> px [20, 4, 30, 10]
        _rect("r2", "person", 50.0, 10.0, 10.0, 25.0, rotation=90.0),
        {"id": "k1", "from_name": "kp", "to_name": "image", "type": "keypointlabels",
         "value": {"x": 5.0, "y": 5.0, "width": 1.0, "keypointlabels": ["nose"]}},
        _choices(["semantic", "boxes", "parts"]),
    ]
    expected = {
        "present": {"semantic": True, "boxes": True, "parts": True},
        "semantic_counts": {"0": H * W - 800, "1": 650, "2": 150},
        "boxes": [[6, 10, 18, 30], [20, 4, 30, 10]],
        "box_labels": [0, 1],
        "parts_bbox": [30, 20, 45, 40],
    }
    return {"height": H, "width": W, "result": result, "expected": expected}


def partial_annotation() -> dict:
    """Choices tick only ``boxes`` (and it has no box: labelled as empty); semantic has a region but
    is not ticked, so it is not labelled."""
    strasse = np.zeros((H, W), bool)
    strasse[0:4, 0:4] = True
    result = [_brush("b1", "Straße 🚗", strasse), _choices(["boxes"])]
    expected = {"present": {"semantic": False, "boxes": True, "parts": False}, "n_boxes": 0}
    return {"height": H, "width": W, "result": result, "expected": expected}


def no_choices_annotation() -> dict:
    """No choices result: present = has a region. The brush was drawn on a 2x larger original
    (rows 0-19 of 80x120 -> rows 0-9 of 40x60)."""
    big = np.zeros((2 * H, 2 * W), bool)
    big[0:20, :] = True
    result = [_brush("b1", "road", big), _rect("r1", "car", 0.0, 0.0, 50.0, 50.0)]
    expected = {
        "present": {"semantic": True, "boxes": True, "parts": False},
        "semantic_counts": {"0": H * W - 10 * W, "1": 10 * W},
        "boxes": [[0, 0, 30, 20]],
        "box_labels": [0],
    }
    return {"height": H, "width": W, "result": result, "expected": expected}


def prediction_inputs() -> tuple[dict, dict]:
    """Segmentation probs [3, 20, 30] (network output half the image size), polygon-tag probs
    [2, 20, 30] (a wheel square, rows 4-13 x cols 2-7 -> image rows 8-27 x cols 4-15, plus a
    1-pixel speck -> 2x2 image pixels, too small to become a polygon) and detections [3, 8] in
    network-input pixels (input 20x30), plus the call's keyword arguments."""
    probs = np.zeros((3, H // 2, W // 2), np.float32)
    probs[0] = 0.8
    probs[1] = 0.2
    probs[:, 0:5, 0:10] = np.array([0.1, 0.7, 0.2])[:, None, None]  # road, top-left 5x10 -> 10x20
    probs[:, 10:20, 20:30] = np.array([0.2, 0.2, 0.6])[:, None, None]  # Straße, bottom-right
    parts = np.zeros((2, H // 2, W // 2), np.float32)
    parts[0] = 0.9
    parts[1] = 0.1
    parts[:, 4:14, 2:8] = np.array([0.25, 0.75])[:, None, None]
    parts[:, 17, 25] = np.array([0.4, 0.6])
    dets = np.array(
        [
            [3, 5, 9, 15, 0.9, 0, 0.9, 0.1],  # car -> image px [6, 10, 18, 30]
            [0, 0, 15, 10, 0.2, 1, 0.2, 0.8],  # below min_score
            [0, 0, 0, 0, 0.0, -1, 0, 0],  # padding
        ],
        np.float32,
    )
    preds = {"semantic": probs, "boxes": dets, "parts": parts, "depth": np.ones((1, H, W), np.float32)}
    kwargs = {"height": H, "width": W, "requested": ["semantic", "parts"], "min_score": 0.3, "input_size": [20, 30]}
    return preds, kwargs


def main() -> None:
    from backend.labelstudio.convert import predictions_to_results
    from backend.labelstudio.label_config import parse_label_config

    (HERE / "label_config.xml").write_text(CONFIG + "\n", encoding="utf-8")
    for name, fn in [("annotation_full", full_annotation), ("annotation_partial", partial_annotation),
                     ("annotation_no_choices", no_choices_annotation)]:
        (HERE / f"{name}.json").write_text(json.dumps(fn(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    preds, kw = prediction_inputs()
    schema = parse_label_config(CONFIG)
    kw["input_size"] = tuple(kw["input_size"])
    results = predictions_to_results(preds, schema, **kw)
    (HERE / "predictions.json").write_text(json.dumps(results, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
