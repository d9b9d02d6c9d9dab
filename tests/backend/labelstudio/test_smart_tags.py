"""Smart (interactive) tags are tools, never modalities (issue #31, item 1): the schema, the samples and
the label counts of a config with smart tags are those of the same config without them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backend.labelstudio.convert import annotation_to_labels, box_to_rect, mask_to_rle
from backend.labelstudio.label_config import LabelConfigError, ProjectSchema, parse_label_config
from backend.loop.events import labelled_modalities
from backend.serving.strategy import strategy_for
from backend.settings import Settings
from backend.web.app import create_app
from tests.backend.web.test_app import RecordingTrainer

BRUSH = '<BrushLabels name="semantic" toName="image"><Label value="road"/><Label value="car"/></BrushLabels>'
RECT = '<RectangleLabels name="objects" toName="image"><Label value="car"/></RectangleLabels>'
# Label Studio's interactive template: smart tags beside the tag they help (same label names)
SMART = ('<RectangleLabels name="box_smart" toName="image" smart="true"><Label value="car"/></RectangleLabels>'
         '<KeyPointLabels name="kp" toName="image" smart="true"><Label value="car" smart="true"/>'
         '<Label value="road" smart="true"/></KeyPointLabels>'
         '<BrushLabels name="brush_smart" toName="image" smartOnly="true"><Label value="road"/></BrushLabels>'
         '<Rectangle name="rect" toName="image" smart="true"/>')


def _cfg(*tags: str) -> str:
    return '<View><Image name="image" value="$image"/>' + "".join(tags) + "</View>"


def _same_schema(a: ProjectSchema, b: ProjectSchema) -> None:
    drop = ("config_hash", "smart_tools")
    assert {k: v for k, v in a.to_dict().items() if k not in drop} == \
        {k: v for k, v in b.to_dict().items() if k not in drop}
    assert a.modalities == b.modalities and a.tags == b.tags and a.network == b.network


def test_smart_tags_are_tools_not_modalities() -> None:
    plain, smart = parse_label_config(_cfg(BRUSH, RECT)), parse_label_config(_cfg(BRUSH, SMART, RECT))
    _same_schema(smart, plain)
    assert list(smart.modalities) == ["semantic", "objects"] and plain.smart_tools == {}
    tools = {n: (t.tag_type, t.labels, t.modalities, t.smart_only) for n, t in smart.smart_tools.items()}
    assert tools == {
        "box_smart": ("RectangleLabels", ("car",), ("semantic", "objects"), False),
        "kp": ("KeyPointLabels", ("car", "road"), ("semantic", "objects"), False),
        "brush_smart": ("BrushLabels", ("road",), ("semantic",), True),
        "rect": ("Rectangle", (), ("semantic", "objects"), False),  # unlabelled: the label comes from the tag drawn
    }


def test_schema_with_tools_round_trips_through_json() -> None:
    s = parse_label_config(_cfg(BRUSH, SMART, RECT))
    assert ProjectSchema.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    legacy = {k: v for k, v in s.to_dict().items() if k != "smart_tools"}  # stored before #31
    assert ProjectSchema.from_dict(legacy).smart_tools == {}


def test_boxmask_sets_up_with_a_smart_rectangle() -> None:
    """The issue's 422: 'boxmask needs one detection and a segmentation tag; have ['objects', 'box_smart']'."""
    schema = parse_label_config(_cfg(BRUSH, RECT, SMART))
    strategy = strategy_for(Settings(strategy="boxmask"), schema)
    assert strategy.name == "boxmask" and strategy_for(Settings(strategy="auto"), schema).name == "boxmask"


def test_setup_answers_200_for_the_issue_config(tmp_path: Path) -> None:
    settings = Settings(net_config="tiny", image_size=64, device="cpu", model_dir=tmp_path, strategy="boxmask")
    client = create_app(settings, trainer=RecordingTrainer()).test_client()
    r = client.post("/setup", json={"project": "3", "schema": _cfg(BRUSH, RECT, SMART)})
    assert r.status_code == 200, r.json
    same = client.post("/setup", json={"project": "3", "schema": _cfg(BRUSH, RECT)})
    assert same.json == r.json  # one version serves both: the modalities are the same


