"""Benchmarks of the active-learning loop (issue 6): webhook latency under load, and ranking cost.

    python -m bench.loop [--sizes 1000,10000] [--image-size 64] [--sleep 10] [--bursts 10] [--skip-webhook]
                      [--skip-rank]

Prints:

- ``METRIC webhook_p99_ms`` (target <= 50): the production server (gunicorn with
  ``backend/gunicorn.conf.py`` serving ``backend.wsgi:app``) on a real ``redis-server``, both started for
  the run; a training job running in an RQ worker thread here (:func:`sleepy_train_job`: the coordinator's
  real state transitions around a ``--sleep`` s pause, i.e. a job that holds no CPU); ``--bursts`` bursts
  of 50 simultaneous ``ANNOTATION_CREATED`` POSTs, each on a fresh connection as Label Studio sends them,
  from one asyncio client; the 99th percentile over all of them. Then the counts and the single
  follow-up run are checked.
- ``METRIC webhook_noop_p99_ms``: the same bursts, interleaved with those, against ``bench.noop_wsgi``
  under the same gunicorn settings: the floor that HTTP, gunicorn and the client set on this machine.
- ``METRIC rank_1k_s`` / ``METRIC rank_10k_s`` / ``METRIC rank_10k_over_1k`` (linear = ~10):
  :func:`backend.trainrank.rank_tasks` on synthetic tasks served by :mod:`bench.fake_ls` (scoring with
  the "tiny" net at ``--image-size`` px, pre-annotations, clusters, pushing every prediction, PATCH of
  the project), with the default settings: clusters on, so with <= MTAL_CLUSTER_PUSH_LIMIT candidates
  every prediction is POSTed alone to /api/predictions/. Then the same with ``clusters=0`` (one bulk
  import per 500): ``METRIC rank_1k_noclusters_s`` etc. Images (96x72 PNGs, 256 distinct ones behind
  distinct URLs) are fetched over HTTP with a cold disk cache (a fresh cache directory per measurement).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="semantic" toName="image"><Label value="road"/><Label value="car"/></BrushLabels>
  <BrushLabels name="parts" toName="image"><Label value="wheel"/><Label value="door"/></BrushLabels>
  <Choices name="mtal_labelled" toName="image" choice="multiple">
    <Choice value="semantic"/><Choice value="parts"/>
  </Choices>
</View>"""
SLEEP_S = 10.0
BURSTS = 10
N_CONCURRENT = 50


# ---- job functions for the webhook benchmark (imported by path by the RQ worker) ---------------------
def _coordinator() -> Any:
    from rq import get_current_job

    from backend.coordinator import Coordinator

    return Coordinator.on_connection(
        get_current_job().connection, train_job=f"{__name__}.sleepy_train_job", rank_job=f"{__name__}.quick_rank_job"
    )


def sleepy_train_job(project: str) -> str:
    """A train job that takes ``SLEEP_S`` seconds (set through Redis key ``bench:sleep``)."""
    coord = _coordinator()
    coord.begin(project)
    pause = float(coord.redis.get("bench:sleep") or SLEEP_S)
    deadline = time.time() + pause
    while time.time() < deadline:
        coord.progress(project, epoch=1, step=int(time.time()), loss=0.5)
        time.sleep(0.25)
    coord.trained(project, "bench-v2", {"loss": 0.5})
    return "bench-v2"


def quick_rank_job(project: str) -> None:
    _coordinator().finish(project)


# ---- webhook latency ----------------------------------------------------------------------------------
def _event(project: int, i: int) -> dict[str, Any]:
    """An LS 1.23 ANNOTATION_CREATED payload labelling both modalities (choices tag ticked)."""
    result = [{"id": f"c{i}", "from_name": "mtal_labelled", "to_name": "image", "type": "choices",
               "value": {"choices": ["semantic", "parts"]}},
              {"id": f"s{i}", "from_name": "semantic", "to_name": "image", "type": "brushlabels",
               "original_width": 96, "original_height": 72,
               "value": {"format": "rle", "rle": [0, 0, 0], "brushlabels": ["road"]}}]
    return {"action": "ANNOTATION_CREATED",
            "project": {"id": project, "title": "bench", "label_config": CONFIG},
            "task": {"id": i, "data": {"image": f"/data/upload/{project}/{i}.png"}},
            "annotation": {"id": i, "task": i, "result": result, "was_cancelled": False, "completed_by": 1}}


