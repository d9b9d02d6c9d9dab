"""Memory-bomb limits (defect 3): every limit is checked before the allocation it protects, and a
violation is a 4xx or a per-task result naming the limit. Allocation is measured with tracemalloc
(numpy reports its buffers to it)."""

from __future__ import annotations

import contextlib
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backend.convert import MAX_REGIONS, annotation_to_labels
from backend.events import MAX_EVENT_ITEMS
from backend.geometry import MAX_PIXELS, mask_to_rle, polygon_to_mask, rle_to_mask
from backend.labeling import LabelConfigError, parse_label_config
from tests.backend.test_hardening_app import SEG, _app, _settings, canary  # noqa: F401 (fixture)
from tests.backend.test_images import Server


def bomb_rle(tokens: int, claimed: int = 0xFFFFFFFF) -> list[int]:
    """An RLE whose header claims ``claimed`` values, followed by ``tokens`` runs of 65536 bytes each:
    the SDK's decoder allocates ``claimed`` bytes and writes 64 KiB per 27 bits of input."""
    bits = f"{claimed:032b}" + "00111" + "0001" + "0010" + "0110" + "1111"
    bits += ("1" + "11" + "1" * 16 + "11111111") * tokens
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)]


def peak_bytes(fn: Callable[[], Any]) -> int:
    tracemalloc.start()
    with contextlib.suppress(ValueError):
        fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def test_rle_header_checked_before_the_sdk_allocates() -> None:
    rle = bomb_rle(2000)  # 6.8 KB of RLE that would write 131 MB into a 4 GiB buffer
    with pytest.raises(ValueError, match="header"):
        rle_to_mask(rle, 48, 64)
    assert peak_bytes(lambda: rle_to_mask(rle, 48, 64)) < 5_000_000


def test_region_size_limit_before_decoding() -> None:
    side = int(MAX_PIXELS**0.5) + 10
    with pytest.raises(ValueError, match="exceeds the limit"):
        rle_to_mask(bomb_rle(10, claimed=side * side * 4), side, side)
    with pytest.raises(ValueError, match="exceeds the limit"):
        polygon_to_mask([[0, 0], [100, 0], [100, 100]], side, side)
    assert peak_bytes(lambda: polygon_to_mask([[0, 0], [100, 0], [100, 100]], side, side)) < 1_000_000


def test_rle_still_decodes_real_masks() -> None:
    mask = np.random.default_rng(0).random((48, 64)) > 0.5
    np.testing.assert_array_equal(rle_to_mask(mask_to_rle(mask), 48, 64), mask)
    assert rle_to_mask(mask_to_rle(mask), 64, 48).shape == (64, 48)  # the count matches: decodes
    with pytest.raises(ValueError, match="header"):
        rle_to_mask(mask_to_rle(mask), 48, 65)


def _brush(oh: int, ow: int, rle: list[int]) -> dict[str, Any]:
    return {"from_name": "semantic", "to_name": "image", "type": "brushlabels", "original_width": ow,
            "original_height": oh, "value": {"format": "rle", "rle": rle, "brushlabels": ["road"]}}


def test_annotation_bombs_cost_no_memory() -> None:
    schema = parse_label_config(SEG)
    bombs = [
        [_brush(100_000, 100_000, bomb_rle(8000))],  # the 276 KB / 1.3 GB case, scaled
        [_brush(48, 64, bomb_rle(8000))],
        [_brush(48, 64, [1, 2, 3])] * (MAX_REGIONS + 1),
    ]
    for result in bombs:
        assert peak_bytes(lambda r=result: annotation_to_labels(r, schema, 48, 64)) < 10_000_000


def test_too_many_regions_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=f"at most {MAX_REGIONS}"):
        annotation_to_labels([_brush(48, 64, [0])] * (MAX_REGIONS + 1), parse_label_config(SEG), 48, 64)


def test_predict_with_a_bomb_annotation_answers_per_task(tmp_path: Path, canary: Server) -> None:  # noqa: F811
    app, _ = _app(_settings(tmp_path, label_studio_url=canary.url))
    task = {"id": 1, "data": {"image": "/data/upload/1/a.png"},
            "annotations": [{"id": 1, "result": [_brush(100_000, 100_000, bomb_rle(8000))]}]}
    r = app.test_client().post("/predict", json={"project": "3", "label_config": SEG, "tasks": [task]})
    assert r.status_code == 200 and len(r.get_json()["results"]) == 1


def test_too_many_tasks_is_a_413(tmp_path: Path) -> None:
    app, _ = _app(_settings(tmp_path, max_predict_tasks=5))
    tasks = [{"id": i, "data": {"image": "/x.png"}} for i in range(6)]
    r = app.test_client().post("/predict", json={"project": "3", "label_config": SEG, "tasks": tasks})
    assert r.status_code == 413 and "MTAL_MAX_PREDICT_TASKS" in r.get_json()["message"]


@pytest.mark.parametrize("config", [
    '<View><Image name="image" value="$image"/><BrushLabels name="s" toName="image">'
    + "".join(f'<Label value="l{i}"/>' for i in range(1001)) + "</BrushLabels></View>",
    "<View><Image name=\"image\" value=\"$image\"/>" + "".join(
        f'<BrushLabels name="s{i}" toName="image"><Label value="a"/></BrushLabels>' for i in range(33)) + "</View>",
    '<!DOCTYPE v [<!ENTITY a "aaaaaaaaaa">]><View><Image name="image" value="$image"/>'
    '<BrushLabels name="s" toName="image"><Label value="&a;"/></BrushLabels></View>',
    '<?xml version="1.0"?><!doctype View SYSTEM "file:///etc/passwd"><View/>',
    "<View>" + " " * 1_000_001 + "</View>",
])
def test_label_config_limits(tmp_path: Path, config: str) -> None:
    with pytest.raises(LabelConfigError):
        parse_label_config(config)
    app, _ = _app(_settings(tmp_path))
    r = app.test_client().post("/setup", json={"project": "3", "schema": config})
    assert r.status_code == 400 and r.is_json


def test_deleted_ids_and_bulk_annotations_limited(tmp_path: Path) -> None:
    app, conn = _app(_settings(tmp_path))
    client = app.test_client()
    r = client.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "project": {"id": 3},
                                      "annotations": [{"id": i} for i in range(MAX_EVENT_ITEMS + 1)]})
    assert r.status_code == 400 and str(MAX_EVENT_ITEMS) in r.get_json()["message"]
    r = client.post("/webhook", json={"action": "ANNOTATIONS_CREATED", "project": {"id": 3, "label_config": SEG},
                                      "annotation": [{"result": []}] * (MAX_EVENT_ITEMS + 1)})
    assert r.status_code == 400 and str(MAX_EVENT_ITEMS) in r.get_json()["message"]
    assert not conn.keys("mtal:project:3*")
