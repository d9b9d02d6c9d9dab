"""Peak memory of a worker ranking a large pool (issue #24, item 1: ``rank_peak_rss_mb_10k``, target <= 2,000 MB).

    python -m bench.rank_rss [--sizes 1000 10000] [--config single] [--photos 64]

10,000 photo-size forwards take hours on this CPU, so the figure is put together from two honest parts, each
the peak RSS (``ru_maxrss``) of a fresh child process that runs :func:`backend.loop.rank_pass.rank_tasks`
against :mod:`bench.fake_ls` served from the parent (so the fake's stored predictions are not counted):

- **growth with N**: the same ranking of ``--sizes`` tasks (96x72 PNGs, 256 distinct ones behind distinct URLs,
  fetched over HTTP) with the ``tiny`` net at MTAL_IMAGE_SIZE 64, the project's default strategy, pre-annotations
  spooled and every prediction pushed: ``METRIC rank_peak_rss_mb_tiny_<n>`` and ``METRIC rank_rss_kb_per_task``
  ((peak at the largest size - peak at the smallest) / the task difference: what a task adds; only scores,
  pooled features [N, D] and per-task bookkeeping may grow with N);
- **a photo-size chunk**: ``--photos`` CamVid photos (480x360 JPEGs: one rank chunk of 64) with the ``small``
  net at 384: ``METRIC rank_peak_rss_mb_photo_chunk`` (batch-bound, the same for any N);

``METRIC rank_peak_rss_mb_10k`` = the photo chunk's peak + 10,000 x the growth per task: an estimate, not a
10,000-photo run (pooled features of the small net are counted at the tiny net's width; the difference,
10,000 x (64 - 16) floats, is 2 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.fake_ls import FakeLabelStudio
from bench.rank_photo import CONFIGS, photos


def child(url: str, config: str, net: str, image_size: int) -> dict[str, Any]:
    """In a fresh process: set up the project's initial version, list the tasks, rank them all; peak RSS (MB)."""
    import torch

    from backend.labelstudio.client import LabelStudioAPI
    from backend.labelstudio.images import ImageFetcher
    from backend.loop.rank_pass import rank_tasks
    from backend.serving.model import MTALModel, load_schema
    from backend.serving.store import ModelStore
    from backend.settings import Settings
    from bench.loop import _RankContext

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="rank-rss-") as d:
        tmp = Path(d)
        settings = Settings(model_dir=tmp / "models", net_config=net, image_size=image_size, device="cpu",
                            clusters=0)
        store = ModelStore(settings.model_dir, device="cpu")
        version = MTALModel("1", CONFIGS[config], settings, store).setup()
        api = LabelStudioAPI(url, "bench-token")
        tasks = list(api.iter_tasks(1))
        ctx = _RankContext(settings, store, api, ImageFetcher(url, "bench-token", cache_dir=tmp / "cache"))
        ready = _rss_mb()
        t0 = time.perf_counter()
        summary = rank_tasks(ctx, "1", load_schema(CONFIGS[config]), version, tasks, set())
        seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    return {"tasks": len(tasks), "pushed": summary["pushed"], "strategy": summary["strategy"], "ready_mb": ready,
            "peak_mb": peak, "seconds": seconds}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def run_child(ls: FakeLabelStudio, config: str, net: str, image_size: int) -> dict[str, Any]:
    """:func:`child` in a fresh ``python -m bench.rank_rss --child`` process (one torch thread)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "bench.rank_rss", "--child", ls.url, "--config", config, "--net", net,
           "--image-size", str(image_size)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ranking child failed ({done.returncode}): {done.stderr[-2000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if out["pushed"] != len(ls.tasks):
        raise RuntimeError(f"the ranking pushed {out['pushed']} predictions for {len(ls.tasks)} tasks")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.rank_rss", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="pool sizes (tiny net, 64 px)")
    ap.add_argument("--config", default="single", choices=sorted(CONFIGS))
    ap.add_argument("--photos", type=int, default=64, help="CamVid photos of the photo-size chunk (0: skip)")
    ap.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    ap.add_argument("--net", default="tiny", help=argparse.SUPPRESS)
    ap.add_argument("--image-size", type=int, default=64, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.config, args.net, args.image_size)), flush=True)
        return 0
    peaks = {}
    for n in sorted(args.sizes):
        with FakeLabelStudio.start(CONFIGS[args.config], n, n_images=256, image_hw=(72, 96)) as ls:
            r = run_child(ls, args.config, "tiny", 64)
        peaks[n] = r["peak_mb"]
        print(f"# {n} tasks, tiny net at 64 px, {r['strategy']}: ready {r['ready_mb']:.0f} MB, peak {r['peak_mb']:.0f} "
              f"MB, ranking {r['seconds']:.1f} s", flush=True)
        print(f"METRIC rank_peak_rss_mb_tiny_{n}={r['peak_mb']:.0f}", flush=True)
    lo, hi = min(peaks), max(peaks)
    per_task_kb = (peaks[hi] - peaks[lo]) * 1024 / (hi - lo) if hi > lo else 0.0
    print(f"METRIC rank_rss_kb_per_task={per_task_kb:.1f}", flush=True)
    if args.photos:
        jpegs, source = photos(args.photos)
        with FakeLabelStudio.start(CONFIGS[args.config], len(jpegs), n_images=1, image_hw=(8, 8)) as ls:
            ls.images = list(jpegs)
            r = run_child(ls, args.config, "small", 384)
        print(f"# {len(jpegs)} {source} photos, small net at 384 px, {r['strategy']}: ready {r['ready_mb']:.0f} MB, "
              f"peak {r['peak_mb']:.0f} MB, ranking {r['seconds']:.1f} s", flush=True)
        print(f"METRIC rank_peak_rss_mb_photo_chunk={r['peak_mb']:.0f}", flush=True)
        print(f"METRIC rank_peak_rss_mb_10k={r['peak_mb'] + per_task_kb * 10_000 / 1024:.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
