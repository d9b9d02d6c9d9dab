"""Non-finite and absurd geometry (defect 8): ``"nan"`` strings and ``NaN``/``Infinity`` JSON literals
never reach a label; such regions are dropped with a logged reason, the rest of the annotation stays."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from backend.labelstudio.convert import annotation_to_labels
from backend.labelstudio.label_config import parse_label_config
from backend.labelstudio.regions import rect_to_box

DET = """<View><Image name="image" value="$image"/>
<RectangleLabels name="det" toName="image"><Label value="car"/></RectangleLabels>
<BrushLabels name="seg" toName="image"><Label value="road"/></BrushLabels>
<PolygonLabels name="poly" toName="image"><Label value="lane"/></PolygonLabels></View>"""
GOOD = {"x": 10, "y": 10, "width": 20, "height": 20, "rotation": 0}
BAD_NUMBERS: list[Any] = ["nan", "NaN", "inf", "-Infinity", math.nan, math.inf, -math.inf, 1e308, -1e300, "1e999"]


def _rect(**value: Any) -> dict[str, Any]:
    return {"from_name": "det", "to_name": "image", "type": "rectanglelabels",
            "value": {**GOOD, **value, "rectanglelabels": ["car"]}}


@pytest.mark.parametrize("key", ["x", "y", "width", "height", "rotation"])
@pytest.mark.parametrize("bad", BAD_NUMBERS)
def test_rect_to_box_refuses_non_finite_and_absurd(key: str, bad: Any) -> None:
    with pytest.raises(ValueError):
        rect_to_box({**GOOD, key: bad}, 48, 64)


@pytest.mark.parametrize("key", ["x", "y", "width", "height", "rotation"])
@pytest.mark.parametrize("bad", BAD_NUMBERS)
def test_bad_rectangles_dropped_good_kept(key: str, bad: Any, caplog: pytest.LogCaptureFixture) -> None:
    schema = parse_label_config(DET)
    labels, present = annotation_to_labels([_rect(), _rect(**{key: bad})], schema, 48, 64)
    boxes = labels["det"]["boxes"]
    assert boxes.shape == (1, 4) and np.isfinite(boxes).all() and present["det"]
    assert "skipped" in caplog.text


def test_json_literals_through_the_parser() -> None:
    """What json.loads makes of LS's ``NaN``/``Infinity`` (Python's json accepts them)."""
    raw = '[{"from_name": "det", "type": "rectanglelabels", "value": {"x": NaN, "y": 1, "width": Infinity,' \
          ' "height": 2, "rectanglelabels": ["car"]}}, {"from_name": "seg", "type": "brushlabels",' \
          ' "original_width": Infinity, "original_height": NaN, "value": {"format": "rle", "rle": [0],' \
          ' "brushlabels": ["road"]}}, {"from_name": "poly", "type": "polygonlabels",' \
          ' "value": {"points": [[0, 0], [NaN, 1], [5, 5]], "polygonlabels": ["lane"]}}]'
    schema = parse_label_config(DET)
    labels, present = annotation_to_labels(json.loads(raw), schema, 48, 64)
    assert not any(present.values())
    assert labels["det"]["boxes"].shape == (0, 4)


@pytest.mark.parametrize("bad", [math.nan, math.inf, 1e308, -1e300])
def test_polygon_with_absurd_points_refused(bad: float) -> None:
    from backend.labelstudio.regions import polygon_to_mask

    with pytest.raises(ValueError, match="polygon points"):
        polygon_to_mask([[0, 0], [bad, 1], [5, 5]], 48, 64)