def test_a_smart_tag_no_other_tag_shares_labels_with_stays_a_modality() -> None:
    """``smart="true"`` keeps the ordinary tool: the project's only rectangles tag is still its detection."""
    s = parse_label_config(_cfg(BRUSH, '<RectangleLabels name="det" toName="image" smart="true">'
                                       '<Label value="person"/></RectangleLabels>'))
    assert list(s.modalities) == ["semantic", "det"] and s.smart_tools == {}


def test_smart_attributes_are_case_insensitive_and_plain_keypoints_are_not_tools() -> None:
    s = parse_label_config(_cfg(BRUSH, '<RectangleLabels name="b" toName="image" SMARTONLY="True">'
                                       '<Label value="car"/></RectangleLabels>',
                                '<KeyPointLabels name="kp" toName="image"><Label value="car"/></KeyPointLabels>',
                                '<Rectangle name="r" toName="image"/>'))
    assert list(s.modalities) == ["semantic"] and list(s.smart_tools) == ["b"]


def test_a_config_of_smart_tools_only_is_refused() -> None:
    with pytest.raises(LabelConfigError, match="no supported control tag"):
        parse_label_config(_cfg('<BrushLabels name="s" toName="image" smartOnly="true"><Label value="a"/>'
                                "</BrushLabels>"))


def _annotation(with_smart: bool) -> list[dict[str, Any]]:
    h, w = 20, 30
    mask = np.zeros((h, w), bool)
    mask[5:15, 10:20] = True
    common = {"original_width": w, "original_height": h, "image_rotation": 0, "to_name": "image"}
    rect = box_to_rect(np.array([10, 5, 20, 15], np.float32), h, w)
    result = [
        {**common, "from_name": "semantic", "type": "brushlabels",
         "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": ["car"]}},
        {**common, "from_name": "objects", "type": "rectanglelabels", "value": {**rect, "rectanglelabels": ["car"]}},
    ]
    if with_smart:  # what the smart tools leave in the annotation: a box, a keypoint, an unlabelled rectangle
        result += [
            {**common, "from_name": "box_smart", "type": "rectanglelabels",
             "value": {**rect, "rectanglelabels": ["car"]}},
            {**common, "from_name": "kp", "type": "keypointlabels",
             "value": {"x": 50, "y": 50, "width": 1, "keypointlabels": ["road"]}, "is_positive": True},
            {**common, "from_name": "rect", "type": "rectangle", "value": rect},
            {**common, "from_name": "brush_smart", "type": "brushlabels",
             "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": ["road"]}},
        ]
    return result


def test_smart_regions_are_no_labels(caplog: pytest.LogCaptureFixture) -> None:
    """Same labels, same present modalities and same counts from the same annotation, smart regions or not;
    and a smart region is not warned about as an unknown tag."""
    plain, smart = parse_label_config(_cfg(BRUSH, RECT)), parse_label_config(_cfg(BRUSH, RECT, SMART))
    want_labels, want_present = annotation_to_labels(_annotation(False), plain, 20, 30)
    caplog.clear()
    labels, present = annotation_to_labels(_annotation(True), smart, 20, 30)
    assert present == want_present == {"semantic": True, "objects": True}
    assert np.array_equal(labels["semantic"], want_labels["semantic"])
    assert {k: v.tolist() for k, v in labels["objects"].items()} == \
        {k: v.tolist() for k, v in want_labels["objects"].items()}
    assert "unknown from_name" not in caplog.text
    assert labelled_modalities(_annotation(True), smart) == labelled_modalities(_annotation(False), plain) == \
        {"semantic", "objects"}
    only_smart = [r for r in _annotation(True) if r["from_name"] not in ("semantic", "objects")]
    assert labelled_modalities(only_smart, smart) == set()  # a smart click alone labels nothing
    _, present = annotation_to_labels(only_smart, smart, 20, 30)
    assert not any(present.values())
