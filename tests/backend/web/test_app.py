"""Every endpoint through the Flask test client, with a local HTTP server standing in for Label Studio's
``/data/upload`` (images 333x517 RGB, grayscale, RGBA) and the "tiny" network at 64x64."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import random
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from backend.labelstudio.convert import rle_to_mask
from backend.labelstudio.label_config import parse_label_config
from backend.serving.model import schema_compatible
from backend.serving.store import ModelStore
from backend.settings import Settings
from backend.web.app import create_app, parse_project_id
from tests.backend.serving.test_predict import CONFIG as MIXED_CONFIG
from tests.backend.serving.test_predict import FakeNet

SEG_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="semantic" toName="image"><Label value="Straße"/><Label value="木"/></BrushLabels>
  <BrushLabels name="parts" toName="image"><Label value="wheel"/></BrushLabels>
  <Choices name="mtal_labelled" toName="image" choice="multiple">
    <Choice value="semantic"/><Choice value="parts"/>
  </Choices>
</View>"""


@pytest.fixture(scope="module")
def ls_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local HTTP server serving /data/upload/{odd,gray,rgba}.png; yields its base URL."""
    root = tmp_path_factory.mktemp("ls")
    up = root / "data" / "upload"
    up.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (333, 517, 3), dtype=np.uint8)).save(up / "odd.png")
    Image.fromarray(rng.integers(0, 255, (48, 40), dtype=np.uint8), mode="L").save(up / "gray.png")
    Image.fromarray(rng.integers(0, 255, (30, 50, 4), dtype=np.uint8), mode="RGBA").save(up / "rgba.png")
    (up / "broken.png").write_bytes(b"not an image")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = _FileServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _FileServer(http.server.ThreadingHTTPServer):
    request_queue_size = 64  # the default backlog 5 < parallel fetches: 1 s SYN retries
    daemon_threads = True


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _settings(tmp_path: Path, ls_url: str, **kw: Any) -> Settings:
    base = {"label_studio_url": ls_url, "label_studio_api_key": "t", "model_dir": tmp_path / "models"}
    return Settings(net_config="tiny", image_size=64, device="cpu", **{**base, **kw})


class RecordingTrainer:
    """Test double of the training queue: records the events it is given (the queue itself is
    tested in loop/test_trainer.py), so no background job runs during these tests."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def submit(self, project_id: str, event: str, data: Any) -> dict[str, Any]:
        self.events.append((project_id, event))
        return {"recorded": len(self.events)}

    def state(self) -> dict[str, Any]:
        return {"backend": "recording"}


def _app(settings: Settings, **kw: Any) -> Flask:
    """The app on the recording trainer (see :class:`RecordingTrainer`)."""
    store = kw.pop("store", None) or ModelStore(settings.model_dir, device="cpu")
    return create_app(settings, store=store, trainer=kw.pop("trainer", None) or RecordingTrainer(), **kw)


@pytest.fixture
def app(tmp_path: Path, ls_files: str) -> Flask:
    return _app(_settings(tmp_path, ls_files))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _tasks(*names: str) -> list[dict[str, Any]]:
    return [{"id": i + 1, "data": {"image": f"/data/upload/{n}.png"}} for i, n in enumerate(names)]


