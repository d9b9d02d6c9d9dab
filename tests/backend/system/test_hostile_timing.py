"""Hostile timing cases against the real server (gunicorn), issue #27:

- Redis hung (a listener that accepts and never answers, as a stopped redis-server does): START_TRAINING
  is a 503 with Retry-After within 2 s (it was a 500 after 10 s), and an authenticated ``/health`` says
  the queue is unavailable within Label Studio's 1 s health timeout;
- images that drip one byte a second (slower than any total fetch limit, each read under the socket
  timeout): a /predict holding three of them and one good image answers within its fetch deadline
  (``MTAL_PREDICT_FETCH_S``, 3 s here) plus the forward, with the good task predicted and the slow ones
  empty (it took the fetcher's 60 s before).

Every slow peer here is on loopback and stops on teardown (the drip server also after 60 s by itself).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from tests.backend.labelstudio.test_images import Server
from tests.backend.system import hostile_cases
from tests.support.mtal_processes import backend_env, start_backend

pytestmark = pytest.mark.slow
FETCH_S = 3.0


class Drip:
    """An HTTP server that answers every GET with a 200, a Content-Length of 100 kB, and then one byte every
    ``interval`` seconds (at most ``max_s`` seconds, or until :meth:`close`)."""

    def __init__(self, interval: float = 1.0, max_s: float = 60.0) -> None:
        stop = self.stop = threading.Event()
        self.started = 0

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                drip.started += 1
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", "100000")
                self.end_headers()
                t0 = time.monotonic()
                try:
                    self.wfile.write(b"\x89")
                    self.wfile.flush()
                    while not stop.wait(interval) and time.monotonic() - t0 < max_s:
                        self.wfile.write(b"\x00")
                        self.wfile.flush()
                except OSError:
                    pass  # the client gave up: what we want

            def log_message(self, *args: object) -> None:
                pass

        drip = self
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    hung = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)
    ls, drip = Server("127.0.0.1"), Drip()
    ls.routes["/data/upload/1/ok.png"] = (200, {}, hostile_cases.png())
    tmp = tmp_path_factory.mktemp("timing")
    env = backend_env(ls.url, "ls-token", tmp / "models", redis_url=f"redis://127.0.0.1:{hung.getsockname()[1]}/0",
                      MTAL_NET_CONFIG="tiny", MTAL_IMAGE_SIZE="64", MTAL_DEVICE="cpu", MTAL_THREADS="4",
                      MTAL_ALLOW_HOSTS="127.0.0.1", MTAL_PREDICT_FETCH_S=str(FETCH_S), MTAL_CACHE_DIR="off",
                      OMP_NUM_THREADS="1", BASIC_AUTH_USER="ls", BASIC_AUTH_PASS="pw")
    backend = start_backend(env, tmp, timeout=300)
    session = requests.Session()
    session.auth = ("ls", "pw")
    r = session.post(f"{backend.url}/setup", json={"project": "3", "schema": hostile_cases.SEG_ONLY}, timeout=60)
    assert r.status_code == 200, r.text
    yield {"backend": backend, "session": session, "drip": drip, "ls": ls}
    backend.stop()
    drip.close()
    ls.close()
    hung.close()


def test_start_training_with_redis_hung_is_a_503_within_2s(world: dict[str, Any]) -> None:
    url = world["backend"].url + "/webhook"
    for _ in range(2):  # the second one too: no connection left half-open in the pool
        t0 = time.monotonic()
        r = world["session"].post(url, json={"action": "START_TRAINING", "project": {"id": 3}}, timeout=15)
        took = time.monotonic() - t0
        assert r.status_code == 503, (r.status_code, r.text, took)
        assert took < 2.0, took
        assert int(r.headers["Retry-After"]) > 0 and "Redis" in r.json()["message"]
    r = world["session"].post(world["backend"].url + "/train", json={"project": 3}, timeout=15)
    assert r.status_code == 503 and "Retry-After" in r.headers
    assert world["backend"].alive()


def test_health_says_the_queue_is_unavailable_within_1s(world: dict[str, Any]) -> None:
    for _ in range(3):
        t0 = time.monotonic()
        r = world["session"].get(world["backend"].url + "/health", timeout=15)
        took = time.monotonic() - t0
        assert r.status_code == 200 and took < 1.0, (r.text, took)
        body = r.json()
        assert body["status"] == "UP" and body["queue"]["available"] is False, body
    anonymous = requests.get(world["backend"].url + "/health", timeout=5).json()
    assert anonymous == {"status": "UP", "model_class": "MTALModel"}  # no details without credentials


def test_dripping_images_cost_the_fetch_deadline_not_the_request(world: dict[str, Any]) -> None:
    slow = [{"id": 10 + i, "data": {"image": f"{world['drip'].url}/slow{i}.png"}} for i in range(3)]
    tasks = [*slow, {"id": 1, "data": {"image": "/data/upload/1/ok.png"}}]
    t0 = time.monotonic()
    r = world["session"].post(world["backend"].url + "/predict", timeout=30,
                              json={"project": "3", "label_config": hostile_cases.SEG_ONLY, "tasks": tasks})
    took = time.monotonic() - t0
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [p["result"] for p in results[:3]] == [[], [], []] and all("score" not in p for p in results[:3])
    assert 0 <= results[3]["score"] <= 1  # predicted (an untrained net's regions may be none: no score = failed)
    assert world["drip"].started >= 3  # fetched concurrently: every slow image was asked for
    assert FETCH_S - 0.5 < took < FETCH_S + 7, took  # the deadline, plus the forward on a loaded machine
    log = world["backend"].log_tail(20000)  # the request's deadline, or the fetcher's own (the same value)
    assert "not fetched within 3 s" in log or "fetch took longer than 3 s; aborted" in log, log[-3000:]
