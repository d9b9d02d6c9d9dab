"""Issue #32: the no-speck rule holds on what Label Studio receives. A photo-size /predict (CamVid's
480x360 and 960x720 at a 192 px network size) whose class boundaries fragment under bilinear
upsampling: the brush RLE that /predict returns is decoded and its 8-connected components counted."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from backend.labelstudio.convert import rle_to_mask
from backend.labelstudio.label_config import parse_label_config
from backend.serving.predict import predict_tasks
from backend.serving.prefill import Prefill
from mtal_models.data.geometry import Fit
from mtal_models.modalities import ModalitySpec
from mtal_models.nets.base import Labels, MultiTaskNet, MultiTaskOutput
from mtal_models.postprocess import PrefillConfig
from tests.backend.serving.test_predict import DictFetcher

LABELS = ["sky", "building", "tree", "car", "road", "fence"]
CONFIG = ("<View><Image name=\"image\" value=\"$image\"/><BrushLabels name=\"seg\" toName=\"image\">"
          + "".join(f"<Label value=\"{v}\"/>" for v in LABELS) + "</BrushLabels></View>")
MIN_AREA = 0.002  # MTAL_PREFILL_MIN_AREA's default


class FieldNet(MultiTaskNet):
    """Segmentation logits [B, 7, H, W]: a smooth random field (a 6x8 grid, bicubic) plus pixel noise,
    the same for every image of a given input size: many classes meet along ragged boundaries, where
    bilinear upsampling to the photo's size cuts slivers and islands."""

    def __init__(self, modalities: Mapping[str, ModalitySpec]) -> None:
        super().__init__(modalities)

    def forward(self, images: Tensor, given: Labels | None = None, committee: bool = False) -> MultiTaskOutput:
        b, _, h, w = images.shape
        out = {}
        for name, spec in self.modalities.items():
            gen = torch.Generator().manual_seed(h * 10_000 + w)
            coarse = torch.randn(1, spec.channels, 6, 8, generator=gen)
            smooth = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0] * 4
            out[name] = (smooth + torch.randn(spec.channels, h, w, generator=gen) * 0.8).expand(b, -1, -1, -1)
        return MultiTaskOutput(final=out)

    def losses(self, out: MultiTaskOutput, labels: Labels, weights: Any = None) -> dict[str, Tensor]:
        raise NotImplementedError

    def mc_samples(self, images: Tensor, n: int, given: Labels | None = None) -> dict[str, Tensor]:
        raise NotImplementedError


def _small_components(mask: np.ndarray, min_px: int) -> list[int]:
    """Areas of the 8-connected components of a bool [H, W] mask under ``min_px`` pixels."""
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return [int(a) for a in stats[1:, cv2.CC_STAT_AREA] if a < min_px]


@pytest.mark.parametrize(("height", "width"), [(360, 480), (720, 960)])
def test_no_region_or_patch_under_the_min_area_after_rle_decoding(height: int, width: int) -> None:
    schema = parse_label_config(CONFIG)
    net = FieldNet(schema.modalities)
    url = "/data/upload/photo.png"
    (pred,) = predict_tasks(net, schema, [{"id": 1, "data": {"image": url}}],
                            DictFetcher({url: np.full((height, width, 3), 90, np.uint8)}),
                            model_version="v", image_size=192, prefill=Prefill(PrefillConfig(min_area=MIN_AREA)))
    min_px = math.ceil(MIN_AREA * height * width)
    masks = {r["value"]["brushlabels"][0]: rle_to_mask(r["value"]["rle"], height, width) for r in pred["result"]}
    assert len(masks) >= 4  # the field shows most classes
    small = {label: _small_components(m, min_px) for label, m in masks.items()}
    counts = {label: len(areas) for label, areas in small.items()}
    assert not any(counts.values()), f"components under {min_px} px after decoding, per region: {counts}"
    # background too: no speck of it (a hole in a region) under the area
    assert not _small_components(~np.any(list(masks.values()), axis=0), min_px)
    # and still the network's prediction: the bilinear argmax at the photo's size on nearly every pixel
    fit = Fit.for_size(height, width, 192)
    with torch.no_grad():
        probs = net(torch.zeros(1, 3, *fit.padded)).final["seg"][0].softmax(0)
    argmax, _ = fit.probs_to_original(probs)
    sent = np.zeros((height, width), np.int64)
    for label, m in masks.items():
        sent[m] = LABELS.index(label) + 1
    assert (sent == argmax).mean() > 0.85
