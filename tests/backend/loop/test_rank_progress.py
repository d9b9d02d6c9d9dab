"""backend.loop.rank_progress.RankProgress (what /status shows as ``ranking``) and MTAL_RANK_CHUNK_TASKS."""

from __future__ import annotations

import fakeredis
import pytest

from backend.loop import rank_progress
from backend.loop.rank_progress import RankProgress
from backend.settings import Settings, SettingsError


def test_counts_and_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(rank_progress.time, "time", lambda: now[0])
    progress = RankProgress(fakeredis.FakeRedis(server=fakeredis.FakeServer()), 7)
    assert progress.status() is None  # before the first ranking
    progress.start("run-a", "mtal-7-v2-aaaaaaaa", chunks=4, tasks=100)
    s = progress.status()
    assert (s["state"], s["chunks_done"], s["tasks_scored"], s["eta_s"]) == ("scoring", 0, 0, None)
    now[0] = 1030.0
    progress.chunk("run-a", 0, scored=20, failed=5, done=True)
    progress.chunk("run-a", 1, scored=5)  # under way
    s = progress.status()
    # 30 tasks done in 30 s, 70 left: 70 s
    assert (s["chunks_done"], s["tasks_scored"], s["tasks_failed"], s["elapsed_s"], s["eta_s"]) == (1, 25, 5, 30, 70)
    progress.chunk("run-a", 0, scored=20, failed=5, done=True)  # chunk 0 run again (its worker died): no double count
    progress.chunk("run-b-stale", 2, scored=25, done=True)  # another run's chunk: not this one's
    assert progress.status()["tasks_scored"] == 25 and progress.done_chunks("run-a") == {0}
    progress.state("run-a", "failed", "chunk 4 (failed after 3 tries): boom")
    s = progress.status()
    assert (s["state"], s["error"], s["eta_s"], s["run"]) == ("failed", "chunk 4 (failed after 3 tries): boom", None,
                                                               "run-a")
    progress.start("run-c", "mtal-7-v3-bbbbbbbb", chunks=1, tasks=10)  # the next ranking replaces it
    assert progress.status()["run"] == "run-c" and progress.status()["tasks_scored"] == 0


def test_chunk_size_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().rank_chunk_tasks == 500
    monkeypatch.setenv("MTAL_RANK_CHUNK_TASKS", "64")
    assert Settings.from_env().rank_chunk_tasks == 64
    with pytest.raises(SettingsError, match="MTAL_RANK_CHUNK_TASKS must be >= 1"):
        Settings(rank_chunk_tasks=0)
