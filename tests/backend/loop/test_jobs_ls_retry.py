"""Label Studio unreachable during ranking: the ranking is retried with exponential backoff (bounded),
each wait is visible in /status, and when Label Studio stays away the run fails and the project goes back
to idle (not stuck in ``ranking``) with its label counts."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
from rq import Queue

from backend.labelstudio.client import LabelStudioAPIError
from backend.loop import jobs, rank_fanout
from backend.loop.coordinator import Coordinator
from backend.loop.queue import QUEUE_NAME, QueueHandle
from backend.loop.rank_pass import NothingFetched
from backend.settings import Settings


class DownLS:
    """Raises ``error`` on the first ``failures`` task listings, then answers with no task."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def iter_labelled_tasks(self, project: int) -> list[dict[str, Any]]:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return []

    def iter_tasks(self, project: int, only_unlabelled: bool = False) -> list[dict[str, Any]]:
        return []


@pytest.fixture
def ranking(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A project in ``ranking`` and a rank job whose Label Studio is ``DownLS``; returns a runner that
    gives (outcome, [status error seen at each wait], [wait seconds], coordinator)."""
    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    coord = Coordinator(QueueHandle(conn, Queue(QUEUE_NAME, connection=conn), embedded=False))

    Outcome = tuple[Any, list[str | None], list[float], Coordinator]

    def run(ls: DownLS, retries: int = 3, backoff: float = 2.0) -> Outcome:
        coord.record_labels("5", ["semantic"], threshold=1)
        coord.begin("5")
        coord.trained("5", "mtal-5-v2-aaaaaaaa", {})
        coord.handle.queue.empty()
        settings = Settings(label_studio_url="http://ls.invalid", label_studio_api_key="t", ls_retries=retries,
                            ls_backoff_s=backoff)
        ctx = jobs.JobContext(settings, store=_Store(), coordinator=coord, ls=ls, fetcher=None)  # type: ignore[arg-type]
        monkeypatch.setattr(jobs.JobContext, "create", classmethod(lambda cls: ctx))
        monkeypatch.setattr(jobs.JobContext, "config_and_schema", lambda self, project: ("<View/>", "schema"))
        monkeypatch.setattr(rank_fanout, "rank_tasks", lambda *a, **k: {"pushed": 0, "tasks": 0})
        seen: list[str | None] = []
        waits: list[float] = []

        def sleep(s: float) -> None:
            waits.append(s)
            seen.append(coord.status("5")["error"])

        monkeypatch.setattr(jobs.time, "sleep", sleep)
        try:
            outcome: Any = jobs.rank_job("5")
        except Exception as e:  # noqa: BLE001 - the test inspects it
            outcome = e
        return outcome, seen, waits, coord

    return run


class _Store:
    def current(self, project: str) -> str:
        return "mtal-5-v2-aaaaaaaa"


def test_ls_back_after_two_failures(ranking: Any) -> None:
    ls = DownLS(2, LabelStudioAPIError("list tasks", None, "ConnectError: [Errno 111] Connection refused"))
    outcome, seen, waits, coord = ranking(ls)
    assert outcome == {"pushed": 0, "tasks": 0, "chunks": 1} and ls.calls == 3
    assert waits == [2.0, 4.0]  # exponential backoff
    assert seen[0].startswith("ranking: Label Studio unreachable (try 1 of 4, next in 2 s)")
    assert "Connection refused" in seen[0] and "try 2 of 4" in seen[1]
    st = coord.status("5")
    assert st["state"] == "idle" and st["error"] is None  # the retry's message is cleared on success


@pytest.mark.parametrize("error", [LabelStudioAPIError("list tasks", 503, "Service Unavailable"),
                                   NothingFetched("no task image could be fetched")])
def test_ls_down_for_good_fails_the_run_without_sticking(ranking: Any, error: Exception) -> None:
    ls = DownLS(100, error)
    outcome, seen, waits, coord = ranking(ls, retries=3)
    assert outcome is error and ls.calls == 4 and waits == [2.0, 4.0, 8.0]
    st = coord.status("5")
    assert st["state"] == "idle" and st["labels_since_last_run"] == {"semantic": 1}  # counts back
    assert st["error"].startswith("rank: ") and str(error)[:20] in st["error"]


def test_client_errors_are_not_retried(ranking: Any) -> None:
    ls = DownLS(100, LabelStudioAPIError("list tasks", 401, "Invalid token"))
    outcome, _, waits, coord = ranking(ls)
    assert isinstance(outcome, LabelStudioAPIError) and ls.calls == 1 and waits == []
    assert coord.status("5")["state"] == "idle"


def test_backoff_is_capped(ranking: Any) -> None:
    ls = DownLS(100, LabelStudioAPIError("list tasks", None, "ReadTimeout"))
    _, _, waits, _ = ranking(ls, retries=4, backoff=20.0)
    assert waits == [20.0, 40.0, 60.0, 60.0]


def test_a_rank_chunk_waits_for_label_studio_without_writing_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk job of a fanned-out ranking waits for Label Studio as the one-job ranking does, but records
    nothing in the run's state (the merge job owns it)."""
    from backend.loop import rank_jobs

    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    coord = Coordinator(QueueHandle(conn, Queue(QUEUE_NAME, connection=conn), embedded=False))
    settings = Settings(label_studio_url="http://ls.invalid", label_studio_api_key="t", ls_retries=3, ls_backoff_s=2.0)
    ctx = jobs.JobContext(settings, store=_Store(), coordinator=coord, ls=None, fetcher=None)  # type: ignore[arg-type]
    monkeypatch.setattr(jobs.JobContext, "create", classmethod(lambda cls: ctx))
    monkeypatch.setattr(rank_jobs, "_pooled", lambda ctx, project: (ctx, None))
    calls: list[tuple[str, str, int]] = []

    def score(ctx: Any, project: str, run: str, index: int) -> dict[str, Any]:
        calls.append((project, run, index))
        if len(calls) <= 2:
            raise LabelStudioAPIError("image", None, "ConnectError: [Errno 111] Connection refused")
        return {"scored": 4}

    waits: list[float] = []
    monkeypatch.setattr(rank_jobs, "score_chunk", score)
    monkeypatch.setattr(jobs.time, "sleep", waits.append)
    assert jobs.rank_chunk_job("5", "mtal-rank-x", "2") == {"scored": 4}
    assert calls == [("5", "mtal-rank-x", 2)] * 3 and waits == [2.0, 4.0]
    assert conn.keys("mtal:project:5") == []  # no state written
