"""Cost of serving: /predict through the real HTTP stack vs the bare batched forward, same run.

Starts, in this process, a local HTTP server standing in for Label Studio's ``/data/upload`` (16 PNG
images of 256x256) and the backend app on werkzeug's threaded server; posts /setup, then times
``POST /predict`` of the 16 tasks with ``requests`` (fetch + decode + resize + one batched forward +
conversion to LS results + JSON) against ``model.predict`` on the same 16 images already in memory
(same network object, same device, run on the same inference thread as /predict's forward). Runs
alternate to share any machine noise; the ratio is median /predict time / median forward time (the
median of per-run ratios is printed too: on a loaded machine the two disagree by up to ~0.2).
The backend runs with its default on-disk image cache (``<MODEL_DIR>/.image-cache``), so the timed
requests are steady state: Label Studio asks again for the same tasks after every model version; the
warm-up request is the one that downloads.

Measures each ``--net`` (default: ``small``, the server's default ``MTAL_NET_CONFIG``, and
``default``) and prints ``METRIC predict_vs_forward_<net>=...`` per net, ``METRIC
predict_vs_forward=<the worst of them>`` (target <= 1.25) and ``METRIC serve_peak_rss_mb=<peak RSS of
this process, all nets>`` (target <= 1500).

``--stages`` also times, inside each timed /predict, the batched forward (``predict._infer``: forward,
task scores, float16 copy) and the conversion to Label Studio results (``predict._one_prediction`` of
every task: argmax, speckle removal, brush RLE), and prints their medians as multiples of the bare
forward (what docs/backend.md's breakdown is made of; the rest is fetch + decode + HTTP + JSON).

    python -m bench.serve [--net small default] [--device cpu|cuda|auto] [--runs 7] [--stages]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import logging
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
import torch
from PIL import Image
from werkzeug.serving import make_server

import backend.serving.predict as predict_module
from backend.serving.predict import INFERENCE
from backend.settings import Settings
from backend.web.app import create_app

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="semantic" toName="image">
    <Label value="road"/><Label value="car"/><Label value="person"/><Label value="tree"/>
  </BrushLabels>
  <BrushLabels name="parts" toName="image"><Label value="wheel"/><Label value="window"/></BrushLabels>
</View>"""
N_TASKS = 16
SIZE = 256


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _FileServer(http.server.ThreadingHTTPServer):
    request_queue_size = 128  # the default 5 overflows with 8 parallel fetches: SYN retry = 1 s stalls
    daemon_threads = True


def _serve(server: http.server.HTTPServer | object) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)  # type: ignore[attr-defined]
    thread.start()
    return thread


