"""Non-finite values in float dense maps from task data (depth, normals) never reach training: the pixels
are masked as invalid (0) with a logged reason, a map without any finite value is dropped, and the
training losses of the prepared samples stay finite."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from backend.labelstudio.label_config import parse_label_config
from backend.labelstudio.tasks import prepare_tasks
from mtal_models.data.sample import collate

CONFIG = ('<View><Image name="image" value="$image"/>'
          '<BrushLabels name="semantic" toName="image"><Label value="road"/></BrushLabels></View>')
SIZE = 32


class ArrayFetcher:
    """Images are grey 32x32; dense maps come from ``arrays`` by URL."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    def fetch_image(self, url: str, task_id: Any = None) -> np.ndarray:
        return np.full((SIZE, SIZE, 3), 128, np.uint8)

    def fetch_array(self, url: str, task_id: Any = None) -> np.ndarray:
        return self.arrays[url]


def _prepare(depth: np.ndarray, normals: np.ndarray) -> list:
    schema = parse_label_config(CONFIG, dense_fields={"depth": "depth", "normals": "nrm"})
    ctx = SimpleNamespace(fetcher=ArrayFetcher({"d.npy": depth, "n.npy": normals}))
    task = {"id": 5, "data": {"image": "/img.png", "depth": "d.npy", "nrm": "n.npy"}}
    return prepare_tasks(ctx, [task], schema, SIZE), schema


def _losses(prepared: list, schema: Any) -> dict[str, float]:
    batch = collate([p.sample for _, p in prepared], schema.modalities)
    out = {}
    for name, spec in schema.modalities.items():
        present = batch.labels.is_present(name, 1)
        if spec.kind in ("depth", "normals") and present.any():
            pred = torch.zeros((1, spec.channels, SIZE, SIZE)) + 0.5
            out[name] = float(spec.loss(pred, batch.labels.values[name], present).sum())
    return out


def test_nan_and_inf_pixels_are_masked_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    depth = np.full((SIZE, SIZE), 2.0, np.float32)
    depth[0, :4] = [np.nan, np.inf, -np.inf, np.nan]
    normals = np.zeros((SIZE, SIZE, 3), np.float32)
    normals[..., 2] = 1.0
    normals[5, 5, 0] = np.nan  # one bad component invalidates the whole vector
    with caplog.at_level(logging.WARNING):
        prepared, schema = _prepare(depth, normals)
    (_, p), = prepared
    d, n = p.sample.labels["depth"], p.sample.labels["normals"]
    assert np.isfinite(d).all() and np.isfinite(n).all()
    assert (d[0, :4] == 0).all() and (d[1:] == 2.0).all()  # masked as invalid, the rest untouched
    assert (n[5, 5] == 0).all() and (n[4, 4] == [0, 0, 1]).all()
    assert {"depth", "normals"} <= p.labelled
    assert "4 non-finite pixels" in caplog.text and "task 5: normals map: 1 non-finite" in caplog.text
    losses = _losses(prepared, schema)
    assert set(losses) >= {"depth", "normals"} and all(np.isfinite(v) for v in losses.values()), losses


def test_all_nan_map_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    normals = np.zeros((SIZE, SIZE, 3), np.float32)
    normals[..., 2] = 1.0
    with caplog.at_level(logging.WARNING):
        prepared, _ = _prepare(np.full((SIZE, SIZE), np.nan, np.float32), normals)
    (_, p), = prepared
    assert "depth" not in p.sample.labels and not p.sample.is_present("depth") and "depth" not in p.labelled
    assert "normals" in p.labelled
    assert "depth map dropped: no finite value" in caplog.text
