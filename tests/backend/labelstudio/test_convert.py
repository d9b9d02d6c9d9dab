"""LS JSON <-> numpy conversions, checked against shapes known by construction and golden fixtures."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle
from label_studio_sdk.converter.brush import encode_rle as sdk_encode_rle

from backend.labelstudio.convert import (
    SegmentationArgmax,
    annotation_to_labels,
    box_to_rect,
    class_map_to_rle,
    class_sums,
    encode_rle,
    mask_to_polygons,
    mask_to_rle,
    polygon_to_mask,
    predictions_to_results,
    rect_to_box,
    rle_to_mask,
)
from backend.labelstudio.label_config import parse_label_config
from tests.backend.labelstudio.golden import make_golden

GOLDEN = Path(__file__).parent / "golden"


def _load(name: str) -> dict:
    return json.loads((GOLDEN / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def schema():
    return parse_label_config((GOLDEN / "label_config.xml").read_text(encoding="utf-8"))


# ---- brush RLE -----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (33, 51), (64, 64)])
@pytest.mark.parametrize("density", [0.0, 0.03, 0.5, 1.0])
def test_mask_rle_round_trip_exact(shape, density):
    rng = np.random.default_rng(hash((shape, density)) % 2**32)
    mask = rng.random(shape) < density
    rle = mask_to_rle(mask)
    assert all(isinstance(v, int) and 0 <= v <= 255 for v in rle)
    np.testing.assert_array_equal(rle_to_mask(rle, *shape), mask)


def test_rle_uses_sdk_rgba_layout():
    mask = np.zeros((5, 6), bool)
    mask[1:3, 2:5] = True
    rgba = decode_rle(bytes(mask_to_rle(mask))).reshape(5, 6, 4)
    assert (rgba[mask] == 255).all() and (rgba[~mask] == 0).all()
    # an SDK-made RLE (alpha in all 4 bytes) decodes to the same mask
    np.testing.assert_array_equal(rle_to_mask(mask2rle(mask.astype(np.uint8) * 255), 5, 6), mask)


def _random_flat(rng: np.random.Generator, kind: int, n: int) -> np.ndarray:
    if kind == 0:  # noise: runs of length 1
        return rng.integers(0, 256, n).astype(np.uint8)
    if kind == 1:  # short and medium runs of a few values
        k = max(n // 40, 1)
        return np.repeat(rng.integers(0, 3, k), rng.integers(1, 300, k)).astype(np.uint8)
    if kind == 2:  # a few very long runs (> 2**16: split into several 16-bit pieces)
        return np.repeat(rng.integers(0, 2, 4) * 255, rng.integers(1, 150_000, 4)).astype(np.uint8)
    return np.full(n, 255 * (kind - 3), np.uint8)  # all zero / all 255


@pytest.mark.parametrize("kind", range(5))
def test_fast_encoder_equals_sdk_on_random_arrays(kind):
    rng = np.random.default_rng(kind)
    for n in [1, 2, 7, 8, 9, 16, 17, 256, 257, 65536, 65537, *rng.integers(1, 5000, 25).tolist()]:
        arr = _random_flat(rng, kind, int(n))
        assert encode_rle(arr) == sdk_encode_rle(arr), (kind, n, arr.size)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 3), (31, 17), (64, 63), (300, 257)])
def test_mask_to_rle_equals_sdk_mask2rle(shape):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    blobs = np.kron(rng.random((shape[0] // 4 + 1, shape[1] // 4 + 1)) < 0.4, np.ones((4, 4), bool))
    masks = [np.zeros(shape, bool), np.ones(shape, bool), rng.random(shape) < 0.5, blobs[: shape[0], : shape[1]]]
    for mask in masks:
        assert mask_to_rle(mask) == [int(v) for v in mask2rle(mask.astype(np.uint8) * 255)]


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 3), (31, 17), (64, 63), (300, 257)])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_class_map_to_rle_equals_the_sdk_per_class(shape, dtype):
    """One pass for all classes gives, per class, the SDK's ``mask2rle`` bytes of that class's mask (and
    they decode with the SDK to the mask): noise, blobs, one class everywhere, runs over 2**16 pixels."""
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    blobs = np.kron(rng.integers(0, 4, (shape[0] // 4 + 1, shape[1] // 4 + 1)), np.ones((4, 4), np.int64))
    long_runs = np.zeros(shape, np.int64)
    long_runs.reshape(-1)[long_runs.size // 3 :] = 2
    maps = [rng.integers(0, 5, shape), blobs[: shape[0], : shape[1]], np.full(shape, 3), long_runs]
    for labels in maps:
        labels = labels.astype(dtype)
        got = class_map_to_rle(labels, [0, 1, 2, 3, 4, 7])
        assert list(got) == [0, 1, 2, 3, 4, 7]
        for c, rle in got.items():
            mask = labels == c
            assert rle == [int(v) for v in mask2rle(mask.astype(np.uint8) * 255)], (c, shape)
            np.testing.assert_array_equal(decode_rle(bytes(rle)).reshape(*shape, 4)[:, :, 3] > 0, mask)


def test_class_map_to_rle_rejects_bad_maps():
    with pytest.raises(ValueError, match="class map"):
        class_map_to_rle(np.zeros((0, 3), np.uint8), [1])
    with pytest.raises(ValueError, match="class map"):
        class_map_to_rle(np.zeros(5, np.uint8), [1])


def test_mask_to_rle_reproduces_golden_sdk_bytes():
    n = 0
    for name in ("annotation_full.json", "annotation_partial.json", "annotation_no_choices.json"):
        for res in _load(name)["result"]:
            if res["type"] == "brushlabels":
                h, w = res["original_height"], res["original_width"]
                assert mask_to_rle(rle_to_mask(res["value"]["rle"], h, w)) == res["value"]["rle"]
                n += 1
    assert n == 5


def test_encode_rle_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        encode_rle(np.zeros(0, np.uint8))
    with pytest.raises(ValueError, match="0-255"):
        encode_rle(np.array([1, 300]))


def test_rle_size_mismatch_is_value_error():
    rle = mask_to_rle(np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="expected 5x4x4"):
        rle_to_mask(rle, 5, 4)
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        mask_to_rle(np.ones((2, 2, 2), bool))


# ---- geometry ------------------------------------------------------------------------------------
def test_polygon_to_mask_covers_interior_only():
    m = polygon_to_mask([[25, 25], [75, 25], [75, 75], [25, 75]], 64, 64)  # px [16, 48)
    assert m[16:48, 16:48].all()
    outside = np.ones_like(m)
    outside[15:49, 15:49] = False
    assert not m[outside].any()
    with pytest.raises(ValueError, match="polygon"):
        polygon_to_mask([[0, 0], [1, 1]], 8, 8)


def test_rect_box_round_trip_within_one_pixel():
    rng = np.random.default_rng(0)
    for h, w in [(64, 64), (333, 517), (17, 9)]:
        for _ in range(20):
            x1, x2 = sorted(rng.uniform(0, w, 2))
            y1, y2 = sorted(rng.uniform(0, h, 2))
            box = np.array([x1, y1, x2, y2])
            rect = box_to_rect(box, h, w)
            assert rect["rotation"] == 0 and all(0 <= rect[k] <= 100 for k in ("x", "y", "width", "height"))
            np.testing.assert_allclose(rect_to_box(rect, h, w), box, atol=1.0)


@pytest.mark.parametrize(
    "rotation, expected",
    [
        (0, [20, 10, 60, 20]),  # anchor (20, 10), 40 wide, 10 high
        (90, [10, 10, 20, 50]),  # clockwise: width runs down, height runs left
        (180, [-20, 0, 20, 10]),
        (270, [20, -30, 30, 10]),
        (45, [20 - 10 / 2**0.5, 10, 20 + 40 / 2**0.5, 10 + 50 / 2**0.5]),
    ],
)
def test_rotated_rect_axis_aligned_box(rotation, expected):
    value = {"x": 10, "y": 10, "width": 20, "height": 10, "rotation": rotation}  # image 100 x 200
    np.testing.assert_allclose(rect_to_box(value, 100, 200), expected, atol=1e-4)


def test_rect_bad_value_is_value_error():
    with pytest.raises(ValueError, match="x, y, width, height"):
        rect_to_box({"x": 1, "y": 2}, 10, 10)
    with pytest.raises(ValueError, match="box"):
        box_to_rect([5, 5, 1, 1], 10, 10)


# ---- annotations -> labels -----------------------------------------------------------------------
def _check_expected(labels, present, exp):
    assert present == exp["present"]
    if "semantic_counts" in exp:
        ids, counts = np.unique(labels["semantic"], return_counts=True)
        assert {str(i): int(c) for i, c in zip(ids, counts, strict=True)} == exp["semantic_counts"]
        assert labels["semantic"].dtype == np.int64
    if "boxes" in exp:
        assert labels["boxes"]["boxes"].dtype == np.float32 and labels["boxes"]["labels"].dtype == np.int64
        np.testing.assert_allclose(labels["boxes"]["boxes"], exp["boxes"], atol=1e-3)
        assert labels["boxes"]["labels"].tolist() == exp["box_labels"]


def test_full_annotation_matches_construction(schema, caplog):
    fx = _load("annotation_full.json")
    with caplog.at_level(logging.WARNING):
        labels, present = annotation_to_labels(fx["result"], schema, fx["height"], fx["width"])
    _check_expected(labels, present, fx["expected"])
    assert "kp" in caplog.text  # unknown (unsupported) tag: ignored with a warning
    x1, y1, x2, y2 = fx["expected"]["parts_bbox"]
    parts = labels["parts"]
    assert (parts[y1:y2, x1:x2] == 1).all()
    ys, xs = np.nonzero(parts)
    assert xs.min() >= x1 - 1 and xs.max() <= x2 and ys.min() >= y1 - 1 and ys.max() <= y2
    assert set(np.unique(parts)) == {0, 1}


def test_partial_annotation_with_choices(schema):
    fx = _load("annotation_partial.json")
    labels, present = annotation_to_labels(fx["result"], schema, fx["height"], fx["width"])
    _check_expected(labels, present, fx["expected"])
    assert labels["boxes"]["boxes"].shape == (0, 4)  # labelled as empty
    assert (labels["semantic"] == schema.modalities["semantic"].ignore_index).all()  # not labelled
    assert (labels["parts"] == 255).all()


def test_annotation_without_choices_and_rescaled_brush(schema):
    fx = _load("annotation_no_choices.json")
    labels, present = annotation_to_labels(fx["result"], schema, fx["height"], fx["width"])
    _check_expected(labels, present, fx["expected"])
    assert (labels["semantic"][:10] == 1).all() and (labels["semantic"][10:] == 0).all()


def test_ticked_but_empty_segmentation_is_background(schema):
    labels, present = annotation_to_labels([make_golden._choices(["semantic"])], schema, 8, 9)
    assert present["semantic"] and not present["boxes"]
    assert labels["semantic"].shape == (8, 9) and (labels["semantic"] == 0).all()


def test_schema_without_choices_tag_ignores_choices_like_results():
    xml = '<View><Image name="img" value="$img"/><BrushLabels name="seg" toName="img"><Label value="a"/></BrushLabels>'
    xml += "</View>"
    schema = parse_label_config(xml)
    labels, present = annotation_to_labels([], schema, 4, 4)
    assert present == {"seg": False} and (labels["seg"] == 255).all()


def test_unknown_label_and_bad_region_are_skipped(schema, caplog):
    res = [
        make_golden._rect("r1", "truck", 0, 0, 10, 10),  # not a label of the tag
        make_golden._rect("r2", "car", 200, 200, 10, 10),  # entirely outside the image
        make_golden._rect("r3", "car", 0, 0, 50, 50),
    ]
    with caplog.at_level(logging.WARNING):
        labels, present = annotation_to_labels(res, schema, 40, 60)
    assert present["boxes"] and labels["boxes"]["labels"].tolist() == [0]
    assert "truck" in caplog.text and "empty inside the image" in caplog.text


# ---- predictions -> LS results -------------------------------------------------------------------
def test_predictions_match_golden(schema):
    preds, kw = make_golden.prediction_inputs()
    kw["input_size"] = tuple(kw["input_size"])
    got = predictions_to_results(preds, schema, **kw)
    want = _load("predictions.json")
    assert [r["id"] for r in got] == [r["id"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert g.pop("score", None) == pytest.approx(w.pop("score", None))
        assert json.loads(json.dumps(g)) == w


@pytest.mark.parametrize("background", [0.0, 0.5, 0.99])
def test_class_sums_equal_one_bincount_over_the_map(background):
    """Counts and float64 confidence sums of classes 1..n-1 are bit-identical to ``np.bincount`` over the
    whole map (the sum's order is the pixels'); the background's count is the rest, its sum is skipped.
    A map of over 2**20 pixels is summed in bands of rows (as before #27): equal to float rounding."""
    rng = np.random.default_rng(int(background * 100))
    for shape in [(3, 5), (64, 80), (1100, 1000)]:
        cls = np.where(rng.random(shape) < background, 0, rng.integers(1, 6, shape)).astype(np.uint8)
        conf = rng.random(shape, dtype=np.float32)
        counts, sums = class_sums(cls, conf, 7)
        want_counts = np.bincount(cls.reshape(-1), minlength=7)
        want_sums = np.bincount(cls.reshape(-1), weights=conf.reshape(-1), minlength=7)
        assert counts.tolist() == want_counts.tolist()
        assert sums[0] == 0
        if cls.size <= 1 << 20:
            assert sums[1:].tolist() == want_sums[1:].tolist()
        else:
            np.testing.assert_allclose(sums[1:], want_sums[1:], rtol=1e-12)


def test_predictions_content_by_construction(schema):
    preds, kw = make_golden.prediction_inputs()
    kw["input_size"] = tuple(kw["input_size"])
    results = predictions_to_results(preds, schema, **kw)
    brush = [r for r in results if r["type"] == "brushlabels"]
    assert [r["value"]["brushlabels"] for r in brush] == [["road"], ["Straße 🚗"]]
    road = rle_to_mask(brush[0]["value"]["rle"], 40, 60)
    expected = np.zeros((40, 60), bool)
    expected[0:10, 0:20] = True  # 5x10 at half resolution, resized nearest
    np.testing.assert_array_equal(road, expected)
    assert brush[0]["score"] == pytest.approx(0.7)
    rects = [r for r in results if r["type"] == "rectanglelabels"]
    assert len(rects) == 1 and rects[0]["value"]["rectanglelabels"] == ["car"]
    assert rects[0]["score"] == pytest.approx(0.9)
    np.testing.assert_allclose(rect_to_box(rects[0]["value"], 40, 60), [6, 10, 18, 30], atol=1e-4)
    choices = [r for r in results if r["type"] == "choices"]
    assert choices == [{**choices[0], "from_name": "mtal_labelled", "value": {"choices": ["semantic", "parts"]}}]
    assert not any(r["from_name"] == "depth" for r in results)
    assert len({r["id"] for r in results}) == len(results)
    # predictions fed back as an annotation give the same labels
    labels, present = annotation_to_labels(results, schema, 40, 60)
    assert present == {"semantic": True, "boxes": False, "parts": True}
    np.testing.assert_array_equal(labels["semantic"] == 1, expected)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_predicted_polygons_round_trip(schema):
    preds, kw = make_golden.prediction_inputs()
    kw["input_size"] = tuple(kw["input_size"])
    polys = [r for r in predictions_to_results(preds, schema, **kw) if r["from_name"] == "parts"]
    assert len(polys) == 1  # the 2x2-pixel speck is dropped
    (poly,) = polys
    assert poly["type"] == "polygonlabels" and poly["value"]["polygonlabels"] == ["wheel"]
    assert poly["value"]["closed"] is True and poly["score"] == pytest.approx(0.75)
    expected = np.zeros((40, 60), bool)
    expected[8:28, 4:16] = True
    assert _iou(polygon_to_mask(poly["value"]["points"], 40, 60), expected) > 0.9


def test_mask_to_polygons_components_and_scores():
    mask = np.zeros((50, 70), bool)
    mask[5:25, 5:30] = True  # square
    mask[30:45, 40:65] = True  # ring: the hole is filled (external contours only)
    mask[35:40, 48:57] = False
    mask[1, 68] = True  # 1 pixel: dropped
    conf = np.where(np.arange(70)[None, :] < 35, 0.8, 0.6) * np.ones((50, 1))
    got = mask_to_polygons(mask, conf)
    assert len(got) == 2
    filled = np.zeros_like(mask)
    for points, score in got:
        m = polygon_to_mask(points, 50, 70)
        assert score == pytest.approx(0.8 if m[10, 10] else 0.6)
        filled |= m
    want = mask.copy()
    want[35:40, 48:57] = True
    want[1, 68] = False
    assert _iou(filled, want) > 0.97
    # a diagonal blob survives simplification within the epsilon
    yy, xx = np.mgrid[0:64, 0:64]
    disc = (yy - 30) ** 2 + (xx - 34) ** 2 < 20**2
    ((points, _),) = mask_to_polygons(disc)
    assert _iou(polygon_to_mask(points, 64, 64), disc) > 0.9
    assert mask_to_polygons(np.zeros((8, 8), bool)) == []
    with pytest.raises(ValueError, match="confidence shape"):
        mask_to_polygons(mask, conf[:10])


def test_argmax_input_equals_probs_input(schema):
    preds, kw = make_golden.prediction_inputs()
    kw["input_size"] = tuple(kw["input_size"])
    reduced = {k: SegmentationArgmax(v.argmax(0), v.max(0)) if v.ndim == 3 and k != "depth" else v
               for k, v in preds.items()}
    assert predictions_to_results(reduced, schema, **kw) == predictions_to_results(preds, schema, **kw)
    with pytest.raises(ValueError, match="semantic.*class ids"):
        bad = SegmentationArgmax(np.full((4, 4), 3), np.ones((4, 4), np.float32))
        predictions_to_results({"semantic": bad}, schema, 4, 4)
    with pytest.raises(ValueError, match="semantic.*same"):
        predictions_to_results({"semantic": SegmentationArgmax(np.zeros((4, 4), int), np.ones(4))}, schema, 4, 4)


def test_predictions_bad_input_names_modality(schema):
    with pytest.raises(ValueError, match="semantic"):
        predictions_to_results({"semantic": np.zeros((2, 4, 4))}, schema, 4, 4)
    with pytest.raises(ValueError, match="nope"):
        predictions_to_results({"nope": np.zeros((2, 4, 4))}, schema, 4, 4)
    with pytest.raises(ValueError, match="requested"):
        predictions_to_results({}, schema, 4, 4, requested=["semantic", "bogus"])