def _write_images(root: Path) -> list[np.ndarray]:
    """16 smooth synthetic scenes (gradients + rectangles) as PNG under root/data/upload."""
    up = root / "data" / "upload"
    up.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    images = []
    for i in range(N_TASKS):
        img = np.stack([(xx + 13 * i) % 256, (yy + 7 * i) % 256, (xx + yy) // 2 % 256], -1).astype(np.uint8)
        for _ in range(4):
            x0, y0 = rng.integers(0, SIZE - 40, 2)
            img[y0 : y0 + 40, x0 : x0 + 60] = rng.integers(0, 255, 3, dtype=np.uint8)
        Image.fromarray(img).save(up / f"{i}.png")
        images.append(img)
    return images


class StageTimer:
    """Seconds spent in ``predict._infer`` and ``predict._one_prediction`` per /predict, by wrapping them
    (the app runs in this process); ``start()`` before a request, ``stop()`` after it."""

    NAMES = {"_infer": "infer", "_one_prediction": "convert"}

    def __init__(self) -> None:
        self.current = dict.fromkeys(self.NAMES.values(), 0.0)
        self.runs: list[dict[str, float]] = []
        self._originals = {name: getattr(predict_module, name) for name in self.NAMES}

    def install(self) -> None:
        for name, stage in self.NAMES.items():
            setattr(predict_module, name, self._wrap(self._originals[name], stage))

    def uninstall(self) -> None:
        for name, fn in self._originals.items():
            setattr(predict_module, name, fn)

    def _wrap(self, fn: Any, stage: str) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current[stage] += time.perf_counter() - t0
        return timed

    def start(self) -> None:
        self.current = dict.fromkeys(self.current, 0.0)

    def stop(self) -> None:
        self.runs.append(dict(self.current))

    def medians(self) -> dict[str, float]:
        return {k: statistics.median(r[k] for r in self.runs) for k in self.current} if self.runs else {}


def measure(net: str, device_arg: str, runs: int, stages: bool = False) -> dict[str, Any]:
    """One net: warm up, then ``runs`` interleaved (/predict, bare forward) pairs; medians in seconds
    (``stages``: also the medians of the forward and conversion inside /predict, see StageTimer)."""
    timer = StageTimer()
    if stages:
        timer.install()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images = _write_images(root / "ls")
        files = _FileServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root / "ls")))
        _serve(files)
        ls_url = f"http://127.0.0.1:{files.server_address[1]}"
        settings = Settings(
            label_studio_url=ls_url,
            label_studio_api_key="bench",
            model_dir=root / "models",
            net_config=net,
            device=device_arg,
            image_size=SIZE,
            cache_dir=root / "models" / ".image-cache",  # what Settings.from_env gives by default
        )
        app = create_app(settings)
        http_server = make_server("127.0.0.1", 0, app, threaded=True)
        _serve(http_server)
        url = f"http://127.0.0.1:{http_server.server_port}"
        session = requests.Session()
        version = session.post(f"{url}/setup", json={"project": "1.0", "schema": CONFIG}, timeout=60).json()
        tasks = [{"id": i + 1, "data": {"image": f"/data/upload/{i}.png"}} for i in range(N_TASKS)]
        body = {"tasks": tasks, "project": "1.0", "label_config": CONFIG}

        store = app.extensions["mtal"].store
        model = store.load_model("1").model
        device = store.device
        # contiguous NCHW float, what the network sees in /predict
        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255).contiguous().to(device)

        def bare() -> None:
            with torch.inference_mode():
                model.predict(batch)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()

        def forward() -> float:  # on the thread /predict's forwards run on (same OpenMP team)
            t0 = time.perf_counter()
            INFERENCE.submit(bare).result()
            return time.perf_counter() - t0

        def predict() -> float:
            timer.start()
            t0 = time.perf_counter()
            r = session.post(f"{url}/predict", json=body, timeout=120)
            dt = time.perf_counter() - t0
            timer.stop()
            r.raise_for_status()
            results = r.json()["results"]
            if len(results) != N_TASKS or any(not p["result"] and "score" not in p for p in results):
                raise RuntimeError(f"/predict failed for some tasks: {results[:2]}")
            return dt

        predict(), forward()  # warm-up: first load, allocator, caches
        timer.runs.clear()
        t_pred, t_fwd = [], []
        for _ in range(runs):
            t_pred.append(predict())
            t_fwd.append(forward())
        http_server.shutdown()
        files.shutdown()
    timer.uninstall()
    return {
        "net": net,
        "device": device,
        "version": str(version.get("model_version")),
        "predict_s": statistics.median(t_pred),
        "forward_s": statistics.median(t_fwd),
        "ratio": statistics.median(t_pred) / statistics.median(t_fwd),
        "pair_ratio": statistics.median(p / f for p, f in zip(t_pred, t_fwd, strict=True)),
        "stages": timer.medians() if stages else {},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", nargs="+", default=["small", "default"], choices=["tiny", "small", "default"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--stages", action="store_true", help="time the forward and the conversion inside /predict")
    args = ap.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    rows = [measure(net, args.device, args.runs, args.stages) for net in args.net]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    for r in rows:
        print(f"# net={r['net']} device={r['device']} version={r['version']} tasks={N_TASKS} {SIZE}x{SIZE}")
        print(f"# median /predict {r['predict_s'] * 1e3:.1f} ms, median bare forward {r['forward_s'] * 1e3:.1f} ms, "
              f"median of per-run ratios {r['pair_ratio']:.3f}, runs={args.runs}")
        if r["stages"]:
            fwd = float(r["forward_s"])
            print("# inside /predict, x the bare forward: " + ", ".join(
                f"{k} {v / fwd:.3f}" for k, v in r["stages"].items()) + f"; the rest (fetch, decode, HTTP, JSON) "
                f"{(float(r['predict_s']) - sum(r['stages'].values())) / fwd:.3f}")
    for r in rows:
        print(f"METRIC predict_vs_forward_{r['net']}={r['ratio']:.3f}")
    print(f"METRIC predict_vs_forward={max(float(r['ratio']) for r in rows):.3f}")
    print(f"METRIC serve_peak_rss_mb={rss_mb:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
