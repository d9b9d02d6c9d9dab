"""Ranking at photo size: one :func:`backend.loop.rank_pass.rank_tasks` pass over CamVid-size photos served by
the fake Label Studio over HTTP (download, decode, forward, strategy, pre-annotations, push), against the bare
batched forward of the same images at the same input size, in the same run (issue #24, item 1).

    python -m bench.rank_photo [--photos 24] [--config single detseg dense] [--net small [default]] [--threads 1]

Photos: the first ``--photos`` CamVid training images (480x360) of ../shared/datasets/camvid, re-encoded as
JPEG (quality 90), or, without that folder, generated photo-like JPEGs of that size
(:func:`bench.serve_photo.write_photos`). Default geometry (shorter side 384: a 384x512 input), a fresh image
cache for every ranking (so each one downloads and decodes every photo), the project's default strategy
(``MTAL_STRATEGY=auto``) on an untrained initial version of ``--net``. Prints per config and net

- ``METRIC rank_ms_per_photo_<config>_<net>``: the ranking's wall time / photos, in ms;
- ``METRIC rank_vs_forward_photo_<config>_<net>``: the ranking's time over the bare batched forward
  (``model.predict`` in batches of MTAL_PREDICT_BATCH under ``torch.inference_mode``) of the same decoded
  photos at the same input size (issue #24's targets: <= 1.3 for single-pass strategies, <= 2.5 for
  MC-dropout ones).

Configs: ``single`` (one brush tag, dense), ``detseg`` (a brush tag + rectangles) and ``dense`` (PAD-Net
multi-task: the brush tag + depth + normals, whose ground truth would come from task data: these tasks carry
none, so all three are predicted and scored). Each measurement is the median of ``--runs`` alternating runs of
ranking and forward. Peak memory of a 10,000-task ranking: :mod:`bench.rank_rss`.
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from backend.labelstudio.client import LabelStudioAPI
from backend.labelstudio.decode import decode_fitted
from backend.labelstudio.images import ImageFetcher
from backend.labelstudio.regions import MAX_PIXELS
from backend.loop.rank_pass import rank_tasks
from backend.serving.model import MTALModel, load_schema
from backend.serving.store import ModelStore
from backend.settings import Settings
from bench.fake_ls import FakeLabelStudio
from bench.loop import _RankContext
from bench.serve_photo import PHOTO, write_photos
from mtal_models.data.geometry import Fit

CAMVID = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "camvid" / "train"
_BRUSH = ('<BrushLabels name="semantic" toName="image"><Label value="road"/><Label value="car"/>'
          '<Label value="person"/><Label value="tree"/><Label value="sky"/></BrushLabels>')
CONFIGS = {
    "single": f'<View><Image name="image" value="$image"/>{_BRUSH}</View>',
    "detseg": (f'<View><Image name="image" value="$image"/>{_BRUSH}'
               '<RectangleLabels name="objects" toName="image"><Label value="car"/><Label value="person"/>'
               '</RectangleLabels></View>'),
    # PAD-Net multi-task: depth and normals ground truth would come from task data (hidden Image tags); the
    # benchmark's tasks carry none, so every task is ranked on all three predictions
    "dense": (f'<View><Image name="image" value="$image"/>{_BRUSH}<View style="display: none">'
              '<Image name="depth" value="$depth"/><Image name="normals" value="$normals"/></View></View>'),
}


def photos(n: int, size: tuple[int, int] = PHOTO) -> tuple[list[bytes], str]:
    """``n`` JPEG files of ``size`` (height, width): CamVid's when present (and of that size), else generated."""
    files = sorted(CAMVID.glob("*.png"))[:n] if CAMVID.is_dir() and size == PHOTO else []
    if len(files) == n:
        out = []
        for f in files:
            buf = io.BytesIO()
            Image.open(f).convert("RGB").save(buf, format="JPEG", quality=90)
            out.append(buf.getvalue())
        return out, "camvid"
    with tempfile.TemporaryDirectory() as tmp:
        write_photos(Path(tmp), *size, n=n)
        return [(Path(tmp) / "data" / "upload" / f"{i}.jpg").read_bytes() for i in range(n)], "synthetic"


