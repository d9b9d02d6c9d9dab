"""backend.web.probe.CachedProbe: fresh answers are reused, a failing probe is an answer, a hung one is
waited for at most ``wait`` seconds and never twice at once."""

from __future__ import annotations

import threading
import time

from backend.web.probe import CachedProbe


def test_fresh_answer_reused_then_refreshed() -> None:
    calls: list[int] = []
    probe = CachedProbe(lambda: {"queued": len(calls.append(1) or calls)}, "q", max_age=0.2, wait=1.0)
    assert probe.get() == {"queued": 1} and probe.get() == {"queued": 1} and len(calls) == 1
    time.sleep(0.25)
    assert probe.get() == {"queued": 2}


def test_failure_is_an_answer_without_its_text() -> None:
    def down() -> dict:
        raise ConnectionError("redis://:hunter2@10.0.0.5:6379 refused")

    got = CachedProbe(down, "the queue", wait=1.0).get()
    assert got["available"] is False and "the queue unavailable" in got["error"] and "hunter2" not in got["error"]


def test_hung_probe_costs_at_most_wait_and_runs_once() -> None:
    release, started = threading.Event(), []

    def hung() -> dict:
        started.append(1)
        release.wait(5)
        return {"queued": 0}

    probe = CachedProbe(hung, "q", max_age=10, wait=0.1)
    t0 = time.monotonic()
    first, second = probe.get(), probe.get()
    assert time.monotonic() - t0 < 0.5 and len(started) == 1
    assert first["available"] is False and "no answer within 0.1 s" in first["error"] and second == first
    release.set()
    time.sleep(0.1)
    assert probe.get() == {"queued": 0}  # the late answer is kept
