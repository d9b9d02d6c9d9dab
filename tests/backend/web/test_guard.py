"""``POST /webhook`` through the WSGI fast path (backend.web.guard) and its hand-over to Flask: the
same answers, error bodies, auth and metrics as every other route, and a body Flask can still read."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from flask import request
from flask.testing import FlaskClient

from backend.serving.store import ModelStore
from backend.settings import Settings
from backend.web.app import create_app

START = {"action": "START_TRAINING", "project": {"id": 7, "title": "p"}}


class Trainer:
    """Records events; ``"bad"`` annotations are refused as the event parser refuses them; ``"boom"`` crashes."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def submit(self, project_id: str, event: str, data: Any) -> dict[str, Any]:
        if data.get("annotation") == "bad":
            raise ValueError("ANNOTATION_CREATED: 'annotation' must be an object")
        if data.get("annotation") == "boom":
            raise RuntimeError("redis went away")
        self.events.append((project_id, event))
        return {"status": "enqueued"}

    def state(self) -> dict[str, Any]:
        return {"events": len(self.events)}


def _client(tmp_path: Path, **settings: Any) -> tuple[FlaskClient, Trainer]:
    s = Settings(model_dir=tmp_path / "models", device="cpu", **settings)
    trainer = Trainer()
    app = create_app(s, store=ModelStore(s.model_dir, device="cpu"), trainer=trainer)
    flask_view = app.view_functions["webhook"]

    def handed_over() -> Any:  # only requests the fast path must not answer may reach Flask's view
        body = request.get_json(silent=True)
        assert not isinstance(body, dict), "the fast path should have answered this"
        return flask_view()

    app.view_functions["webhook"] = handed_over
    return app.test_client(), trainer


def _metric(client: FlaskClient, status: str) -> str:
    text = client.get("/metrics").get_data(as_text=True)
    return next((line for line in text.splitlines()
                 if line.startswith(f'mtal_requests_total{{endpoint="webhook",method="POST",status="{status}"}}')), "")


def test_answers_events_with_the_apps_json(tmp_path: Path) -> None:
    client, trainer = _client(tmp_path)
    r = client.post("/webhook", data=json.dumps(START), content_type="application/json")
    assert r.status_code == 200 and r.is_json
    assert r.json == {"status": "ok", "action": "START_TRAINING", "project": "7", "result": {"status": "enqueued"}}
    assert trainer.events == [("7", "START_TRAINING")]
    assert _metric(client, "200").endswith(" 1.0")
    assert 'mtal_webhook_events_total{action="START_TRAINING"} 1.0' in client.get("/metrics").get_data(as_text=True)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"action": "ANNOTATION_CREATED", "project": {"id": 7}, "annotation": "bad"}, 400, "must be an object"),
        ({"project": {"id": 7}}, 400, "'action'"),
        ({"action": "START_TRAINING", "project": {"title": "x"}}, 400, "project.id"),
        ({"action": "START_TRAINING", "project": "../etc"}, 400, "not a project id"),
        ({"action": "ANNOTATION_CREATED", "project": {"id": 7}, "annotation": "boom"}, 500, "error id"),  # no internals
    ],
)
def test_errors_are_json_with_reason(tmp_path: Path, body: dict[str, Any], status: int, needle: str) -> None:
    client, trainer = _client(tmp_path)
    r = client.post("/webhook", json=body)
    assert r.status_code == status and r.is_json and needle in r.json["message"], r.get_data(as_text=True)
    assert r.json["error"] == {400: "Bad Request", 500: "Internal Server Error"}[status]
    assert trainer.events == []
    assert _metric(client, str(status)).endswith(" 1.0")
    if status == 500:
        assert "mtal_errors_total 1.0" in client.get("/metrics").get_data(as_text=True)


@pytest.mark.parametrize("raw", [b"{", b"[1, 2]", b'"text"', b""])
def test_bodies_that_are_not_objects_go_to_flask(tmp_path: Path, raw: bytes) -> None:
    client, trainer = _client(tmp_path)
    r = client.post("/webhook", data=raw, content_type="application/json")
    assert r.status_code == 400 and r.json["message"] == "request body must be a JSON object"
    assert trainer.events == []


def test_auth_and_methods(tmp_path: Path) -> None:
    client, trainer = _client(tmp_path, basic_auth_user="ls", basic_auth_pass="sécret")
    good = {"Authorization": "Basic " + base64.b64encode("ls:sécret".encode()).decode()}
    for headers in ({}, {"Authorization": "Basic " + base64.b64encode(b"ls:nope").decode()}, {"Authorization": "x"}):
        r = client.post("/webhook", json=START, headers=headers)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
    assert trainer.events == []
    r = client.post("/webhook", json=START, headers=good)
    assert r.status_code == 200 and trainer.events == [("7", "START_TRAINING")]
    assert client.get("/webhook", headers=good).status_code == 405
    assert client.post("/webhook/", json=START, headers=good).status_code in (308, 404)