def measure(config: str, net: str, jpegs: list[bytes], runs: int, image_size: int) -> dict[str, Any]:
    """Median ranking time and median bare forward time of the ``jpegs`` (alternating runs)."""
    label_config = CONFIGS[config]
    n = len(jpegs)
    with tempfile.TemporaryDirectory(prefix="rank-photo-") as d:
        tmp = Path(d)
        settings = Settings(model_dir=tmp / "models", net_config=net, image_size=image_size, device="cpu",
                            clusters=0)
        store = ModelStore(settings.model_dir, device="cpu")
        with FakeLabelStudio.start(label_config, n, n_images=1, image_hw=(8, 8)) as ls:
            ls.images = list(jpegs)  # task id t serves jpegs[t % n]: every photo once
            version = MTALModel("1", label_config, settings, store).setup()
            api = LabelStudioAPI(ls.url, "bench-token")
            tasks = list(api.iter_tasks(1))
            schema = load_schema(label_config)
            model = store.load_model("1").model.eval()
            inputs = _inputs(jpegs, settings)

            def rank(i: int) -> tuple[float, str]:
                cache = tmp / f"cache{i}"  # cold: every ranking downloads and decodes every photo
                ctx = _RankContext(settings, store, api, ImageFetcher(ls.url, "bench-token", cache_dir=cache))
                t0 = time.perf_counter()
                summary = rank_tasks(ctx, "1", schema, version, tasks, set())
                dt = time.perf_counter() - t0
                if summary["pushed"] != n:
                    raise RuntimeError(f"the ranking pushed {summary['pushed']} predictions for {n} photos")
                return dt, summary["strategy"]

            def forward() -> float:
                t0 = time.perf_counter()
                with torch.inference_mode():
                    for b in range(0, n, settings.predict_batch_size):
                        model.predict(inputs[b:b + settings.predict_batch_size])
                return time.perf_counter() - t0

            rank(-1), forward()  # warm-up
            t_rank, t_fwd, strategy = [], [], ""
            for i in range(runs):
                dt, strategy = rank(i)
                t_rank.append(dt)
                t_fwd.append(forward())
    return {"config": config, "net": net, "strategy": strategy, "photos": n, "shape": tuple(inputs.shape[2:]),
            "rank_s": statistics.median(t_rank), "forward_s": statistics.median(t_fwd)}


def _inputs(jpegs: list[bytes], settings: Settings) -> torch.Tensor:
    """The photos decoded and resized as the ranking decodes them (:func:`decode_fitted`, the same
    :class:`Fit`): float [N, 3, H, W] in [0, 1]."""
    def fit_for(h: int, w: int) -> Fit:
        return Fit.for_size(h, w, settings.image_size, settings.image_max_size)

    out = [torch.from_numpy(np.array(decode_fitted(data, "photo", fit_for, MAX_PIXELS)[0]))
           for data in jpegs]
    return torch.stack(out).permute(0, 3, 1, 2).float().div_(255.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.rank_photo", description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=24, help="photos per ranking (default 24)")
    ap.add_argument("--config", nargs="+", default=["single", "detseg", "dense"], choices=sorted(CONFIGS))
    ap.add_argument("--net", nargs="+", default=["small"], choices=["tiny", "small", "default"])
    ap.add_argument("--runs", type=int, default=1, help="alternating ranking / forward runs (median)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a worker's, default 1)")
    ap.add_argument("--image-size", type=int, default=384, help="MTAL_IMAGE_SIZE (default 384)")
    ap.add_argument("--size", default="360x480", help="photo HxW (CamVid's 360x480 by default; else generated)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    jpegs, source = photos(args.photos, (h, w))
    for config in args.config:
        for net in args.net:
            r = measure(config, net, jpegs, args.runs, args.image_size)
            tag = f"{config}_{net}"
            print(f"# {tag}: {r['photos']} {source} photos {w}x{h} -> input {r['shape'][0]}x{r['shape'][1]}, "
                  f"strategy {r['strategy']}: ranking {r['rank_s']:.2f} s, bare forward {r['forward_s']:.2f} s, "
                  f"{args.threads} torch thread(s)", flush=True)
            print(f"METRIC rank_ms_per_photo_{tag}={r['rank_s'] * 1e3 / r['photos']:.0f}", flush=True)
            print(f"METRIC rank_vs_forward_photo_{tag}={r['rank_s'] / r['forward_s']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