async def _post(host: str, port: int, request: bytes) -> float:
    """One POST on a fresh connection (as Label Studio sends each webhook); ms until the whole answer."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
    finally:
        writer.close()
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"webhook answered {head.splitlines()[0]!r}")
    return (time.perf_counter() - t0) * 1000


def _burst(base: str, events: list[dict[str, Any]]) -> list[float]:
    """All ``events`` POSTed to ``base``/webhook at once; their latencies (ms). The client is one asyncio
    loop writing pre-encoded requests, so it takes as little of the machine's CPU as a client can."""
    host, port = base.removeprefix("http://").split(":")
    requests_ = []
    for event in events:
        body = json.dumps(event).encode()
        requests_.append(f"POST /webhook HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)

    async def run() -> list[float]:
        return list(await asyncio.gather(*(_post(host, int(port), r) for r in requests_)))

    return asyncio.run(run())


def bench_webhook(tmp: Path, sleep_s: float, bursts: int) -> dict[str, float]:
    """p50/p99/max latency (ms) of ``bursts`` x 50 concurrent webhook POSTs while a training job runs,
    and the p99 of the same bursts against the no-op app (``bench.noop_wsgi``) under the same gunicorn."""
    import redis as redis_lib
    from rq import Queue

    from backend.coordinator import Coordinator
    from backend.queueing import QUEUE_NAME, ThreadWorker
    from tests.support.mtal_processes import backend_env, start_backend
    from tests.support.redis_server import RedisServer, redis_server_path

    if not redis_server_path():
        raise RuntimeError("bench.loop needs redis-server for the webhook benchmark: run scripts/ensure_redis.sh "
                           "(or pass --skip-webhook)")
    with ExitStack() as stack:
        server = stack.enter_context(RedisServer.start(tmp / "redis"))
        conn = redis_lib.Redis.from_url(server.url)
        env = {**os.environ, **backend_env("http://127.0.0.1:9", "bench", tmp / "models", redis_url=server.url),
               "LOG_LEVEL": "warning"}
        backend = stack.enter_context(start_backend(env, tmp))
        noop = stack.enter_context(start_backend(env, tmp, app="bench.noop_wsgi:app"))
        print(f"[bench.loop] webhook: gunicorn (backend/gunicorn.conf.py) at {backend.url}, no-op app at "
              f"{noop.url}, queue on redis-server port {server.port}", file=sys.stderr)
        conn.set("bench:sleep", sleep_s)
        project = 5
        for base in (backend.url, noop.url):  # warm-up: label config parse cache, Lua script load
            _burst(base, [_event(99, i) for i in range(3)])
        coord = Coordinator.on_connection(conn, train_job=f"{__name__}.sleepy_train_job",
                                          rank_job=f"{__name__}.quick_rank_job")
        coord.request_training(project)
        rq_worker = ThreadWorker([Queue(QUEUE_NAME, connection=conn)], connection=conn)
        worker = threading.Thread(target=lambda: rq_worker.work(burst=True, logging_level="WARNING"), daemon=True)
        worker.start()
        deadline = time.time() + 30
        while _status(backend.url, project)["state"] != "training":
            if time.time() > deadline:
                raise RuntimeError("the training job did not start within 30 s")
            time.sleep(0.05)

        latencies: list[float] = []
        floor: list[float] = []
        for b in range(bursts):  # side by side: a no-op burst, then an MTAL burst
            floor += _burst(noop.url, [_event(project, 10**6 + b * N_CONCURRENT + i) for i in range(N_CONCURRENT)])
            latencies += _burst(backend.url, [_event(project, 1000 + b * N_CONCURRENT + i)
                                              for i in range(N_CONCURRENT)])
        during = _status(backend.url, project)
        worker.join(timeout=2 * sleep_s + 60)
        after = _status(backend.url, project)
        n = bursts * N_CONCURRENT
        ok = (during["state"] == "training" and during["follow_up"]
              and during["labels_since_last_run"] == {"semantic": n, "parts": n} and after["state"] == "idle")
        print(f"[bench.loop] webhook: during the run {during['state']}, follow_up={during['follow_up']}, "
              f"counts={during['labels_since_last_run']}; after: {after['state']} (consistent: {ok})",
              file=sys.stderr)
        if not ok:
            raise RuntimeError(f"inconsistent loop state (is --sleep long enough?): during={during} after={after}")
    return {"p50": statistics.median(latencies), "p99": float(np.percentile(latencies, 99)), "max": max(latencies),
            "noop_p99": float(np.percentile(floor, 99)), "n": float(n)}


def _status(base: str, project: int) -> dict[str, Any]:
    return requests.get(f"{base}/status", params={"project": project}, timeout=10).json()


# ---- ranking ------------------------------------------------------------------------------------------
@dataclass
class _RankContext:
    settings: Any
    store: Any
    ls: Any
    fetcher: Any


def bench_rank(tmp: Path, n_tasks: int, image_size: int, clusters: bool) -> tuple[float, dict[str, Any]]:
    """Seconds of one rank_tasks pass over ``n_tasks`` unlabelled tasks (cold image cache)."""
    from backend.images import ImageFetcher
    from backend.ls_api import LabelStudioAPI
    from backend.model import MTALModel, load_schema
    from backend.settings import Settings
    from backend.store import ModelStore
    from backend.trainrank import rank_tasks
    from bench.fake_ls import FakeLabelStudio

    run_dir = Path(tempfile.mkdtemp(prefix=f"rank{n_tasks}-", dir=tmp))
    settings = Settings(model_dir=run_dir / "models", net_config="tiny", image_size=image_size, device="cpu",
                        cache_dir=run_dir / "cache", **({} if clusters else {"clusters": 0}))
    store = ModelStore(settings.model_dir, device="cpu")
    with FakeLabelStudio.start(CONFIG, n_tasks) as ls:
        version = MTALModel("1", CONFIG, settings, store).setup()
        api = LabelStudioAPI(ls.url, "bench-token")
        tasks = list(api.iter_tasks(1))
        ctx = _RankContext(settings, store, api, ImageFetcher(ls.url, "bench-token", cache_dir=settings.cache_dir))
        t0 = time.perf_counter()
        summary = rank_tasks(ctx, "1", load_schema(CONFIG), version, tasks, set())
        seconds = time.perf_counter() - t0
        if summary["pushed"] != n_tasks or len(ls.predictions) != n_tasks or ls.project["model_version"] != version:
            raise RuntimeError(f"rank pushed {summary['pushed']} ({len(ls.predictions)} stored) of {n_tasks}")
        calls = dict(ls.calls)
    print(f"[bench.loop] rank {n_tasks} tasks (clusters {'on' if clusters else 'off'}): {seconds:.1f} s, "
          f"strategy {summary['strategy']}, fake LS calls {calls}", file=sys.stderr)
    return seconds, calls


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.loop", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,10000", help="task counts to rank (first = the 1k, last = the 10k)")
    ap.add_argument("--image-size", type=int, default=64, help="inference size in px (multiple of 32)")
    ap.add_argument("--sleep", type=float, default=SLEEP_S, help="seconds the fake training job runs")
    ap.add_argument("--bursts", type=int, default=BURSTS, help="bursts of 50 concurrent webhooks (pooled p99)")
    ap.add_argument("--skip-webhook", action="store_true")
    ap.add_argument("--skip-rank", action="store_true")
    ap.add_argument("--no-clusters-run", action=argparse.BooleanOptionalAction, default=True,
                    help="also time ranking with clusters=0 (bulk import instead of one POST per task)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as d:
        tmp = Path(d)
        if not args.skip_webhook:
            lat = bench_webhook(tmp, args.sleep, args.bursts)
            print(f"METRIC webhook_p99_ms={lat['p99']:.1f}  # p50 {lat['p50']:.1f}, max {lat['max']:.1f}; "
                  f"{args.bursts} bursts of {N_CONCURRENT} concurrent POSTs during a training job, gunicorn; "
                  f"target <= 50", flush=True)
            print(f"METRIC webhook_noop_p99_ms={lat['noop_p99']:.1f}  # the same bursts against a no-op WSGI app "
                  f"under the same gunicorn: the floor of HTTP + client on this machine", flush=True)
        if not args.skip_rank:
            sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
            names = {1000: "1k", 10000: "10k"}
            for clusters in (True, False) if args.no_clusters_run else (True,):
                suffix = "" if clusters else "_noclusters"
                times = {}
                for n in sizes:
                    times[n], _ = bench_rank(tmp, n, args.image_size, clusters)
                    print(f"METRIC rank_{names.get(n, n)}{suffix}_s={times[n]:.2f}  "
                          f"# {n} tasks, tiny net, {args.image_size}px, cold image cache", flush=True)
                if len(sizes) >= 2:
                    lo, hi = sizes[0], sizes[-1]
                    print(f"METRIC rank_{names.get(hi, hi)}_over_{names.get(lo, lo)}{suffix}="
                          f"{times[hi] / times[lo]:.2f}  # linear = {hi / lo:.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
