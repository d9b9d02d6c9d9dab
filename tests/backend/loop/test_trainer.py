"""The active-learning loop at the HTTP level: LS-shaped webhooks through the Flask app, a QueueTrainer on
a real redis-server, and a real RQ worker (burst mode) running the job functions of ``fake_jobs``.

Every test is marked ``redis`` (needs ``redis-server``; see tests/conftest.py). Each test uses its own
project ids on a flushed database, so expected run counts follow from the events sent.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from rq import Queue

from backend.loop.queue import QUEUE_NAME, QueueHandle, ThreadWorker
from backend.loop.trainer import QueueTrainer
from backend.serving.store import ModelStore
from backend.settings import Settings
from backend.web.app import create_app
from tests.backend.loop import fake_jobs

pytestmark = pytest.mark.redis
JOBS = "tests.backend.loop.fake_jobs"
MODALITIES = ("semantic", "parts")
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="semantic" toName="image"><Label value="road"/><Label value="car"/></BrushLabels>
  <BrushLabels name="parts" toName="image"><Label value="wheel"/></BrushLabels>
  <Choices name="mtal_labelled" toName="image" choice="multiple">
    <Choice value="semantic"/><Choice value="parts"/>
  </Choices>
</View>"""
DEFAULT_THRESHOLD = 6


@dataclass
class Loop:
    """The app under test and what it runs on."""

    app: Flask
    trainer: QueueTrainer
    conn: redis.Redis
    store: ModelStore

    def client(self) -> FlaskClient:
        return self.app.test_client()

    def drain(self) -> None:
        """Run every queued job (and the jobs they enqueue) with a real RQ worker, then return."""
        ThreadWorker([self.trainer.handle.queue], connection=self.conn).work(burst=True)

    def runs(self, project: int) -> list[str]:
        return [r.decode() for r in self.conn.lrange(f"test:{project}:runs", 0, -1)]

    def queued(self) -> int:
        return self.trainer.handle.queue.count


@pytest.fixture
def loop(redis_url: str, tmp_path: Path) -> Iterator[Loop]:
    conn = redis.Redis.from_url(redis_url)
    conn.flushdb()
    settings = Settings(model_dir=tmp_path / "models", net_config="tiny", image_size=64, device="cpu",
                        redis_url=redis_url, train_threshold=DEFAULT_THRESHOLD)
    store = ModelStore(settings.model_dir, device="cpu")
    handle = QueueHandle(conn, Queue(QUEUE_NAME, connection=conn), embedded=False)
    trainer = QueueTrainer(settings, store, handle=handle)
    trainer.coordinator.train_job = f"{JOBS}.train_job"
    trainer.coordinator.rank_job = f"{JOBS}.rank_job"
    yield Loop(create_app(settings, store, trainer), trainer, conn, store)
    fake_jobs.HOOK.clear()


def annotation_event(project: int, modalities: tuple[str, ...] | list[str], ann_id: int = 1) -> dict[str, Any]:
    """An ANNOTATION_CREATED payload as Label Studio 1.23 posts it (trimmed to the fields LS always sends)."""
    result: list[dict[str, Any]] = [
        {"id": f"r{ann_id}{m}", "from_name": m, "to_name": "image", "type": "brushlabels", "origin": "manual",
         "original_width": 64, "original_height": 48, "image_rotation": 0,
         "value": {"format": "rle", "rle": [0, 0, 0], "brushlabels": ["road" if m == "semantic" else "wheel"]}}
        for m in modalities
    ]
    result.append({"id": f"c{ann_id}", "from_name": "mtal_labelled", "to_name": "image", "type": "choices",
                   "origin": "manual", "value": {"choices": list(modalities)}})
    return {
        "action": "ANNOTATION_CREATED",
        "project": {"id": project, "title": f"p{project}", "label_config": CONFIG, "sampling": "Sequential sampling"},
        "task": {"id": 100 + ann_id, "data": {"image": f"/data/upload/1/{ann_id}.png"}, "project": project},
        "annotation": {"id": ann_id, "task": 100 + ann_id, "project": project, "result": result,
                       "was_cancelled": False, "ground_truth": False, "completed_by": 1, "lead_time": 3.2},
    }


