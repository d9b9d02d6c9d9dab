"""The body-read watchdog of backend.web.guard (issue #27, webhook p99 under training): a burst of requests
whose bodies arrive in time wakes its thread once, not once per request (each wake-up competed with the
requests for the CPU and the GIL); a read that passes its deadline still has its socket shut."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from backend.web.guard import _ReadWatchdog


class CountingCondition:
    """A threading.Condition that counts notify() calls."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.notified = 0

    def __enter__(self) -> Any:
        return self._cond.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self._cond.__exit__(*exc)

    def wait(self, timeout: float | None = None) -> bool:
        return self._cond.wait(timeout)

    def notify(self, n: int = 1) -> None:
        self.notified += 1
        self._cond.notify(n)


def test_a_burst_of_finished_reads_wakes_the_thread_once() -> None:
    watchdog = _ReadWatchdog()
    watchdog._cond = CountingCondition()  # type: ignore[assignment]
    a, b = socket.socketpair()
    try:
        # a read in progress (a server under load always has one): the thread sleeps until its deadline; a
        # thread that empties its heap between two reads is woken by the next one, whatever the code, so the
        # burst is measured behind this one (deterministic, unlike a timing-dependent empty heap)
        first = watchdog.watch(a, time.monotonic() + 30.0)
        time.sleep(0.1)
        before = watchdog._cond.notified
        for _ in range(200):  # 4 bursts of 50 webhooks, each body read in time
            token = watchdog.watch(a, time.monotonic() + 30.0)
            watchdog.done(token)
        time.sleep(0.2)
        assert before == 1 and watchdog._cond.notified == before, \
            f"{watchdog._cond.notified - before} wake-ups for 200 reads"
        watchdog.done(first)
    finally:
        a.close()
        b.close()


def test_a_read_past_its_deadline_is_cut_and_finished_ones_are_dropped() -> None:
    watchdog = _ReadWatchdog()
    a, b = socket.socketpair()
    try:
        for _ in range(20):
            watchdog.done(watchdog.watch(a, time.monotonic() + 0.05))  # finished in time
        watchdog.watch(a, time.monotonic() + 0.3)  # never finished: its recv must return b"" after 0.3 s
        t0 = time.monotonic()
        a.settimeout(5.0)
        assert a.recv(10) == b""
        assert 0.2 < time.monotonic() - t0 < 3.0
        time.sleep(0.1)
        with watchdog._cond:
            assert not watchdog._heap and not watchdog._active
        assert watchdog.wakeups <= 6  # start, the finished ones at once, the cut one (not 21+)
    finally:
        a.close()
        b.close()
