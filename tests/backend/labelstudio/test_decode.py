"""Decoding task images straight to the network input: EXIF orientations, JPEG drafts, odd modes and
sizes; every bad input gets regions or a per-task empty prediction, never an exception."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from backend.labelstudio.auth import ImageError
from backend.labelstudio.decode import decode_fitted
from backend.labelstudio.label_config import parse_label_config
from backend.serving.predict import predict_tasks
from mtal_models.data.geometry import Fit
from tests.backend.serving.test_predict import CONFIG, FakeNet

# the stored pixels of each EXIF orientation, from the displayed image (inverse of what viewers apply)
_STORE = {1: [], 2: [Image.Transpose.FLIP_LEFT_RIGHT], 3: [Image.Transpose.ROTATE_180],
          4: [Image.Transpose.FLIP_TOP_BOTTOM], 5: [Image.Transpose.TRANSPOSE], 6: [Image.Transpose.ROTATE_90],
          7: [Image.Transpose.TRANSVERSE], 8: [Image.Transpose.ROTATE_270]}


def _fit(h: int, w: int) -> Fit:
    return Fit.for_size(h, w, 64, 256)


def _displayed() -> Image.Image:
    """120 x 80 (h x w) displayed image: red top-left quarter, green elsewhere."""
    arr = np.zeros((120, 80, 3), np.uint8)
    arr[:, :, 1] = 200
    arr[:60, :40] = (255, 0, 0)
    return Image.fromarray(arr)


def _jpeg(im: Image.Image, orientation: int = 1, **kw: Any) -> bytes:
    for t in _STORE[orientation]:
        im = im.transpose(t)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95, exif=exif.tobytes(), **kw)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_as_displayed(orientation: int) -> None:
    image, fit = decode_fitted(_jpeg(_displayed(), orientation), "u", _fit, 10**8)
    assert (fit.height, fit.width) == (120, 80)  # the displayed size, also for 5-8 (stored 80 x 120)
    h, w = fit.resized
    assert (h, w) == (96, 64)
    red = image[:h, :w, 0] > 128
    assert red[: h // 2 - 2, : w // 2 - 2].all() and not red[h // 2 + 2 :].any() and not red[:, w // 2 + 2 :].any()


def test_large_jpeg_decoded_at_reduced_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import JpegImagePlugin

    sizes = []
    load = JpegImagePlugin.JpegImageFile.load

    def spy(self: Any) -> Any:
        sizes.append(self.size)
        return load(self)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", spy)
    data = _jpeg(Image.new("RGB", (4000, 3000), (10, 20, 30)))
    image, fit = decode_fitted(data, "u", lambda h, w: Fit.for_size(h, w, 384, 1024), 10**8)
    assert (fit.height, fit.width) == (3000, 4000) and image.shape == (384, 512, 3)
    assert sizes and max(s[0] * s[1] for s in sizes) <= 1000 * 750  # libjpeg decoded at 1/4 scale
    assert abs(int(image[100, 100, 2]) - 30) <= 3


def _png(im: Image.Image, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kw)
    return buf.getvalue()


def _bad_inputs() -> dict[str, bytes]:
    rgb = _displayed()
    cmyk = io.BytesIO()
    rgb.convert("CMYK").save(cmyk, "JPEG")
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    gif = io.BytesIO()
    frames = [rgb.convert("P"), Image.new("RGB", (80, 120), (0, 0, 255)).convert("P")]
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100)
    sixteen = Image.fromarray((np.arange(120 * 80).reshape(120, 80) * 6 + 1).astype(np.uint16))
    return {
        "wide.png": _png(Image.new("RGB", (10000, 50), (30, 200, 30))),
        "tall.png": _png(Image.new("RGB", (50, 10000), (30, 200, 30))),
        "one.png": _png(Image.new("RGB", (1, 1), (30, 200, 30))),
        "sixteen.png": _png(sixteen),
        "cmyk.jpg": cmyk.getvalue(),
        "palette.png": _png(palette, transparency=0),
        "anim.gif": gif.getvalue(),
        **{f"exif{o}.jpg": _jpeg(rgb, o) for o in range(1, 9)},
    }


class BytesFetcher:
    """url -> bytes, decoded as ImageFetcher.fetch_fitted does."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def fetch_fitted(self, url: str, task_id: Any, fit_for: Any) -> tuple[np.ndarray, Fit]:
        return decode_fitted(self.files[url], url, fit_for, 40_000_000)

    def fetch_image(self, url: str, task_id: Any = None) -> np.ndarray:
        raise AssertionError("predict decodes through fetch_fitted")

    def fetch_array(self, url: str, task_id: Any = None) -> np.ndarray:
        raise ValueError("no arrays")


def test_bad_inputs_get_correct_regions() -> None:
    files = _bad_inputs()
    schema = parse_label_config(CONFIG)
    tasks = [{"id": i, "data": {"image": name}} for i, name in enumerate(files)]
    preds = predict_tasks(FakeNet(schema.modalities), schema, tasks, BytesFetcher(files), model_version="v",
                          image_size=64)
    for name, pred in zip(files, preds, strict=True):
        with Image.open(io.BytesIO(files[name])) as im:
            w, h = im.size
            if name.startswith("exif") and int(name[4]) >= 5:
                w, h = h, w
        rect = next(r for r in pred["result"] if r["from_name"] == "boxes")
        assert (rect["original_height"], rect["original_width"]) == (h, w), name
        assert rect["value"]["width"] == pytest.approx(50, abs=1e-3), name  # FakeNet: the image's left half
        if name != "one.png":  # 1x1: its one pixel sits on FakeNet's boundary (a tie: background)
            assert any(r["from_name"] == "seg" for r in pred["result"]), name


def test_undecodable_and_oversized_are_clear_errors() -> None:
    with pytest.raises(ImageError, match="cannot decode"):
        decode_fitted(b"\x89PNG\r\n\x1a\n garbage", "u", _fit, 10**8)
    with pytest.raises(ImageError, match="exceeds the limit"):
        decode_fitted(_png(Image.new("RGB", (300, 300))), "u", _fit, 1000)
