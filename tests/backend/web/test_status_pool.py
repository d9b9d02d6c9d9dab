"""/status shows the counts of the project's last pool fill (backend/serving/pool.py), None before one."""

from __future__ import annotations

from pathlib import Path

from backend.serving.pool import PoolCache
from backend.serving.store import ModelStore
from backend.settings import Settings
from backend.web.app import create_app
from tests.backend.serving.test_pool_cache import SCHEMA, CountingFetcher, _task
from tests.backend.web.test_app import RecordingTrainer


def test_status_shows_the_last_pool_fill(tmp_path: Path) -> None:
    settings = Settings(net_config="tiny", image_size=32, device="cpu", model_dir=tmp_path / "models")
    app = create_app(settings, store=ModelStore(settings.model_dir, device="cpu"), trainer=RecordingTrainer())
    client = app.test_client()
    assert client.get("/status", query_string={"project": 7}).get_json()["pool"] is None
    tasks = [_task(1), _task(2, url="/data/upload/bad.png"), _task(3, annotations=[{"id": 1, "result": [{}]}])]
    PoolCache.from_settings(settings, "7", CountingFetcher()).fill(tasks, SCHEMA, seed=settings.seed)
    pool = client.get("/status", query_string={"project": 7}).get_json()["pool"]
    assert (pool["tasks"], pool["labelled"], pool["pool"], pool["images"], pool["failed"]) == (3, 1, 2, 1, 1)
    assert pool["failures"] == {"decode": 1} and pool["failed_examples"][0]["task"] == 2
    assert pool["image_size"] == 32 and pool["image_max_size"] == 1024
