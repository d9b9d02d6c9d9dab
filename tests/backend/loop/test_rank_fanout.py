"""A ranking fanned out over RQ (issue #24, :mod:`backend.loop.rank_fanout`), in-process: the backend's app, its
coordinator and jobs, on a real redis-server and on the embedded queue (fakeredis), drained by RQ workers in
this process; Label Studio is the fake of :mod:`bench.fake_ls` over HTTP. The kill -9 of a worker in the middle
of a chunk is in tests/backend/system/test_rank_fanout_kill.py."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue
from rq.job import Job

from backend.loop import jobs
from backend.loop.queue import QUEUE_NAME, QueueHandle, ThreadWorker, open_queue
from backend.loop.rank_fanout import RankRun, split
from backend.loop.trainer import QueueTrainer
from backend.serving.store import ModelStore
from backend.settings import Settings
from backend.web.app import create_app
from bench.fake_ls import FakeLabelStudio
from tests.support.fault_rig import CONFIG, serve_labelled_project

PROJECT = "1"
N_TASKS, LABELLED, CHUNK = 14, (1, 2, 3, 4), 4  # 14 tasks in chunks of 4: 4 chunk jobs
UNLABELLED = {str(t) for t in range(1, N_TASKS + 1)} - {str(t) for t in LABELLED}


@dataclass
class Project:
    """The app, its store and queue, the fake Label Studio, and a way to run the queued jobs."""

    client: Any
    store: ModelStore
    handle: QueueHandle
    ls: FakeLabelStudio
    settings: Settings

    def drain(self, max_jobs: int | None = None) -> None:
        ThreadWorker([self.handle.queue], connection=self.handle.connection).work(burst=True, max_jobs=max_jobs)

    def status(self) -> dict[str, Any]:
        return self.client.get("/status", query_string={"project": PROJECT}).get_json()

    def train(self) -> None:
        r = self.client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": int(PROJECT)}})
        assert r.status_code == 200, r.get_json()

    def pushed(self) -> Counter:
        """(version, task) -> predictions pushed."""
        return Counter((p["model_version"], str(p["task"])) for p in self.ls.predictions)

    def configure(self, **changes: Any) -> None:
        self.settings = replace(self.settings, **changes)
        jobs.configure(self.settings)


@pytest.fixture(params=["redis", "embedded"])
def project(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Project]:
    """A set-up project of 14 tasks (4 labelled) on a real redis-server or the embedded queue (fakeredis)."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        conn = redis.Redis.from_url(url)
        handle = QueueHandle(conn, Queue(QUEUE_NAME, connection=conn), embedded=False)
    else:  # the server's own embedded queue, as without REDIS_URL (its worker thread is this test's burst worker)
        url, handle = None, open_queue(None, start_worker=False)
    handle.connection.flushdb()
    with serve_labelled_project(N_TASKS, LABELLED, int(PROJECT)) as ls:
        settings = Settings(label_studio_url=ls.url, label_studio_api_key="t", model_dir=tmp_path / "models",
                            redis_url=url, net_config="tiny", image_size=64, device="cpu", cache_dir=None,
                            strategy="coreset", clusters=0, train_epochs=1, train_batch_size=4, val_fraction=0.0,
                            train_threshold=0, ls_retries=0, quality_gate=0.0, rank_chunk_tasks=CHUNK)
        jobs.configure(settings)
        store = ModelStore(settings.model_dir, device="cpu")
        trainer = QueueTrainer(settings, store, handle=handle)
        client = create_app(settings, store, trainer).test_client()
        assert client.post("/setup", json={"project": f"{PROJECT}.1712345678", "schema": CONFIG}).status_code == 200
        try:
            yield Project(client, store, handle, ls, settings)
        finally:
            jobs.configure(None)


