"""Hostile requests that used to change what the backend holds (issue #27), through the Flask app:

- a webhook whose ``annotation.result`` is not a list (``{}``, a string): a 400 naming the field, and
  nothing counted (``{}`` was taken for "no labels" and answered 200);
- a /predict whose labeling config differs from the stored one never switches the project's CURRENT
  version (it did while the current version was untrained): its predictions come from the initial
  network /setup would publish for that config, held in memory;
- /predict for project ids /setup never saw stores nothing (every one published a version on disk), and
  the in-memory networks are bounded (``MTAL_UNPUBLISHED_MODELS``), as are the projects /setup may
  create (``MTAL_MAX_PROJECTS``);
- Redis refusing connections: START_TRAINING is a 503 with Retry-After, not a 500.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask

from backend.loop.trainer import QueueTrainer
from backend.serving.store import ModelStore
from backend.web.app import create_app
from tests.backend.labelstudio.test_images import Server, _png
from tests.backend.loop.test_trainer import annotation_event
from tests.backend.serving.test_model_versions import A, B
from tests.backend.web.test_app_hardening import _app, _settings

TASKS = [{"id": 1, "data": {"image": "/data/upload/1/a.png"}}, {"id": 2, "data": {"image": "/data/upload/1/b.png"}}]
C = A.replace('<Label value="road"/>', '<Label value="sky"/>')


@pytest.fixture
def ls() -> Iterator[Server]:
    server = Server("127.0.0.1")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        server.routes[f"/data/upload/1/{name}.png"] = (200, {}, _png(rng.integers(0, 256, (40, 56, 3), np.uint8)))
    yield server
    server.close()


def _client(tmp_path: Path, ls: Server, **kw: Any) -> tuple[Any, ModelStore, Flask]:
    app, _ = _app(_settings(tmp_path, label_studio_url=ls.url, label_studio_api_key="k", **kw))
    return app.test_client(), app.extensions["mtal"].store, app


def _predict(client: Any, project: str, config: str | None) -> Any:
    body: dict[str, Any] = {"project": project, "tasks": TASKS}
    if config is not None:
        body["label_config"] = config
    return client.post("/predict", json=body)


# ---- webhook: annotation.result must be a list ---------------------------------------------------------
@pytest.mark.parametrize("bad", [{}, "x", 5, True])
def test_webhook_result_not_a_list_is_a_400_naming_the_field_and_counts_nothing(tmp_path: Path, bad: Any) -> None:
    app, conn = _app(_settings(tmp_path))
    client = app.test_client()
    event = annotation_event(7, ["semantic"])
    event["annotation"]["result"] = bad
    r = client.post("/webhook", json=event)
    assert r.status_code == 400 and "annotation.result" in r.get_json()["message"], r.get_json()
    bulk = annotation_event(7, ["semantic"])
    bulk["action"] = "ANNOTATIONS_CREATED"
    bulk["annotation"] = [annotation_event(7, ["semantic"])["annotation"], {"id": 2, "result": bad}]
    r = client.post("/webhook", json=bulk)
    assert r.status_code == 400 and "annotation[1].result" in r.get_json()["message"], r.get_json()
    assert conn.hgetall("mtal:project:7:counts") == {}
    good = client.post("/webhook", json=annotation_event(7, ["semantic"])).get_json()["result"]
    assert good["status"] in ("counted", "enqueued") and good["counted"] == ["semantic"]


def test_webhook_modalities_choices_not_a_list_is_a_400(tmp_path: Path) -> None:
    app, conn = _app(_settings(tmp_path))
    event = annotation_event(7, ["semantic"])
    event["annotation"]["result"][-1]["value"]["choices"] = {"semantic": True}
    r = app.test_client().post("/webhook", json=event)
    assert r.status_code == 400 and "value.choices" in r.get_json()["message"]
    assert conn.hgetall("mtal:project:7:counts") == {}


# ---- /predict never publishes nor switches ---------------------------------------------------------------
def test_predict_with_another_config_never_switches_current(tmp_path: Path, ls: Server) -> None:
    client, store, _ = _client(tmp_path, ls)
    v1 = client.post("/setup", json={"project": "3", "schema": A}).get_json()["model_version"]
    r = _predict(client, "3", B)
    assert r.status_code == 200 and len(r.get_json()["results"]) == 2
    version = r.get_json()["model_version"]
    assert version.startswith("mtal-3-unpublished-") and all(p["model_version"] == version
                                                                for p in r.get_json()["results"])
    assert all(p["result"] for p in r.get_json()["results"])
    assert store.current("3") == v1 and [m["version"] for m in store.list_versions("3")] == [v1]
    assert _predict(client, "3", None).get_json()["model_version"] == v1  # the stored config: still v1


def test_predict_for_unknown_projects_stores_nothing(tmp_path: Path, ls: Server) -> None:
    client, store, _ = _client(tmp_path, ls)
    for i in range(20):
        r = _predict(client, f"u{i}", A)
        assert r.status_code == 200 and r.get_json()["model_version"].startswith(f"mtal-u{i}-unpublished-")
    assert store.projects() == []
    assert not (tmp_path / "models").exists() or list((tmp_path / "models").iterdir()) == []
    assert _predict(client, "u1", None).status_code == 400  # no config given and none stored: as before


def test_unpublished_networks_are_bounded(tmp_path: Path, ls: Server) -> None:
    client, _, app = _client(tmp_path, ls, unpublished_models=2)
    for config in (A, B, C, A):  # three configs through an LRU of two
        assert _predict(client, "u0", config).status_code == 200
    assert len(app.extensions["mtal"].unpublished) == 2


def test_unpublished_predictions_equal_those_of_the_version_setup_publishes(tmp_path: Path, ls: Server) -> None:
    """Known answer: the in-memory initial network is the one /setup publishes (same seed, same weights)."""
    client, _, _ = _client(tmp_path, ls)
    before = _predict(client, "9", A).get_json()["results"]
    version = client.post("/setup", json={"project": "9", "schema": A}).get_json()["model_version"]
    after = _predict(client, "9", A).get_json()["results"]
    assert [p["model_version"] for p in after] == [version, version]
    assert [(p["result"], p["score"]) for p in before] == [(p["result"], p["score"]) for p in after]


def test_setup_beyond_max_projects_is_a_409(tmp_path: Path, ls: Server) -> None:
    client, store, _ = _client(tmp_path, ls, max_projects=2)
    for p in ("1", "2"):
        assert client.post("/setup", json={"project": p, "schema": A}).status_code == 200
    r = client.post("/setup", json={"project": "3", "schema": A})
    assert r.status_code == 409 and "MTAL_MAX_PROJECTS" in r.get_json()["message"]
    assert client.post("/setup", json={"project": "2", "schema": B}).status_code == 200  # a known one may change
    assert store.projects() == ["1", "2"]


# ---- Redis refusing connections ------------------------------------------------------------------------
def test_start_training_with_redis_refusing_is_a_503_with_retry_after(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    settings = _settings(tmp_path, redis_url=f"redis://127.0.0.1:{port}/0")
    store = ModelStore(settings.model_dir)
    client = create_app(settings, store=store, trainer=QueueTrainer(settings, store)).test_client()
    r = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}})
    assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0, (r.status_code, r.get_data())
    assert "Redis" in r.get_json()["message"]
    health = client.get("/health").get_json()
    assert health["status"] == "UP" and health["queue"]["available"] is False
    assert client.get("/status?project=3").status_code == 503
