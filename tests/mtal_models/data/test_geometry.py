"""The image geometry (mtal_models.data.geometry.Fit): sizes, label/box mapping, probabilities back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mtal_models.data.geometry as geometry
from mtal_models.data.geometry import Fit, class_max


@pytest.mark.parametrize(("h", "w", "want"), [
    (360, 480, (384, 512, 384, 512)),      # CamVid: shorter side 384
    (3000, 4000, (384, 512, 384, 512)),    # a 4k photo
    (333, 1000, (341, 1024, 352, 1024)),   # odd aspect: longer side capped at 1024, padded to 32
    (50, 10000, (5, 1024, 32, 1024)),      # sides differ 200x
    (1, 1, (384, 384, 384, 384)),
    (4000, 30, (1024, 8, 1024, 32)),
])
def test_sizes(h: int, w: int, want: tuple[int, int, int, int]) -> None:
    fit = Fit.for_size(h, w, 384, 1024)
    assert (fit.resized_height, fit.resized_width, fit.padded_height, fit.padded_width) == want


def test_bad_sizes() -> None:
    with pytest.raises(ValueError, match="positive"):
        Fit.for_size(0, 5)
    with pytest.raises(ValueError, match="max_size"):
        Fit.for_size(5, 5, 384, 256)


def test_labels_pixel_centre_nearest_and_padding() -> None:
    fit = Fit.for_size(3, 6, 6, 100)  # x2 exactly: 6x12, padded to 32x32
    label = np.arange(18).reshape(3, 6)
    out = fit.label(label, 255)
    assert out.shape == (32, 32)
    assert (out[:6, :12] == np.repeat(np.repeat(label, 2, 0), 2, 1)).all()
    assert (out[6:] == 255).all() and (out[:, 12:] == 255).all()
    shrink = Fit.for_size(6, 6, 3, 3)  # /2: each output pixel's centre falls in the odd source pixel
    assert (shrink.label(np.arange(36).reshape(6, 6), 0)[:3, :3] == np.arange(36).reshape(6, 6)[1::2, 1::2]).all()


def test_boxes_map_back_exactly() -> None:
    fit = Fit.for_size(333, 1000, 384, 1024)
    boxes = np.array([[10.5, 3.25, 999.0, 332.0], [0, 0, 1, 1]], np.float32)
    assert np.allclose(fit.boxes_to_original(fit.boxes_to_input(boxes)), boxes, atol=1e-3)
    assert np.allclose(fit.boxes_to_input(boxes)[0, 2], 999.0 * 1024 / 1000, atol=1e-3)


@pytest.mark.parametrize(("h", "w"), [(333, 1000), (37, 23), (500, 120)])
def test_probabilities_upsampled_before_argmax_in_bands(h: int, w: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same answer as F.interpolate(bilinear, align_corners=False) of the cropped probabilities, then
    argmax, however small the bands."""
    monkeypatch.setattr(geometry, "_BAND_VALUES", 997)
    fit = Fit.for_size(h, w, 64, 256)
    probs = torch.rand(4, *fit.padded, generator=torch.Generator().manual_seed(h)).softmax(0)
    cls, conf = fit.probs_to_original(probs)
    ref = F.interpolate(fit.crop(probs)[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    best, arg = ref.max(0)
    assert cls.shape == (h, w) and cls.dtype == np.uint8
    assert (cls == arg.numpy()).mean() > 0.999  # float rounding may flip exact ties
    assert np.allclose(conf, best.numpy(), atol=1e-5)


@pytest.mark.parametrize(("h", "w", "c", "dtype"), [(64, 96, 5, torch.float16), (96, 64, 300, torch.float32)])
def test_probabilities_at_the_network_size_are_their_own_argmax(h: int, w: int, c: int, dtype: torch.dtype) -> None:
    """No resize (the original is the network size): the argmax of the probabilities themselves, exactly
    what the banded bilinear path gives at scale 1 (the fast path skips it), ties and override included."""
    fit = Fit.for_size(h, w, min(h, w), 1024)
    assert fit.resized == (h, w)
    probs = torch.rand(c, *fit.padded, generator=torch.Generator().manual_seed(c)).softmax(0).to(dtype)
    probs[:, :4, :4] = 1.0 / c  # exact ties: the first class wins, as in torch.max
    best, arg = fit.crop(probs).float().max(0)
    cls, conf = fit.probs_to_original(probs)
    assert cls.dtype == (np.uint8 if c <= 256 else np.int32) and conf.dtype == np.float32
    assert np.array_equal(cls, arg.numpy()) and np.array_equal(conf, best.numpy()) and (cls[:4, :4] == 0).all()
    override = np.full((h, w), -1)
    override[10:20, 5:9] = 1
    cls2, conf2 = fit.probs_to_original(probs, override)
    elsewhere = np.ones((h, w), bool)
    elsewhere[10:20, 5:9] = False
    assert (cls2[10:20, 5:9] == 1).all() and np.array_equal(cls2[elsewhere], cls[elsewhere])
    assert np.array_equal(conf2, conf)


def test_override_carries_network_decisions_to_the_original() -> None:
    fit = Fit.for_size(4, 4, 2, 2)  # each network pixel covers 2x2 original pixels
    probs = torch.zeros(3, 2, 2)
    probs[0] = 1.0
    override = np.array([[-1, 2], [-1, -1]])
    cls, _ = fit.probs_to_original(probs, override)
    assert (cls[:2, 2:] == 2).all() and (cls[2:] == 0).all() and (cls[:2, :2] == 0).all()


def test_image_area_and_linear_with_zero_padding() -> None:
    fit = Fit.for_size(4, 8, 2, 100)
    image = np.zeros((4, 8, 3), np.uint8)
    image[:, :4] = 200
    out = fit.image(image)
    assert out.shape == (32, 32, 3)
    assert (out[:2, :2] == 200).all() and (out[:2, 2:4] == 0).all() and (out[2:] == 0).all()


def test_collate_pads_inputs_of_different_sizes() -> None:
    from mtal_models.data.sample import Sample, collate
    from mtal_models.modalities import ModalitySpec

    specs = {"seg": ModalitySpec("seg", "segmentation", 3), "depth": ModalitySpec("depth", "depth", 1),
             "boxes": ModalitySpec("boxes", "detection", 2)}
    a = Sample("a", np.full((32, 64, 3), 255, np.uint8), {"seg": np.ones((32, 64), np.int64),
               "depth": np.full((32, 64), 2.0, np.float32)}, {"seg": True, "depth": True})
    b = Sample("b", np.full((64, 32, 3), 255, np.uint8),
               {"boxes": {"boxes": np.array([[1, 2, 3, 4]], np.float32), "labels": np.array([1])}}, {"boxes": True})
    batch = collate([a, b], specs)
    assert batch.images.shape == (2, 3, 64, 64)
    assert batch.images[0, :, 32:].sum() == 0 and batch.images[1, :, :, 32:].sum() == 0
    seg = batch.labels.values["seg"]
    assert (seg[0, :32] == 1).all() and (seg[0, 32:] == 255).all()  # padding unlabelled
    assert (batch.labels.values["depth"][0, 0, 32:] == 0).all()  # depth padding invalid
    assert batch.labels.values["boxes"][1]["boxes"].tolist() == [[1, 2, 3, 4]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("channels", [1, 2, 5, 12, 300])
def test_class_max_equals_torch_max(dtype: torch.dtype, channels: int) -> None:
    """Values and first-index classes of ``torch.max(probs, 0)``: random scores, scores with many ties
    (a few levels), a cropped (non-contiguous) view; uint8 classes up to 256 channels, int32 past."""
    gen = torch.Generator().manual_seed(channels)
    for probs in (torch.rand(channels, 37, 53, generator=gen),
                  torch.randint(0, 3, (channels, 37, 53), generator=gen).float() / 3):
        probs = probs.to(dtype)
        for view in (probs, probs[:, 3:30, 5:41]):
            best, cls = class_max(view)
            want = view.max(0)
            assert cls.dtype == (np.uint8 if channels <= 256 else np.int32) and best.dtype == np.float32
            np.testing.assert_array_equal(cls, want.indices.numpy())
            np.testing.assert_array_equal(best, want.values.float().numpy().astype(np.float32))
    best, cls = class_max(np.zeros((3, 2, 2), np.float32))  # numpy input, all tied: class 0
    assert (cls == 0).all() and (best == 0).all()


def test_class_max_rejects_bad_shapes_and_gives_nan_class_0() -> None:
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        class_max(torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        class_max(torch.zeros(0, 4, 4))
    probs = torch.rand(3, 4, 4)
    probs[1, 2, 2] = float("nan")
    best, cls = class_max(probs)
    assert cls[2, 2] == 0 and np.isnan(best[2, 2])
