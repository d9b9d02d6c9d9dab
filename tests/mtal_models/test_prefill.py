"""Prefill post-processing and edit-cost measures against answers worked out by hand."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from mtal_models.edit_cost import BoxPrefillMetric, choose_threshold, count_box_edits
from mtal_models.metrics import MetricSet
from mtal_models.modalities import ModalitySpec
from mtal_models.postprocess import PrefillConfig, remove_speckle, suppress_duplicates

DET = ModalitySpec("objects", "detection", 3)
SEG = ModalitySpec("semantic", "segmentation", 3)


def _rows(items: list[tuple[list[float], float, int]], pad: int = 0) -> torch.Tensor:
    """[(box, score, class)] -> detection rows [K, 6 + 3] (+ ``pad`` padding rows, class -1)."""
    rows = [[*b, s, c, 0.0, 0.0, 0.0] for b, s, c in items] + [[0, 0, 0, 0, 0, -1, 0, 0, 0]] * pad
    return torch.tensor(rows, dtype=torch.float32)


# The object: six overlapping rectangles of four classes (scores 0.39-0.45), and one clear box.
CLUTTER = _rows([
    ([10, 10, 30, 30], 0.45, 0),
    ([11, 10, 31, 30], 0.44, 1),
    ([10, 11, 30, 31], 0.42, 0),
    ([12, 12, 31, 31], 0.41, 2),
    ([10, 10, 29, 30], 0.40, 1),
    ([11, 11, 30, 30], 0.39, 0),
    ([50, 50, 70, 70], 0.80, 1),
], pad=2)


def test_cross_class_suppression_keeps_one_box_per_object_with_the_best_class() -> None:
    kept = suppress_duplicates(CLUTTER, iou=0.5)
    assert kept[:, 5].tolist() == [1, 0]  # the clear box (0.80), then the cluttered object's best class
    assert kept[:, 4].tolist() == pytest.approx([0.80, 0.45])
    assert kept[1, :4].tolist() == [10, 10, 30, 30]


def test_per_class_option_keeps_one_box_per_class_and_drops_padding() -> None:
    kept = suppress_duplicates(CLUTTER, iou=0.5, per_class=True)
    # per class: class 0 -> its 0.45 box, class 1 -> 0.80 (far) and 0.44, class 2 -> 0.41
    got = sorted((int(c), round(s, 4)) for c, s in zip(kept[:, 5].tolist(), kept[:, 4].tolist(), strict=True))
    assert got == [(0, 0.45), (1, 0.44), (1, 0.8), (2, 0.41)]
    assert (kept[:, 5] >= 0).all()


def test_box_edits_count_hits_duplicates_and_wrong_classes() -> None:
    gt_boxes = torch.tensor([[10.0, 10, 30, 30], [50, 50, 70, 70], [80, 0, 90, 10]])
    gt_labels = torch.tensor([0, 2, 1])
    shown = CLUTTER[:7]  # no suppression: 6 boxes on object 0, 1 (wrong class) on object 1, none on object 2
    c = count_box_edits(shown[:, :4], shown[:, 4], shown[:, 5], gt_boxes, gt_labels)
    # hits: object 0 by its 0.45 class-0 box; object 1's box has class 1, not 2 -> no hit
    assert (c.hits, c.shown, c.objects, c.duplicates) == (1, 7, 3, 5)
    s = c.summary()
    assert s["box_precision"] == pytest.approx(1 / 7)
    assert s["box_recall"] == pytest.approx(1 / 3)
    assert s["duplicates_per_object"] == pytest.approx(5 / 3)
    assert s["boxes_to_delete_per_image"] == 6 and s["boxes_to_draw_per_image"] == 2


def test_threshold_is_the_middle_of_the_best_f1_range() -> None:
    # two objects; hits score 0.9 and 0.6, false boxes 0.35 and 0.2 (elsewhere):
    # F1 = 4/6 for t <= 0.2, 4/5 for t <= 0.35, 1 for 0.35 < t <= 0.6, 2/3 above -> grid 0.40..0.60, middle 0.50
    rows = _rows([([0, 0, 10, 10], 0.9, 0), ([20, 20, 30, 30], 0.6, 1), ([40, 40, 50, 50], 0.35, 0),
                  ([60, 0, 70, 10], 0.2, 2)])
    gt = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), "labels": torch.tensor([0, 1])}
    assert choose_threshold([(rows, gt)]) == pytest.approx(0.5)


def test_threshold_pools_images_and_is_none_without_boxes() -> None:
    # image 1: a hit at 0.7; image 2: a false box at 0.5 and a hit at 0.15 -> F1 = 4/5 at t <= 0.15,
    # 2/3 at (0.15, 0.5], 2/3 at (0.5, 0.7], 0 above -> 0.05 .. 0.15, middle 0.10
    one = (_rows([([0, 0, 10, 10], 0.7, 0)]), {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([0])})
    two = (_rows([([0, 0, 10, 10], 0.5, 1), ([20, 0, 30, 10], 0.15, 2)]),
           {"boxes": torch.tensor([[20.0, 0, 30, 10]]), "labels": torch.tensor([2])})
    assert choose_threshold([one, two]) == pytest.approx(0.1)
    empty = (_rows([]).reshape(0, 9), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)})
    assert choose_threshold([empty]) is None
    miss = (_rows([([60, 60, 70, 70], 0.9, 0)]), one[1])  # boxes, but never a hit: F1 = 0 everywhere
    assert choose_threshold([miss]) == pytest.approx(0.5)


def test_box_metric_suppresses_then_measures_at_the_chosen_threshold() -> None:
    gt = [{"boxes": torch.tensor([[10.0, 10, 30, 30], [50, 50, 70, 70]]), "labels": torch.tensor([0, 1])}]
    m = BoxPrefillMetric(DET, PrefillConfig())
    m.update(CLUTTER[None], gt, torch.tensor([True]))
    res = m.compute()
    assert res["duplicates_per_object"] == 0 and res["box_precision"] == 1 and res["box_recall"] == 1
    assert 0.05 <= res["display_threshold"] <= 0.45
    before = BoxPrefillMetric(DET, PrefillConfig(per_class=True, threshold=0.3))
    before.update(CLUTTER[None], gt, torch.tensor([True]))
    # per class: object 0 keeps 3 boxes (classes 0, 1, 2) -> 2 extra over 2 objects
    assert before.compute()["duplicates_per_object"] == pytest.approx(2 / 2)


def test_speckle_is_repainted_with_the_surrounding_class() -> None:
    cls = np.zeros((20, 20), np.int32)
    cls[:, 10:] = 1
    cls[3, 3] = 2  # a 1-pixel speckle inside class 0
    cls[15, 15] = 0  # a 1-pixel hole inside class 1
    cls[5:7, 14] = 2  # 2 pixels inside class 1
    want = np.zeros((20, 20), np.int32)
    want[:, 10:] = 1
    assert (remove_speckle(cls, 0.01) == want).all()  # 0.01 * 400 = 4 pixels
    assert (remove_speckle(cls, 0.0) == cls).all()
    big = cls.copy()
    big[0:3, 0:3] = 2  # 9 pixels: kept
    assert (remove_speckle(big, 0.01)[0:3, 0:3] == 2).all()


def _speckle_by_definition(cls: np.ndarray, min_area: float) -> np.ndarray:
    """The docstring's rule written plainly over the whole map (the implementation before #32)."""
    min_px = math.ceil(min_area * cls.size)
    small = np.zeros(cls.shape, bool)
    for c in np.unique(cls):
        _, comp, stats, _ = cv2.connectedComponentsWithStats((cls == c).astype(np.uint8), connectivity=8)
        tiny = stats[:, cv2.CC_STAT_AREA] < min_px
        tiny[0] = False
        small |= tiny[comp]
    if not small.any() or small.all():
        return cls
    _, nearest = cv2.distanceTransformWithLabels(small.astype(np.uint8), cv2.DIST_L2, 5,
                                                 labelType=cv2.DIST_LABEL_PIXEL)
    lut = np.zeros(int(nearest.max()) + 1, cls.dtype)
    lut[nearest[~small]] = cls[~small]
    return lut[nearest]


