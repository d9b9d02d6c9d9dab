"""Interactive pre-annotation, the ML side (issue #31): known answers on synthetic probability maps, the
trunk/heads split of every network, and the feature cache's bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtal_models.data.geometry import Fit
from mtal_models.interactive import FeatureCache, box_region, class_evidence, points_region, refine_box
from mtal_models.nets import build_network, choose_network
from tests.mtal_models.test_contract import CASES, MODALITY_SETS, _samples

H, W = 120, 200
# three objects of the same class: (x0, y0, x1, y1)
OBJECTS = [(10, 30, 50, 90), (80, 20, 130, 70), (150, 40, 190, 100)]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _object(k: int) -> np.ndarray:
    x0, y0, x1, y1 = OBJECTS[k]
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def _probs(rng: np.random.Generator | None = None) -> np.ndarray:
    """[3, H, W]: background, the objects' class (0.8 on every object, 0.1 elsewhere), a third class."""
    fg = np.full((H, W), 0.1, np.float32)
    for k in range(3):
        fg[_object(k)] = 0.8
    if rng is not None:  # a few isolated noisy pixels of the class outside the objects (speckle)
        ys, xs = rng.integers(0, H, 30), rng.integers(0, W, 30)
        fg[ys, xs] = 0.9
    rest = (1 - fg) / 2
    return np.stack([rest, fg, rest])


def test_box_around_one_of_three_same_class_objects_returns_that_object_only() -> None:
    prob = _probs(np.random.default_rng(0))[1]
    x0, y0, x1, y1 = OBJECTS[1]
    # a loose box: it also cuts into the first object's right edge
    mask = box_region(prob, (x0 - 35, y0 - 8, x1 + 6, y1 + 9), min_area=0.002)
    assert _iou(mask, _object(1)) > 0.95
    assert not (mask & _object(0)).any() and not (mask & _object(2)).any()


def test_box_without_the_class_is_empty_and_degenerate_boxes_too() -> None:
    prob = _probs()[1]
    assert not box_region(prob, (55, 80, 75, 115)).any()  # between the objects
    assert not box_region(prob, (60, 60, 60, 90)).any()  # zero width
    assert not box_region(prob, (float("nan"), 0, 10, 10)).any()
    assert not box_region(prob, (-50, -50, -10, -10)).any()  # outside the image


def test_positive_point_returns_its_connected_object() -> None:
    margin = _probs()[1] - _probs()[0]
    mask = points_region(margin, [(100, 40)])
    assert _iou(mask, _object(1)) == 1.0
    both = points_region(margin, [(100, 40), (170, 60)])
    assert _iou(both, _object(1) | _object(2)) == 1.0


def test_negative_point_excludes_a_region() -> None:
    probs = _probs()
    fg = probs[1].copy()
    fg[40:60, 50:80] = 0.8  # a bridge joins objects 0 and 1 into one connected region
    margin = fg - (1 - fg) / 2
    joined = points_region(margin, [(30, 60)])
    assert joined[_object(1)].all()  # without a negative point, the touching object comes too
    cut = points_region(margin, [(30, 60)], [(105, 45)])
    assert cut[_object(0)].all()
    assert not cut[_object(1)].any()
    assert not cut[45, 105]


def test_point_just_off_the_class_snaps_and_far_off_is_empty() -> None:
    margin = _probs()[1] - _probs()[0]
    assert _iou(points_region(margin, [(78, 40)]), _object(1)) == 1.0  # 2 px left of object 1
    assert not points_region(margin, [(65, 110)]).any()
    assert not points_region(margin, [], [(100, 40)]).any()


def test_class_evidence_upsamples_one_class_to_the_original_size() -> None:
    fit = Fit.for_size(H, W, 64, 1024)  # 64 x 107 -> padded 64 x 128
    probs = torch.zeros(3, fit.padded_height, fit.padded_width)
    probs[1, : fit.resized_height, : fit.resized_width] = 0.7
    probs[0] = 0.2
    got = class_evidence(probs, 1, fit)
    assert got.shape == (H, W) and np.allclose(got, 0.7, atol=1e-5)
    assert np.allclose(class_evidence(probs, 1, fit, margin=True), 0.5, atol=1e-5)
    with pytest.raises(ValueError, match="class 3"):
        class_evidence(probs, 3, fit)


def test_refine_box_prefers_the_matching_detection_then_the_mask() -> None:
    rows = np.array([[78, 19, 131, 71, 0.9, 0], [0, 0, 10, 10, 0.95, 0], [78, 19, 131, 71, 0.99, 1]], np.float32)
    box, how = refine_box((75, 15, 135, 75), rows, 0)
    assert how == "detector" and np.allclose(box, (78, 19, 131, 71))
    box, how = refine_box((75, 15, 135, 75), rows[1:2], 0, _object(1))
    assert how == "mask" and np.allclose(box, OBJECTS[1])
    assert refine_box((1, 2, 3, 4), None, 0)[1] == "drawn"
    # a loose drawn box (IoU 0.49 with the object) still takes the detector's box inside it ...
    assert refine_box((70, 10, 140, 82), rows[:1], 0)[1] == "detector"
    # ... but not a detection that mostly sticks out of it
    assert refine_box((100, 19, 131, 71), rows[:1], 0, _object(1))[1] == "mask"


@pytest.mark.parametrize(("net_name", "key"), CASES)
def test_heads_on_the_trunk_equal_predict(net_name: str, key: str) -> None:
    torch.manual_seed(0)
    mods = MODALITY_SETS[key]
    assert choose_network(mods) == net_name
    net = build_network(net_name, mods, "tiny").eval()
    images = torch.stack([torch.from_numpy(s.image).permute(2, 0, 1).float() / 255 for s in _samples(mods, 2)])
    want = net.predict(images)
    got = net.heads(net.trunk(images), tuple(images.shape[-2:]))
    assert set(got) == set(want)
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-5), name


def test_feature_cache_is_bounded_in_bytes_and_entries() -> None:
    cache = FeatureCache(max_bytes=3 * 400, max_entries=2)
    t = [torch.zeros(100) for _ in range(4)]  # 400 bytes each
    cache.put("a", t[0])
    cache.put("b", t[1])
    assert cache.get("a") is t[0]  # a is now the most recent
    cache.put("c", t[2])  # two entries at most: b goes
    assert cache.get("b") is None and len(cache) == 2
    small = FeatureCache(max_bytes=700)
    small.put("a", t[0])
    small.put("b", t[1])  # 800 bytes > 700: a goes
    assert small.get("a") is None and small.get("b") is t[1] and small.bytes == 400
    small.put("big", torch.zeros(1000))  # larger than the bound: not kept
    assert small.get("big") is None
    value, hit = small.get_or_put("b", lambda: pytest.fail("computed"))
    assert hit and value is t[1]


def test_small_holes_are_filled_large_ones_kept() -> None:
    prob = _probs()[1]
    x0, y0, x1, y1 = OBJECTS[1]  # 50 x 50; the speckle size is 0.002 * 120 * 200 = 48 px
    prob[40:45, 100:105] = 0.1  # a 25 px hole: speckle
    prob[25:35, 85:95] = 0.1  # a 100 px hole: a real one
    for mask in (box_region(prob, (x0 - 2, y0 - 2, x1 + 2, y1 + 2)), points_region(prob - 0.45, [(120, 60)])):
        assert mask[40:45, 100:105].all()
        assert not mask[25:35, 85:95].any()
        assert mask.sum() == 50 * 50 - 100
