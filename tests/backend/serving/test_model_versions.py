"""/predict with another labeling config (defect 4): a trained model is never replaced implicitly (409
naming the way out), and alternating configs publishes nothing (only /setup does: issue #27); /setup
switching configs reuses the versions built for each."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient

from backend.serving.store import ModelStore
from tests.backend.labelstudio.test_images import Server, _png
from tests.backend.web.test_app_hardening import _app, _settings

A = """<View><Image name="image" value="$image"/>
<BrushLabels name="semantic" toName="image"><Label value="road"/></BrushLabels></View>"""
B = A.replace('<Label value="road"/>', '<Label value="road"/><Label value="car"/>')
TASKS = [{"id": 1, "data": {"image": "/data/upload/1/a.png"}}]


@pytest.fixture
def client_store(tmp_path: Path) -> Any:
    ls = Server("127.0.0.1")
    ls.routes["/data/upload/1/a.png"] = (200, {}, _png(np.zeros((8, 8, 3), np.uint8)))
    app, _ = _app(_settings(tmp_path, label_studio_url=ls.url, label_studio_api_key="k"))
    yield app.test_client(), ModelStore(tmp_path / "models")
    ls.close()


def _train(store: ModelStore, project: str) -> str:
    """Publish a 'trained' version as the RQ worker does (same weights; metadata says trained)."""
    tmp = store.tmp_dir(project) / "trained.pt"
    shutil.copyfile(store.checkpoint_path(project), tmp)
    return store.publish(project, tmp, {**store.metadata(project), "initial": False, "metrics": {"miou": 0.4}},
                         move=True)


def _predict(client: FlaskClient, config: str) -> Any:
    return client.post("/predict", json={"project": "3", "label_config": config, "tasks": TASKS})


def test_predict_with_another_config_never_replaces_a_trained_model(client_store: Any) -> None:
    client, store = client_store
    assert client.post("/setup", json={"project": "3", "schema": A}).status_code == 200
    trained = _train(store, "3")
    r = _predict(client, B)
    assert r.status_code == 409 and "/setup" in r.get_json()["message"] and trained in r.get_json()["message"]
    assert store.current("3") == trained and len(store.list_versions("3")) == 2
    assert _predict(client, A).get_json()["results"][0]["model_version"] == trained


def test_alternating_configs_create_no_version_per_call(client_store: Any) -> None:
    """Only /setup publishes (issue #27): /predict with either config stores nothing, switches nothing."""
    client, store = client_store
    v1 = client.post("/setup", json={"project": "3", "schema": A}).get_json()["model_version"]
    for config in (A, B) * 4:
        assert _predict(client, config).status_code == 200
    assert len(store.list_versions("3")) == 1 and store.current("3") == v1


def test_setup_switches_explicitly_and_back_to_the_trained_version(client_store: Any) -> None:
    client, store = client_store
    client.post("/setup", json={"project": "3", "schema": A})
    trained = _train(store, "3")
    fresh = client.post("/setup", json={"project": "3", "schema": B}).get_json()["model_version"]
    assert fresh != trained and store.current("3") == fresh
    back = client.post("/setup", json={"project": "3", "schema": A}).get_json()["model_version"]
    assert back == trained and len(store.list_versions("3")) == 3


def test_predict_answer_names_the_version_its_results_came_from(client_store: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """CURRENT switching while /predict computes must not make the answer's model_version differ from its
    results' (it used to read CURRENT again after predicting)."""
    from backend.serving.model import MTALModel

    client, store = client_store
    first = client.post("/setup", json={"project": "3", "schema": A}).get_json()["model_version"]
    second = _train(store, "3")
    store.set_current("3", first)
    predict = MTALModel.predict

    def predict_then_switch(self: MTALModel, *args: Any, **kwargs: Any) -> Any:
        out = predict(self, *args, **kwargs)
        store.set_current("3", second)  # a new version published right after the forward pass
        return out

    monkeypatch.setattr(MTALModel, "predict", predict_then_switch)
    body = _predict(client, A).get_json()
    assert body["results"][0]["model_version"] == first and body["model_version"] == first