@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
@pytest.mark.parametrize("noise", [0.0, 0.3, 1.0])
def test_speckle_removal_equals_its_definition(dtype: type, noise: float) -> None:
    """The cropped, per-component implementation gives the plain rule's map, pixel for pixel: blobs of 6
    classes, upsampled 3x (bilinear logits: slivers along the boundaries) with more or less noise."""
    gen = torch.Generator().manual_seed(int(noise * 10))
    coarse = torch.randn(1, 6, 5, 7, generator=gen)
    logits = torch.nn.functional.interpolate(coarse, size=(60, 84), mode="bicubic")[0] * 4
    logits = logits + noise * torch.randn(6, 60, 84, generator=gen)
    big = torch.nn.functional.interpolate(logits[None], size=(180, 252), mode="bilinear")[0]
    cls = big.argmax(0).numpy().astype(dtype)
    got, want = remove_speckle(cls, 0.002), _speckle_by_definition(cls, 0.002)
    assert got.dtype == cls.dtype and (got == want).all()
    assert not (got == cls).all() or noise == 0.0  # the noisy maps do have speckle
    local = np.zeros((100, 100), dtype)
    local[60:62, 70:71] = 3  # one 2-pixel speck: the search runs in its box only
    assert (remove_speckle(local, 0.001) == 0).all()


