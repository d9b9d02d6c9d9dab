"""Strong views on the device: photometric changes never move pixels; geometric ones move targets alike."""

from __future__ import annotations

import pytest
import torch

from mtal_models.data.augment import cutmix, cutmix_masks, gaussian_blur, hflip_maps, photometric
from mtal_models.modalities import build_modalities

SPECS = build_modalities([("sem", "segmentation", 3), ("depth", "depth", 1), ("normals", "normals", 3)])


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _targets(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Pixelwise functions of the image (so a mix of images is the same mix of targets)."""
    normals = torch.stack([images[:, 0] - 0.5, torch.zeros_like(images[:, 0]), torch.ones_like(images[:, 0])], 1)
    return {"sem": images.argmax(1), "depth": 1 + images.mean(1, keepdim=True),
            "normals": normals / normals.norm(dim=1, keepdim=True)}


def test_photometric_is_seeded_in_range_and_changes_values_only() -> None:
    images = torch.rand(6, 3, 16, 20, generator=_gen(1))
    a = photometric(images, _gen(3))
    assert a.shape == images.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, photometric(images, _gen(3)))
    assert not torch.equal(a, images)
    # without blur, a pixel's new value depends on the image's statistics and that pixel only: a bright
    # dot stays where it was
    dot = torch.zeros(4, 3, 9, 9)
    dot[:, :, 4, 6] = 1.0
    out = photometric(dot, _gen(0), p_jitter=1.0, p_grey=0.5, p_blur=0.0)
    assert (out.flatten(2).argmax(2) == 4 * 9 + 6).all()


def test_gaussian_blur_keeps_the_mean_of_a_constant_and_spreads_a_dot() -> None:
    flat = torch.full((2, 3, 12, 12), 0.3)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([0.5, 2.0])), flat, atol=1e-6)
    dot = torch.zeros(1, 1, 11, 11)
    dot[0, 0, 5, 5] = 1.0
    out = gaussian_blur(dot, torch.tensor([1.0]))
    assert out[0, 0, 5, 5] < 0.5 and out.sum() == pytest.approx(1.0, abs=1e-5) and out.argmax() == 5 * 11 + 5


def test_hflip_moves_targets_with_the_image_and_negates_normals_x() -> None:
    images = torch.rand(8, 3, 10, 14, generator=_gen(2))
    targets = _targets(images)
    out, moved = hflip_maps(images, targets, SPECS, _gen(5), p=0.5)
    flipped = [not torch.equal(out[i], images[i]) for i in range(8)]
    assert any(flipped) and not all(flipped)
    expected = _targets(out)
    assert torch.equal(moved["sem"], expected["sem"]) and torch.allclose(moved["depth"], expected["depth"])
    for i, f in enumerate(flipped):
        want = targets["normals"][i].flip(-1)
        if f:
            want = want * torch.tensor([-1.0, 1.0, 1.0]).view(3, 1, 1)
        assert torch.allclose(moved["normals"][i], want if f else targets["normals"][i])


def test_cutmix_pastes_the_same_box_into_images_and_targets() -> None:
    images = torch.rand(5, 3, 16, 16, generator=_gen(4))
    targets = {k: v for k, v in _targets(images).items() if k != "normals"}
    out, mixed = cutmix(images, targets, _gen(7), p=1.0)
    assert not torch.equal(out, images)
    expected = _targets(out)
    assert torch.equal(mixed["sem"], expected["sem"]) and torch.allclose(mixed["depth"], expected["depth"])
    single, same = cutmix(images[:1], targets, _gen(7), p=1.0)
    assert torch.equal(single, images[:1]) and same["sem"] is targets["sem"]


def test_cutmix_masks_cover_the_requested_share() -> None:
    masks = cutmix_masks(400, 32, 32, _gen(0), p=0.5)
    on = masks.flatten(1).any(1)
    assert 0.4 < on.float().mean() < 0.6
    share = masks[on].flatten(1).float().mean(1)
    assert share.min() > 0.01 and share.max() < 0.45
