"""MCSamples: PAD-Net's MC samples at the heads' resolution, brought to the input size when read, give the
same values whole, one image at a time, cropped, and through the MC scores."""

from dataclasses import replace

import pytest
import torch

from mtal_models.modalities import build_modalities
from mtal_models.nets import Labels, build_network
from mtal_models.nets.blocks import format_predictions
from mtal_models.nets.mc import MCSamples
from mtal_models.strategies import get_strategy
from mtal_models.strategies.collect import batch_outputs, crop_outputs
from mtal_models.strategies.uncertainty import image_uncertainty

MODALITIES = build_modalities([("semantic", "segmentation", 4), ("depth", "depth", 1), ("normals", "normals", 3)])


def _raw(b: int = 3, d: int = 4, h: int = 5, w: int = 6) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(b, d, s.channels, h, w, generator=gen) for k, s in MODALITIES.items()}


def test_whole_and_per_image_equal_format_predictions_of_every_sample() -> None:
    raw = _raw()
    mc = MCSamples(MODALITIES, raw, (20, 24))
    assert set(mc) == set(MODALITIES) and len(mc) == 3 and mc.batch == 3
    for k, v in raw.items():
        expected = format_predictions({k: MODALITIES[k]}, {k: v.flatten(0, 1)}, (20, 24))[k].view(3, 4, -1, 20, 24)
        assert torch.equal(mc[k], expected)
        for i in range(3):
            assert torch.equal(mc.image(k, i), expected[i])
    assert torch.allclose(mc["normals"].norm(dim=2), torch.ones(3, 4, 20, 24), atol=1e-5)  # formats applied


def test_cropped_keeps_the_top_left_and_nests() -> None:
    mc = MCSamples(MODALITIES, _raw(), (20, 24))
    cut = mc.cropped(15, 30).cropped(30, 10)
    assert cut.crop == (15, 10)
    assert torch.equal(cut["semantic"], mc["semantic"][..., :15, :10])
    assert torch.equal(cut.image("depth", 1), mc["depth"][1, ..., :15, :10])


def test_bad_raw_shape_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\[B, D, C, h, w\]"):
        MCSamples(MODALITIES, {"depth": torch.zeros(2, 1, 5, 6)}, (20, 24))


@pytest.mark.parametrize("crop", [None, (40, 50)])
def test_mc_scores_per_image_equal_the_materialised_samples(crop: tuple[int, int] | None) -> None:
    """PartAL's per-image scoring of the lazy samples gives exactly the values of the whole [B, D, C, H, W]."""
    torch.manual_seed(0)
    net = build_network("padnet", MODALITIES, "tiny").eval()
    strategy = get_strategy("partal_image", mc_samples=3)
    out = batch_outputs(net, torch.rand(2, 3, 64, 64), None, strategy.needs)
    if crop is not None:
        out = crop_outputs(out, *crop)
    assert isinstance(out.mc, MCSamples)
    scores = strategy.score_batch(out)
    for k, spec in MODALITIES.items():
        assert torch.equal(scores[k], spec.uncertainty(out.mc[k]).flatten(1).mean(dim=1))
        assert torch.equal(scores[k], image_uncertainty(spec, out.mc[k]))


@pytest.mark.parametrize(("committee", "conditioned"), [(False, False), (True, False), (False, True)])
def test_forward_and_mc_equal_the_two_calls_on_one_trunk_pass(committee: bool, conditioned: bool) -> None:
    """PAD-Net's forward_and_mc gives forward's outputs and mc_samples' samples (same dropout draws from the
    same seed; with a given depth label for one image: GT substitution) with one backbone pass, and
    batch_outputs uses it."""
    torch.manual_seed(0)
    net = build_network("padnet", MODALITIES, "tiny").eval()
    images = torch.rand(2, 3, 64, 64)
    given = None
    if conditioned:
        net.encoders_trained.fill_(True)  # as after training with substitution
        given = Labels({"depth": torch.rand(2, 1, 64, 64) * 5 + 0.5}, {"depth": torch.tensor([True, False])})
    with torch.no_grad():
        torch.manual_seed(1)
        ref_out, ref_mc = net(images, given, committee=committee), net.mc_samples(images, 3, given)
    calls: list[int] = []
    handle = net.backbone.register_forward_hook(lambda *a: calls.append(1))
    try:
        torch.manual_seed(1)
        out, mc = net.forward_and_mc(images, 3, given, committee=committee)
        torch.manual_seed(1)
        needs = replace(get_strategy("partal_image", mc_samples=3).needs, committee=committee)
        collected = batch_outputs(net, images, given, needs)
    finally:
        handle.remove()
    assert calls == [1, 1]
    for k in MODALITIES:
        assert torch.equal(out.final[k], ref_out.final[k]) and torch.equal(out.initial[k], ref_out.initial[k])
        assert torch.equal(mc[k], ref_mc[k]) and torch.equal(collected.mc[k], ref_mc[k])
        assert torch.equal(collected.final[k], ref_out.final[k])
    assert torch.equal(out.pooled, ref_out.pooled)
    assert {k: set(v) for k, v in out.refined.items()} == {k: set(v) for k, v in ref_out.refined.items()}
    with pytest.raises(ValueError, match="positive int"):
        net.forward_and_mc(images, 0)