def post_event(client: FlaskClient, payload: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/webhook", json=payload)
    assert r.status_code == 200, r.get_json()
    return r.get_json()["result"]


def start_training(client: FlaskClient, project: int) -> str:
    return post_event(client, {"action": "START_TRAINING", "project": {"id": project}})["status"]


def setup_project(client: FlaskClient, project: int, threshold: int | None = None) -> str:
    body: dict[str, Any] = {"project": f"{project}.1712345678", "schema": CONFIG}
    if threshold is not None:
        body["extra_params"] = {"train_threshold": threshold}
    r = client.post("/setup", json=body)
    assert r.status_code == 200, r.get_json()
    return r.get_json()["model_version"]


def status(client: FlaskClient, project: int) -> dict[str, Any]:
    r = client.get("/status", query_string={"project": project})
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def test_n_events_give_exactly_the_expected_runs(loop: Loop) -> None:
    client = loop.client()
    threshold = 4  # per project, from /setup; each event labels both modalities -> a run every 2 events
    setup_project(client, 11, threshold=threshold)
    n_events, expected_runs = 10, 10 * len(MODALITIES) // threshold
    statuses = []
    for i in range(n_events):
        answer = post_event(client, annotation_event(11, MODALITIES, ann_id=i))
        assert answer["counted"] == sorted(MODALITIES)
        statuses.append(answer["status"])
        loop.drain()  # the run happens before the next event
    assert statuses == ["counted", "enqueued"] * expected_runs
    assert loop.runs(11) == ["train", "rank"] * expected_runs
    assert loop.queued() == 0


def test_events_while_queued_coalesce_into_one_run(loop: Loop) -> None:
    client = loop.client()
    answers = [post_event(client, annotation_event(12, ["semantic"], ann_id=i))["status"] for i in range(15)]
    # default threshold from the settings: the 6th label enqueues; the next 9 find the run still queued
    assert answers == ["counted"] * (DEFAULT_THRESHOLD - 1) + ["enqueued"] + ["counted"] * (15 - DEFAULT_THRESHOLD)
    assert loop.queued() == 1
    assert status(client, 12)["labels_since_last_run"] == {"semantic": 15}
    loop.drain()
    assert loop.runs(12) == ["train", "rank"]
    assert status(client, 12)["labels_since_last_run"] == {}


def test_per_project_threshold_from_setup(loop: Loop) -> None:
    client = loop.client()
    setup_project(client, 21, threshold=3)
    setup_project(client, 22)  # no extra_params: MTAL_TRAIN_THRESHOLD (6)
    setup_project(client, 23, threshold=0)  # 0: only "Start Training" trains
    assert [status(client, p)["threshold"] for p in (21, 22, 23)] == [3, DEFAULT_THRESHOLD, 0]
    for i in range(6):
        for p in (21, 22, 23):
            post_event(client, annotation_event(p, ["parts"], ann_id=i))
        loop.drain()
    assert loop.runs(21) == ["train", "rank"] * 2
    assert loop.runs(22) == ["train", "rank"]
    assert loop.runs(23) == []
    assert status(client, 23)["labels_since_last_run"] == {"parts": 6}
    r = client.post("/setup", json={"project": 24, "schema": CONFIG, "extra_params": {"train_threshold": -1}})
    assert r.status_code == 400 and "train_threshold" in r.get_json()["message"]


def test_start_training_gives_one_run(loop: Loop) -> None:
    client = loop.client()
    assert start_training(client, 31) == "enqueued"
    assert start_training(client, 31) == "queued"
    r = client.post("/train", json={"project": "31.1712345678"})  # LS's legacy training call
    assert r.status_code == 200 and r.get_json()["result"]["status"] == "queued"
    assert loop.queued() == 1
    assert status(client, 31)["state"] == "queued"
    loop.drain()
    assert loop.runs(31) == ["train", "rank"]
    assert status(client, 31)["state"] == "idle"


def test_fifty_concurrent_webhooks_during_a_run_give_one_follow_up(loop: Loop) -> None:
    client = loop.client()
    setup_project(client, 41, threshold=5)
    seen: dict[str, Any] = {}

    def fire(coord: Any, project: str) -> None:
        if project != "41" or loop.runs(41) != ["train"]:
            return  # only during the first run
        answers: list[dict[str, Any]] = []
        lock = threading.Lock()
        barrier = threading.Barrier(50)

        def one(i: int) -> None:
            c = loop.client()  # each thread its own client
            barrier.wait()
            payload = annotation_event(41, MODALITIES, ann_id=1000 + i)
            r = c.post("/webhook", json=payload)
            with lock:
                answers.append({"code": r.status_code, **r.get_json()})

        threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seen["answers"] = answers
        seen["during"] = status(loop.client(), 41)

    fake_jobs.HOOK.append(fire)
    assert start_training(client, 41) == "enqueued"
    loop.drain()
    answers = seen["answers"]
    assert len(answers) == 50 and all(a["code"] == 200 for a in answers)
    assert all(a["result"]["status"] == "counted" for a in answers)  # a run is in progress: none enqueues
    during = seen["during"]
    assert during["state"] == "training" and during["follow_up"] is True
    assert during["labels_since_last_run"] == {m: 50 for m in MODALITIES}  # no lost counts
    assert loop.runs(41) == ["train", "rank", "train", "rank"]  # exactly one follow-up run
    after = status(client, 41)
    assert after["state"] == "idle" and after["follow_up"] is False and after["version"] == "v3"
    assert after["labels_since_last_run"] == {}  # the follow-up consumed all 100
    assert loop.queued() == 0


def test_status_content(loop: Loop) -> None:
    client = loop.client()
    initial = setup_project(client, 51, threshold=2)
    before = status(client, 51)
    assert before["state"] == "idle" and before["version"] is None and before["current_version"] == initial
    assert before["threshold"] == 2 and before["queue"]["backend"] == "redis"
    post_event(client, annotation_event(51, ["semantic"]))
    assert status(client, 51)["labels_since_last_run"] == {"semantic": 1}
    post_event(client, annotation_event(51, ["parts"], ann_id=2))
    queued = status(client, 51)
    assert queued["state"] == "queued" and queued["job_id"] and queued["queue"]["queued"] == 1
    loop.drain()
    st = status(client, 51)
    assert st["state"] == "idle" and st["version"] == "v1" and st["metrics"] == {"loss": 0.5}
    assert (st["epoch"], st["step"], st["loss"]) == (1, 3, 0.5) and st["error"] is None
    assert st["current_version"] == initial  # fake jobs publish nothing to the store
    assert st["queue"]["queued"] == 0 and st["queue"]["failed"] == 0
    assert client.get("/status").status_code == 400


def test_ignored_and_malformed_events(loop: Loop) -> None:
    client = loop.client()
    assert post_event(client, {"action": "PROJECT_UPDATED", "project": {"id": 61}})["status"] == "ignored"
    skipped = annotation_event(61, MODALITIES)
    skipped["annotation"]["was_cancelled"] = True
    assert post_event(client, skipped)["status"] == "ignored"
    no_config = annotation_event(61, MODALITIES)
    del no_config["project"]["label_config"]
    r = client.post("/webhook", json=no_config)
    assert r.status_code == 400 and "label_config" in r.get_json()["message"]
    assert loop.queued() == 0 and status(client, 61)["labels_since_last_run"] == {}
