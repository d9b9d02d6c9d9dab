"""Reading an interactive context (issue #31): smart tools' regions -> prompts in percent, grouped per
label; the annotator's own regions are not prompts; label spellings Label Studio uses."""

from __future__ import annotations

import pytest

from backend.labelstudio.interactive import ContextError, drawn_regions, parse_context
from backend.labelstudio.label_config import parse_label_config

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="semantic" toName="image"><Label value="road"/><Label value="car"/></BrushLabels>
  <RectangleLabels name="box_smart" toName="image" smart="true"><Label value="car"/></RectangleLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="road"/><Label value="car"/></KeyPointLabels>
</View>"""


def _kp(x: float, y: float, label: str, **extra: object) -> dict:
    return {"from_name": "kp", "type": "keypointlabels", "value": {"x": x, "y": y, "keypointlabels": [label]}, **extra}


def test_keypoints_group_per_label_with_their_signs_and_pixels() -> None:
    schema = parse_label_config(CONFIG)
    own = {"from_name": "semantic", "type": "brushlabels",
           "value": {"format": "rle", "rle": [], "brushlabels": ["car"]}}
    context = {"result": [_kp(10, 20, "car"), own, _kp(50, 50, "road"), _kp(30, 40, "car", is_positive=False),
                          {"from_name": "kp", "type": "keypointlabels",
                           "value": {"x": 70, "y": 80, "labels": ["car"], "is_positive": False}}]}
    car, road = parse_context(context, schema)
    assert (car.kind, car.labels, road.labels) == ("points", ("car",), ("road",))
    assert car.point_pixels(200, 300, True) == [(30.0, 40.0)]
    assert car.point_pixels(200, 300, False) == [(90.0, 80.0), (210.0, 160.0)]
    assert drawn_regions(context, schema) == [own]


def test_a_rectangle_without_a_label_takes_its_tools_only_label() -> None:
    schema = parse_label_config(CONFIG)
    rect = {"from_name": "box_smart", "type": "rectanglelabels", "value": {"x": 10, "y": 20, "width": 30, "height": 40}}
    (prompt,) = parse_context({"result": [rect]}, schema)
    assert prompt.labels == ("car",) and prompt.box_pixels(100, 200) == (20.0, 20.0, 80.0, 60.0)
    turned = {**rect, "value": {**rect["value"], "rotation": 90}}  # clockwise around the top-left corner
    (prompt,) = parse_context({"result": [turned]}, schema)
    assert prompt.box_pixels(100, 200) == pytest.approx((-20.0, 20.0, 20.0, 80.0), abs=1e-4)


@pytest.mark.parametrize("bad", [None, [], {"result": None}, {"result": [_kp(float("nan"), 1, "car")]},
                                 {"result": [_kp(True, 1, "car")]}, {"result": [_kp(1, 1, "car")] * 257}])
def test_malformed_contexts_raise(bad: object) -> None:
    with pytest.raises(ContextError):
        parse_context(bad, parse_label_config(CONFIG))
