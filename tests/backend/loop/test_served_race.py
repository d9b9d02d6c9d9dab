"""The race of issue #31 (noted in tests/e2e/test_loop_embedded.py): a task imported just before a *Retrieve
Predictions* got two predictions of one version, one from /predict (Label Studio stores its answer) and one
pushed by the new-task scoring job. Here both paths run on the rank-contract rig (recording Label Studio),
/predict through the Flask app with the queue's Redis (fakeredis), in both orders: each task ends with one
prediction of the version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fakeredis
from flask.testing import FlaskClient
from rq import Queue

from backend.loop.queue import QUEUE_NAME, QueueHandle
from backend.loop.rank_new import score_new_tasks
from backend.loop.served import PREDICT, PUSH, ServedTasks
from backend.loop.trainer import QueueTrainer
from backend.web.app import create_app
from tests.backend.loop.test_rank_new import NEW, _ranked


class _Coordinator:
    def __init__(self, conn: fakeredis.FakeRedis) -> None:
        self.redis = conn


def _world(tmp: Path) -> tuple[Any, Any, list[dict[str, Any]], FlaskClient]:
    ctx, schema, tasks, _ = _ranked(tmp, NEW)
    ctx.ls.pushed.clear()
    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    ctx.coordinator = _Coordinator(conn)  # what score_new_job's JobContext has: the queue's Redis
    trainer = QueueTrainer(ctx.settings, ctx.store, handle=QueueHandle(conn, Queue(QUEUE_NAME, connection=conn), False))
    app = create_app(ctx.settings, store=ctx.store, trainer=trainer, fetcher_factory=lambda url, token: ctx.fetcher)
    imported = [{"id": t["id"], "data": t["data"], "annotations": [], "predictions": []}
                for t in tasks if t["id"] in NEW]
    return ctx, schema, imported, app.test_client()


def _retrieve(client: FlaskClient, ctx: Any, tasks: list[dict[str, Any]]) -> list[Any]:
    config = ctx.store.project_info("1")["label_config"]
    r = client.post("/predict", json={"project": "1.1700000000", "label_config": config, "tasks": tasks})
    assert r.status_code == 200, r.text
    return r.json["results"]


def test_claims_known_answers() -> None:
    served = ServedTasks(fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    assert served.claim("3", "v1", [1, 2, 3], PREDICT) == {"1", "2", "3"}
    assert served.claim("3", "v1", [2, 3, 4], PUSH) == {"4"}  # the other path has 2 and 3
    assert served.claim("3", "v1", [1, 4], PREDICT) == {"1"}  # a path never blocks itself
    assert served.claim("3", "v2", [4], PREDICT) == {"4"} and served.claim("4", "v1", [4], PREDICT) == {"4"}
    assert 0 < served.redis.ttl(served.key("3", "v1", 4)) <= 3600
    served.release("3", "v1", [1, 4], PUSH)  # only its own marks: 1 stays /predict's
    assert served.claim("3", "v1", [1, 4], PREDICT) == {"1", "4"} and served.claim("3", "v1", [1], PUSH) == set()


def test_retrieve_first_then_the_scoring_job_pushes_only_the_other_tasks(tmp_path: Path) -> None:
    ctx, schema, imported, client = _world(tmp_path)
    first = imported[:1]
    results = _retrieve(client, ctx, first)  # Label Studio stores this one
    assert isinstance(results[0], dict) and results[0]["model_version"] == ctx.store.current("1")

    summary = score_new_tasks(ctx, "1", schema, imported)  # the import's scoring job lands afterwards
    assert sorted(p["task"] for p in ctx.ls.pushed) == sorted(NEW - {first[0]["id"]})
    assert summary["pushed"] == len(NEW) - 1
    assert set(map(int, ctx.store.ranking("1")["tasks"])) >= NEW  # both scored and ranked all the same


def test_the_scoring_job_first_then_retrieve_stores_nothing_twice(tmp_path: Path) -> None:
    ctx, schema, imported, client = _world(tmp_path)
    score_new_tasks(ctx, "1", schema, imported)
    assert sorted(p["task"] for p in ctx.ls.pushed) == sorted(NEW)
    # Label Studio chose these tasks (no prediction of the version yet) before the push landed
    assert _retrieve(client, ctx, imported) == [[], []]  # an empty list: Label Studio stores nothing for it


def test_the_rest_job_pushes_what_no_other_path_served(tmp_path: Path, monkeypatch: Any) -> None:
    from backend.loop import jobs
    from backend.loop.predict_rest import predict_rest_job, spool_tasks

    ctx, _, imported, client = _world(tmp_path)
    _, _, tasks, _ = _ranked(tmp_path / "rig", set())
    monkeypatch.setattr(jobs.JobContext, "create", classmethod(lambda cls: ctx))
    config = ctx.store.project_info("1")["label_config"]
    version = ctx.store.current("1")
    ServedTasks(ctx.coordinator.redis).claim("1", version, [3], PREDICT)  # a /predict answered task 3 meanwhile
    name = spool_tasks(ctx.store, "1", config, tasks)
    summary = predict_rest_job("1", name)
    pushed = {p["task"]: p for p in ctx.ls.pushed}
    assert summary == {"tasks": len(tasks), "pushed": len(tasks) - 1, "failed": 0, "served": 1}
    assert set(pushed) == {t["id"] for t in tasks} - {3} and {p["model_version"] for p in pushed.values()} == {version}
    assert all(pushed[t]["score"] == 1.0 for t in (1, 2, 4))  # labelled tasks: the labelled score, as /predict
    want = _retrieve(client, ctx, [{**t, "id": 100 + t["id"]} for t in tasks if t["id"] == 6])[0]
    assert pushed[6]["result"] == want["result"]  # what /predict answers for the same task
    assert not (ctx.store.tmp_dir("1") / name).exists()
