"""Regenerate the prefill snapshot: ``.venv/bin/python -m tests.backend.serving.golden.make_prefill_golden``.

``prefill_results.json`` is what :meth:`backend.serving.prefill.Prefill.results` returned, before the
conversion was made faster (issue #27), for the fixed inputs of :func:`cases`: the paths /predict and
the ranking job take (a Fit at the identity, as in ``bench.serve``; an upsampling Fit, as for photos; no
Fit, masks resized nearest; an argmax already reduced; probabilities in float16 and float32; brush and
polygon tags; boxes), with speckle at both sizes. Brush RLE is kept as its SHA-1 and length (the file
stays small; the test decodes what it gets with the SDK as well). Regenerate only when the output is
meant to change, and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from backend.labelstudio.convert import SegmentationArgmax
from backend.labelstudio.label_config import parse_label_config
from backend.serving.prefill import Prefill
from mtal_models.data.geometry import Fit
from mtal_models.postprocess import PrefillConfig

HERE = Path(__file__).parent
SNAPSHOT = HERE / "prefill_results.json"
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="semantic" toName="image">
    <Label value="road"/><Label value="car"/><Label value="person"/><Label value="tree"/>
  </BrushLabels>
  <PolygonLabels name="parts" toName="image"><Label value="wheel"/><Label value="window"/></PolygonLabels>
  <RectangleLabels name="boxes" toName="image"><Label value="car"/><Label value="person"/></RectangleLabels>
  <Choices name="mtal_labelled" toName="image" choice="multiple">
    <Choice value="semantic"/><Choice value="parts"/><Choice value="boxes"/>
  </Choices>
</View>"""


def _field(channels: int, h: int, w: int, seed: int, noise: float = 0.8) -> torch.Tensor:
    """Softmax of a smooth random field plus pixel noise: float32 [channels, h, w], ragged class
    boundaries and speckle (what an early network gives)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, channels, 5, 7, generator=gen)
    smooth = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0] * 4
    return (smooth + torch.randn(channels, h, w, generator=gen) * noise).softmax(0)


def _boxes(seed: int) -> torch.Tensor:
    """Detection rows [6, 6 + 2] in network pixels: overlapping boxes of both classes, one padding row."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.zeros(6, 8)
    xy = torch.rand(6, 2, generator=gen) * 40
    rows[:, :2], rows[:, 2:4] = xy, xy + 10 + torch.rand(6, 2, generator=gen) * 30
    rows[:, 4] = torch.linspace(0.9, 0.2, 6)
    rows[:, 5] = torch.tensor([0, 1, 0, 1, 1, -1])
    rows[:, 6:] = torch.rand(6, 2, generator=gen)
    return rows


def cases() -> list[dict[str, Any]]:
    """Named inputs of ``Prefill.results``: preds, height, width, input_size, fit, requested, prefill."""
    out: list[dict[str, Any]] = []
    for seed, (h, w), half in [(1, (96, 128), True), (2, (64, 64), False), (3, (128, 96), True)]:
        fit = Fit.for_size(h, w, size=min(h, w))  # the identity: bench.serve's 256x256 PNGs
        assert fit.resized == (h, w)
        ph, pw = fit.padded
        preds = {"semantic": _field(5, ph, pw, seed), "parts": _field(3, ph, pw, seed + 100),
                 "boxes": _boxes(seed)}
        if half:
            preds = {k: v.half() if k != "boxes" else v for k, v in preds.items()}
        out.append({"name": f"identity_{h}x{w}_{'f16' if half else 'f32'}", "preds": preds, "fit": fit,
                    "requested": ["semantic", "parts", "boxes"]})
    for seed, (h, w) in [(4, (150, 200)), (5, (90, 60))]:
        fit = Fit.for_size(h, w, size=48)  # upsampled to the photo's size
        ph, pw = fit.padded
        preds = {"semantic": _field(5, ph, pw, seed).half(), "parts": _field(3, ph, pw, seed + 100).half(),
                 "boxes": _boxes(seed)}
        out.append({"name": f"upsampled_{h}x{w}", "preds": preds, "fit": fit, "requested": ["semantic"]})
    probs = _field(5, 40, 60, 6)
    cls = probs.max(0).indices.to(torch.int32).numpy()
    conf = probs.max(0).values.numpy()
    out.append({"name": "no_fit_resized", "preds": {"semantic": probs, "parts": _field(3, 40, 60, 7)},
                "height": 80, "width": 120, "input_size": (40, 60)})
    out.append({"name": "argmax_given", "preds": {"semantic": SegmentationArgmax(cls, conf)},
                "height": 40, "width": 60})
    fit = Fit.for_size(64, 64, size=64)
    out.append({"name": "identity_no_speckle_removal", "preds": {"semantic": _field(5, 64, 64, 8)}, "fit": fit,
                "prefill": Prefill(PrefillConfig(min_area=0.0))})
    out.append({"name": "identity_per_class_boxes", "preds": {"boxes": _boxes(9), "semantic": _field(5, 64, 64, 9)},
                "fit": fit, "prefill": Prefill(PrefillConfig(per_class=True, min_area=0.01), {"boxes": 0.5}, 3.0)})
    return out


def run(case: dict[str, Any]) -> list[dict[str, Any]]:
    """``Prefill.results`` of one case."""
    schema = parse_label_config(CONFIG)
    prefill = case.get("prefill") or Prefill()
    return prefill.results(case["preds"], schema, case.get("height", 0), case.get("width", 0),
                           requested=case.get("requested"), input_size=case.get("input_size"), fit=case.get("fit"))


def digest(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """JSON-able results with each brush RLE replaced by ``{"sha1", "bytes"}``."""
    out = json.loads(json.dumps(results))
    for r in out:
        rle = r.get("value", {}).get("rle")
        if rle is not None:
            r["value"]["rle"] = {"sha1": hashlib.sha1(bytes(rle)).hexdigest(), "bytes": len(rle)}
    return out


def main() -> None:
    snapshot = {case["name"]: digest(run(case)) for case in cases()}
    lines = [  # one result per line: readable diffs
        f" {json.dumps(name)}: [\n" + ",\n".join(f"  {json.dumps(r, ensure_ascii=False)}" for r in results) + "\n ]"
        for name, results in snapshot.items()
    ]
    SNAPSHOT.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    print(f"wrote {SNAPSHOT} ({sum(map(len, snapshot.values()))} results)")


if __name__ == "__main__":
    main()
