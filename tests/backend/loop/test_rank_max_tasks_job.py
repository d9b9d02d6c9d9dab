"""MTAL_RANK_MAX_TASKS on the backend's path against a real redis-server: two training runs, each followed by
the rank job, with a bound of 3 of the 8 unlabelled tasks. Label Studio is the in-memory fake of
:mod:`bench.fake_ls` over HTTP (it keeps every pushed prediction and deletes a version's on request)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rq import Queue

from backend.loop import jobs
from backend.loop.queue import QUEUE_NAME, QueueHandle, ThreadWorker
from backend.loop.trainer import QueueTrainer
from backend.serving.store import ModelStore
from backend.settings import Settings
from backend.web.app import create_app
from bench.fake_ls import FakeLabelStudio
from tests.support.fault_rig import CONFIG, serve_labelled_project

pytestmark = pytest.mark.redis
PROJECT = "1"
N_TASKS, LABELLED, BOUND = 12, (1, 2, 3, 4), 3


@pytest.fixture
def fake_ls() -> Iterator[FakeLabelStudio]:
    with serve_labelled_project(N_TASKS, LABELLED, int(PROJECT)) as ls:
        yield ls


def test_each_ranking_scores_its_subset_and_the_others_keep_their_prediction(
    redis_url: str, tmp_path: Path, fake_ls: FakeLabelStudio
) -> None:
    conn = redis.Redis.from_url(redis_url)
    conn.flushdb()
    settings = Settings(label_studio_url=fake_ls.url, label_studio_api_key="t", model_dir=tmp_path / "models",
                        redis_url=redis_url, net_config="tiny", image_size=64, device="cpu", cache_dir=None,
                        strategy="random", clusters=0, train_epochs=1, train_batch_size=4, val_fraction=0.0,
                        train_threshold=0, ls_retries=0, rank_max_tasks=BOUND, quality_gate=0.0)
    jobs.configure(settings)
    store = ModelStore(settings.model_dir, device="cpu")
    trainer = QueueTrainer(settings, store, handle=QueueHandle(conn, Queue(QUEUE_NAME, connection=conn), False))
    client = create_app(settings, store, trainer).test_client()
    unlabelled = {str(t) for t in range(1, N_TASKS + 1)} - {str(t) for t in LABELLED}
    pushed: list[dict[str, set[str]]] = []  # per ranking: version -> tasks with a prediction of it
    try:
        assert client.post("/setup", json={"project": f"{PROJECT}.1712345678", "schema": CONFIG}).status_code == 200
        for _ in range(2):
            body = {"action": "START_TRAINING", "project": {"id": int(PROJECT)}}
            assert client.post("/webhook", json=body).status_code == 200
            ThreadWorker([trainer.handle.queue], connection=conn).work(burst=True)
            status = client.get("/status", query_string={"project": PROJECT}).get_json()
            assert status["state"] == "idle" and not status["error"], status
            by_version: dict[str, set[str]] = {}
            for p in fake_ls.predictions:
                by_version.setdefault(p["model_version"], set()).add(str(p["task"]))
            pushed.append(by_version)
    finally:
        jobs.configure(None)
    first, second = pushed
    (v1, scored1), = first.items()  # one version, 3 of the 8 unlabelled tasks (none handed to score_new_job)
    assert len(scored1) == BOUND and scored1 <= unlabelled
    v2 = store.current(PROJECT)
    assert v2 != v1 and set(second) == {v1, v2}  # v1's predictions were not pruned
    assert second[v1] == scored1 and len(second[v2]) == BOUND and second[v2] <= unlabelled
    assert second[v2] != scored1  # the next version drew other tasks
    ranking = store.ranking(PROJECT)
    assert ranking["model_version"] == v2 and set(ranking["tasks"]) == scored1 | second[v2]
