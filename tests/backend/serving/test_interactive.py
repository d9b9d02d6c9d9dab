"""One prompt on known network outputs (no network): the smart rectangle's mask and, with a detection
modality of the same label (boxmask nets), its box refined by the detector (issue #31)."""

from __future__ import annotations

import numpy as np
import pytest

from backend.labelstudio.convert import rle_to_mask
from backend.labelstudio.interactive import ContextError, parse_context
from backend.labelstudio.label_config import parse_label_config
from backend.labelstudio.regions import rect_to_box
from backend.serving.interactive import answer_prompt
from mtal_models.data.geometry import Fit

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="semantic" toName="image"><Label value="road"/><Label value="car"/></BrushLabels>
  <RectangleLabels name="objects" toName="image"><Label value="car"/><Label value="bus"/></RectangleLabels>
  <RectangleLabels name="box_smart" toName="image" smart="true"><Label value="car"/></RectangleLabels>
  <Rectangle name="any_box" toName="image" smart="true"/>
</View>"""
H, W = 100, 160
CARS = [(10, 20, 50, 70), (90, 30, 140, 80)]


def _preds(fit: Fit, detections: list[list[float]]) -> dict[str, np.ndarray]:
    """Known outputs at the network size: car probability 0.9 on the cars, road 0.8 on the bottom rows."""
    seg = np.zeros((3, *fit.padded), np.float32)
    seg[0] = 0.9
    sy, sx = fit.scale_y, fit.scale_x
    for x0, y0, x1, y1 in CARS:
        seg[:, round(y0 * sy): round(y1 * sy), round(x0 * sx): round(x1 * sx)] = [[[0.05]], [[0.05]], [[0.9]]]
    rows = np.full((5, 8), -1.0, np.float32)
    for i, d in enumerate(detections):
        rows[i, :6] = d
        rows[i, 4:6] = d[4], d[5]
    return {"semantic": seg, "objects": rows}


def _rect(tool: str, box: tuple[float, ...], labels: list[str] | None = None) -> dict:
    x0, y0, x1, y1 = box
    value = {"x": 100 * x0 / W, "y": 100 * y0 / H, "width": 100 * (x1 - x0) / W, "height": 100 * (y1 - y0) / H}
    if labels is not None:
        value["rectanglelabels"] = labels
    return {"from_name": tool, "type": "rectanglelabels", "value": value}


def test_box_mask_and_box_refined_by_the_detector() -> None:
    schema = parse_label_config(CONFIG)
    fit = Fit.for_size(H, W, 64, 1024)
    # the detector's car box at the second car (in network input pixels), and a bus box there too
    car = [90 * fit.scale_x, 31 * fit.scale_y, 141 * fit.scale_x, 79 * fit.scale_y, 0.8, 0]
    bus = [88 * fit.scale_x, 30 * fit.scale_y, 140 * fit.scale_x, 80 * fit.scale_y, 0.95, 1]
    (prompt,) = parse_context({"result": [_rect("box_smart", (80, 20, 150, 92), ["car"])]}, schema)
    results, note = answer_prompt(prompt, _preds(fit, [car, bus]), fit, schema, 0.002)
    brush, rect = results
    mask = rle_to_mask(brush["value"]["rle"], H, W) > 0
    want = np.zeros((H, W), bool)
    want[30:80, 90:140] = True
    assert (mask & want).sum() / (mask | want).sum() > 0.9
    assert rect["from_name"] == "objects" and rect["value"]["rectanglelabels"] == ["car"]
    assert np.allclose(rect_to_box(rect["value"], H, W), (90, 31, 141, 79), atol=0.5)
    assert note["modalities"] == {"semantic": "box", "objects": "detector"}
    assert brush["id"] != rect["id"]


def test_box_without_a_matching_detection_takes_the_masks_box() -> None:
    schema = parse_label_config(CONFIG)
    fit = Fit.for_size(H, W, 64, 1024)
    (prompt,) = parse_context({"result": [_rect("box_smart", (5, 12, 60, 75), ["car"])]}, schema)
    results, note = answer_prompt(prompt, _preds(fit, []), fit, schema, 0.002)
    assert note["modalities"]["objects"] == "mask"
    assert np.allclose(rect_to_box(results[1]["value"], H, W), CARS[0], atol=2)


def test_an_unlabelled_smart_rectangle_takes_the_class_with_most_probability_in_it() -> None:
    schema = parse_label_config(CONFIG)
    fit = Fit.for_size(H, W, 64, 1024)
    (prompt,) = parse_context({"result": [_rect("any_box", (85, 25, 145, 85))]}, schema)
    assert set(prompt.labels) == {"road", "car", "bus"}
    results, note = answer_prompt(prompt, _preds(fit, []), fit, schema, 0.002)
    assert note["label"] == "car" and results[0]["value"]["brushlabels"] == ["car"]


def test_smart_rectangle_with_a_label_of_no_modality_is_refused() -> None:
    schema = parse_label_config(CONFIG)
    with pytest.raises(ContextError, match="label 'tram' of smart tool 'box_smart' is in no modality"):
        parse_context({"result": [_rect("box_smart", (1, 1, 5, 5), ["tram"])]}, schema)
