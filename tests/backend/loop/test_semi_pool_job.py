"""Semi-supervised training on the backend's path (issue #30) against a real redis-server: the train job
lists the project's unlabelled tasks, fills the one pool cache and trains on it; the rank job then reads
those images from the pool instead of fetching them again. Label Studio is the in-memory fake of
:mod:`bench.fake_ls` over HTTP (it counts image downloads), with a tiny net."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue

from backend.loop import jobs, rank_fanout, train_round
from backend.loop.queue import QUEUE_NAME, QueueHandle, ThreadWorker
from backend.loop.trainer import QueueTrainer
from backend.serving.store import ModelStore
from backend.settings import Settings
from backend.web.app import create_app
from bench.fake_ls import FakeLabelStudio
from tests.support.fault_rig import CONFIG, serve_labelled_project

pytestmark = pytest.mark.redis
PROJECT = "1"
N_TASKS, LABELLED = 12, (1, 2, 3, 4)


@pytest.fixture
def fake_ls() -> Iterator[FakeLabelStudio]:
    with serve_labelled_project(N_TASKS, LABELLED, int(PROJECT)) as ls:
        yield ls


def _run(redis_url: str, tmp_path: Path, ls: FakeLabelStudio, semi_weight: float,
         monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], list[int | None], dict[str, int]]:
    """/setup, Start Training, drain the queue (train then rank); returns (/status, the pool sizes fit got,
    image downloads {"train": n, "rank": n})."""
    conn = redis.Redis.from_url(redis_url)
    conn.flushdb()
    settings = Settings(label_studio_url=ls.url, label_studio_api_key="t", model_dir=tmp_path / "models",
                        redis_url=redis_url, net_config="tiny", image_size=64, device="cpu", cache_dir=None,
                        strategy="random", clusters=0, train_epochs=2, train_batch_size=4, val_fraction=0.0,
                        train_threshold=0, ls_retries=0, semi_weight=semi_weight)
    jobs.configure(settings)
    store = ModelStore(settings.model_dir, device="cpu")
    trainer = QueueTrainer(settings, store, handle=QueueHandle(conn, Queue(QUEUE_NAME, connection=conn), False))
    client = create_app(settings, store, trainer).test_client()
    pools: list[int | None] = []
    downloads: dict[str, int] = {}
    real_fit, real_rank = train_round.fit, rank_fanout.rank_tasks

    def fit(model: Any, *a: Any, unlabelled: Any = None, **k: Any) -> Any:
        pools.append(None if unlabelled is None else len(unlabelled))
        return real_fit(model, *a, unlabelled=unlabelled, **k)

    def rank(*a: Any, **k: Any) -> Any:
        downloads["train"] = ls.calls["image"]
        out = real_rank(*a, **k)
        downloads["rank"] = ls.calls["image"] - downloads["train"]
        return out

    monkeypatch.setattr(train_round, "fit", fit)
    monkeypatch.setattr(rank_fanout, "rank_tasks", rank)
    try:
        assert client.post("/setup", json={"project": f"{PROJECT}.1712345678", "schema": CONFIG}).status_code == 200
        body = {"action": "START_TRAINING", "project": {"id": int(PROJECT)}}
        assert client.post("/webhook", json=body).status_code == 200
        ThreadWorker([trainer.handle.queue], connection=conn).work(burst=True)
        return client.get("/status", query_string={"project": PROJECT}).get_json(), pools, downloads
    finally:
        jobs.configure(None)


def test_train_job_learns_from_the_pool_and_the_rank_job_reads_it(
    redis_url: str, tmp_path: Path, fake_ls: FakeLabelStudio, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, pools, downloads = _run(redis_url, tmp_path, fake_ls, 1.0, monkeypatch)
    unlabelled = N_TASKS - len(LABELLED)
    assert status["state"] == "idle" and not status["error"], status
    assert pools == [unlabelled]  # fit got the tasks without any label, and only those
    assert status["metrics"]["n_unlabelled"] == unlabelled and status["metrics"]["n_train"] == len(LABELLED)
    pool = status["pool"]
    assert pool["pool"] == pool["images"] == pool["fetched"] == unlabelled and pool["failed"] == 0, pool
    assert downloads == {"train": N_TASKS, "rank": len(LABELLED)}  # the ranking fetched only the labelled images
    assert len(fake_ls.predictions) == unlabelled  # and pushed one prediction per unlabelled task


def test_semi_off_trains_supervised_and_fills_no_pool(
    redis_url: str, tmp_path: Path, fake_ls: FakeLabelStudio, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, pools, downloads = _run(redis_url, tmp_path, fake_ls, 0.0, monkeypatch)
    assert status["state"] == "idle" and not status["error"], status
    assert pools == [None] and status["metrics"]["n_unlabelled"] == 0 and status["pool"] is None
    assert downloads == {"train": len(LABELLED), "rank": N_TASKS}
