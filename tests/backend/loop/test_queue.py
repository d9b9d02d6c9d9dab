"""Job threads run at a lower CPU priority than the server: per thread, inherited by the threads they
start (torch's intra-op team), nothing else in the process touched."""

from __future__ import annotations

import os
import sys
import threading

import pytest
import torch

from backend.loop.queue import lower_priority

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")


def _nice(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def _in_thread(fn) -> dict:
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(fn()))
    t.start()
    t.join(timeout=30)
    return out


def test_lower_priority_is_per_thread_and_inherited() -> None:
    main = _nice(threading.get_native_id())
    expected = min(19, main + 3)

    def job() -> dict:
        value = lower_priority(3)
        child: dict = _in_thread(lambda: {"child": _nice(threading.get_native_id())})
        return {"value": value, "self": _nice(threading.get_native_id()), **child}

    got = _in_thread(job)
    assert got == {"value": expected, "self": expected, "child": expected}
    assert _nice(threading.get_native_id()) == main  # the caller's thread (the server) is untouched


def test_torch_team_of_a_job_thread_inherits_its_priority() -> None:
    """torch's OpenMP team belongs to the thread that runs the parallel region: a lowered job thread's
    team runs lowered too, while the main thread's team keeps its priority."""
    torch.set_num_threads(2)
    x = torch.randn(256, 256)
    for _ in range(4):
        x @ x  # the main thread's team exists before the job thread starts
    base = {int(t): _nice(int(t)) for t in os.listdir("/proc/self/task")}
    stop = threading.Event()
    started = threading.Event()

    def job() -> None:
        lower_priority(5)
        conv, y = torch.nn.Conv2d(8, 8, 3), torch.randn(8, 8, 64, 64)
        while not stop.is_set():
            conv(y).sum().backward()
            started.set()

    t = threading.Thread(target=job)
    t.start()
    try:
        assert started.wait(30)
        now = {int(tid): _nice(int(tid)) for tid in os.listdir("/proc/self/task")}
    finally:
        stop.set()
        t.join(timeout=30)
    new = {tid: n for tid, n in now.items() if tid not in base}
    assert len(new) >= 2 and set(new.values()) == {min(19, base[os.getpid()] + 5)}  # job thread + its team
    assert all(now[tid] == n for tid, n in base.items() if tid in now)


def test_zero_leaves_the_priority_alone() -> None:
    got = _in_thread(lambda: {"value": lower_priority(0), "self": _nice(threading.get_native_id())})
    assert got == {"value": None, "self": _nice(threading.get_native_id())}
