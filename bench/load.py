"""Load: N concurrent /predict requests against the backend under gunicorn, all answered, memory bounded.

    python -m bench.load [--n 100] [--rounds 2] [--net small] [--image-size 256] [--threads 4]

The backend runs as in production (``gunicorn -c backend/web/gunicorn.conf.py``, one process, ``MTAL_THREADS``
threads; embedded queue) against the fake Label Studio of :mod:`bench.fake_ls` serving 480 x 640 PNG
tasks (image cache off, so every request fetches and decodes its image). Each round sends ``n`` requests
of one distinct task at once (``n`` client threads); the RSS of the gunicorn process tree (master + worker)
is sampled every 20 ms throughout. Prints::

    METRIC load_<n>_predict_ok=<answers with status 200 and one scored result, fewest of a round> (target: n)
    METRIC load_<n>_predict_wall_s=<seconds for the slowest round>
    METRIC load_predict_p95_s=<95th percentile latency over all rounds>
    METRIC load_idle_rss_mb=<RSS after start-up, one warm-up request>
    METRIC load_peak_rss_mb=<peak RSS during the rounds>
    METRIC load_rss_growth_mb=<RSS after the last round minus after the first>   (no leak: about 0)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

from bench.fake_ls import FakeLabelStudio

__all__ = ["main", "run"]

CONFIG = ('<View><Image name="image" value="$image"/>'
          '<BrushLabels name="semantic" toName="image"><Label value="road"/><Label value="car"/></BrushLabels>'
          '<BrushLabels name="parts" toName="image"><Label value="wheel"/></BrushLabels></View>')


def tree_rss(pid: int) -> int:
    """Bytes of RSS of process ``pid`` and its descendants (0 once gone)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


class RssSampler:
    """Samples :func:`tree_rss` of ``pid`` every ``period`` s in a thread; ``peak`` in bytes."""

    def __init__(self, pid: int, period: float = 0.02) -> None:
        self.pid, self.period, self.peak = pid, period, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self._stop.wait(self.period)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _predict(url: str, task_id: int) -> tuple[bool, float]:
    body = {"project": "1.1712345678", "label_config": CONFIG,
            "tasks": [{"id": task_id, "data": {"image": f"/data/upload/1/{task_id}.png"}}]}
    t0 = time.perf_counter()
    try:
        r = requests.post(f"{url}/predict", json=body, timeout=600)
        results = r.json()["results"] if r.status_code == 200 else []
        ok = len(results) == 1 and "score" in results[0]  # a task that failed has no score
    except requests.RequestException:
        ok = False
    return ok, time.perf_counter() - t0


def run(n: int, rounds: int, net: str, image_size: int, threads: int) -> dict[str, float]:
    """Start the fake LS and gunicorn, fire ``rounds`` bursts of ``n`` concurrent /predict; the figures."""
    from tests.support.mtal_processes import backend_env, start_backend

    tmp = Path(tempfile.mkdtemp(prefix="mtal-load-"))
    with FakeLabelStudio.start(CONFIG, n_tasks=n, n_images=n, image_hw=(480, 640)) as ls:
        env = backend_env(ls.url, "load-token", tmp / "models", MTAL_CACHE_DIR="off", MTAL_NET_CONFIG=net,
                          MTAL_IMAGE_SIZE=str(image_size), MTAL_DEVICE="cpu", MTAL_THREADS=str(threads),
                          LOG_LEVEL="WARNING")
        with start_backend(env, tmp) as backend:
            assert backend.url is not None
            r = requests.post(f"{backend.url}/setup", json={"project": "1.1712345678", "schema": CONFIG}, timeout=120)
            r.raise_for_status()
            if not _predict(backend.url, 1)[0]:
                raise RuntimeError(f"warm-up /predict failed: {backend.log_tail()}")
            pid = backend.process.pid
            idle = tree_rss(pid)
            oks, walls, latencies, after = [], [], [], []
            with RssSampler(pid) as sampler, ThreadPoolExecutor(n) as pool:
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    answers = list(pool.map(lambda t: _predict(backend.url, t), range(1, n + 1)))
                    walls.append(time.perf_counter() - t0)
                    oks.append(sum(ok for ok, _ in answers))
                    latencies += [s for _, s in answers]
                    after.append(tree_rss(pid))
            print(f"[bench.load] rounds: ok {oks}, wall {[round(w, 1) for w in walls]} s, "
                  f"RSS after each round {[a >> 20 for a in after]} MB", file=sys.stderr)
    return {"ok": min(oks), "wall": max(walls), "p95": statistics.quantiles(latencies, n=20)[-1],
            "idle": idle / 2**20, "peak": sampler.peak / 2**20, "growth": (after[-1] - after[0]) / 2**20}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100, help="concurrent requests per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--net", default="small", help="MTAL_NET_CONFIG (the default is small)")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=4, help="MTAL_THREADS (gunicorn threads; default 4)")
    args = ap.parse_args(argv)
    fig = run(args.n, args.rounds, args.net, args.image_size, args.threads)
    print(f"METRIC load_{args.n}_predict_ok={fig['ok']:.0f}")
    print(f"METRIC load_{args.n}_predict_wall_s={fig['wall']:.1f}")
    print(f"METRIC load_predict_p95_s={fig['p95']:.2f}")
    print(f"METRIC load_idle_rss_mb={fig['idle']:.0f}")
    print(f"METRIC load_peak_rss_mb={fig['peak']:.0f}")
    print(f"METRIC load_rss_growth_mb={fig['growth']:.0f}")
    return 0 if fig["ok"] == args.n else 1


if __name__ == "__main__":
    raise SystemExit(main())
