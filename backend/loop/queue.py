"""The job queue: RQ on Redis when ``REDIS_URL`` is set, else an embedded fakeredis + worker thread.

Embedded mode keeps ``make run`` working on a machine without Redis: one process holds a fakeredis
server, the RQ queue on it, and a :class:`ThreadWorker` that runs jobs in a daemon thread. It needs
rq's ``TimerDeathPenalty`` (no SIGALRM outside the main thread) and no signal handlers. Several
gunicorn workers would each get their own fake server, so embedded mode means one server process.

Jobs run at a lower CPU priority than the server (:func:`lower_priority`, ``MTAL_WORKER_NICE``): a
training run that takes every core must not delay the answers Label Studio waits for (webhooks give up
after about a second).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass

import fakeredis
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue, SimpleWorker
from rq.timeouts import TimerDeathPenalty

__all__ = ["QUEUE_NAME", "WEB_TIMEOUT_S", "QueueHandle", "QueueUnavailable", "ThreadWorker", "lower_priority",
           "open_queue"]

log = logging.getLogger(__name__)
QUEUE_NAME = "mtal"
# the web process's Redis timeouts (connect, and each reply): a webhook's Redis work takes milliseconds,
# and Label Studio gives up on a webhook after about a second, so a Redis that is down or hung is a 503
# within this long (no retries) instead of a thread held for the default 5 s connect / 10 s read
WEB_TIMEOUT_S = 1.0


class QueueUnavailable(RuntimeError):
    """Redis (the training queue) could not be reached or did not answer in time (HTTP 503)."""
_embedded_lock = threading.Lock()
_embedded: QueueHandle | None = None


def lower_priority(increment: int) -> int | None:
    """Raise the calling thread's nice value by ``increment`` (capped at 19); returns the new value, or
    None when nothing changed (``increment`` <= 0, or not Linux).

    On Linux the nice value belongs to the thread, and threads it starts later inherit it, torch's
    intra-op (OpenMP) team included, so calling this first in a job-running thread lowers the priority of
    all of that thread's work and of nothing else in the process."""
    if increment <= 0 or not sys.platform.startswith("linux"):
        return None
    tid = threading.get_native_id()
    try:
        value = min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment)
        os.setpriority(os.PRIO_PROCESS, tid, value)
    except OSError as e:
        log.warning("could not lower the job thread's CPU priority: %s", e)
        return None
    return value


class ThreadWorker(SimpleWorker):
    """An RQ worker that can live in a non-main thread: timer-based job timeouts, no signal handlers."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:  # signal.signal() only works in the main thread
        pass


@dataclass
class QueueHandle:
    """The Redis connection, the RQ queue, and (embedded mode) the in-process worker thread."""

    connection: redis.Redis
    queue: Queue
    embedded: bool
    worker_thread: threading.Thread | None = None

    def describe(self) -> dict[str, object]:
        """Queue state for /health and /status."""
        return {
            "backend": "embedded" if self.embedded else "redis",
            "queued": self.queue.count,
            "started": self.queue.started_job_registry.count,
            "failed": self.queue.failed_job_registry.count,
            "worker_alive": None if self.worker_thread is None else self.worker_thread.is_alive(),
        }


def _run_embedded_worker(handle: QueueHandle, nice: int) -> None:
    lower_priority(nice)
    worker = ThreadWorker([handle.queue], connection=handle.connection)
    while True:  # work() returns only on errors; keep the embedded queue served for the process lifetime
        try:
            worker.work(burst=False, logging_level="INFO")
        except Exception:  # noqa: BLE001 - a crashed loop must not silently stop training forever
            log.exception("embedded worker loop crashed; restarting it")


def open_queue(redis_url: str | None, start_worker: bool = True, nice: int = 0,
               timeout: float | None = None) -> QueueHandle:
    """Connect to ``redis_url`` (separate ``python -m backend.loop.worker`` processes run the jobs), or, when
    it is None, return the process-wide embedded queue (created once, worker thread started once, at
    nice value + ``nice``: see :func:`lower_priority`). ``timeout``: connect and reply timeout in seconds
    with no retries (the web process: :data:`WEB_TIMEOUT_S`); None: 5 s connect, 10 s reply (jobs, workers)."""
    global _embedded
    if redis_url:
        # timeouts: a Redis that stops answering fails a webhook in seconds instead of hanging its thread
        # (RQ's worker raises socket_timeout above its blocking dequeue timeout itself)
        if timeout is None:
            conn = redis.Redis.from_url(
                redis_url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30
            )
        else:
            conn = redis.Redis.from_url(redis_url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                        health_check_interval=30, retry=Retry(NoBackoff(), 0))
        return QueueHandle(conn, Queue(QUEUE_NAME, connection=conn), embedded=False)
    with _embedded_lock:
        if _embedded is None:
            conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
            _embedded = QueueHandle(conn, Queue(QUEUE_NAME, connection=conn), embedded=True)
        if start_worker and _embedded.worker_thread is None:
            thread = threading.Thread(
                target=_run_embedded_worker, args=(_embedded, nice), name="mtal-worker", daemon=True
            )
            thread.start()
            _embedded.worker_thread = thread
            log.info("embedded queue: fakeredis with an in-process worker thread (set REDIS_URL to scale out)")
        return _embedded
