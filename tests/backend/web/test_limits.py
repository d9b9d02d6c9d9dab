"""Memory-bomb limits (defect 3) through the Flask app: a bomb annotation costs only its task's prediction,
and too many tasks, an oversized labeling config or too many event items are a 4xx naming the limit. The
limits of the region codecs themselves: tests/backend/labelstudio/test_limits.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.labelstudio.label_config import LabelConfigError, parse_label_config
from backend.loop.events import MAX_EVENT_ITEMS
from tests.backend.labelstudio.test_images import Server
from tests.backend.labelstudio.test_limits import _brush, bomb_rle
from tests.backend.web.test_app_hardening import SEG, _app, _settings, canary  # noqa: F401 (fixture)


def test_predict_with_a_bomb_annotation_answers_per_task(tmp_path: Path, canary: Server) -> None:  # noqa: F811
    app, _ = _app(_settings(tmp_path, label_studio_url=canary.url))
    task = {"id": 1, "data": {"image": "/data/upload/1/a.png"},
            "annotations": [{"id": 1, "result": [_brush(100_000, 100_000, bomb_rle(8000))]}]}
    r = app.test_client().post("/predict", json={"project": "3", "label_config": SEG, "tasks": [task]})
    assert r.status_code == 200 and len(r.get_json()["results"]) == 1


def test_more_tasks_than_the_limit_answer_every_task(tmp_path: Path) -> None:
    """Over MTAL_MAX_PREDICT_TASKS: one item per task (Label Studio maps them by position), the tasks over the
    limit ``[]`` (left to the background push: tests/backend/web/test_predict_batch.py), never a 413."""
    app, _ = _app(_settings(tmp_path, max_predict_tasks=5))
    tasks = [{"id": i, "data": {"image": "/x.png"}} for i in range(6)]
    r = app.test_client().post("/predict", json={"project": "3", "label_config": SEG, "tasks": tasks})
    assert r.status_code == 200
    results = r.get_json()["results"]
    assert len(results) == 6 and all(isinstance(p, dict) for p in results[:5]) and results[5] == []


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
