"""Hostile input against the real server (gunicorn, the production entry point): the table of
``hostile_cases`` plus property-based payloads (hypothesis) for /predict, /setup, /webhook and /train.

Each case must get a 4xx, or the documented per-task result (200 with one prediction per task), never
a 5xx nor a non-JSON body; the server must stay up, its RSS (master + worker) under 2 GB; and a canary
HTTP server on another loopback address (127.0.0.9), named by every URL trick, must receive nothing.
The fake Label Studio (127.0.0.1) serves the images, bombs and redirects the cases name.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.backend.labelstudio.test_images import Server
from tests.backend.system import hostile_cases
from tests.support.mtal_processes import backend_env, start_backend

pytestmark = pytest.mark.slow
RSS_LIMIT = 2 * 1024**3
MEASURED: dict[str, Any] = {}


class Peak:
    """Peak RSS of a process and its children, sampled every 50 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=2)
        return self.peak


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    canary = Server("127.0.0.9")
    ls = Server("127.0.0.1")
    ls.routes.update(hostile_cases.served_files(canary.url))
    tmp = tmp_path_factory.mktemp("hostile")
    env = backend_env(ls.url, "ls-token", tmp / "models", cache_dir=tmp / "cache", MTAL_NET_CONFIG="tiny",
                      MTAL_IMAGE_SIZE="64", MTAL_DEVICE="cpu", MTAL_TRAIN_THRESHOLD="0", MTAL_THREADS="4",
                      MTAL_BODY_READ_TIMEOUT="2", OMP_NUM_THREADS="1", BASIC_AUTH_USER="ls", BASIC_AUTH_PASS="pw")
    backend = start_backend(env, tmp, timeout=300)  # a loaded 2-core machine: torch imports slowly
    peak = Peak(backend.process.pid)
    session = requests.Session()
    session.auth = ("ls", "pw")
    r = session.post(f"{backend.url}/setup", json={"project": "3", "schema": hostile_cases.CONFIG}, timeout=60)
    assert r.status_code == 200, r.text
    time.sleep(0.2)
    MEASURED["baseline_rss_mb"] = round(peak.peak / 2**20)
    yield {"backend": backend, "canary": canary, "ls": ls, "session": session, "peak": peak}
    MEASURED["peak_rss_mb"] = round(peak.stop() / 2**20)
    print()
    for key, value in MEASURED.items():
        print(f"METRIC hostile_{key}={value}")
    backend.stop()
    canary.close()
    ls.close()


def _send(world: dict[str, Any], path: str, body: Any, timeout: float = 180) -> requests.Response:
    url = world["backend"].url + path
    if isinstance(body, tuple) and body[0] == "ctype":
        return world["session"].post(url, data=body[2], headers={"Content-Type": body[1]}, timeout=timeout)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return world["session"].post(url, data=data, headers={"Content-Type": "application/json"}, timeout=timeout)


def _check(name: str, resp: requests.Response, expect: set[int]) -> str | None:
    try:
        resp.json()
    except ValueError:
        return f"{name}: {resp.status_code} non-JSON body {resp.text[:200]!r}"
    if resp.status_code not in expect:
        return f"{name}: {resp.status_code} not in {sorted(expect)[:5]}: {resp.text[:300]}"
    if resp.status_code == 200 and name.startswith("predict") and len(resp.json().get("results", [])) < 1:
        return f"{name}: 200 without results"
    return None


def test_table_of_hostile_cases(world: dict[str, Any]) -> None:
    ls_hostport = world["ls"].url.split("://", 1)[1]
    table = hostile_cases.cases(ls_hostport, world["canary"].url)
    names = [c[0] for c in table]
    assert len(set(names)) == len(names) >= 200, (len(set(names)), len(names))
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda c: (c, _send(world, c[1], c[2])), table))
    failures = [f for (name, _, _, expect), r in answers if (f := _check(name, r, expect))]
    MEASURED["table_cases"] = len(table)
    MEASURED["table_seconds"] = round(time.monotonic() - t0, 1)
    assert not failures, "\n".join(failures[:30])
    assert world["backend"].alive()
    assert world["session"].get(world["backend"].url + "/health", timeout=5).json()["status"] == "UP"
    assert world["canary"].requests == []
    assert world["peak"].peak < RSS_LIMIT


def test_raw_http_tricks(world: dict[str, Any]) -> None:
    """What requests cannot send: a lying Content-Length, chunked bodies, a body over the limit
    announced but never sent, a slow drip, no auth on a huge body."""
    host, port = world["backend"].url.split("://", 1)[1].split(":")
    auth = "Authorization: Basic bHM6cHc=\r\n"
    raw = [
        ("over the limit", f"POST /predict HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
                           f"Content-Length: {64 * 2**20}\r\n\r\n", {413}),
        ("chunked", f"POST /webhook HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n0\r\n\r\n", {400, 411}),
        ("no auth, huge body", "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               f"Content-Length: {30 * 2**20}\r\n\r\n{{", {401}),
        ("short body", f"POST /setup HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
                       "Content-Length: 100\r\n\r\n{\"project\": 3", {408}),
    ]
    for name, request, expect in raw:
        with socket.create_connection((host, int(port)), timeout=15) as sock:
            sock.sendall(request.encode())
            answer = sock.recv(65536)
        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
        assert status in expect, (name, answer[:300])
    MEASURED["raw_cases"] = len(raw)
    assert world["backend"].alive() and world["canary"].requests == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
fields = {
    "/predict": st.fixed_dictionaries({}, optional={
        "project": json_values | st.just("3"),
        "tasks": json_values | st.lists(st.fixed_dictionaries({"data": json_values}), max_size=3),
                                                    "label_config": json_values | st.just(hostile_cases.CONFIG),
                                                    "params": json_values}),
    "/setup": st.fixed_dictionaries({}, optional={"project": json_values | st.just("3"), "schema": json_values,
                                                  "hostname": json_values, "access_token": json_values,
                                                  "extra_params": json_values}),
    "/webhook": st.fixed_dictionaries({}, optional={"action": json_values | st.sampled_from(
        ["START_TRAINING", "ANNOTATION_CREATED", "ANNOTATIONS_DELETED"]), "project": json_values
        | st.fixed_dictionaries({"id": json_values, "label_config": json_values}), "annotation": json_values,
        "annotations": json_values}),
    "/train": st.fixed_dictionaries({}, optional={"project": json_values}),
}
_seen: set[str] = set()


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_property_based_payloads(world: dict[str, Any], data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(sorted(fields)))
    body = data.draw(fields[path] | json_values)
    if isinstance(body, dict) and body.get("action") == "START_TRAINING":
        body["action"] = "START_TRAINING?"  # no training runs from random payloads
    text = json.dumps(body)
    _seen.add(path + text)
    resp = _send(world, path, text.encode())
    problem = _check(f"{path} {text[:200]}", resp, hostile_cases.CLIENT_ERROR | {200})
    assert problem is None, problem
    MEASURED["property_cases"] = len(_seen)


def test_still_up_and_canary_untouched(world: dict[str, Any]) -> None:
    assert world["backend"].alive()
    assert world["canary"].requests == []
    assert world["peak"].peak < RSS_LIMIT, world["peak"].peak


def test_not_started(world: dict[str, Any]) -> None:
    """No run was started by any case (MTAL_TRAIN_THRESHOLD=0, no valid START_TRAINING)."""
    r = world["session"].get(world["backend"].url + "/status", params={"project": 3}, timeout=5)
    assert r.status_code == 200 and r.json()["state"] == "idle"

