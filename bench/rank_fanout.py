"""A ranking fanned out over RQ (issue #24, item 2): the wall time of one ranking of ``--tasks`` photo-size tasks
with one ``python -m backend.loop.worker`` over the same ranking with two, in the same run.

    python -m bench.rank_fanout [--tasks 160] [--chunk 16] [--net small] [--runs 1]

Real processes: a redis-server of its own, the workers (each ``OMP_NUM_THREADS=1``: one torch thread, at the
server's priority), and the fake Label Studio of :mod:`bench.fake_ls` in this process serving CamVid-size
JPEGs (480x360, :func:`bench.rank_photo.photos`: CamVid's when ../shared/datasets/camvid is there, else
generated) over HTTP, with the image cache off, so download and decode are in the figure. The project (one
brush tag, ``MTAL_STRATEGY=auto``: MC-dropout entropy) has an untrained initial version of ``--net``; each
ranking is the production path: the rank job (listing, planning), ``--tasks / --chunk`` chunk jobs, the merge
job (selection, push of every prediction, sampling switch). The workers are started and registered before the
clock starts; it stops when the project is idle again. Prints

- ``METRIC rank_fanout_speedup``: median wall time with one worker / median with two (issue #24's target:
  >= 1.7 on a 2-core machine);
- the load average (``os.getloadavg``) before and after: on a shared machine the ratio is low.

The issue's figure is for 2,000 tasks (``--tasks 2000``: about 2 x 6 min of CPU on a quiet 2-core machine at
~170 ms per photo); the default of 160 tasks in chunks of 16 takes about a minute quiet.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.rank_photo import CONFIGS, photos

__all__ = ["main", "rank_once"]


def rank_once(coordinator: Any, project: str, version: str, workers: int, env: dict[str, str], tmp: Path,
              tag: str, timeout_s: float = 3600.0) -> float:
    """Start ``workers`` workers, then time one ranking of ``version`` (enqueued as a training run would) until
    the project is idle; RuntimeError if it failed. Returns seconds."""
    from tests.support.mtal_processes import start_worker

    with ExitStack() as stack:
        for i in range(workers):
            stack.enter_context(start_worker(env, tmp, name=f"bench-rank-{tag}-{i}", timeout=120))
        t0 = time.perf_counter()
        coordinator.trained(project, version, {})
        while True:
            status = coordinator.status(project)
            if status["state"] == "idle":
                break
            if time.perf_counter() - t0 > timeout_s:
                raise RuntimeError(f"the ranking did not end within {timeout_s:.0f} s: {status}")
            time.sleep(0.05)
        dt = time.perf_counter() - t0
    ranking = status["ranking"] or {}
    if status["error"] or ranking.get("state") != "done":
        raise RuntimeError(f"the ranking failed: {status['error']} {ranking}")
    print(f"# {workers} worker(s): {dt:.1f} s; {job_times(coordinator, ranking['run'])}", flush=True)
    return dt


def job_times(coordinator: Any, run: str) -> str:
    """Where the time of ranking ``run`` went, from RQ's start and end times of its jobs."""
    from rq.job import Job

    registry = coordinator.handle.queue.finished_job_registry
    jobs = [j for j in Job.fetch_many(registry.get_job_ids(), connection=coordinator.redis) if j is not None]
    took = {j.id: (j.ended_at - j.started_at).total_seconds() for j in jobs if j.ended_at and j.started_at}
    chunks = [t for job_id, t in took.items() if job_id.startswith(f"{run}-chunk-")]
    plan = max((j for j in jobs if j.func_name.endswith(".rank_job") and j.id in took), key=lambda j: j.ended_at,
               default=None)  # this ranking's: the latest
    return (f"rank job {took[plan.id] if plan else float('nan'):.1f} s, {len(chunks)} chunk jobs "
            f"{sum(chunks):.1f} s in all (longest {max(chunks, default=0):.1f} s), merge {took.get(run, 0):.1f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.rank_fanout", description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=160, help="photo tasks per ranking (default 160; the issue: 2000)")
    ap.add_argument("--chunk", type=int, default=16, help="MTAL_RANK_CHUNK_TASKS (default 16)")
    ap.add_argument("--net", default="small", choices=["tiny", "small", "default"])
    ap.add_argument("--image-size", type=int, default=384, help="MTAL_IMAGE_SIZE (default 384)")
    ap.add_argument("--runs", type=int, default=1, help="alternating one-worker / two-worker rankings (median)")
    args = ap.parse_args(argv)
    import redis

    from backend.loop.coordinator import Coordinator
    from backend.loop.queue import QUEUE_NAME, QueueHandle
    from backend.serving.model import MTALModel
    from backend.serving.store import ModelStore
    from backend.settings import Settings
    from bench.fake_ls import FakeLabelStudio
    from tests.support.mtal_processes import backend_env
    from tests.support.redis_server import RedisServer, redis_server_path

    if not redis_server_path():
        raise SystemExit("bench.rank_fanout needs redis-server: run scripts/ensure_redis.sh")
    from rq import Queue

    config = CONFIGS["single"]
    jpegs, source = photos(min(args.tasks, 48))  # task t serves jpegs[t % 48]; the cache is off: all fetched
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="rank-fanout-") as d, ExitStack() as stack:
        tmp = Path(d)
        server = stack.enter_context(RedisServer.start(tmp / "redis"))
        ls = stack.enter_context(FakeLabelStudio.start(config, args.tasks, n_images=1, image_hw=(8, 8)))
        ls.images = list(jpegs)
        settings = Settings(model_dir=tmp / "models", net_config=args.net, image_size=args.image_size, device="cpu")
        version = MTALModel("1", config, settings, ModelStore(settings.model_dir)).setup()
        env = backend_env(ls.url, "bench-token", settings.model_dir, redis_url=server.url, MTAL_CACHE_DIR="off",
                          MTAL_NET_CONFIG=args.net, MTAL_IMAGE_SIZE=str(args.image_size), MTAL_DEVICE="cpu",
                          MTAL_CLUSTERS="0", MTAL_RANK_CHUNK_TASKS=str(args.chunk), MTAL_WORKER_NICE="0",
                          MTAL_KEEP_PREDICTION_VERSIONS="0", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                          LOG_LEVEL="WARNING")
        conn = redis.Redis.from_url(server.url)
        coordinator = Coordinator(QueueHandle(conn, Queue(QUEUE_NAME, connection=conn), embedded=False))
        one, two = [], []
        for r in range(args.runs):
            one.append(rank_once(coordinator, "1", version, 1, env, tmp, f"{r}-one"))
            two.append(rank_once(coordinator, "1", version, 2, env, tmp, f"{r}-two"))
            print(f"# run {r + 1}: one worker {one[-1]:.1f} s, two workers {two[-1]:.1f} s", flush=True)
    chunks = math.ceil(args.tasks / args.chunk)
    t1, t2 = statistics.median(one), statistics.median(two)
    load_after = os.getloadavg()
    print(f"# {args.tasks} {source} photos 480x360 (input shorter side {args.image_size}), net {args.net}, "
          f"{chunks} chunks of {args.chunk}: one worker {t1:.1f} s ({t1 * 1e3 / args.tasks:.0f} ms/task), "
          f"two workers {t2:.1f} s; each worker one torch thread; {os.cpu_count()} CPUs; load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after", flush=True)
    print(f"METRIC rank_fanout_speedup={t1 / t2:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
