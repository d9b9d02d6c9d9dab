"""Metrics against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from mtal_models.metrics import MetricSet, build_metric, mdsq
from mtal_models.modalities import ModalitySpec

SEG = ModalitySpec("sem", "segmentation", 2)
DEPTH = ModalitySpec("depth", "depth", 1)
NORMALS = ModalitySpec("normals", "normals", 3)
EDGE = ModalitySpec("edge", "binary", 1, metric="odsf")
MASK = ModalitySpec("fg", "binary", 1)
DET = ModalitySpec("boxes", "detection", 2)


def _logits_from_classes(classes: torch.Tensor, n: int) -> torch.Tensor:
    """int [B, H, W] -> one-hot logits [B, n, H, W]."""
    return torch.nn.functional.one_hot(classes, n).permute(0, 3, 1, 2).float() * 5


def test_miou_two_by_two_table() -> None:
    # target  [[0, 0], [1, 1]], prediction [[0, 1], [1, 1]]:
    # class 0: tp 1, union 2 -> 0.5; class 1: tp 2, union 3 -> 2/3; mIoU = 7/12
    target = torch.tensor([[[0, 0], [1, 1]]])
    pred = _logits_from_classes(torch.tensor([[[0, 1], [1, 1]]]), 2)
    m = build_metric(SEG)
    m.update(pred, target, torch.tensor([True]))
    res = m.compute()
    assert res["miou"] == pytest.approx(7 / 12)
    assert res["pixel_acc"] == pytest.approx(3 / 4)
    assert res["class_iou"] == pytest.approx([0.5, 2 / 3])


def test_class_iou_is_none_for_a_class_seen_nowhere() -> None:
    target = torch.tensor([[[0, 0], [2, 2]]])
    pred = _logits_from_classes(torch.tensor([[[0, 0], [2, 0]]]), 3)
    m = build_metric(ModalitySpec("seg3", "segmentation", 3))
    m.update(pred, target, torch.tensor([True]))
    res = m.compute()
    # class 0: tp 2, union 3; class 1 nowhere; class 2: tp 1, union 2
    assert res["class_iou"][0] == pytest.approx(2 / 3) and res["class_iou"][1] is None
    assert res["class_iou"][2] == pytest.approx(0.5)
    assert res["miou"] == pytest.approx((2 / 3 + 0.5) / 2)


def test_miou_ignores_ignore_index_and_absent_samples() -> None:
    target = torch.tensor([[[0, 255], [1, 1]], [[1, 1], [1, 1]]])
    pred = _logits_from_classes(torch.tensor([[[0, 0], [1, 1]], [[0, 0], [0, 0]]]), 2)
    m = build_metric(SEG)
    m.update(pred, target, torch.tensor([True, False]))  # second sample is wrong everywhere but absent
    assert m.compute()["miou"] == pytest.approx(1.0)


def test_rmse_of_constant_offset() -> None:
    target = torch.full((2, 1, 4, 4), 2.0)
    target[0, 0, 0, 0] = 0.0  # invalid pixel: its error (huge) must not count
    pred = target + 0.5
    pred[0, 0, 0, 0] = 100.0
    m = build_metric(DEPTH)
    m.update(pred, target, torch.tensor([True, True]))
    res = m.compute()
    assert res["rmse"] == pytest.approx(0.5)
    assert res["abs_err"] == pytest.approx(0.5)


def test_normals_ninety_degrees() -> None:
    target = torch.zeros(1, 3, 3, 3)
    target[:, 2] = 1.0  # all pointing at the camera
    pred = torch.zeros(1, 3, 3, 3)
    pred[:, 0] = 2.0  # pointing right (not unit length: normalised by the metric)
    m = build_metric(NORMALS)
    m.update(pred, target, torch.tensor([True]))
    assert m.compute()["mean_angle"] == pytest.approx(90.0)


def _edge_target() -> torch.Tensor:
    t = torch.zeros(1, 1, 8, 8)
    t[:, :, 3, :] = 1.0
    return t


def test_odsf_perfect_and_empty() -> None:
    target = _edge_target()
    perfect = (target * 2 - 1) * 10  # logits: +10 on edges, -10 elsewhere
    m = build_metric(EDGE)
    m.update(perfect, target, torch.tensor([True]))
    assert m.compute()["odsf"] == pytest.approx(1.0)
    m = build_metric(EDGE)
    m.update(torch.full_like(target, -20.0), target, torch.tensor([True]))
    assert m.compute()["odsf"] == pytest.approx(0.0)


def test_odsf_tolerance_accepts_one_pixel_shift() -> None:
    target = _edge_target()
    shifted = torch.roll(target, 1, dims=2) * 20 - 10
    strict = build_metric(EDGE)
    strict.update(shifted, target, torch.tensor([True]))
    loose = build_metric(EDGE, tolerance=1)
    loose.update(shifted, target, torch.tensor([True]))
    assert strict.compute()["odsf"] == pytest.approx(0.0)
    assert loose.compute()["odsf"] == pytest.approx(1.0)


def test_binary_f1_iou() -> None:
    target = torch.tensor([[[[1.0, 1.0], [0.0, 255.0]]]])
    pred = torch.tensor([[[[5.0, -5.0], [5.0, 5.0]]]])  # tp 1, fn 1, fp 1 (the 255 pixel is ignored)
    m = build_metric(MASK)
    m.update(pred, target, torch.tensor([True]))
    res = m.compute()
    assert res["f1"] == pytest.approx(0.5)
    assert res["iou"] == pytest.approx(1 / 3)


def test_map_of_perfect_detection_is_one() -> None:
    boxes = torch.tensor([[4.0, 4.0, 20.0, 24.0], [30.0, 10.0, 50.0, 40.0]])
    labels = torch.tensor([0, 1])
    dets = torch.zeros(1, 5, 8)
    dets[0, :, 5] = -1  # padding rows
    dets[0, :2, :4] = boxes
    dets[0, :2, 4] = 0.9
    dets[0, :2, 5] = labels.float()
    dets[0, 0, 6], dets[0, 1, 7] = 1.0, 1.0
    m = build_metric(DET)
    m.update(dets, [{"boxes": boxes, "labels": labels}], torch.tensor([True]))
    res = m.compute()
    assert res["map"] == pytest.approx(1.0)
    assert res["map_50"] == pytest.approx(1.0)


def test_metric_set_loss_and_empty_modality() -> None:
    ms = MetricSet({"depth": DEPTH, "sem": SEG})
    pred = {"depth": torch.ones(2, 1, 2, 2), "sem": torch.zeros(2, 2, 2, 2)}
    values = {"depth": torch.full((2, 1, 2, 2), 2.0), "sem": torch.zeros(2, 2, 2, dtype=torch.long)}
    present = {"depth": torch.tensor([True, False]), "sem": torch.tensor([False, False])}
    ms.update(pred, values, present, loss=1.0, n=2)
    ms.update(pred, values, present, loss=4.0, n=1)
    res = ms.compute()
    assert res["depth"]["rmse"] == pytest.approx(1.0)
    assert math.isnan(res["sem"]["miou"])
    assert res["multi_task_loss"] == pytest.approx(2.0)


def test_bad_input_names_modality() -> None:
    m = build_metric(SEG)
    with pytest.raises(ValueError, match="sem"):
        m.update(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([True]))


def test_mdsq() -> None:
    assert mdsq(0.3, 0.4, 0.6, 0.8) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mdsq(0.3, 0.4, 0.0, 0.8)


def test_mdsq_score_only_for_det_seg_sets() -> None:
    from mtal_models.metrics import mdsq_score
    from mtal_models.modalities import build_modalities

    detseg = build_modalities([("sem", "segmentation", 3), ("boxes", "detection", 2)])
    metrics = {"sem": {"miou": 0.4}, "boxes": {"map": 0.3}}
    reference = {"sem": {"miou": 0.8}, "boxes": {"map": 0.6}}
    assert mdsq_score(metrics, reference, detseg) == pytest.approx(0.5)
    assert math.isnan(mdsq_score(metrics, {"sem": {"miou": 0.8}, "boxes": {"map": 0.0}}, detseg))
    assert mdsq_score(metrics, reference, build_modalities([("sem", "segmentation", 3)])) is None
