"""Serving photographs: /predict of 16 photos with their aspect ratio kept, against the bare batched
forward at the same input size, the per-photo time per net, and the peak memory for 4000x3000 JPEGs.

    python -m bench.serve_photo [--runs 5] [--net small default] [--skip-4k]

Like :mod:`bench.serve` (a local HTTP server standing in for Label Studio, the backend app on
werkzeug, default on-disk image cache, warm-up request first), with 16 generated photo-like JPEGs of
CamVid's size (480x360) at the default geometry (shorter side 384: a 384x512 input). Prints

- ``METRIC predict_vs_forward_photo`` (small net, the server default; target <= 1.25): median /predict
  time over median bare forward of the same [16, 3, 384, 512] batch, alternating runs;
- ``METRIC predict_ms_per_photo_<net>``: median /predict time / 16 in ms per ``--net`` (a figure to
  track, not a target);
- ``METRIC serve_peak_rss_mb_4k`` (target <= 1500): peak RSS of a fresh process (run as a subprocess,
  the JPEGs written beforehand by the parent) serving one /predict of 16 tasks of 4000x3000 JPEG.
"""

from __future__ import annotations

import argparse
import functools
import logging
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
import torch
from PIL import Image
from werkzeug.serving import make_server

from backend.serving.predict import INFERENCE
from backend.settings import Settings
from backend.web.app import create_app
from bench.serve import CONFIG, _FileServer, _Quiet, _serve

N_TASKS = 16
PHOTO = (360, 480)
BIG = (3000, 4000)


def write_photos(root: Path, height: int, width: int, n: int = N_TASKS) -> None:
    """``n`` photo-like JPEGs (smooth gradients, blocks, noise) under root/data/upload/<i>.jpg."""
    up = root / "data" / "upload"
    up.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xx / width * 255, yy / height * 255, (xx + yy) / (width + height) * 255], -1)
    for i in range(n):
        img = (base + 11 * i) % 256
        for _ in range(6):
            y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
            img[y0 : y0 + height // 4, x0 : x0 + width // 4] = rng.integers(0, 255, 3)
        img = (img + rng.normal(0, 6, (1, width, 1))).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(up / f"{i}.jpg", quality=90)


class Backend:
    """The backend app on werkzeug and a Label Studio file server over ``root``."""

    def __init__(self, root: Path, net: str) -> None:
        self.files = _FileServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root / "ls")))
        _serve(self.files)
        settings = Settings(label_studio_url=f"http://127.0.0.1:{self.files.server_address[1]}",
                            label_studio_api_key="bench", model_dir=root / "models", net_config=net,
                            device="cpu", cache_dir=root / "models" / ".image-cache")
        self.app = create_app(settings)
        self.http = make_server("127.0.0.1", 0, self.app, threaded=True)
        _serve(self.http)
        self.url = f"http://127.0.0.1:{self.http.server_port}"
        self.session = requests.Session()
        r = self.session.post(f"{self.url}/setup", json={"project": "1.0", "schema": CONFIG}, timeout=120)
        r.raise_for_status()
        tasks = [{"id": i + 1, "data": {"image": f"/data/upload/{i}.jpg"}} for i in range(N_TASKS)]
        self.body = {"tasks": tasks, "project": "1.0", "label_config": CONFIG}

    def predict(self) -> float:
        t0 = time.perf_counter()
        r = self.session.post(f"{self.url}/predict", json=self.body, timeout=600)
        dt = time.perf_counter() - t0
        r.raise_for_status()
        results = r.json()["results"]
        if len(results) != N_TASKS or any(not p["result"] for p in results):
            raise RuntimeError(f"/predict failed for some tasks: {str(results)[:300]}")
        return dt

    def close(self) -> None:
        self.http.shutdown()
        self.files.shutdown()


def measure(net: str, runs: int) -> dict[str, Any]:
    """/predict of the 16 CamVid-size photos vs the bare forward at 384x512, alternating runs."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_photos(root / "ls", *PHOTO)
        backend = Backend(root, net)
        store = backend.app.extensions["mtal"].store
        model = store.load_model("1").model
        batch = torch.rand(N_TASKS, 3, 384, 512, generator=torch.Generator().manual_seed(0))

        def bare() -> None:
            with torch.inference_mode():
                model.predict(batch)

        def forward() -> float:
            t0 = time.perf_counter()
            INFERENCE.submit(bare).result()
            return time.perf_counter() - t0

        backend.predict(), forward()  # warm-up (downloads into the cache)
        t_pred, t_fwd = [], []
        for _ in range(runs):
            t_pred.append(backend.predict())
            t_fwd.append(forward())
        backend.close()
    return {"net": net, "predict_s": statistics.median(t_pred), "forward_s": statistics.median(t_fwd)}


def big_case(root: Path) -> None:
    """One /predict of the 16 4000x3000 JPEGs under ``root/ls`` in this fresh process (the photos were
    written by the parent, so their generation does not count); prints its peak RSS."""
    backend = Backend(root, "small")
    ready = _rss_mb()
    dt = backend.predict()
    backend.close()
    peak = _hwm_mb()  # not ru_maxrss: Linux carries the parent's peak across fork and exec
    print(f"# 16 x 4000x3000 JPEG: /predict {dt:.1f} s; RSS with the backend ready {ready:.0f} MB")
    print(f"METRIC serve_peak_rss_mb_4k={peak:.0f}")


def _hwm_mb() -> float:
    """This process's peak RSS (VmHWM), MB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", nargs="+", default=["small", "default"], choices=["tiny", "small", "default"])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--skip-4k", action="store_true")
    ap.add_argument("--case-4k", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    if args.case_4k:
        big_case(args.case_4k)
        return 0
    if not args.skip_4k:  # first, in a fresh process: its peak is the 4k request's alone
        with tempfile.TemporaryDirectory() as tmp:
            write_photos(Path(tmp) / "ls", *BIG)
            out = subprocess.run([sys.executable, "-m", "bench.serve_photo", "--case-4k", tmp], capture_output=True,
                                 text=True, timeout=1800)
        print("\n".join(line for line in out.stdout.splitlines() if line.startswith(("#", "METRIC")))
              or out.stderr.strip()[-2000:], flush=True)
    rows = [measure(net, args.runs if net != "default" else max(1, args.runs // 2)) for net in args.net]
    for r in rows:
        print(f"# net={r['net']}: median /predict {r['predict_s'] * 1e3:.0f} ms, bare forward "
              f"{r['forward_s'] * 1e3:.0f} ms ({N_TASKS} photos 480x360 -> 384x512)")
        print(f"METRIC predict_ms_per_photo_{r['net']}={r['predict_s'] * 1e3 / N_TASKS:.0f}")
    small = next((r for r in rows if r["net"] == "small"), rows[0])
    print(f"METRIC predict_vs_forward_photo={small['predict_s'] / small['forward_s']:.3f}  # net={small['net']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
