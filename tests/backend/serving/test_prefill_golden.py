"""The prefill's output did not change when its conversion was made faster (issue #27): ``Prefill.results``
on the fixed inputs of :mod:`tests.backend.serving.golden.make_prefill_golden` against the snapshot taken
before (same regions, ids, labels, RLE bytes, polygon points, boxes; scores to float rounding). Every
brush RLE is also decoded with ``label_studio_sdk``'s decoder and re-encoded with its encoder."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from tests.backend.serving.golden import make_prefill_golden as golden

SNAPSHOT: dict[str, list[dict[str, Any]]] = json.loads(golden.SNAPSHOT.read_text())
CASES = {case["name"]: case for case in golden.cases()}


def test_the_snapshot_covers_every_case() -> None:
    assert set(SNAPSHOT) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_results_equal_the_snapshot(name: str) -> None:
    got, want = golden.digest(golden.run(CASES[name])), SNAPSHOT[name]
    assert len(got) == len(want), [r["id"] for r in got]
    for g, w in zip(got, want, strict=True):
        score, want_score = g.pop("score", None), w.pop("score", None)
        assert score == (want_score if want_score is None else pytest.approx(want_score, rel=1e-9, abs=1e-12))
        assert g == w


@pytest.mark.parametrize("name", sorted(CASES))
def test_brush_rle_decodes_with_the_sdk_to_disjoint_masks(name: str) -> None:
    seen: dict[str, np.ndarray] = {}
    for r in golden.run(CASES[name]):
        if r["type"] != "brushlabels":
            continue
        h, w = r["original_height"], r["original_width"]
        rgba = decode_rle(bytes(r["value"]["rle"])).reshape(h, w, 4)
        mask = rgba[:, :, 3] > 0
        assert mask.any() and set(np.unique(rgba)) <= {0, 255}
        assert list(mask2rle(mask.astype(np.uint8) * 255)) == r["value"]["rle"]  # the SDK's own bytes
        taken = seen.setdefault(r["from_name"], np.zeros((h, w), bool))
        assert not (taken & mask).any(), "two classes of one tag claim a pixel"
        taken |= mask
