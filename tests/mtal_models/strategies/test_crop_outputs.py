"""crop_outputs: dense outputs cut to the images' own pixels, the rest untouched."""

from __future__ import annotations

import torch

from mtal_models.modalities import ModalitySpec
from mtal_models.strategies.base import BatchOutputs
from mtal_models.strategies.collect import crop_outputs
from mtal_models.strategies.uncertainty import image_uncertainty


def test_crop_outputs_cuts_dense_maps_and_keeps_the_rest() -> None:
    specs = {"sem": ModalitySpec("sem", "segmentation", 3), "depth": ModalitySpec("depth", "depth", 1),
             "boxes": ModalitySpec("boxes", "detection", 2)}
    sem, depth, boxes = torch.randn(2, 3, 8, 12), torch.randn(2, 1, 8, 12), torch.randn(2, 5, 8)
    out = BatchOutputs(specs, final={"sem": sem, "depth": depth, "boxes": boxes}, initial={"sem": sem},
                       refined={"sem": {"depth": sem}, "boxes": {"sem": boxes}},
                       mc={"sem": torch.randn(2, 4, 3, 8, 12)},
                       pooled=torch.randn(2, 16), head_features=torch.randn(2, 4, 2, 3))
    cut = crop_outputs(out, 6, 9)
    assert torch.equal(cut.final["sem"], sem[..., :6, :9]) and torch.equal(cut.final["depth"], depth[..., :6, :9])
    assert cut.final["boxes"] is boxes and cut.refined["boxes"]["sem"] is boxes
    assert cut.initial["sem"].shape[-2:] == cut.refined["sem"]["depth"].shape[-2:] == cut.mc["sem"].shape[-2:] == (6, 9)
    assert cut.pooled is out.pooled and cut.head_features is out.head_features
    assert out.final["sem"].shape[-2:] == (8, 12)  # the input is not changed


def test_an_image_mean_score_no_longer_sees_the_padding() -> None:
    """MC samples confident inside (6 x 9), uniform in the padding: PartAL's image uncertainty (mean
    entropy) of the cut samples is ~0, of the whole input well above."""
    spec = ModalitySpec("sem", "segmentation", 3)
    logits = torch.zeros(1, 4, 3, 8, 12)
    logits[:, :, 0, :6, :9] = 20.0
    out = BatchOutputs({"sem": spec}, mc={"sem": logits})
    whole = float(image_uncertainty(spec, out.mc["sem"])[0])
    inside = float(image_uncertainty(spec, crop_outputs(out, 6, 9).mc["sem"])[0])
    assert inside < 1e-6 < 0.3 < whole, (inside, whole)
