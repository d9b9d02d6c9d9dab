"""Memory of the backend's train job on a large unlabelled pool (issue #30): the job lists the project's
tasks without a label, fills the one pool cache (fetch, decode, write to disk) and trains with the
semi-supervised term streaming the pool from that cache, never holding it.

    python -m bench.pool_train [--pool 1000] [--labelled 10] [--photo 360x480] [--net-config small]
                               [--image-size 192] [--epochs 2]

Label Studio is :mod:`bench.fake_ls` over HTTP in this (parent) process, serving ``--pool + --labelled``
photo-size PNG tasks (``--labelled`` of them with a two-label brush annotation at the photo's size). Each
arm runs in a fresh child process exactly as the backend runs the job: ``/setup`` and "Start Training"
through the Flask app, then the queue's first job (the train job; the ranking after it is not run) on the
embedded queue. Prints, per arm, the child's peak resident memory:

- ``METRIC pool_train_peak_rss_mb=<MB>``: ``MTAL_SEMI_WEIGHT=1``, the pool of ``--pool`` photos (target
  <= 2,000 MB at 1,000 photos: images are streamed from the cache, not held);
- ``METRIC supervised_train_peak_rss_mb=<MB>``: the same job with ``MTAL_SEMI_WEIGHT=0`` (no pool);
- ``METRIC pool_train_s`` / ``supervised_train_s``: the job's wall time (pool fill included).
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

import numpy as np

CONFIG = ('<View><Image name="image" value="$image"/><BrushLabels name="semantic" toName="image">'
          '<Label value="dark"/><Label value="light"/></BrushLabels></View>')


def annotation(seed: int, height: int, width: int) -> list[dict[str, Any]]:
    """A brush annotation of a ``height`` x ``width`` task: the left columns "dark", the rest "light"."""
    from backend.labelstudio.convert import mask_to_rle

    left = np.zeros((height, width), bool)
    left[:, : width // 4 + seed % (width // 2)] = True
    common = {"to_name": "image", "original_width": width, "original_height": height, "image_rotation": 0,
              "from_name": "semantic", "type": "brushlabels"}
    return [{**common, "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [name]}}
            for mask, name in ((left, "dark"), (~left, "light"))]


def _child(args: argparse.Namespace) -> None:
    """One train job in this process; prints a JSON line with its peak RSS, wall time and /status pool."""
    import torch

    from backend.loop import jobs
    from backend.loop.queue import ThreadWorker, open_queue
    from backend.loop.trainer import QueueTrainer
    from backend.serving.store import ModelStore
    from backend.settings import Settings
    from backend.web.app import create_app

    torch.set_num_threads(args.threads)
    model_dir = Path(args.model_dir)
    settings = Settings(label_studio_url=args.ls_url, label_studio_api_key="bench", model_dir=model_dir,
                        redis_url=None, net_config=args.net_config, image_size=args.image_size, device="cpu",
                        cache_dir=model_dir / ".image-cache", strategy="random", clusters=0,
                        train_epochs=args.epochs, train_batch_size=4, val_fraction=0.0, train_threshold=0,
                        semi_weight=args.semi, pool_max_images=args.pool)
    jobs.configure(settings)
    store = ModelStore(settings.model_dir, device="cpu")
    handle = open_queue(None, start_worker=False)
    client = create_app(settings, store, QueueTrainer(settings, store, handle=handle)).test_client()
    assert client.post("/setup", json={"project": "1.1712345678", "schema": CONFIG}).status_code == 200
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}}).status_code == 200
    started = time.perf_counter()
    ThreadWorker([handle.queue], connection=handle.connection).work(burst=True, max_jobs=1)
    seconds = time.perf_counter() - started
    status = client.get("/status", query_string={"project": "1"}).get_json()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": peak_mb, "seconds": seconds, "pool": status.get("pool"),
                      "version": status.get("version"), "error": status.get("error")}), flush=True)


def _arm(args: argparse.Namespace, url: str, semi: float, tmp: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.pool_train", "--child", "--ls-url", url, "--semi", str(semi),
           "--model-dir", str(tmp / f"models-{semi}"), "--pool", str(args.pool), "--net-config", args.net_config,
           "--image-size", str(args.image_size), "--epochs", str(args.epochs), "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "LOG_LEVEL": "WARNING"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"arm semi={semi} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pool_train", description=__doc__.split("\n")[0])
    ap.add_argument("--pool", type=int, default=1000, help="unlabelled photo tasks (MTAL_POOL_MAX_IMAGES too)")
    ap.add_argument("--labelled", type=int, default=10, help="labelled tasks")
    ap.add_argument("--photo", default="360x480", help="photo size HxW served by the fake Label Studio")
    ap.add_argument("--net-config", default="small")
    ap.add_argument("--image-size", type=int, default=192, help="MTAL_IMAGE_SIZE (network input's shorter side)")
    ap.add_argument("--epochs", type=int, default=2, help="MTAL_TRAIN_EPOCHS")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the job")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ls-url", help=argparse.SUPPRESS)
    ap.add_argument("--semi", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args)
        return 0
    from bench.fake_ls import FakeLabelStudio

    height, width = (int(v) for v in args.photo.split("x"))
    labelled = {t: annotation(t, height, width) for t in range(1, args.labelled + 1)}
    with tempfile.TemporaryDirectory(prefix="bench-pool-train-") as d, \
            FakeLabelStudio.start(CONFIG, args.pool + args.labelled, n_images=32, image_hw=(height, width),
                                  labelled=labelled) as ls:
        print(f"# {args.pool} unlabelled + {args.labelled} labelled {width}x{height} tasks, net "
              f"{args.net_config} at {args.image_size} px, {args.epochs} epochs, {args.threads} thread(s); "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
        results = {semi: _arm(args, ls.url, semi, Path(d)) for semi in (0.0, 1.0)}
    for semi, name in ((1.0, "pool"), (0.0, "supervised")):
        r = results[semi]
        if r["error"] or not r["version"]:
            raise SystemExit(f"the {name} train job failed: {r}")
        print(f"# {name}: /status pool {r['pool']}")
        print(f"METRIC {name}_train_peak_rss_mb={r['peak_mb']:.0f}")
        print(f"METRIC {name}_train_s={r['seconds']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
