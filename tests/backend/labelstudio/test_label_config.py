"""Labeling config -> ProjectSchema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.labelstudio.label_config import LabelConfigError, ProjectSchema, parse_label_config

GOLDEN = Path(__file__).parent / "golden"


def _cfg(body: str, image: str = '<Image name="image" value="$image"/>') -> str:
    return f"<View>{image}{body}</View>"


BRUSH = '<BrushLabels name="semantic" toName="image"><Label value="road"/><Label value="car"/></BrushLabels>'
RECT = '<RectangleLabels name="boxes" toName="image"><Label value="car"/><Label value="person"/></RectangleLabels>'
POLY = '<PolygonLabels name="parts" toName="image"><Label value="wheel"/></PolygonLabels>'


def test_golden_config_brush_rect_polygon_choices_depth():
    s = parse_label_config((GOLDEN / "label_config.xml").read_text(encoding="utf-8"))
    assert list(s.modalities) == ["semantic", "boxes", "parts", "depth"]
    kinds = {n: (m.kind, m.channels) for n, m in s.modalities.items()}
    assert kinds == {
        "semantic": ("segmentation", 3),
        "boxes": ("detection", 2),
        "parts": ("segmentation", 2),
        "depth": ("depth", 1),
    }
    assert s.class_names("semantic") == ["background", "road", "Straße 🚗"]
    assert s.class_names("boxes") == ["car", "person"]
    assert s.class_names("depth") == []
    assert s.class_index("semantic", "Straße 🚗") == 2 and s.class_index("semantic", "nope") is None
    assert s.choices_tag == "mtal_labelled"
    assert s.dense_fields == {"depth": "depth"}
    assert s.image_key == "image" and s.image_tag == "image"
    assert s.network == "detseg"
    assert set(s.tags) == {"semantic", "boxes", "parts"}  # KeyPointLabels ignored
    t = s.tags["parts"]
    assert (t.tag_type, t.to_name, t.image_key, t.labels, t.modality) == ("PolygonLabels", "image", "image",
                                                                          ("wheel",), "parts")


def test_schema_dict_round_trip_is_json_safe():
    s = parse_label_config((GOLDEN / "label_config.xml").read_text(encoding="utf-8"))
    d = json.loads(json.dumps(s.to_dict(), ensure_ascii=False))
    back = ProjectSchema.from_dict(d)
    assert back == s
    assert back.class_names("semantic") == s.class_names("semantic")


def test_several_segmentation_tags_and_no_detection_is_padnet():
    s = parse_label_config(_cfg(BRUSH + POLY.replace("parts", "parts2") + POLY))
    assert [m for m in s.modalities] == ["semantic", "parts2", "parts"]
    assert all(m.kind == "segmentation" for m in s.modalities.values())
    assert s.network == "padnet" and s.choices_tag is None


def test_brush_and_polygon_with_same_classes_stay_two_modalities():
    poly = BRUSH.replace("BrushLabels", "PolygonLabels").replace("semantic", "semantic_poly")
    s = parse_label_config(_cfg(BRUSH + poly))
    assert s.class_names("semantic") == s.class_names("semantic_poly")
    assert s.tags["semantic_poly"].tag_type == "PolygonLabels"


def test_label_named_background_is_class_zero():
    s = parse_label_config(_cfg('<BrushLabels name="seg" toName="image"><Label value="background"/>'
                                '<Label value="a"/></BrushLabels>'))
    assert s.class_names("seg") == ["background", "a"] and s.modalities["seg"].channels == 2


def test_alias_is_the_label_value():
    s = parse_label_config(_cfg('<RectangleLabels name="b" toName="image"><Label value="Car" alias="car"/>'
                                "</RectangleLabels>"))
    assert s.class_names("b") == ["car"]


def test_dense_fields_from_settings_override_config():
    s = parse_label_config(_cfg(BRUSH), dense_fields={"depth": "$depth_png", "normals_gt": "nrm"})
    assert s.dense_fields == {"depth": "depth_png", "normals_gt": "nrm"}
    assert s.modalities["normals_gt"].kind == "normals" and s.modalities["normals_gt"].channels == 3
    with pytest.raises(LabelConfigError, match="'weird'"):
        parse_label_config(_cfg(BRUSH), dense_fields={"weird": "x"})
    with pytest.raises(LabelConfigError, match="depth"):
        parse_label_config(_cfg(BRUSH.replace("semantic", "depth")), dense_fields={"depth": "d"})


def test_dense_image_tags_in_config():
    s = parse_label_config(_cfg(BRUSH + '<View style="display: none"><Image name="normals" value="$nrm"/>'
                                '<Image name="depth_lidar" value="$lidar"/></View>'))
    assert s.dense_fields == {"normals": "nrm", "depth_lidar": "lidar"}
    assert s.modalities["depth_lidar"].kind == "depth"


def test_config_hash_ignores_formatting_but_not_content():
    a = parse_label_config(_cfg(BRUSH))
    b = parse_label_config("<View>\n  <!-- c -->\n  " + '<Image name="image" value="$image"/>\n' + BRUSH + "\n</View>")
    c = parse_label_config(_cfg(BRUSH.replace("road", "street")))
    assert a.config_hash == b.config_hash != c.config_hash
    assert len(a.config_hash) == 64


def test_choices_tag_with_non_modality_values_is_not_the_modalities_tag():
    ch = '<Choices name="weather" toName="image" choice="multiple"><Choice value="sunny"/></Choices>'
    assert parse_label_config(_cfg(BRUSH + ch)).choices_tag is None
    single = '<Choices name="m" toName="image"><Choice value="semantic"/></Choices>'
    assert parse_label_config(_cfg(BRUSH + single)).choices_tag is None


@pytest.mark.parametrize(
    "xml, names",
    [
        ("<View><Text name='t' value='$t'/><Labels name='ner' toName='t'><Label value='a'/></Labels></View>", "ner"),
        (_cfg("<KeyPointLabels name='kp' toName='image'><Label value='a'/></KeyPointLabels>"), "kp"),
        ("<View><Header value='hi'/></View>", "Image"),
        (_cfg(""), "BrushLabels"),
        (_cfg("<RectangleLabels name='empty' toName='image'></RectangleLabels>"), "empty"),
        (_cfg(BRUSH + "<RectangleLabels name='r2' toName='img2'><Label value='x'/></RectangleLabels>",
              image='<Image name="image" value="$image"/><Image name="img2" value="$b"/>'), "r2"),
        (_cfg(BRUSH, image='<Image name="image" value="http://x/y.png"/>'), "image"),
        (_cfg(BRUSH + "<BrushLabels name='b2' toName='nowhere'><Label value='x'/></BrushLabels>"), "b2"),
        (_cfg(BRUSH + '<Choices name="m1" toName="image" choice="multiple"><Choice value="semantic"/></Choices>'
              '<Choices name="m2" toName="image" choice="multiple"><Choice value="semantic"/></Choices>'), "m2"),
        ("<View><Image name='image' value='$image'", "XML"),
    ],
)
def test_unsupported_configs_name_the_tag(xml, names):
    with pytest.raises(LabelConfigError, match=names):
        parse_label_config(xml)


def test_label_config_error_is_value_error():
    assert issubclass(LabelConfigError, ValueError)
    with pytest.raises(ValueError):
        parse_label_config("")


def test_class_names_unknown_modality():
    s = parse_label_config(_cfg(BRUSH))
    with pytest.raises(ValueError, match="nope"):
        s.class_names("nope")


def test_docs_sample_config_parses():
    import re

    doc = (Path(__file__).parents[3] / "docs" / "labeling.md").read_text(encoding="utf-8")
    xml = re.search(r"```xml\n(.*?)```", doc, re.S).group(1)
    s = parse_label_config(xml)
    assert list(s.modalities) == ["semantic", "boxes", "parts", "depth", "normals"]
    assert s.choices_tag == "mtal_labelled" and s.network == "detseg"
