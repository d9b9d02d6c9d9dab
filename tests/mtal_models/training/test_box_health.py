"""Collapse detection: degenerate predicted boxes are counted while a det+seg network trains
(TrainResult.box_health, a warning) and in the detection metric (degenerate_share)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from mtal_models.data.sample import Sample
from mtal_models.metrics import box_collapse, build_metric, count_degenerate
from mtal_models.modalities import build_modalities
from mtal_models.nets.config import get_config
from mtal_models.nets.detseg import DetSegNet
from mtal_models.training import TrainConfig, evaluate, fit, make_loader

MODS = build_modalities([("boxes", "detection", 1), ("mask", "segmentation", 2)])
SIZE = 64


def samples(n: int, seed: int = 0) -> list[Sample]:
    """Dark images with one bright rectangle each: its box and its mask."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = rng.integers(20, 60, (SIZE, SIZE, 3), dtype=np.uint8)
        mask = np.zeros((SIZE, SIZE), np.int64)
        w, h = (int(v) for v in rng.integers(16, 30, 2))
        x, y = int(rng.integers(0, SIZE - w)), int(rng.integers(0, SIZE - h))
        image[y : y + h, x : x + w] = 220
        mask[y : y + h, x : x + w] = 1
        boxes = {"boxes": np.array([[x, y, x + w, y + h]], np.float32), "labels": np.zeros(1, np.int64)}
        out.append(Sample(f"r{i}", image, {"boxes": boxes, "mask": mask}, {"boxes": True, "mask": True}))
    return out


def make_net(collapsed: bool = False) -> DetSegNet:
    torch.manual_seed(0)
    net = DetSegNet(MODS, get_config("tiny", dropout=0.0), score_thresh=0.05)
    if collapsed:  # box distances pinned at ~0: what a dead ReLU did to the regression at lr 5e-3
        reg = net.fcos.head.regression_head.bbox_reg
        with torch.no_grad():
            reg.weight.zero_()
            reg.bias.fill_(-100.0)
        reg.requires_grad_(False)
    return net


def config() -> TrainConfig:
    return TrainConfig(epochs=2, batch_size=4, lr=5e-3, device="cpu")


def test_count_degenerate_skips_padding_and_flags_thin_boxes() -> None:
    dets = torch.zeros(1, 4, 7)
    dets[0, :, 5] = -1
    dets[0, 0, :6] = torch.tensor([10.0, 10.0, 30.0, 40.0, 0.9, 0.0])  # a real box
    dets[0, 1, :6] = torch.tensor([12.0, 12.0, 12.0, 12.0, 0.8, 0.0])  # zero size
    dets[0, 2, :6] = torch.tensor([5.0, 5.0, 25.0, 5.5, 0.7, 0.0])  # half a pixel high
    assert count_degenerate(dets) == (2, 3)
    assert box_collapse(2, 3)["collapsed"] and not box_collapse(1, 3)["collapsed"]
    assert not box_collapse(0, 0)["collapsed"] and np.isnan(box_collapse(0, 0)["degenerate_share"])
    metric = build_metric(MODS["boxes"])
    metric.update(dets, [{"boxes": dets[0, :1, :4], "labels": torch.zeros(1, dtype=torch.long)}], torch.tensor([True]))
    assert metric.compute()["degenerate_share"] == pytest.approx(2 / 3)


def test_healthy_training_reports_boxes_not_collapsed() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no collapse warning
        result = fit(make_net(), samples(8), config())
    health = result.box_health["boxes"]
    assert health["predicted"] > 0 and not health["collapsed"], health


def test_collapsed_regression_is_reported_and_warned() -> None:
    net = make_net(collapsed=True)
    data = samples(8)
    with pytest.warns(UserWarning, match="box regression of 'boxes' collapsed"):
        result = fit(net, data, config())
    health = result.box_health["boxes"]
    assert health["collapsed"] and health["degenerate"] == health["predicted"] > 0, health
    val = evaluate(net, make_loader(data, MODS, 4))
    assert val["boxes"]["degenerate_share"] == pytest.approx(1.0)
    assert val["boxes"]["map"] == pytest.approx(0.0)
