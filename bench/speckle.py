"""What the no-speck rule at the photo's size costs per photo (issue #32).

    python -m bench.speckle [--repeats 5] [--threads 1] [--classes 12]

A fixed 12-class probability field (smooth blobs plus pixel noise, float16 as /predict holds it) at
the network size of a CamVid photo (480x360), a 960x720 one and a 4000x3000 one (shorter side 384,
``MTAL_IMAGE_SIZE``'s default) goes through :meth:`backend.serving.prefill.Prefill.results` (bilinear
upsampling, speckle removal, brush RLE: what /predict and the rank job run) twice, interleaved in
one run: "before" removes speckle at the network size only (what Label Studio got until #32),
"after" also at the photo's size. Prints the median ms per photo of each, the added ms and the
small components (< 0.2 % of the photo) left in the regions.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from backend.labelstudio.convert import SegmentationArgmax, rle_to_mask
from backend.labelstudio.label_config import parse_label_config
from backend.serving.prefill import Prefill
from mtal_models.data.geometry import Fit
from mtal_models.postprocess import remove_speckle

SIZES = [(360, 480), (720, 960), (3000, 4000)]


class NetSizeOnly(Prefill):
    """The prefill before #32: speckle removed on the network-size argmax only."""

    def _upsampled_mask(self, pred: Any, fit: Fit) -> Any:
        probs = torch.as_tensor(pred)
        net = fit.crop(probs).float().max(0).indices.to(torch.int32).numpy()
        cleaned = remove_speckle(net, self.config.min_area)
        override = None if cleaned is net else np.where(cleaned != net, cleaned, -1)
        return SegmentationArgmax(*fit.probs_to_original(probs, override))


def field(classes: int, fit: Fit, seed: int = 0) -> torch.Tensor:
    """float16 [classes, H, W] probabilities at the network input size: blobs of a 6x8 grid + noise."""
    gen = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.randn(1, classes, 6, 8, generator=gen), size=fit.padded, mode="bicubic")[0]
    return (coarse * 4 + torch.randn(classes, *fit.padded, generator=gen) * 0.5).softmax(0).half()


def small_patches(results: list[dict[str, Any]], height: int, width: int, min_area: float) -> int:
    """8-connected components under ``min_area`` of the photo in the decoded brush regions."""
    min_px, n = math.ceil(min_area * height * width), 0
    for r in results:
        mask = rle_to_mask(r["value"]["rle"], height, width).astype(np.uint8)
        _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        n += int((stats[1:, cv2.CC_STAT_AREA] < min_px).sum())
    return n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--classes", type=int, default=12)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    labels = "".join(f'<Label value="c{i}"/>' for i in range(1, args.classes))
    schema = parse_label_config(f'<View><Image name="image" value="$image"/><BrushLabels name="seg" '
                                f'toName="image">{labels}</BrushLabels></View>')
    after = Prefill()
    before = NetSizeOnly(after.config)
    for height, width in SIZES:
        fit = Fit.for_size(height, width)
        probs = field(args.classes, fit)
        times: dict[str, list[float]] = {"before": [], "after": []}
        left = {}
        for _ in range(args.repeats):
            for name, prefill in (("before", before), ("after", after)):
                t = time.perf_counter()
                results = prefill.results({"seg": probs}, schema, height, width, fit=fit)
                times[name].append(time.perf_counter() - t)
                left[name] = small_patches(results, height, width, after.config.min_area)
        b, a = (statistics.median(times[k]) * 1e3 for k in ("before", "after"))
        tag = f"{width}x{height}"
        print(f"METRIC speckle_ms_before_{tag}={b:.0f}  # network-size speckle only; small patches left: "
              f"{left['before']}")
        print(f"METRIC speckle_ms_after_{tag}={a:.0f}  # + photo-size pass; small patches left: {left['after']}")
        print(f"METRIC speckle_ms_added_{tag}={a - b:.0f}  # ratio {a / b:.2f}")


if __name__ == "__main__":
    main()
