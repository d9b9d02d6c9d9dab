"""A ground-truth region survives annotation -> network size -> Label Studio result (the image geometry
on the product's path), on a generated 1000x333 image: brush, polygon and rectangle regions."""

from __future__ import annotations

import numpy as np
import pytest

from backend.labelstudio.label_config import parse_label_config
from bench.round_trip import (
    BOXES,
    POLYGON_BAR,
    box_iou_min,
    generated_labels,
    label_config,
    main,
    miou,
    regions,
    round_trip,
)
from mtal_models.data.geometry import Fit


def _fit(h: int, w: int) -> Fit:
    return Fit.for_size(h, w, 384, 1024)


@pytest.mark.parametrize(("tag", "bar"), [("BrushLabels", 6), ("PolygonLabels", POLYGON_BAR)])
def test_masks_keep_099_miou(tag: str, bar: int) -> None:
    cls = generated_labels(333, 1000, bar=bar)
    schema = parse_label_config(label_config(tag, ["a", "b", "c"]))
    truth, back = round_trip(regions(cls, schema), schema, 333, 1000, _fit)
    assert truth.shape == back.shape == (333, 1000)
    assert miou([(truth, cls)], 4) > 0.98  # the regions drew the generated map
    assert miou([(truth, back)], 4) >= 0.99


def test_old_square_nearest_path_would_fail() -> None:
    """The same check fails for the former geometry (squashed to 256x256, argmax, nearest back)."""
    import cv2

    cls = generated_labels(333, 1000)
    small = cv2.resize(cls.astype(np.uint8), (256, 256), interpolation=cv2.INTER_NEAREST)
    back = cv2.resize(small, (1000, 333), interpolation=cv2.INTER_NEAREST)
    assert miou([(cls, back.astype(np.int64))], 4) < 0.99


def test_rectangles_map_back_exactly() -> None:
    schema = parse_label_config(label_config("RectangleLabels", ["a", "b"]))
    rects = [{"from_name": "t", "to_name": "image", "type": "rectanglelabels", "original_width": 1000,
              "original_height": 333, "value": {"x": x, "y": y, "width": bw, "height": bh, "rectanglelabels": [lab]}}
             for x, y, bw, bh, lab in BOXES]
    truth, back = round_trip(rects, schema, 333, 1000, _fit)
    assert len(back["boxes"]) == len(BOXES)
    assert back["labels"].tolist() == truth["labels"].tolist()
    assert box_iou_min(truth["boxes"], back["boxes"]) >= 0.999


def test_bench_runs_the_generated_case_without_camvid(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--data-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "skipped, no CamVid" in out
    assert "METRIC round_trip_miou_generated=" in out and "METRIC round_trip_box_iou_generated=" in out
