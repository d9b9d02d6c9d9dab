"""The training state machine: thresholds, coalescing, follow-ups, failures, lost-job recovery.

Parametrised over the embedded fakeredis queue and a real redis-server (marker ``redis``), with a
real RQ worker draining the queue in burst mode.
"""

from __future__ import annotations

import threading
import time

import fakeredis
import pytest
import redis
from rq import Queue

from backend.loop.coordinator import Coordinator
from backend.loop.queue import QUEUE_NAME, QueueHandle, ThreadWorker
from tests.backend.loop import fake_jobs

JOBS = "tests.backend.loop.fake_jobs"


@pytest.fixture(params=["fakeredis", pytest.param("redis", marks=pytest.mark.redis)])
def coord(request: pytest.FixtureRequest) -> Coordinator:
    if request.param == "fakeredis":
        conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    else:
        conn = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        conn.flushdb()
    handle = QueueHandle(conn, Queue(QUEUE_NAME, connection=conn), embedded=False)
    yield Coordinator(handle, train_job=f"{JOBS}.train_job", rank_job=f"{JOBS}.rank_job")
    fake_jobs.HOOK.clear()


def drain(coord: Coordinator) -> None:
    ThreadWorker([coord.handle.queue], connection=coord.redis).work(burst=True)


def runs(coord: Coordinator, project: str) -> list[str]:
    return [r.decode() for r in coord.redis.lrange(f"test:{project}:runs", 0, -1)]


def test_threshold_counts_labels_per_modality(coord: Coordinator) -> None:
    assert not coord.record_labels("7", ["semantic"], threshold=3)
    assert not coord.record_labels("7", ["depth"], threshold=3)
    assert coord.handle.queue.count == 0
    assert coord.record_labels("7", ["semantic"], threshold=3)  # third label -> one run
    assert coord.handle.queue.count == 1
    for _ in range(5):  # more labels while a run is queued: it will read them all, no new job
        assert not coord.record_labels("7", ["semantic", "depth"], threshold=3)
    assert coord.handle.queue.count == 1
    assert coord.status("7")["labels_since_last_run"] == {"semantic": 7, "depth": 6}
    drain(coord)
    assert runs(coord, "7") == ["train", "rank"]
    st = coord.status("7")
    assert st["state"] == "idle" and st["version"] == "v1" and st["metrics"] == {"loss": 0.5}
    assert st["labels_since_last_run"] == {}  # consumed by the run


def test_start_training_enqueues_once(coord: Coordinator) -> None:
    assert coord.request_training("1") == "enqueued"
    assert coord.request_training("1") == "queued"
    assert coord.handle.queue.count == 1
    drain(coord)
    assert runs(coord, "1") == ["train", "rank"]
    assert coord.status("1")["state"] == "idle"


def test_fifty_concurrent_events_during_a_run_give_one_follow_up(coord: Coordinator) -> None:
    def fire(c: Coordinator, project: str) -> None:
        if len(runs(c, project)) > 1:
            return  # only during the first run
        threads = [
            threading.Thread(target=c.record_labels, args=(project, ["semantic", "objects"], 5)) for _ in range(25)
        ] + [threading.Thread(target=c.request_training, args=(project,)) for _ in range(25)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert c.status(project)["state"] == "training" and c.status(project)["follow_up"]
        assert c.status(project)["labels_since_last_run"] == {"semantic": 25, "objects": 25}

    fake_jobs.HOOK.append(fire)
    assert coord.request_training("3") == "enqueued"
    drain(coord)
    assert runs(coord, "3") == ["train", "rank", "train", "rank"]  # exactly one follow-up
    assert coord.status("3")["state"] == "idle" and coord.status("3")["version"] == "v3"
    assert coord.handle.queue.count == 0


def test_failure_is_visible_and_gives_counts_back(coord: Coordinator) -> None:
    coord.train_job = f"{JOBS}.failing_train_job"
    coord.record_labels("4", ["depth"], threshold=1)
    drain(coord)
    st = coord.status("4")
    assert st["state"] == "idle" and "boom" in st["error"]
    assert st["labels_since_last_run"] == {"depth": 1}


def test_lost_job_is_recovered_only_when_stale(coord: Coordinator) -> None:
    assert coord.request_training("5") == "enqueued"
    coord.handle.queue.empty()  # the queue lost the job (e.g. a flushed or restarted Redis without AOF)
    assert coord.request_training("5") == "queued"  # too recent to call it lost
    coord.redis.hset("mtal:project:5", "updated", time.time() - 60)
    assert coord.request_training("5") == "enqueued"
    assert coord.handle.queue.count == 1


def test_job_paths_of_an_older_server_still_resolve() -> None:
    """RQ stores a job's function as a path: jobs enqueued before the regrouping of backend/ name
    ``backend.jobs.*`` and must still run on a new worker; new jobs name ``backend.loop.jobs``."""
    import inspect

    from rq.utils import import_attribute

    from backend.loop import jobs

    assert import_attribute("backend.jobs.train_job") is jobs.train_job
    assert import_attribute("backend.jobs.rank_job") is jobs.rank_job
    defaults = inspect.signature(Coordinator).parameters
    assert import_attribute(defaults["train_job"].default) is jobs.train_job
    assert import_attribute(defaults["rank_job"].default) is jobs.rank_job
