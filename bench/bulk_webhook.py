"""Benchmark of counting a bulk webhook (issue #31, item 4): the streamed count against ``json.loads``.

    python -m bench.bulk_webhook [--annotations 5000] [--chunk-kib 256] [--repeat 3]

Label Studio posts ``ANNOTATIONS_CREATED`` with up to 5,000 annotations at once, sent with a 1 s timeout and no
retry. The body here is what it sends for ``--annotations`` brush annotations of 2048x1536 photos
(:func:`brush_batch`, ~49 MiB for 5,000). Measured side by side in one run, best of ``--repeat``:

- ``METRIC bulk_webhook_mib``: the body's size;
- ``METRIC bulk_webhook_stream_s``: :class:`backend.web.bulk_webhook.WebhookStream` fed in ``--chunk-kib``
  pieces, as the server reads it, up to the object the webhook handler counts;
- ``METRIC bulk_webhook_json_loads_s``: ``json.loads`` of the whole body alone (what parsing it whole costs
  before any counting);
- ``METRIC bulk_webhook_stream_vs_loads``: their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

__all__ = ["SEG", "brush_batch", "main"]

SEG = ('<View><Image name="image" value="$image"/><BrushLabels name="semantic" toName="image">'
       '<Label value="road"/><Label value="car"/></BrushLabels></View>')


def brush_batch(n: int) -> bytes:
    """An ANNOTATIONS_CREATED as Label Studio 1.23.2 sends it for ``n`` annotations of 2048x1536 photos (project
    1, config :data:`SEG`), each a brush mask of one or two objects (~9 KB of JSON each); every 4th annotation
    cancelled (skipped)."""
    from label_studio_sdk.converter.brush import mask2rle

    rng = np.random.default_rng(0)
    h, w = 1536, 2048
    yy, xx = np.ogrid[:h, :w]
    rles = []
    for k in range(4):
        mask = np.zeros((h, w), np.uint8)
        for _ in range(1 + k % 2):
            cy, cx, radius = rng.integers(0, h), rng.integers(0, w), rng.integers(40, 120)
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 < radius * radius] = 255
        rles.append(mask2rle(mask))
    annotations = [{"id": i + 1, "result": [{
        "id": f"r{i}", "type": "brushlabels", "from_name": "semantic", "to_name": "image", "origin": "manual",
        "original_width": w, "original_height": h, "image_rotation": 0,
        "value": {"format": "rle", "rle": rles[i % 4], "brushlabels": ["car"]}}],
        "was_cancelled": i % 4 == 3, "ground_truth": False, "task": i + 1, "project": 1, "completed_by": 1,
        "lead_time": 12.5, "created_at": "2026-12-07T23:00:00Z"} for i in range(n)]
    tasks = [{"id": i + 1, "data": {"image": f"/data/upload/1/{i + 1}.png"}, "project": 1, "is_labeled": True}
             for i in range(n)]
    project = {"id": 1, "title": "photos", "label_config": SEG, "model_version": ""}
    return json.dumps({"action": "ANNOTATIONS_CREATED", "annotation": annotations, "project": project,
                       "task": tasks}).encode()


def main(argv: list[str] | None = None) -> int:
    from backend.web.bulk_webhook import WebhookStream

    ap = argparse.ArgumentParser(prog="python -m bench.bulk_webhook", description=__doc__.split("\n")[0])
    ap.add_argument("--annotations", type=int, default=5000)
    ap.add_argument("--chunk-kib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    raw = brush_batch(args.annotations)
    size = args.chunk_kib * 1024
    stream_s, loads_s = [], []
    for _ in range(args.repeat):  # interleaved: both see the same machine load
        t0 = time.perf_counter()
        s = WebhookStream()
        for i in range(0, len(raw), size):
            s.feed(raw[i:i + size])
        kept = s.body()
        stream_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        json.loads(raw)
        loads_s.append(time.perf_counter() - t0)
    assert len(kept["annotation"]) == args.annotations
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"METRIC bulk_webhook_mib={len(raw) / 2**20:.1f}  # {args.annotations} brush annotations", flush=True)
    print(f"METRIC bulk_webhook_stream_s={min(stream_s):.3f}  # {args.chunk_kib} KiB pieces, load {load:.1f}")
    print(f"METRIC bulk_webhook_json_loads_s={min(loads_s):.3f}  # the whole body, load {load:.1f}")
    print(f"METRIC bulk_webhook_stream_vs_loads={min(stream_s) / min(loads_s):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
