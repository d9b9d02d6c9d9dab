"""TASKS_CREATED -> pending new tasks in a real redis-server, one coalesced scoring job (issue #31, item 3)."""

from __future__ import annotations

import time

import pytest
import redis
from rq import Queue

from backend.loop.coordinator import Coordinator
from backend.loop.events import EventError, handle_webhook
from backend.loop.new_tasks import MAX_TASK_JSON, NewTasks
from backend.loop.queue import QUEUE_NAME, QueueHandle


@pytest.fixture()
def coord(redis_url: str) -> Coordinator:
    conn = redis.Redis.from_url(redis_url)
    conn.flushdb()
    return Coordinator(QueueHandle(conn, Queue(QUEUE_NAME, connection=conn), embedded=False))


def _created(project: int, ids: range) -> dict:
    """What Label Studio 1.23 posts inside an import: the whole tasks."""
    tasks = [{"id": i, "data": {"image": f"/data/upload/{project}/{i}.png"}, "annotations": [], "predictions": [],
              "is_labeled": False, "project": project} for i in ids]
    return {"action": "TASKS_CREATED", "project": {"id": project, "label_config": "<View/>"}, "tasks": tasks}


def _jobs(coord: Coordinator) -> list[tuple[str, tuple]]:
    return [(j.func_name, j.args) for j in coord.handle.queue.get_jobs()]


def test_imports_are_kept_and_coalesce_into_one_job(coord: Coordinator) -> None:
    started = time.perf_counter()
    first = handle_webhook(_created(7, range(1, 101)), coord, lambda p: 10)
    elapsed = time.perf_counter() - started
    assert first.status == "enqueued" and elapsed < 0.5  # LS waits for this inside the user's import
    for start in range(101, 1001, 100):  # the same import in ten requests of 100: still one job
        assert handle_webhook(_created(7, range(start, start + 100)), coord, lambda p: 10).status == "queued"
    assert _jobs(coord) == [("backend.loop.jobs.score_new_job", ("7",))]
    assert coord.status("7")["state"] == "idle" and coord.status("7")["labels_since_last_run"] == {}
    new = NewTasks(coord)
    taken = new.take("7")
    assert [t["id"] for t in taken] == list(range(1, 1001))
    assert taken[0] == {"id": 1, "data": {"image": "/data/upload/7/1.png"}}
    assert new.take("7") == [] and new.pending("7") == 0
    assert new.done("7") is False  # nothing arrived meanwhile: no second job


def test_tasks_arriving_while_the_job_runs_get_a_next_job(coord: Coordinator) -> None:
    new = NewTasks(coord)
    assert new.add("8", [{"id": 1, "data": {}}]) == "enqueued"
    new.take("8")
    assert new.add("8", [{"id": 2, "data": {}}]) == "queued"  # the running job's marker is still set
    assert new.done("8") is True
    assert len(_jobs(coord)) == 2 and [t["id"] for t in new.take("8")] == [2]
    new.put_back("8", [{"id": 3, "data": {}}])  # LS was down: the task waits, without a job
    assert new.done("8", requeue=False) is False and new.pending("8") == 1
    assert new.add("8", [{"id": 4, "data": {}}]) == "enqueued"


def test_oversized_and_malformed_tasks(coord: Coordinator) -> None:
    big = {"id": 1, "data": {"text": "x" * MAX_TASK_JSON}}
    assert NewTasks(coord).add("9", [big]) == "ignored" and _jobs(coord) == []
    for tasks in ("no", [{"id": "1", "data": {}}], [{"id": True, "data": {}}], [{"id": 1, "data": "x"}],
                  [{"id": -1, "data": {}}], [7]):
        with pytest.raises(EventError, match="TASKS_CREATED"):
            handle_webhook({**_created(9, range(0)), "tasks": tasks}, coord, lambda p: 10)
    assert handle_webhook(_created(9, range(0)), coord, lambda p: 10).status == "ignored"


class _Ctx:
    """What score_new_job uses of a JobContext: the coordinator (real Redis) and the project's schema."""

    def __init__(self, coord: Coordinator, schema_error: Exception | None = None) -> None:
        self.coordinator = coord
        self.schema_error = schema_error

    def schema(self, project: str) -> str:
        if self.schema_error is not None:
            raise self.schema_error
        return "schema"


def _job(coord: Coordinator, monkeypatch: pytest.MonkeyPatch, score: object = None,
         schema_error: Exception | None = None) -> dict:
    from backend.loop import jobs

    monkeypatch.setattr(jobs.JobContext, "create", classmethod(lambda cls: _Ctx(coord, schema_error)))
    if score is not None:
        monkeypatch.setattr(jobs, "score_new_tasks", score)
    return jobs.score_new_job("5")


def test_the_job_leaves_tasks_to_a_running_ranking(coord: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    new = NewTasks(coord)
    new.add("5", [{"id": 1, "data": {}}])
    coord.redis.hset("mtal:project:5", "state", "ranking")
    assert _job(coord, monkeypatch)["reason"] == "a ranking is running"
    assert new.pending("5") == 1 and len(_jobs(coord)) == 1  # kept for the ranking, no job loop

    coord.redis.hset("mtal:project:5", "state", "idle")
    seen = []

    def score(ctx: object, project: str, schema: str, tasks: list, guard: object) -> dict:
        seen.append([t["id"] for t in tasks])
        coord.redis.hset("mtal:project:5", "state", "ranking")  # a ranking starts while it scores
        guard()  # type: ignore[operator]
        return {"scored": len(tasks)}

    assert _job(coord, monkeypatch, score)["reason"] == "a ranking started"
    assert seen == [[1]] and new.pending("5") == 1  # given back to the ranking, not lost


def test_the_job_scores_and_gives_tasks_back_when_label_studio_is_down(coord: Coordinator,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.labelstudio.client import LabelStudioAPIError

    new = NewTasks(coord)
    new.add("5", [{"id": 1, "data": {}}, {"id": 2, "data": {}}])
    with pytest.raises(LabelStudioAPIError):
        _job(coord, monkeypatch, schema_error=LabelStudioAPIError("get project", None, "refused"))
    assert new.pending("5") == 2 and len(_jobs(coord)) == 1  # back, waiting for the next import or ranking

    def score(ctx: object, project: str, schema: str, tasks: list, guard: object) -> dict:
        new.add("5", [{"id": 3, "data": {}}])  # imported while the job runs
        return {"scored": len(tasks)}

    assert new.add("5", [{"id": 2, "data": {}}]) == "enqueued"  # the next import brings them a job
    assert _job(coord, monkeypatch, score) == {"scored": 2}
    assert [t["id"] for t in new.take("5")] == [3] and len(_jobs(coord)) == 3  # exactly one next job, for task 3
