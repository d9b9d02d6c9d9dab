"""Interactive pre-annotation (issue #31): how long a smart tool's click takes once the photo's trunk
features are cached, against the bare head forward on those features.

    python -m bench.interactive [--clicks 40] [--net small] [--threads 1] [--checkpoint FILE]

A CamVid-size photo (480x360: the first CamVid validation image of ../shared/datasets/camvid when present,
else a generated photo-like image) in a project with CamVid's 11 classes in a BrushLabels tag plus a smart
RectangleLabels and a smart KeyPointLabels tag; the backend app (Flask test client, so request parsing and
JSON are counted; no HTTP socket), the server's default geometry (shorter side 384: a 384x512 input) and
network (``small``), on the CPU. A click's cost depends on the regions it returns, so the network is
first trained ``--fit-steps`` steps on the CamVid photo's own labels (confident, photo-sized regions as
a trained network gives; ``--checkpoint`` uses a trained version instead; the synthetic photo runs
untrained). The first click fetches and runs the trunk; the ``--clicks`` later clicks alternate smart
rectangles and smart keypoints at different places, each label the class the prefill shows there. Each
click alternates with one bare head forward on the cached features (``net.heads``), so both see the same
machine load. Prints

- ``METRIC interactive_p95_ms`` (target <= 150): 95th percentile of the later clicks' /predict time;
- ``METRIC interactive_vs_heads`` (target <= 1.5): median click time / median bare head forward;
- ``METRIC interactive_first_click_ms``: the first click (image decode + trunk + heads), a figure to track;
- ``METRIC interactive_regions``: the share of later clicks that returned a region.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from backend.settings import Settings
from backend.web.app import create_app
from mtal_models.data.geometry import Fit

CAMVID = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "camvid" / "val"
CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
           "Bicyclist"]
LABELS = "".join(f'<Label value="{c}"/>' for c in CLASSES)
CONFIG = f"""<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="semantic" toName="image">{LABELS}</BrushLabels>
  <RectangleLabels name="box_smart" toName="image" smart="true">{LABELS}</RectangleLabels>
  <KeyPointLabels name="kp" toName="image" smart="true">{LABELS}</KeyPointLabels>