def test_split() -> None:
    assert split(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert split([], 4) == [] and split([1], 4) == [[1]]
    with pytest.raises(ValueError, match="chunk size"):
        split([1], 0)


def test_fanned_out_ranking_equals_the_one_job_ranking(project: Project) -> None:
    project.train()
    project.drain()  # train, rank (plan), 4 chunks, merge
    status = project.status()
    assert status["state"] == "idle" and not status["error"], status
    version = project.store.current(PROJECT)
    ranking = status["ranking"]
    assert ranking["state"] == "done" and ranking["version"] == version
    assert (ranking["chunks_done"], ranking["chunks_total"]) == (4, 4)
    assert (ranking["tasks_scored"], ranking["tasks_failed"], ranking["tasks_total"]) == (14, 0, 14)
    assert ranking["eta_s"] == 0
    assert project.pushed() == Counter({(version, t): 1 for t in UNLABELLED})  # one prediction per task, once
    fanned = project.store.ranking(PROJECT)
    assert fanned["run"] == ranking["run"] and set(fanned["tasks"]) == UNLABELLED
    assert project.ls.project["model_version"] == version
    assert not list((project.store.tmp_dir(PROJECT)).glob("rank-*"))  # the run's files are removed
    for i in range(4):  # RQ ran each chunk once, and kept its progress in the job's meta
        job = Job.fetch(f"{ranking['run']}-chunk-{i}", connection=project.handle.connection)
        assert job.get_status() == "finished" and job.meta["rank"]["tasks"] == len(split(range(14), CHUNK)[i])

    project.configure(rank_chunk_tasks=100)  # the same version ranked in one job (no chunk job)
    project.handle.queue.empty()
    coordinator = QueueTrainer(project.settings, project.store, handle=project.handle).coordinator
    coordinator.trained(PROJECT, version, {})
    project.drain()
    one = project.store.ranking(PROJECT)
    assert "run" not in one and project.status()["ranking"]["chunks_total"] == 1
    assert {t: e["score"] for t, e in one["tasks"].items()} == {t: e["score"] for t, e in fanned["tasks"].items()}
    for t in UNLABELLED:
        assert one["tasks"][t]["certainty"] == pytest.approx(fanned["tasks"][t]["certainty"], rel=1e-5)


def test_a_bad_image_costs_its_task_only(project: Project, caplog: pytest.LogCaptureFixture) -> None:
    project.ls.images[9 % N_TASKS] = b"not an image"  # task 9 (in chunk 2)
    project.train()
    with caplog.at_level(logging.ERROR):
        project.drain()
    status = project.status()
    assert status["state"] == "idle" and not status["error"], status
    assert (status["ranking"]["tasks_scored"], status["ranking"]["tasks_failed"]) == (13, 1)
    assert {t for _, t in project.pushed()} == UNLABELLED - {"9"}
    assert any("task 9 skipped" in r.getMessage() for r in caplog.records)


def test_a_chunk_failing_three_times_fails_the_ranking_and_keeps_the_previous_one(project: Project) -> None:
    project.train()
    project.drain()
    first = project.store.current(PROJECT)
    before = project.pushed()
    for t in (13, 14):  # chunk 3 holds only these two: nothing of it can be fetched
        project.ls.images[t % N_TASKS] = b"broken"
    project.train()
    project.drain()
    status = project.status()
    second = project.store.current(PROJECT)
    assert second != first and status["state"] == "idle"
    assert "1 of 4 rank chunks failed" in status["error"] and "chunk 4 (failed after 3 tries)" in status["error"]
    assert "no task image of 2 could be fetched" in status["error"]
    assert status["ranking"]["state"] == "failed" and status["ranking"]["error"] in status["error"]
    assert project.pushed() == before  # nothing of the failed ranking was pushed
    assert project.store.ranking(PROJECT)["model_version"] == first and project.ls.project["model_version"] == first


def test_the_merge_is_idempotent(project: Project) -> None:
    project.train()
    project.drain(max_jobs=1 + 1 + 4)  # train, plan and the 4 chunks: the merge job waits in the queue
    status = project.status()
    run, version = status["ranking"]["run"], project.store.current(PROJECT)
    assert status["state"] == "ranking" and status["ranking"]["chunks_done"] == 4
    assert Job.fetch(run, connection=project.handle.connection).get_status() == "queued"
    # a merge that died in the middle of its push: its marker, and a part of its predictions in Label Studio
    (RankRun(project.store, PROJECT, run).dir / "pushing").touch()
    project.ls.add_predictions([{"task": t, "model_version": version, "result": [], "score": 0.0} for t in (5, 6)])
    project.drain()  # the merge (run again by RQ)
    assert project.status()["state"] == "idle"
    assert project.pushed() == Counter({(version, t): 1 for t in UNLABELLED})
    stored = project.store.ranking(PROJECT)
    again = jobs.rank_merge_job(PROJECT, run, 4)  # once more, after it published
    assert again["already_published"] and again["pushed"] == 0
    assert project.pushed() == Counter({(version, t): 1 for t in UNLABELLED})
    assert project.store.ranking(PROJECT) == stored and project.status()["state"] == "idle"


def test_a_new_run_supersedes_the_ranking_in_progress(project: Project) -> None:
    project.train()
    project.drain(max_jobs=1 + 1 + 2)  # train, plan and 2 of the 4 chunks
    first = project.store.current(PROJECT)
    old = project.status()["ranking"]
    assert old["chunks_done"] == 2 and project.status()["state"] == "ranking"
    # the operator cancels the ranking's merge job (or it is lost): once its lease has run out, the next
    # trigger takes the run over, and a new training run starts, its ranking after it
    Job.fetch(old["run"], connection=project.handle.connection).cancel()
    project.handle.connection.hset(f"mtal:project:{PROJECT}", "lease", "1")
    project.train()
    project.drain()
    status = project.status()
    second = project.store.current(PROJECT)
    assert status["state"] == "idle" and second != first and not status["error"], status
    for i in (2, 3):  # the old run's last chunks were dropped unscored
        job = Job.fetch(f"{old['run']}-chunk-{i}", connection=project.handle.connection)
        assert job.return_value() == {"run": old["run"], "chunk": i, "stale": True}
    assert status["ranking"]["run"] != old["run"] and status["ranking"]["state"] == "done"
    assert project.pushed() == Counter({(second, t): 1 for t in UNLABELLED})  # nothing of the old run pushed
    assert not (project.store.tmp_dir(PROJECT) / f"rank-{old['run']}").exists()


def test_a_small_project_is_one_job(project: Project) -> None:
    project.configure(rank_chunk_tasks=N_TASKS)
    project.train()
    project.drain()
    ranking = project.status()["ranking"]
    assert (ranking["chunks_done"], ranking["chunks_total"], ranking["tasks_scored"]) == (1, 1, 14)
    assert not [j for j in project.handle.queue.finished_job_registry.get_job_ids() if "-chunk-" in j]
    assert project.pushed() == Counter({(project.store.current(PROJECT), t): 1 for t in UNLABELLED})
