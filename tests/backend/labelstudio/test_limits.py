"""Memory-bomb limits (defect 3) of the region codecs and the annotation converter: every limit is checked
before the allocation it protects, and a violation names the limit. Allocation is measured with
tracemalloc (numpy reports its buffers to it). The same limits through the app: tests/backend/web/test_limits.py."""

from __future__ import annotations

import contextlib
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from backend.labelstudio.convert import MAX_REGIONS, annotation_to_labels
from backend.labelstudio.label_config import parse_label_config
from backend.labelstudio.regions import MAX_PIXELS, mask_to_rle, polygon_to_mask, rle_to_mask
from tests.backend.web.test_app_hardening import SEG


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