</View>"""
URL = "/data/upload/photo.png"
H, W = 360, 480


def photo() -> tuple[np.ndarray, np.ndarray | None, str]:
    """(uint8 [360, 480, 3], its CamVid label map [360, 480] or None, where it came from)."""
    files = sorted(CAMVID.glob("*.png")) if CAMVID.is_dir() else []
    annot = CAMVID.parent / "valannot"
    if files and (annot / files[0].name).is_file():
        labels = np.asarray(Image.open(annot / files[0].name))
        return np.asarray(Image.open(files[0]).convert("RGB")), labels, f"camvid {files[0].name}"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    img = np.stack([xx / W * 255, yy / H * 255, (xx + yy) / (W + H) * 255], -1)
    for _ in range(8):
        y0, x0 = rng.integers(0, H - 60), rng.integers(0, W - 80)
        img[y0: y0 + rng.integers(30, 120), x0: x0 + rng.integers(40, 160)] = rng.integers(0, 255, 3)
    return (img + rng.normal(0, 6, img.shape)).clip(0, 255).astype(np.uint8), None, "synthetic"


def fit_to_photo(net: torch.nn.Module, image: np.ndarray, labels: np.ndarray, steps: int) -> None:
    """Train ``net`` in place on the photo's own CamVid labels for ``steps`` steps, so that its regions
    are as large and confident as a trained network's (the click's cost depends on them); CamVid's
    Unlabelled (11) is ignored, class k is network class k + 1."""
    fit = Fit.for_size(H, W, 384, 1024)
    x = torch.from_numpy(fit.image(image)).permute(2, 0, 1)[None].float() / 255
    target = torch.from_numpy(fit.label(np.where(labels < 11, labels + 1, 255), 255).astype(np.int64))[None]
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(net(x).final["semantic"], target, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()


class _NoTrainer:
    """No training queue (no worker thread competing with the clicks)."""

    def submit(self, project_id: str, event: str, data: Any) -> dict[str, Any]:
        return {}

    def state(self) -> dict[str, Any]:
        return {}


class _Fetcher:
    def __init__(self, image: np.ndarray) -> None:
        self.image = image

    def fetch_image(self, url: str, task_id: Any = None) -> np.ndarray:
        return self.image

    def fetch_array(self, url: str, task_id: Any = None) -> np.ndarray:
        raise FileNotFoundError(url)


def _click(i: int, labels: np.ndarray) -> dict[str, Any]:
    """The i-th click: a rectangle (even i) or two keypoints (odd i) at a place that moves with i."""
    rng = np.random.default_rng(i)
    cx, cy = float(rng.uniform(0.15, 0.85)), float(rng.uniform(0.15, 0.85))
    label = CLASSES[int(labels[int(cy * H), int(cx * W)]) - 1] if labels[int(cy * H), int(cx * W)] else "Road"
    common = {"to_name": "image", "original_width": W, "original_height": H}
    if i % 2 == 0:
        value = {"x": 100 * cx - 10, "y": 100 * cy - 10, "width": 20, "height": 20, "rectanglelabels": [label]}
        return {"result": [{**common, "from_name": "box_smart", "type": "rectanglelabels", "value": value}]}
    points = [{**common, "from_name": "kp", "type": "keypointlabels", "is_positive": pos,
               "value": {"x": 100 * x, "y": 100 * cy, "width": 1, "keypointlabels": [label]}}
              for x, pos in ((cx, True), (min(0.95, cx + 0.1), False))]
    return {"result": points}


def run(clicks: int, net: str, checkpoint: Path | None, fit_steps: int) -> dict[str, float]:
    image, photo_labels, source = photo()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(label_studio_url="http://ls.invalid", label_studio_api_key="t",
                            model_dir=Path(tmp) / "models", net_config=net, device="cpu",
                            initial_checkpoint=checkpoint)
        app = create_app(settings, trainer=_NoTrainer(), fetcher_factory=lambda *_: _Fetcher(image))
        client = app.test_client()
        assert client.post("/setup", json={"project": "1.1", "schema": CONFIG}).status_code == 200
        task = {"id": 1, "project": 1, "data": {"image": URL}, "annotations": []}
        model = app.extensions["mtal"].store.load_model("1").model  # the network the app answers from
        if checkpoint is None and photo_labels is not None and fit_steps > 0:
            fit_to_photo(model, image, photo_labels, fit_steps)

        def post(context: Any) -> tuple[float, dict[str, Any]]:
            t0 = time.perf_counter()
            resp = client.post("/predict", json={"tasks": [task], "project": "1.1", "label_config": CONFIG,
                                                 "params": {"context": context}})
            elapsed = time.perf_counter() - t0
            assert resp.status_code == 200, resp.json
            return elapsed, resp.json["results"][0]

        _, prefill = post(None)  # the prefill says which class is where (the clicks' labels)
        labels = _prefill_classes(prefill)
        first, answer = post(_click(0, labels))
        assert not answer["interactive"]["cached"]
        cache = app.extensions["mtal_interactive"].cache
        feats = next(iter(cache._items.values()))[0]
        times, heads, found = [], [], 0
        for i in range(1, clicks + 1):
            elapsed, answer = post(_click(i, labels))
            assert answer["interactive"]["cached"]
            times.append(elapsed)
            found += bool(answer["result"])
            t0 = time.perf_counter()
            with torch.inference_mode():
                model.heads(feats.trunk, feats.size)
            heads.append(time.perf_counter() - t0)
    p95 = float(np.percentile(times, 95)) * 1000
    weights = (f"checkpoint {checkpoint.name}" if checkpoint else f"fitted {fit_steps} steps to the photo"
               if photo_labels is not None and fit_steps > 0 else "untrained")
    return {"p95_ms": p95, "median_ms": statistics.median(times) * 1000,
            "heads_ms": statistics.median(heads) * 1000, "first_ms": first * 1000,
            "ratio": statistics.median(times) / statistics.median(heads), "regions": found / clicks,
            "source": source, "weights": weights}  # type: ignore[dict-item]


def _prefill_classes(prefill: dict[str, Any]) -> np.ndarray:
    """int [H, W]: 1 + CLASSES index of each pixel's prefilled class, 0 where none."""
    from backend.labelstudio.regions import rle_to_mask

    out = np.zeros((H, W), np.int64)
    for region in prefill["result"]:
        if region.get("type") == "brushlabels":
            out[rle_to_mask(region["value"]["rle"], H, W) > 0] = 1 + CLASSES.index(region["value"]["brushlabels"][0])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=40)
    parser.add_argument("--net", default="small")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--fit-steps", type=int, default=40,
                        help="without --checkpoint: steps of training on the CamVid photo's own labels")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    r = run(args.clicks, args.net, args.checkpoint, args.fit_steps)
    print(f"photo: {r['source']} {W}x{H}; net {args.net} ({r['weights']}); {args.threads} thread(s); "
          f"{args.clicks} later clicks; "
          f"median click {r['median_ms']:.1f} ms, median bare heads {r['heads_ms']:.1f} ms")
    print(f"METRIC interactive_p95_ms={r['p95_ms']:.1f}")
    print(f"METRIC interactive_vs_heads={r['ratio']:.2f}")
    print(f"METRIC interactive_first_click_ms={r['first_ms']:.1f}")
    print(f"METRIC interactive_regions={r['regions']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
