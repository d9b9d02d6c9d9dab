"""Defects found by the security review, each through the Flask app as Label Studio reaches it:
project ids (fullmatch, one validated id everywhere), the webhook fast path (auth first, bounded body,
JSON errors), ``/setup``'s hostname, request-size and content-type rules, no internals in error bodies.

The queue is a real :class:`backend.loop.QueueTrainer` on fakeredis (no worker: the tests look at the
coordinator's keys and the queued jobs)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from flask import Flask
from rq import Queue

from backend.app import ApiError, create_app, parse_project_id
from backend.loop import QueueTrainer
from backend.queueing import QUEUE_NAME, QueueHandle
from backend.settings import Settings
from backend.store import ModelStore, StoreError
from tests.backend.test_loop import CONFIG, annotation_event

AUTH = {"Authorization": "Basic " + base64.b64encode(b"ls:pw").decode()}


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = {"model_dir": tmp_path / "models", "net_config": "tiny", "image_size": 64,
                            "device": "cpu", "train_threshold": 1}
    return Settings(**{**base, **kw})


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
    from backend import jobs

    for job in (jobs.train_job, jobs.rank_job):
        with pytest.raises(ValueError, match="not a Label Studio project id"):
            job(bad)
