"""``python -m backend.loop.worker``: a separate training worker on the shared Redis queue.

Start as many as you like (one per GPU) on any machine that reaches ``REDIS_URL`` and shares
``MODEL_DIR`` with the server; each runs the train and rank jobs in its own process, on CUDA when
it is present (``MTAL_DEVICE`` overrides), at a lower CPU priority than the server
(``MTAL_WORKER_NICE``, default 10). The chunk jobs of one big project's ranking spread over all of them
(:mod:`backend.loop.rank_fanout`); a job whose worker died is retried by another (:class:`HeartbeatWorker`).
Without ``REDIS_URL`` there is nothing to join: the server runs jobs itself in its embedded queue.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from typing import Any

import redis.exceptions
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.worker import WorkerStatus

from backend.logs import redact
from backend.loop.coordinator import Coordinator
from backend.loop.queue import QUEUE_NAME, lower_priority, open_queue
from backend.settings import Settings, SettingsError

__all__ = ["HeartbeatWorker", "main", "serve"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.loop.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", action="store_true", help="drain the queue, then exit")
    parser.add_argument("--name", default=None, help="worker name shown by `rq info` (default: host + pid)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings.configure_logging()  # with the redacting filter: no REDIS_URL password in the log
    if not settings.redis_url:
        print("error: REDIS_URL is not set; without it the server runs jobs in its embedded queue", file=sys.stderr)
        return 2
    handle = open_queue(settings.redis_url)
    nice = lower_priority(settings.worker_nice)  # before torch starts any thread: they all inherit it
    import backend.loop.jobs  # noqa: F401 - torch and the model core now, not in the first job (a chunk)
    logging.getLogger(__name__).info(
        "worker on %s queue %r, device %s, nice %s", redact(settings.redis_url), QUEUE_NAME,
        settings.torch_device(), nice,
    )
    try:  # runs whose worker died (container restart, OOM killer) restart now, not at the next webhook
        recovered = Coordinator(handle, lease_s=settings.lease_s).recover_all()
        if recovered:
            logging.getLogger(__name__).warning("restarted the dead runs of projects %s", recovered)
    except Exception as e:  # noqa: BLE001 - recovery must not keep the worker from serving
        logging.getLogger(__name__).error("dead-run recovery failed: %s", redact(str(e)))
    serve(handle, args.name, args.burst, lease_s=settings.lease_s)
    return 0


class HeartbeatWorker(SimpleWorker):
    """RQ's SimpleWorker (jobs run in this process: a CUDA context and the image cache stay warm between jobs)
    with the forking ``Worker``'s job heartbeat: while a job runs, a thread calls RQ's own
    :meth:`~rq.worker.BaseWorker.maintain_heartbeats` every ``heartbeat_s / 4`` seconds, and the job's entry in
    the started-job registry lives ``heartbeat_s`` past the last one (SimpleWorker: the job's whole timeout, 6 h
    for our jobs). A job whose worker died (kill -9, OOM killer, a lost machine) is thus found abandoned by any
    worker's registry maintenance within ``heartbeat_s`` and retried by RQ when it has retries left (the rank
    chunk jobs: :mod:`backend.loop.rank_fanout`)."""

    heartbeat_s: float = 60.0

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return max(2, int(self.heartbeat_s))

    def execute_job(self, job: Job, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat_s / 4):
                try:
                    self.maintain_heartbeats(job, execution)
                except Exception as e:  # noqa: BLE001 - Redis away: the entry runs out, as for a dead worker
                    logging.getLogger(__name__).warning("job %s: heartbeat failed: %s", job.id, redact(str(e)))

        thread = threading.Thread(target=beat, name=f"mtal-heartbeat-{job.id}", daemon=True)
        thread.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            stop.set()
            thread.join(timeout=5)
        self.set_state(WorkerStatus.IDLE)


def serve(handle: Any, name: str | None, burst: bool, max_wait_s: float = 30.0,
          lease_s: float | None = None) -> None:
    """Work the queue until done (``burst``) or stopped. A lost Redis (restart, network blip) makes RQ's
    loop raise, even from its own teardown: the worker then waits, doubling up to ``max_wait_s``, and
    serves again on the same connection pool (which reconnects) instead of exiting. A run it was doing
    when Redis went away has finished or failed by then; the lease (``backend.loop.coordinator``) restarts
    runs whose state was lost.

    ``lease_s`` (the run lease, ``MTAL_RUN_LEASE_S``; None: RQ's defaults): jobs run in a
    :class:`HeartbeatWorker` with a heartbeat of ``max(10, lease_s)`` s, and RQ's registry maintenance runs as
    often (RQ's default: every 10 min, and an idle worker waits 405 s per dequeue), so that a rank chunk whose
    worker died is retried by another within about twice that."""
    log = logging.getLogger(__name__)
    wait, attempt = 1.0, 0
    while True:
        worker_name = name if name is None or attempt == 0 else f"{name}-{attempt}"  # the old one may be registered
        timing: dict[str, Any] = {}
        if lease_s is not None:
            beat = max(10, int(lease_s))
            timing = {"maintenance_interval": beat, "worker_ttl": beat + 15}  # idle: a dequeue timeout of `beat`
        try:
            worker_class = SimpleWorker if lease_s is None else HeartbeatWorker
            worker = worker_class([handle.queue], connection=handle.connection, name=worker_name, **timing)
            if isinstance(worker, HeartbeatWorker):
                worker.heartbeat_s = float(timing["maintenance_interval"])
            worker.work(burst=burst)
            if burst or getattr(worker, "_stop_requested", True):  # drained, or SIGTERM / SIGINT
                return
            # RQ's loop quits on an unhandled exception (a Redis error inside a job's teardown) and returns
            # normally when its own teardown then reaches the new Redis: serve again, as for a raised one
            reason = "the worker loop quit (see the error above)"
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
            reason = f"Redis unreachable ({redact(str(e))})"
        attempt += 1
        log.warning("%s; serving again in %.0f s", reason, wait)
        time.sleep(wait)
        wait = min(wait * 2, max_wait_s)


if __name__ == "__main__":
    sys.exit(main())
