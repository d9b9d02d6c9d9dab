"""Pretrain runs in the state machine (cold start, issue 25): requested only while idle, never a follow-up;
labels or Start Training during one queue exactly one train run after it; label counts are not consumed by
it; a dead pretrain is taken over as a pretrain (it resumes from its checkpoint) with its follow-up kept.
Parametrised over fakeredis and a real redis-server like test_coordinator, with a real RQ worker."""

from __future__ import annotations

import time

import pytest
from rq.job import Job, JobStatus

from backend.loop.coordinator import Coordinator
from tests.backend.loop import fake_jobs
from tests.backend.loop.test_coordinator import JOBS, coord, drain, runs  # noqa: F401 (fixture)


@pytest.fixture
def pcoord(coord: Coordinator) -> Coordinator:  # noqa: F811
    coord.pretrain_job = f"{JOBS}.pretrain_job"
    return coord


def test_pretrain_then_rank_then_idle(pcoord: Coordinator) -> None:
    assert pcoord.request_pretrain("1") == "enqueued"
    assert pcoord.request_pretrain("1") == "queued"
    assert pcoord.status("1")["state"] == "queued" and pcoord.handle.queue.count == 1
    drain(pcoord)
    assert runs(pcoord, "1") == ["pretrain", "rank"]
    st = pcoord.status("1")
    assert st["state"] == "idle" and st["version"] == "v1" and st["metrics"] == {"pretrain": {"steps": 3}}
    assert st["pretrain"] == {"state": "pretraining", "step": 3} and st["step"] == 3 and st["loss"] == -0.5


def test_labels_during_a_pretrain_give_one_train_run_after_it(pcoord: Coordinator) -> None:
    def during(c: Coordinator, project: str) -> None:
        if runs(c, project) != ["pretrain"]:
            return
        assert c.status(project)["state"] == "pretraining"
        for _ in range(5):
            c.record_labels(project, ["semantic"], threshold=2)
        assert c.request_training(project) == "follow_up"
        assert c.request_pretrain(project) == "busy"  # never a follow-up, never a second pretrain
        assert c.status(project)["follow_up"] and c.handle.queue.count == 0

    fake_jobs.HOOK.append(during)
    assert pcoord.request_pretrain("2") == "enqueued"
    drain(pcoord)
    assert runs(pcoord, "2") == ["pretrain", "rank", "train", "rank"]
    st = pcoord.status("2")
    assert st["state"] == "idle" and st["labels_since_last_run"] == {}  # the train run consumed them


def test_start_training_while_a_pretrain_waits_follows_it(pcoord: Coordinator) -> None:
    assert pcoord.request_pretrain("3") == "enqueued"
    assert pcoord.request_training("3") == "follow_up"  # a waiting pretrain is not a train run
    assert pcoord.request_training("3") == "follow_up"
    assert pcoord.handle.queue.count == 1
    drain(pcoord)
    assert runs(pcoord, "3") == ["pretrain", "rank", "train", "rank"]


def test_a_pretrain_consumes_no_label_counts(pcoord: Coordinator) -> None:
    pcoord.record_labels("4", ["semantic"], threshold=100)
    assert pcoord.request_pretrain("4") == "enqueued"
    drain(pcoord)
    assert runs(pcoord, "4") == ["pretrain", "rank"]
    assert pcoord.status("4")["labels_since_last_run"] == {"semantic": 1}


def test_no_pretrain_while_training(pcoord: Coordinator) -> None:
    def during(c: Coordinator, project: str) -> None:
        if runs(c, project) == ["train"]:
            assert c.request_pretrain(project) == "busy"
            assert not c.status(project)["follow_up"]

    fake_jobs.HOOK.append(during)
    assert pcoord.request_training("5") == "enqueued"
    drain(pcoord)
    assert runs(pcoord, "5") == ["train", "rank"]


def test_dead_pretrain_is_resumed_as_a_pretrain_with_its_follow_up(pcoord: Coordinator) -> None:
    pcoord.lease_s = 0.3
    assert pcoord.request_pretrain("6") == "enqueued"
    job = Job.fetch(pcoord.status("6")["job_id"], connection=pcoord.redis)
    pcoord.handle.queue.remove(job)
    job.set_status(JobStatus.STARTED)
    pcoord.begin_pretrain("6")  # the worker began, then died (kill -9)
    assert pcoord.request_training("6") == "follow_up"  # labels arrived meanwhile
    assert pcoord.request_pretrain("6") == "busy"  # the lease still runs
    time.sleep(0.4)
    assert pcoord.status("6")["lease_expired"] is True
    assert pcoord.request_pretrain("6") == "enqueued"  # the next trigger takes it over
    st = pcoord.status("6")
    assert st["state"] == "queued" and st["follow_up"] and "lease expired" in st["error"]
    drain(pcoord)
    assert runs(pcoord, "6") == ["pretrain", "rank", "train", "rank"]


def test_lost_queued_pretrain_is_enqueued_again_as_a_pretrain(pcoord: Coordinator) -> None:
    assert pcoord.request_pretrain("7") == "enqueued"
    pcoord.handle.queue.empty()
    pcoord.redis.hset("mtal:project:7", "updated", time.time() - 60)
    assert pcoord.request_pretrain("7") == "enqueued"
    drain(pcoord)
    assert runs(pcoord, "7") == ["pretrain", "rank"]


def test_the_default_pretrain_job_path_resolves() -> None:
    import inspect

    from rq.utils import import_attribute

    from backend.loop import jobs

    default = inspect.signature(Coordinator).parameters["pretrain_job"].default
    assert import_attribute(default) is jobs.pretrain_job
