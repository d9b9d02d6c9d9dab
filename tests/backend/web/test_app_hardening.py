"""Defects found by the security review, each through the Flask app as Label Studio reaches it:
project ids (fullmatch, one validated id everywhere), the webhook fast path (auth first, bounded body,
JSON errors), ``/setup``'s hostname, request-size and content-type rules, no internals in error bodies.

The queue is a real :class:`backend.loop.trainer.QueueTrainer` on fakeredis (no worker: the tests look at the
coordinator's keys and the queued jobs)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import numpy as np
import pytest
from flask import Flask
from rq import Queue

from backend.loop.queue import QUEUE_NAME, QueueHandle
from backend.loop.trainer import QueueTrainer
from backend.serving.store import ModelStore, StoreError
from backend.settings import Settings
from backend.web.app import ApiError, create_app, parse_project_id
from tests.backend.labelstudio.test_images import Server, _png
from tests.backend.loop.test_trainer import annotation_event

AUTH = {"Authorization": "Basic " + base64.b64encode(b"ls:pw").decode()}


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = {"model_dir": tmp_path / "models", "net_config": "tiny", "image_size": 64,
                            "device": "cpu", "train_threshold": 1}
    return Settings(**{**base, **kw})


class _Explosive(io.RawIOBase):
    """A wsgi.input that fails the test when anything reads it."""

    def read(self, *_: Any) -> bytes:
        raise AssertionError("the body was read")

    readinto = read  # type: ignore[assignment]


def _raw_environ(path: str = "/webhook", length: int = 10, ctype: str = "application/json", **extra: Any) -> dict:
    env = {"REQUEST_METHOD": "POST", "PATH_INFO": path, "CONTENT_LENGTH": str(length), "CONTENT_TYPE": ctype,
           "wsgi.input": _Explosive(), "SERVER_NAME": "x", "SERVER_PORT": "1", "wsgi.url_scheme": "http"}
    env.update(extra)
    return env


def _call(app: Flask, environ: dict) -> tuple[int, dict[str, Any]]:
    got: list[str] = []
    body = b"".join(app.wsgi_app(environ, lambda status, headers, *a: got.append(status)))
    return int(got[0].split()[0]), json.loads(body)


def _app(settings: Settings) -> tuple[Flask, fakeredis.FakeRedis]:
    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    store = ModelStore(settings.model_dir, device="cpu")
    trainer = QueueTrainer(settings, store, handle=QueueHandle(conn, Queue(QUEUE_NAME, connection=conn), False))
    return create_app(settings, store=store, trainer=trainer), conn


@pytest.fixture
def app_conn(tmp_path: Path) -> tuple[Flask, fakeredis.FakeRedis]:
    return _app(_settings(tmp_path))


def _state_keys(conn: fakeredis.FakeRedis) -> list[str]:
    return sorted(k.decode() for k in conn.keys("mtal:project:*") if b":counts" not in k)


def _queued_args(conn: fakeredis.FakeRedis) -> list[Any]:
    q = Queue(QUEUE_NAME, connection=conn)
    return [job.args for job in q.jobs]


# ---- defect 5: project ids ------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["7\n", " 7", "7 ", "7\t", "\n7", "7\x00", "7/..", "../7", "7.abc\n", "٣", "7.١٢",
                                 {"id": "7\n"}, {"id": " 7"}, "7.", "7.1.2.3", "7.x"])
def test_project_id_must_fullmatch(bad: Any) -> None:
    with pytest.raises(ApiError):
        parse_project_id(bad)


def test_project_id_accepts_ls_forms() -> None:
    assert parse_project_id("7.1712345678") == parse_project_id({"id": 7}) == parse_project_id(7) == "7"


def test_store_refuses_trailing_newline(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        ModelStore(tmp_path).project_dir("7\n")


def test_webhook_trailing_newline_id_starts_nothing(app_conn: tuple[Flask, fakeredis.FakeRedis]) -> None:
    app, conn = app_conn
    r = app.test_client().post("/webhook", json={"action": "START_TRAINING", "project": {"id": "7\n"}})
    assert r.status_code == 400 and r.is_json
    assert _state_keys(conn) == [] and _queued_args(conn) == []


def test_webhook_uses_the_validated_id_everywhere(app_conn: tuple[Flask, fakeredis.FakeRedis]) -> None:
    """``"7.<nonce>"`` is project 7: one coordinator state, jobs get ``"7"``."""
    app, conn = app_conn
    client = app.test_client()
    for nonce in ("1", "2", "3"):
        event = annotation_event(7, ["semantic"], ann_id=int(nonce))
        event["project"]["id"] = f"7.{nonce}"
        r = client.post("/webhook", json=event)
        assert r.status_code == 200, r.get_json()
        assert r.get_json()["project"] == "7" and r.get_json()["result"]["project"] == "7"
    assert _state_keys(conn) == ["mtal:project:7"]
    assert _queued_args(conn) == [("7",)]
    r = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": "7.99"}})
    assert r.get_json()["result"]["project"] == "7" and _state_keys(conn) == ["mtal:project:7"]


@pytest.mark.parametrize("bad", ["7\n", "7.1", "../7", "p7"])
def test_jobs_refuse_ids_that_are_not_ls_ids(bad: str) -> None:
    from backend.loop import jobs

    for job in (jobs.train_job, jobs.rank_job):
        with pytest.raises(ValueError, match="not a Label Studio project id"):
            job(bad)


# ---- defect 6: the webhook fast path -----------------------------------------------------------------
def test_webhook_authenticates_before_reading_the_body(tmp_path: Path) -> None:
    app, conn = _app(_settings(tmp_path, basic_auth_user="ls", basic_auth_pass="pw"))
    for path in ("/webhook", "/predict", "/setup"):
        status, body = _call(app, _raw_environ(path, length=10_000_000))
        assert status == 401 and body["error"] == "Unauthorized"
    assert _state_keys(conn) == []


@pytest.mark.parametrize("path", ["/predict", "/setup", "/train"])  # /webhook: streamed (test_bulk_webhook.py)
def test_oversized_body_refused_before_reading(tmp_path: Path, path: str) -> None:
    app, _ = _app(_settings(tmp_path, max_body_bytes=4096))
    status, body = _call(app, _raw_environ(path, length=4097))
    assert status == 413 and "MTAL_MAX_BODY_BYTES" in body["message"]


@pytest.mark.parametrize("path", ["/webhook", "/predict", "/setup", "/train"])
@pytest.mark.parametrize("extra", [{"CONTENT_LENGTH": "", "HTTP_TRANSFER_ENCODING": "chunked"},
                                   {"CONTENT_LENGTH": "12abc"}, {"CONTENT_LENGTH": "-1"}])
def test_chunked_or_bad_length_refused(tmp_path: Path, path: str, extra: dict) -> None:
    app, _ = _app(_settings(tmp_path))
    status, body = _call(app, _raw_environ(path, **extra))
    assert status == 411 and body["error"] == "Length Required"


@pytest.mark.parametrize("path", ["/webhook", "/predict", "/setup", "/train"])
@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""])
def test_cross_site_content_types_refused(app_conn: tuple[Flask, fakeredis.FakeRedis], path: str, ctype: str) -> None:
    """A browser may POST text/plain / form bodies cross-site without a preflight: refuse them (defect 10)."""
    app, conn = app_conn
    payload = json.dumps({"action": "START_TRAINING", "project": {"id": 7}, "tasks": [], "schema": "<View/>"})
    r = app.test_client().post(path, data=payload, content_type=ctype or None)
    assert r.status_code == 415 and r.is_json and "application/json" in r.get_json()["message"]
    assert _state_keys(conn) == []


@pytest.mark.parametrize("path", ["/webhook", "/predict", "/setup", "/train", "/versions"])
@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"a":' * 50_000, b"\xff\xfe{}", b'{"a": 1'])
def test_bad_json_is_a_json_400(app_conn: tuple[Flask, fakeredis.FakeRedis], path: str, raw: bytes) -> None:
    app, _ = app_conn
    r = app.test_client().post(path, data=raw, content_type="application/json")
    assert r.status_code == 400 and r.is_json, r.get_data()[:200]


def test_slow_drip_body_is_cut_at_the_read_deadline(tmp_path: Path) -> None:
    """A real socket (werkzeug's threaded server): a client dripping its body loses the thread after
    ``MTAL_BODY_READ_TIMEOUT`` seconds and gets a JSON 408."""
    import socket
    import threading
    import time

    from werkzeug.serving import make_server

    app, _ = _app(_settings(tmp_path, body_read_timeout=1.0))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sock = socket.create_connection(server.server_address, timeout=10)
        sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{")
        t0 = time.monotonic()
        sock.settimeout(0.25)
        answer = b""
        while time.monotonic() - t0 < 8 and b"\r\n\r\n" not in answer:
            with contextlib.suppress(OSError):
                sock.sendall(b" ")
            try:
                answer += sock.recv(65536)
            except TimeoutError:
                continue
        elapsed = time.monotonic() - t0
        sock.close()
    finally:
        server.shutdown()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert 0.9 < elapsed < 4.0


# ---- defect 9: no exception internals in 500 bodies ------------------------------------------------
def test_500_body_has_no_internals(tmp_path: Path) -> None:
    class Boom:
        def submit(self, *_: Any) -> dict[str, Any]:
            raise RuntimeError("redis://:hunter2@10.0.0.5:6379 went away")

        def state(self) -> dict[str, Any]:
            raise RuntimeError("redis://:hunter2@10.0.0.5:6379 went away")

    s = _settings(tmp_path)
    app = create_app(s, store=ModelStore(s.model_dir, device="cpu"), trainer=Boom())  # type: ignore[arg-type]
    client = app.test_client()
    r = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 7}})
    assert r.status_code == 500 and r.is_json and "error id" in r.get_json()["message"]
    r2 = client.get("/status", query_string={"project": 7})
    r3 = client.get("/health")
    for resp in (r, r2, r3):
        assert "hunter2" not in resp.get_data(as_text=True) and "RuntimeError" not in resp.get_data(as_text=True)


# ---- defect 7: /setup hostname ---------------------------------------------------------------------
SEG = """<View><Image name="image" value="$image"/>
<BrushLabels name="semantic" toName="image"><Label value="road"/></BrushLabels></View>"""


@pytest.fixture
def canary() -> Iterator[Server]:
    s = Server("127.0.0.5")
    s.routes["/data/upload/1/a.png"] = (200, {}, _png(np.zeros((8, 8, 3), np.uint8)))
    yield s
    s.close()


def _predict(client: Any, project: str = "3") -> Any:
    return client.post("/predict", json={"project": project, "label_config": SEG,
                                         "tasks": [{"id": 1, "data": {"image": "/data/upload/1/a.png"}}]})


def test_setup_hostname_never_gets_the_configured_key(tmp_path: Path, canary: Server) -> None:
    app, _ = _app(_settings(tmp_path, label_studio_api_key="configured-key"))
    client = app.test_client()
    assert client.post("/setup", json={"project": "3", "schema": SEG, "hostname": canary.url}).status_code == 200
    assert _predict(client).status_code == 200
    assert canary.requests and all(auth is None for _, auth in canary.requests)
    # the caller's own token may go to the caller's own host
    assert client.post("/setup", json={"project": "3", "schema": SEG, "hostname": canary.url,
                                       "access_token": "callers-own"}).status_code == 200
    _predict(client)
    assert canary.requests[-1][1] == "Token callers-own"


def test_setup_hostname_ignored_when_label_studio_url_is_set(tmp_path: Path, canary: Server) -> None:
    ls = Server("127.0.0.1")
    ls.routes["/data/upload/1/a.png"] = canary.routes["/data/upload/1/a.png"]
    try:
        app, _ = _app(_settings(tmp_path, label_studio_url=ls.url, label_studio_api_key="configured-key"))
        client = app.test_client()
        r = client.post("/setup", json={"project": "3", "schema": SEG, "hostname": canary.url, "access_token": "x"})
        assert r.status_code == 200
        assert _predict(client).status_code == 200
        assert canary.requests == [] and ls.requests == [("/data/upload/1/a.png", "Token configured-key")]
    finally:
        ls.close()


@pytest.mark.parametrize("hostname", ["ftp://ls", "javascript:alert(1)", "http://a\\@b", "http://u:p@ls:8080",
                                      "ls:8080", "http://ls/?x=1", "http://127.1", " http://ls\n"])
def test_setup_bad_hostname_is_a_400_and_breaks_nothing(tmp_path: Path, hostname: str) -> None:
    app, _ = _app(_settings(tmp_path))
    client = app.test_client()
    r = client.post("/setup", json={"project": "3", "schema": SEG, "hostname": hostname})
    assert r.status_code == 400 and "hostname" in r.get_json()["message"]
    assert _predict(client).status_code == 200


def test_metric_labels_stay_bounded(app_conn: tuple[Flask, fakeredis.FakeRedis]) -> None:
    app, _ = app_conn
    client = app.test_client()
    for i in range(30):
        client.post("/webhook", json={"action": f"NONSENSE_{i}", "project": {"id": 7}})
        client.open("/predict", method=f"BREW{i}")
        client.get(f"/nope{i}")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'action="other"' in text and "NONSENSE" not in text and "BREW" not in text and "nope" not in text
