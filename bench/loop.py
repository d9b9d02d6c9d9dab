"""Benchmarks of the active-learning loop (issue 6): webhook latency under load, and ranking cost.

    python -m bench.loop [--sizes 1000,10000] [--image-size 64] [--sleep 5] [--skip-webhook] [--skip-rank]

Prints:

- ``METRIC webhook_p99_ms`` (target <= 50): the app (``create_app`` + ``QueueTrainer``) served by
  werkzeug's threaded ``make_server`` on a free port, over a real ``redis-server`` started for the run
  (embedded fakeredis when redis-server is missing; the output says which), a training job running in
  an RQ worker thread (:func:`sleepy_train_job`: the coordinator's real state transitions around a
  ``--sleep`` s pause, i.e. a job that holds no GIL), and 50 concurrent ``ANNOTATION_CREATED`` POSTs
  over HTTP (``requests``, a 50-thread pool, one connection each); the 99th percentile of their latencies.
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
import logging
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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
SLEEP_S = 5.0
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


def _start_server(tmp: Path, url: str | None, conn: Any = None) -> str:
    """The app (QueueTrainer on ``url``, or on ``conn``) on werkzeug's threaded server; returns its base URL."""
    from rq import Queue
    from werkzeug.serving import make_server

    from backend.app import create_app
    from backend.loop import QueueTrainer
    from backend.queueing import QUEUE_NAME, QueueHandle, open_queue
    from backend.settings import Settings
    from backend.store import ModelStore

    settings = Settings(model_dir=tmp / "models", net_config="tiny", image_size=64, device="cpu",
                        redis_url=url, train_threshold=10)
    store = ModelStore(settings.model_dir, device="cpu")
    handle = open_queue(url, start_worker=False) if url else QueueHandle(conn, Queue(QUEUE_NAME, connection=conn),
                                                                         embedded=True)
    trainer = QueueTrainer(settings, store, handle=handle)
    trainer.coordinator.train_job = "bench.loop.sleepy_train_job"
    trainer.coordinator.rank_job = "bench.loop.quick_rank_job"
    httpd = make_server("127.0.0.1", 0, create_app(settings, store, trainer), threaded=True)
    threading.Thread(target=httpd.serve_forever, name="bench-server", daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_port}"


def _serve_process(tmp: str, url: str, ports: Any) -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log line per request
    base = _start_server(Path(tmp), url)
    ports.put(int(base.rsplit(":", 1)[1]))
    threading.Event().wait()  # serve until terminated


def bench_webhook(tmp: Path, sleep_s: float) -> dict[str, float]:
    """p50/p99/max latency (ms) of 50 concurrent webhook POSTs while a training job runs."""
    import redis as redis_lib
    from rq import Queue

    from backend.queueing import QUEUE_NAME, QueueHandle, ThreadWorker
    from tests.support.redis_server import RedisServer, redis_server_path

    with ExitStack() as stack:
        if redis_server_path():
            server = stack.enter_context(RedisServer.start(tmp / "redis"))
            conn = redis_lib.Redis.from_url(server.url)
            kind, url = f"redis-server on port {server.port}", server.url
        else:
            import fakeredis

            conn, kind, url = fakeredis.FakeRedis(server=fakeredis.FakeServer()), "embedded fakeredis", None
        print(f"[bench.loop] webhook: queue on {kind}", file=sys.stderr)
        conn.set("bench:sleep", sleep_s)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        if url is None:  # the server must share the fake server with the worker: serve in this process
            base = _start_server(tmp, None, conn)
        else:  # a separate process, so the client threads here do not compete with it for the GIL
            ctx = multiprocessing.get_context("spawn")
            ports: Any = ctx.Queue()
            proc = ctx.Process(target=_serve_process, args=(str(tmp), url, ports), daemon=True)
            proc.start()
            stack.callback(proc.terminate)
            base = f"http://127.0.0.1:{ports.get(timeout=120)}"
        handle = QueueHandle(conn, Queue(QUEUE_NAME, connection=conn), embedded=url is None)
        project = 5
        for i in range(3):  # warm-up: label config parse cache, Lua script load, first connections
            requests.post(f"{base}/webhook", json=_event(99, i), timeout=10).raise_for_status()
        requests.post(f"{base}/webhook", json={"action": "START_TRAINING", "project": {"id": project}},
                      timeout=10).raise_for_status()
        rq_worker = ThreadWorker([handle.queue], connection=conn)
        worker = threading.Thread(target=lambda: rq_worker.work(burst=True, logging_level="WARNING"), daemon=True)
        worker.start()
        deadline = time.time() + 30
        while requests.get(f"{base}/status", params={"project": project}, timeout=10).json()["state"] != "training":
            if time.time() > deadline:
                raise RuntimeError("the training job did not start within 30 s")
            time.sleep(0.05)

        barrier = threading.Barrier(N_CONCURRENT)

        def post(i: int) -> float:
            barrier.wait()
            t0 = time.perf_counter()
            r = requests.post(f"{base}/webhook", json=_event(project, 1000 + i), timeout=30)
            dt = time.perf_counter() - t0
            r.raise_for_status()
            return dt * 1000

        with ThreadPoolExecutor(N_CONCURRENT) as pool:
            latencies = list(pool.map(post, range(N_CONCURRENT)))
        during = requests.get(f"{base}/status", params={"project": project}, timeout=10).json()
        worker.join(timeout=sleep_s + 60)
        after = requests.get(f"{base}/status", params={"project": project}, timeout=10).json()
        ok = (during["state"] == "training" and during["follow_up"]
              and during["labels_since_last_run"] == {"semantic": N_CONCURRENT, "parts": N_CONCURRENT}
              and after["state"] == "idle")
        print(f"[bench.loop] webhook: during the run {during['state']}, follow_up={during['follow_up']}, "
              f"counts={during['labels_since_last_run']}; after: {after['state']} (consistent: {ok})",
              file=sys.stderr)
        if not ok:
            raise RuntimeError(f"inconsistent loop state: during={during} after={after}")
    return {"p50": statistics.median(latencies), "p99": float(np.percentile(latencies, 99)), "max": max(latencies)}


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
    ap.add_argument("--skip-webhook", action="store_true")
    ap.add_argument("--skip-rank", action="store_true")
    ap.add_argument("--no-clusters-run", action=argparse.BooleanOptionalAction, default=True,
                    help="also time ranking with clusters=0 (bulk import instead of one POST per task)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as d:
        tmp = Path(d)
        if not args.skip_webhook:
            lat = bench_webhook(tmp, args.sleep)
            print(f"METRIC webhook_p99_ms={lat['p99']:.1f}  # p50 {lat['p50']:.1f}, max {lat['max']:.1f}; "
                  f"{N_CONCURRENT} concurrent POSTs during a training job; target <= 50")
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