def _background_with_specks(dtype: type, seed: int) -> np.ndarray:
    """What an early network predicts (bench.serve's maps): background in one piece over most of the image,
    a few specks and blobs of other classes, one class rarer than the speckle size in all; for odd seeds
    a hole of background inside a blob."""
    rng = np.random.default_rng(seed)
    cls = np.zeros((120, 160), dtype)
    for c, (y, x) in zip([1, 2, 2, 3, 1, 2], rng.integers(5, 100, (6, 2)), strict=True):
        cls[y : y + rng.integers(1, 14), x : x + rng.integers(1, 14)] = c
    cls[60:80, 100:130] = 4
    if seed % 2:
        cls[65:67, 110:111] = 0  # a 2-pixel hole of the background: background in two pieces
    cls[rng.integers(0, 120, 9), rng.integers(0, 160, 9)] = 5  # 9 pixels of class 5 in all
    return cls


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
@pytest.mark.parametrize("seed", range(4))
def test_speckle_removal_shortcuts_equal_the_definition(dtype: type, seed: int) -> None:
    """The shortcuts (a class rarer than the speckle size is small as a whole; a dominant class in one
    piece needs no component statistics; a one-class map is returned as it is) and every histogram path
    (few ids, uint8, ids up to 4096, negative or large ids) give the plain rule's map."""
    cls = _background_with_specks(dtype, seed)
    for m, area in ((cls, 0.002), (cls, 0.02), (np.where(cls == 0, 0, cls + 9).astype(dtype), 0.002)):
        got, want = remove_speckle(m, area), _speckle_by_definition(m, area)
        assert got.dtype == m.dtype and (got == want).all()
        assert not (got == m).all()
    if np.dtype(dtype).kind == "i":
        for shift in (-3, 5000):  # np.unique's path
            m = cls.astype(dtype) + shift
            assert (remove_speckle(m, 0.002) == _speckle_by_definition(m, 0.002)).all()
    hole = cls.copy()
    hole[:] = 0
    hole[65:67, 110:111] = 4  # the background is the only class of size: everything else goes
    assert (remove_speckle(hole, 0.002) == 0).all()
    one = np.full((30, 40), 3, dtype)
    assert remove_speckle(one, 0.01) is one


@pytest.mark.parametrize("seed", range(6))
def test_speckle_removal_is_idempotent(seed: int) -> None:
    """A cleaned map has nothing left to clean (the prefill relies on it: a photo at the network's size is
    cleaned once): blob maps with noise, and pure noise of 12 classes (the worst case)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 6, 6, 8, generator=gen)
    logits = torch.nn.functional.interpolate(coarse, size=(96, 128), mode="bicubic")[0] * 4
    cls = (logits + seed * 0.3 * torch.randn(6, 96, 128, generator=gen)).argmax(0).numpy().astype(np.int32)
    noise = torch.randint(0, 12, (64, 80), generator=gen).numpy().astype(np.int32)
    for m, area in ((cls, 0.002), (cls, 0.01), (noise, 0.002)):
        once = remove_speckle(m, area)
        assert (remove_speckle(once, area) == once).all()


def test_mask_edit_share_counts_wrong_labelled_pixels_after_speckle_removal() -> None:
    target = torch.zeros(1, 10, 10, dtype=torch.long)
    target[0, :, 5:] = 1
    target[0, 0, :] = 255  # not labelled
    pred_cls = target.clamp_max(1).clone()
    pred_cls[0, 5, 2] = 2  # a speckle: removed, costs nothing
    pred_cls[0, 6:, 5:7] = 2  # a 4x2 block of the wrong class: 8 pixels to repaint
    logits = torch.nn.functional.one_hot(pred_cls, 3).permute(0, 3, 1, 2).float()
    ms = MetricSet({"semantic": SEG}, prefill=PrefillConfig(min_area=0.05))
    ms.update({"semantic": logits}, {"semantic": target}, {"semantic": torch.tensor([True])})
    res = ms.compute()["semantic"]
    assert res["mask_edit_share"] == pytest.approx(8 / 90)
    assert "miou" in res  # next to the usual metrics


def test_metric_set_reports_nan_when_nothing_present() -> None:
    ms = MetricSet({"objects": DET})
    res = ms.compute()["objects"]
    assert math.isnan(res["box_precision"]) and math.isnan(res["display_threshold"])


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="min_area"):
        PrefillConfig(min_area=1.5)
    with pytest.raises(ValueError, match="threshold"):
        PrefillConfig(threshold=2)