def test_setup_predict_real_network(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    r = client.post("/setup", json={"project": "4.1712345678", "schema": SEG_CONFIG, "hostname": "http://x"})
    assert r.status_code == 200, r.json
    version = r.json["model_version"]
    assert version.startswith("mtal-4-v1-")
    again = client.post("/setup", json={"project": "4.1712345678", "schema": SEG_CONFIG})
    assert again.json["model_version"] == version
    tasks = _tasks("odd", "missing", "gray", "rgba", "broken")
    r = client.post("/predict", json={"tasks": tasks, "project": "4.1712345678", "label_config": SEG_CONFIG})
    assert r.status_code == 200, r.json
    results = r.json["results"]
    assert len(results) == 5 and all(p["model_version"] == version for p in results)
    assert [p["result"] for p in results[1::3]] == [[], []]  # 404 and undecodable: empty, no score
    assert "missing.png" in caplog.text and "broken.png" in caplog.text
    for p, (h, w) in zip([results[0], results[2], results[3]], [(333, 517), (48, 40), (30, 50)], strict=True):
        assert 0.0 <= p["score"] <= 1.0
        choices = [x for x in p["result"] if x["type"] == "choices"]
        assert choices and choices[0]["value"]["choices"] == ["semantic", "parts"]
        for region in p["result"]:
            if region["type"] == "brushlabels":
                assert (region["original_height"], region["original_width"]) == (h, w)
                assert rle_to_mask(region["value"]["rle"], h, w).shape == (h, w)
    # the label config is remembered by /setup: LS may omit it
    r = client.post("/predict", json={"tasks": _tasks("gray"), "project": 4})
    assert r.status_code == 200 and r.json["results"][0]["model_version"] == version


def test_mixed_config_known_outputs_over_http(tmp_path: Path, ls_files: str) -> None:
    """Brush + rectangles + polygons, unicode labels; a fake network makes the expected regions known."""
    settings = _settings(tmp_path, ls_files)
    store = ModelStore(settings.model_dir, loader=lambda path, device: FakeNet(schema.modalities))
    schema = parse_label_config(MIXED_CONFIG)
    src = tmp_path / "fake.pt"
    src.write_bytes(b"fake")
    meta = {"modalities": [s.to_dict() for s in schema.modalities.values()], "network": schema.network}
    version = store.publish("11", src, meta)
    assert schema_compatible(store.metadata("11"), schema)
    client = _app(settings, store=store).test_client()
    assert client.post("/setup", json={"project": "11.1", "schema": MIXED_CONFIG}).json == {"model_version": version}
    r = client.post("/predict", json={"tasks": _tasks("odd", "rgba"), "project": "11.1", "label_config": MIXED_CONFIG})
    assert r.status_code == 200
    for p, (h, w) in zip(r.json["results"], [(333, 517), (30, 50)], strict=True):
        by_type = {x["type"]: x for x in p["result"]}
        assert set(by_type) == {"brushlabels", "rectanglelabels", "polygonlabels", "choices"}
        assert by_type["brushlabels"]["value"]["brushlabels"] == ["Straße"]
        mask = rle_to_mask(by_type["brushlabels"]["value"]["rle"], h, w) > 0
        assert mask[:, 0].all() and not mask[:, -1].any()
        rect = by_type["rectanglelabels"]["value"]
        assert rect["rectanglelabels"] == ["Fußgänger"] and rect["width"] == pytest.approx(50.0, abs=1e-3)
    assert "Fußgänger" in r.get_data(as_text=True)  # UTF-8 JSON, not \u escapes


def test_mixed_config_real_network(client: FlaskClient) -> None:
    from mtal_models.nets import NETWORKS

    if "detseg" not in NETWORKS:
        pytest.skip("the det+seg network is not registered in mtal_models.nets.NETWORKS yet")
    r = client.post("/setup", json={"project": "12", "schema": MIXED_CONFIG})
    assert r.status_code == 200, r.json
    r = client.post("/predict", json={"tasks": _tasks("odd", "gray", "rgba"), "project": "12"})
    assert r.status_code == 200 and len(r.json["results"]) == 3


def test_new_version_picked_up_without_restart(client: FlaskClient, app: Flask) -> None:
    v1 = client.post("/setup", json={"project": "5", "schema": SEG_CONFIG}).json["model_version"]
    r = client.post("/predict", json={"tasks": _tasks("gray"), "project": "5"})
    assert r.json["results"][0]["model_version"] == v1
    store: ModelStore = app.extensions["mtal"].store
    worker_store = ModelStore(store.root)  # e.g. an RQ worker process
    trained = worker_store.tmp_dir("5") / "trained.pt"
    shutil.copyfile(store.checkpoint_path("5"), trained)
    v2 = worker_store.publish("5", trained, {**store.metadata("5"), "metrics": {"miou": 0.5}}, move=True)
    r = client.post("/predict", json={"tasks": _tasks("gray"), "project": "5"})
    assert r.json["results"][0]["model_version"] == v2 != v1
    versions = client.get("/versions?project=5").json
    assert versions["versions"] == [v1, v2] and versions["current"] == {"5": v2}
    assert client.get("/versions").json["current"] == {"5": v2}
    health = client.get("/health").json
    assert health["status"] == "UP" and health["model_version"] == v2 and "queue" in health


def test_label_config_changes_publish_new_initial_version(client: FlaskClient) -> None:
    v1 = client.post("/setup", json={"project": "6", "schema": SEG_CONFIG}).json["model_version"]
    other = SEG_CONFIG.replace('<Label value="wheel"/>', '<Label value="wheel"/><Label value="door"/>')
    v2 = client.post("/setup", json={"project": "6", "schema": other}).json["model_version"]
    assert v2.startswith("mtal-6-v2-") and v1 != v2


@pytest.mark.parametrize(
    ("path", "payload", "needle"),
    [
        ("/setup", b"{not json", "JSON object"),
        ("/setup", b"[1, 2]", "JSON object"),
        ("/setup", {"schema": SEG_CONFIG}, "project"),
        ("/setup", {"project": "1"}, "schema"),
        ("/setup", {"project": "../etc", "schema": SEG_CONFIG}, "project"),
        ("/setup", {"project": "1", "schema": "<View><Image name='i' value='$i'/></View>"}, "schema"),
        ("/setup", {"project": "1", "schema": 3}, "schema"),
        ("/predict", {"project": "1"}, "tasks"),
        ("/predict", {"tasks": {}, "project": "1"}, "tasks"),
        ("/predict", {"tasks": [1], "project": "1"}, "tasks[0]"),
        ("/predict", {"tasks": [{"id": 1}], "project": "1"}, "data"),
        ("/predict", {"tasks": [{"data": {}}]}, "project"),
        ("/predict", {"tasks": [{"data": {}}], "project": "77"}, "label_config"),
        ("/predict", {"tasks": [{"data": {}}], "project": "1", "label_config": "<View/>"}, "label_config"),
        ("/webhook", {"project": {"id": 1}}, "action"),
        ("/webhook", {"action": "START_TRAINING"}, "project"),
        ("/webhook", {"action": "START_TRAINING", "project": {"title": "x"}}, "project.id"),
    ],
)
def test_bad_input_is_400_with_message(client: FlaskClient, path: str, payload: Any, needle: str) -> None:
    if isinstance(payload, bytes):
        r = client.post(path, data=payload, content_type="application/json")
    else:
        r = client.post(path, json=payload)
    assert r.status_code == 400, r.json
    assert r.json["error"] == "Bad Request" and needle in r.json["message"]


def test_unbuildable_network_is_422(client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    import mtal_models.nets

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ValueError("unknown network 'x'")

    monkeypatch.setattr(mtal_models.nets, "build_network", refuse)
    r = client.post("/setup", json={"project": "8", "schema": SEG_CONFIG})
    assert r.status_code == 422 and "unknown network" in r.json["message"]


def _junk(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value, biased towards things the endpoints look at."""
    makers = [
        lambda: None,
        lambda: rng.random() * 1e9,
        lambda: rng.choice(["", "1", "1.2", "../x", "ü", "/data/upload/odd.png", "<View/>", "START_TRAINING"]),
        lambda: rng.choice([True, -1, 0, 2**70]),
        lambda: "x" * rng.randrange(0, 200),
        lambda: rng.choice([SEG_CONFIG, "/data/upload/gray.png", "http://10.0.0.1/x.png", "file:///etc/passwd"]),
    ]
    if depth < 3:
        keys = ["id", "data", "image", "annotations", "result", "tasks", "project", "action", "value", "from_name"]
        makers += [
            lambda: [_junk(rng, depth + 1) for _ in range(rng.randrange(4))],
            lambda: {rng.choice(keys): _junk(rng, depth + 1) for _ in range(rng.randrange(4))},
            lambda: {"id": rng.randrange(5), "data": {"image": _junk(rng, depth + 1)}, "annotations": _junk(rng, 1)},
        ]
    return rng.choice(makers)()


def test_fuzz_bad_payloads_never_500(client: FlaskClient) -> None:
    assert client.post("/setup", json={"project": "1", "schema": SEG_CONFIG}).status_code == 200
    rng = random.Random(1234)
    statuses: dict[int, int] = {}
    for _ in range(150):
        path = rng.choice(["/setup", "/predict", "/webhook", "/versions"])
        body: Any = {k: _junk(rng) for k in rng.sample(["tasks", "project", "label_config", "schema", "action",
                                                          "params", "annotation", "task"], rng.randrange(5))}
        if rng.random() < 0.5:
            body["project"] = rng.choice(["1", "1.99", 1, {"id": 1, "label_config": SEG_CONFIG}])
        if rng.random() < 0.3:
            body["tasks"] = [_junk(rng) for _ in range(3)]
        elif rng.random() < 0.3:  # well-formed tasks with junk annotations (GT substitution path)
            result = [{"from_name": rng.choice(["semantic", "parts", "mtal_labelled", "x"]), "type": _junk(rng),
                       "value": _junk(rng)} for _ in range(2)]
            body["tasks"] = [{"id": 1, "data": {"image": "/data/upload/gray.png"}, "annotations": [{"result": result}]}]
        if rng.random() < 0.1:
            r = client.post(path, data=bytes(rng.randrange(256) for _ in range(20)), content_type="application/json")
        else:
            r = client.post(path, data=json.dumps(body), content_type="application/json")
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code < 500, (path, body, r.get_data(as_text=True))
        assert r.is_json
    assert statuses.get(200, 0) > 10 and statuses.get(400, 0) > 10  # both sides exercised


def test_webhook_routes_to_trainer(tmp_path: Path, ls_files: str) -> None:
    calls: list[tuple[str, str]] = []

    class Trainer:
        def submit(self, project_id: str, event: str, data: Any) -> dict[str, Any]:
            if data.get("annotation") == "bad":
                raise ValueError("annotation must be an object")
            calls.append((project_id, event))
            return {"status": "enqueued"}

        def state(self) -> dict[str, Any]:
            return {"queued": len(calls)}

    client = create_app(_settings(tmp_path, ls_files), trainer=Trainer()).test_client()
    r = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3, "title": "p"}})
    assert r.status_code == 200 and r.json["result"] == {"status": "enqueued"} and calls == [("3", "START_TRAINING")]
    r = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 3}, "annotation": "bad"})
    assert r.status_code == 400 and "annotation" in r.json["message"]
    assert client.get("/health").json["queue"] == {"queued": 1}


def test_webhook_events_reach_the_trainer(client: FlaskClient, app: Flask) -> None:
    for _ in range(2):
        r = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 2}, "annotation": {}})
        assert r.status_code == 200
    assert app.extensions["mtal"].trainer.events == [("2", "ANNOTATION_CREATED")] * 2


def test_basic_auth(tmp_path: Path, ls_files: str) -> None:
    client = _app(_settings(tmp_path, ls_files, basic_auth_user="ls", basic_auth_pass="sécret")).test_client()
    good = {"Authorization": "Basic " + base64.b64encode("ls:sécret".encode()).decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"ls:wrong").decode()}
    assert client.get("/health").json == {"status": "UP", "model_class": "MTALModel"}  # open, no details
    assert "queue" in client.get("/health", headers=good).json
    for headers in ({}, bad, {"Authorization": "Bearer x"}):
        r = client.post("/setup", json={"project": "1", "schema": SEG_CONFIG}, headers=headers)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
        assert client.get("/metrics", headers=headers).status_code == 401
    assert client.post("/setup", json={"project": "1", "schema": SEG_CONFIG}, headers=good).status_code == 200
    assert client.get("/versions", headers=good).status_code == 200


def test_metrics_and_json_errors(client: FlaskClient) -> None:
    client.post("/setup", json={"project": "1", "schema": SEG_CONFIG})
    client.post("/predict", json={"tasks": _tasks("gray", "missing"), "project": "1"})
    client.post("/predict", data=b"{", content_type="application/json")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'mtal_requests_total{endpoint="predict",method="POST",status="200"} 1.0' in text
    assert 'mtal_requests_total{endpoint="predict",method="POST",status="400"} 1.0' in text
    assert "mtal_predictions_total 2.0" in text and "mtal_prediction_failures_total 1.0" in text
    assert "mtal_request_seconds_bucket" in text and "mtal_errors_total 0.0" in text
    r = client.get("/nope")
    assert r.status_code == 404 and r.json["error"] == "Not Found"
    r = client.get("/predict")
    assert r.status_code == 405 and r.is_json


def test_parse_project_id() -> None:
    assert parse_project_id("12.1712345678") == "12"
    assert parse_project_id(12) == "12" and parse_project_id({"id": 5}) == "5"
    for bad in (None, True, "", ".5", "a b", [1], "ü"):
        with pytest.raises(Exception, match="project"):
            parse_project_id(bad)
