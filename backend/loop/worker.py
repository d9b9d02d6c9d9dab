"""``python -m backend.loop.worker``: a separate training worker on the shared Redis queue.

Start as many as you like (one per GPU) on any machine that reaches ``REDIS_URL`` and shares
``MODEL_DIR`` with the server; each runs the train and rank jobs in its own process, on CUDA when
it is present (``MTAL_DEVICE`` overrides), at a lower CPU priority than the server
(``MTAL_WORKER_NICE``, default 10). Without ``REDIS_URL`` there is nothing to join: the server
runs jobs itself in its embedded queue.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

import redis.exceptions
from rq import SimpleWorker

from backend.logs import redact
from backend.loop.coordinator import Coordinator
from backend.loop.queue import QUEUE_NAME, lower_priority, open_queue
from backend.settings import Settings, SettingsError

__all__ = ["main", "serve"]


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
    serve(handle, args.name, args.burst, maintenance_s=settings.lease_s)
    return 0


def serve(handle: Any, name: str | None, burst: bool, max_wait_s: float = 30.0,
          maintenance_s: float | None = None) -> None:
    """Work the queue until done (``burst``) or stopped. A lost Redis (restart, network blip) makes RQ's
    loop raise, even from its own teardown: the worker then waits, doubling up to ``max_wait_s``, and
    serves again on the same connection pool (which reconnects) instead of exiting. A run it was doing
    when Redis went away has finished or failed by then; the lease (``backend.loop.coordinator``) restarts
    runs whose state was lost.

    ``maintenance_s`` (the run lease, ``MTAL_RUN_LEASE_S``): RQ's registry maintenance runs at least this often
    (at least every 5 s), also while the worker waits for a job (RQ's default: 10 min, and an idle worker waits
    405 s per dequeue), so that a rank chunk whose worker died (its registry entry expires ``lease_s`` after its
    last heartbeat: :mod:`backend.loop.rank_fanout`) is retried within about twice the lease."""
    log = logging.getLogger(__name__)
    wait, attempt = 1.0, 0
    while True:
        # SimpleWorker: jobs run in this process, so a CUDA context and the image cache stay warm between jobs.
        worker_name = name if name is None or attempt == 0 else f"{name}-{attempt}"  # the old one may be registered
        timing = {} if maintenance_s is None else {"maintenance_interval": max(5, int(maintenance_s)),
                                                    "worker_ttl": max(20, int(maintenance_s) + 15)}
        try:
            SimpleWorker([handle.queue], connection=handle.connection, name=worker_name, **timing).work(burst=burst)
            return
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
            attempt += 1
            log.warning("Redis unreachable (%s); serving again in %.0f s", redact(str(e)), wait)
            time.sleep(wait)
            wait = min(wait * 2, max_wait_s)


if __name__ == "__main__":
    sys.exit(main())
