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
