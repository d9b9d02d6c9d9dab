"""Benchmarks of the active-learning loop (issue 6): webhook latency under load, and ranking cost.

    python -m bench.loop [--sizes 1000,10000] [--image-size 64] [--sleep 120] [--bursts 10] [--skip-webhook]
                      [--skip-rank]

Prints:

- ``METRIC webhook_p99_ms`` (target <= 50): the production topology, all started for the run: the
  server (gunicorn with ``backend/web/gunicorn.conf.py`` serving ``backend.web.wsgi:app``), a real
  ``redis-server``, and a separate ``python -m backend.loop.worker`` at the default ``MTAL_WORKER_NICE``
  running a training job that takes every core (:func:`busy_train_job`: the coordinator's real state
  transitions around Adam steps of a conv net, until the benchmark stops it, at most ``--sleep`` s);
  ``--bursts`` bursts of 50 simultaneous ``ANNOTATION_CREATED`` POSTs, each on a fresh connection as
  Label Studio sends them, from one asyncio client; the 99th percentile over all of them. Then the
  counts, the single follow-up run and the final idle state are checked.
- ``METRIC webhook_noop_p99_ms``: the same bursts, interleaved with those, against ``bench.noop_wsgi``
  under the same gunicorn settings: the floor that HTTP, gunicorn and the client set on this machine;
  ``METRIC webhook_p99_over_noop``: the ratio of the two, side by side in one run (issue #27: <= 2).
- ``METRIC webhook_nice0_p99_ms``: the MTAL bursts again with the worker at the server's own priority
  (``MTAL_WORKER_NICE=0``), what the default priority buys.
- ``METRIC rank_1k_s`` / ``METRIC rank_10k_s`` / ``METRIC rank_10k_over_1k`` (linear = ~10):
  :func:`backend.loop.rank_pass.rank_tasks` on synthetic tasks served by :mod:`bench.fake_ls` (scoring with
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
SLEEP_S = 120.0
BURSTS = 10
N_CONCURRENT = 50


# ---- job functions for the webhook benchmark (imported by path by the RQ worker) ---------------------
# by module path, not __name__: under `python -m bench.loop` that is "__main__", which the worker cannot import
JOBS = {"train_job": "bench.loop.busy_train_job", "rank_job": "bench.loop.quick_rank_job"}


def _coordinator() -> Any:
    from rq import get_current_job

    from backend.loop.coordinator import Coordinator

    return Coordinator.on_connection(get_current_job().connection, **JOBS)


def busy_train_job(project: str) -> str:
    """A train job that holds the CPU as a real one does: Adam steps of a small conv net on random images
    on every torch thread, reporting progress each step, until the benchmark sets ``bench:stop:<project>``
    (or ``bench:sleep`` seconds pass). Runs in ``python -m backend.loop.worker``, so at its production priority."""
    import torch
    from torch import nn

    coord = _coordinator()
    coord.begin(project)
    pause = float(coord.redis.get("bench:sleep") or SLEEP_S)
    net = nn.Sequential(*(nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU()) for _ in range(6)))
    optimizer = torch.optim.Adam(net.parameters())
    images = torch.randn(8, 32, 64, 64)
    deadline, step = time.time() + pause, 0
    while time.time() < deadline and not coord.redis.exists(f"bench:stop:{project}"):
        loss = net(images).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        coord.progress(project, epoch=1, step=step, loss=float(loss.detach()))
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


def _phase(conn: Any, worker_env: dict[str, str], tmp: Path, project: int, urls: tuple[str, str], bursts: int,
           nice: int) -> tuple[list[float], list[float]]:
    """One measurement: a ``python -m backend.loop.worker`` at ``MTAL_WORKER_NICE=nice`` runs
    :func:`busy_train_job` for ``project``; meanwhile ``bursts`` x (a no-op burst, then an MTAL burst).
    Returns (MTAL latencies, no-op latencies) in ms, after checking the counts and the one follow-up."""
    from backend.loop.coordinator import Coordinator
    from tests.support.mtal_processes import start_worker

    backend_url, noop_url = urls
    coord = Coordinator.on_connection(conn, **JOBS)
    with start_worker({**worker_env, "MTAL_WORKER_NICE": str(nice)}, tmp, name=f"bench-worker-{project}"):
        coord.request_training(str(project))
        deadline = time.time() + 60
        while (st := _status(backend_url, project))["state"] != "training" or not st["step"]:  # training, 1st step
            if time.time() > deadline:
                raise RuntimeError("the training job did not start within 60 s")
            time.sleep(0.05)
        latencies: list[float] = []
        floor: list[float] = []
        for b in range(bursts):  # side by side: a no-op burst, then an MTAL burst
            floor += _burst(noop_url, [_event(project, 10**6 + b * N_CONCURRENT + i) for i in range(N_CONCURRENT)])
            latencies += _burst(backend_url, [_event(project, 1000 + b * N_CONCURRENT + i)
                                              for i in range(N_CONCURRENT)])
        during = _status(backend_url, project)
        conn.set(f"bench:stop:{project}", 1)  # ends the run and its follow-up at their next step
        deadline = time.time() + 60
        while (after := _status(backend_url, project))["state"] != "idle" and time.time() < deadline:
            time.sleep(0.1)
    n = bursts * N_CONCURRENT
    ok = (during["state"] == "training" and during["follow_up"]
          and during["labels_since_last_run"] == {"semantic": n, "parts": n} and after["state"] == "idle"
          and after["version"] == "bench-v2")
    print(f"[bench.loop] webhook, worker nice {nice}: during the run {during['state']} (step {during['step']}), "
          f"follow_up={during['follow_up']}, counts={during['labels_since_last_run']}; after: {after['state']} "
          f"(consistent: {ok})", file=sys.stderr)
    if not ok:
        raise RuntimeError(f"inconsistent loop state (is --sleep long enough?): during={during} after={after}")
    return latencies, floor


def bench_webhook(tmp: Path, sleep_s: float, bursts: int) -> dict[str, float]:
    """p50/p99/max latency (ms) of ``bursts`` x 50 concurrent webhook POSTs while a CPU-bound training
    job runs in a separate worker at the production ``MTAL_WORKER_NICE``; the p99 of the same bursts
    against the no-op app (``bench.noop_wsgi``) under the same gunicorn; and the p99 again with the
    worker at the server's own priority (``MTAL_WORKER_NICE=0``)."""
    import redis as redis_lib

    from backend.settings import Settings
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
        print(f"[bench.loop] webhook: gunicorn (backend/web/gunicorn.conf.py) at {backend.url}, no-op app at "
              f"{noop.url}, queue on redis-server port {server.port}", file=sys.stderr)
        conn.set("bench:sleep", sleep_s)
        for base in (backend.url, noop.url):  # warm-up: label config parse cache, Lua script load
            _burst(base, [_event(99, i) for i in range(3)])
        nice = Settings().worker_nice
        latencies, floor = _phase(conn, env, tmp, 5, (backend.url, noop.url), bursts, nice)
        same_priority, _ = _phase(conn, env, tmp, 6, (backend.url, noop.url), bursts, 0)
    return {"p50": statistics.median(latencies), "p99": float(np.percentile(latencies, 99)), "max": max(latencies),
            "noop_p99": float(np.percentile(floor, 99)), "nice0_p99": float(np.percentile(same_priority, 99)),
            "nice": float(nice), "n": float(bursts * N_CONCURRENT)}


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
    from backend.labelstudio.client import LabelStudioAPI
    from backend.labelstudio.images import ImageFetcher
    from backend.loop.rank_pass import rank_tasks
    from backend.serving.model import MTALModel, load_schema
    from backend.serving.store import ModelStore
    from backend.settings import Settings
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
    ap.add_argument("--sleep", type=float, default=SLEEP_S,
                    help="longest a benchmark training job may run (it is stopped after the bursts)")
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
                  f"{args.bursts} bursts of {N_CONCURRENT} concurrent POSTs during a CPU-bound training job, gunicorn; "
                  f"target <= 50", flush=True)
            print(f"METRIC webhook_noop_p99_ms={lat['noop_p99']:.1f}  # the same bursts against a no-op WSGI app "
                  f"under the same gunicorn: the floor of HTTP + client on this machine", flush=True)
            print(f"METRIC webhook_p99_over_noop={lat['p99'] / lat['noop_p99']:.2f}  # side by side in one run; "
                  f"target <= 2", flush=True)
            print(f"METRIC webhook_nice0_p99_ms={lat['nice0_p99']:.1f}  # the same, with the training worker at "
                  f"the server's priority (MTAL_WORKER_NICE=0 instead of {lat['nice']:.0f})", flush=True)
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
