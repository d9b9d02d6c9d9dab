"""``python -m backend.loop.worker`` survives a lost Redis: RQ's loop raising ConnectionError (even from its
teardown, as measured when a job ended during a Redis restart) makes it wait and serve again."""

from __future__ import annotations

from typing import Any

import pytest
import redis.exceptions

from backend.loop import worker


class FlakyWorker:
    """A SimpleWorker stand-in whose first ``fails`` work() calls raise like RQ's did without Redis."""

    calls: list[tuple[str | None, bool]] = []
    fails = 2

    def __init__(self, queues: list[Any], connection: Any, name: str | None) -> None:
        self.name = name

    def work(self, burst: bool = False) -> bool:
        FlakyWorker.calls.append((self.name, burst))
        if len(FlakyWorker.calls) <= FlakyWorker.fails:
            raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        return True


class Handle:
    queue, connection = object(), object()


def test_worker_waits_and_serves_again_after_redis_is_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr(worker, "SimpleWorker", FlakyWorker)
    monkeypatch.setattr(worker.time, "sleep", waits.append)
    FlakyWorker.calls = []
    worker.serve(Handle(), "gpu0", burst=False)
    assert FlakyWorker.calls == [("gpu0", False), ("gpu0-1", False), ("gpu0-2", False)]  # fresh names
    assert waits == [1.0, 2.0]


def test_other_errors_still_stop_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(FlakyWorker):
        def work(self, burst: bool = False) -> bool:
            raise RuntimeError("a bug")

    monkeypatch.setattr(worker, "SimpleWorker", Broken)
    with pytest.raises(RuntimeError, match="a bug"):
        worker.serve(Handle(), None, burst=True)


def test_a_loop_that_quits_without_a_stop_request_serves_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """RQ's loop quits on an unhandled exception and returns normally when its teardown then reaches the
    restarted Redis (the fresh-clone CI run: the worker exited, the project stuck): serve again; a loop that
    returns after SIGTERM (``_stop_requested``) ends the worker."""

    class QuitsOnce(FlakyWorker):
        def work(self, burst: bool = False) -> bool:
            FlakyWorker.calls.append((self.name, burst))
            self._stop_requested = len(FlakyWorker.calls) > 1  # the first return: the loop quit on an error
            return False

    waits: list[float] = []
    monkeypatch.setattr(worker, "SimpleWorker", QuitsOnce)
    monkeypatch.setattr(worker.time, "sleep", waits.append)
    FlakyWorker.calls = []
    worker.serve(Handle(), "gpu0", burst=False)
    assert FlakyWorker.calls == [("gpu0", False), ("gpu0-1", False)]
    assert waits == [1.0]
