"""Decode image bytes straight to the network input, once, in bounded memory.

:func:`decode_fitted` opens the bytes with PIL, reads the size from the header (refused over
``max_pixels`` before decoding) and the EXIF orientation, asks ``fit_for`` (displayed height, width)
for the :class:`mtal_models.data.geometry.Fit`, and then:

- JPEG: ``draft`` makes libjpeg decode at 1/2, 1/4 or 1/8 scale, the smallest that still covers the
  network size, so a 4000x3000 photo is never held at full size;
- other formats decode once at full size (PIL), and are resized by PIL (area averaging to shrink,
  bilinear to enlarge, as the geometry prescribes) without a full-size numpy copy;
- the EXIF orientation (1-8) is applied as browsers and so Label Studio display the image: regions
  are in the displayed frame, and the original size is the displayed one (orientations 5-8 swap it);
- modes: 16-bit grey (``I;16``/``I``) is resized as 32-bit and scaled to 8 bits (divided by 257 when
  any value exceeds 255); CMYK, grey, palette (with or without transparency), LA/RGBA are converted
  to RGB, transparent pixels composited over white; an animated GIF gives its first frame.

This is the backend's only decoder of task images (``ImageFetcher.fetch_fitted``); ``fetch_image``
keeps a full-size decoder for callers that need the pixels themselves.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from backend.labelstudio.auth import ImageError
from mtal_models.data.geometry import Fit

__all__ = ["decode_fitted", "orientation_of"]

_SWAPS = {5, 6, 7, 8}  # EXIF orientations that transpose the image
_SIXTEEN = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}  # as ImageOps.exif_transpose


def orientation_of(im: Image.Image) -> int:
    """The EXIF orientation tag (1-8; 1 when absent or invalid)."""
    try:
        value = int(im.getexif().get(0x0112, 1))
    except (TypeError, ValueError, OSError, SyntaxError):
        return 1
    return value if 1 <= value <= 8 else 1


def decode_fitted(data: bytes, url: str, fit_for: Callable[[int, int], Fit], max_pixels: int,
                  ) -> tuple[np.ndarray, Fit]:
    """Image bytes -> (uint8 [H, W, 3] RGB network input, padded; its Fit from the displayed size)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            w0, h0 = im.size
            if w0 * h0 > max_pixels:
                raise ImageError(f"{url}: {w0}x{h0} = {w0 * h0} pixels exceeds the limit of {max_pixels}")
            if w0 < 1 or h0 < 1:
                raise ImageError(f"{url}: empty image {w0}x{h0}")
            orientation = orientation_of(im)
            fit = fit_for(w0, h0) if orientation in _SWAPS else fit_for(h0, w0)
            stored_w, stored_h = (fit.resized_height, fit.resized_width) if orientation in _SWAPS else (
                fit.resized_width, fit.resized_height)
            if im.format == "JPEG":
                im.draft(im.mode, (stored_w, stored_h))
            if getattr(im, "is_animated", False):
                im.seek(0)
            im.load()
            small = _resize(_plain_mode(im), (stored_w, stored_h))
            if orientation != 1:
                small = small.transpose(_TRANSPOSE[orientation])
            return fit.pad(_to_rgb(small), 0), fit
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{url}: cannot decode image: {e}") from e


def _plain_mode(im: Image.Image) -> Image.Image:
    """A mode PIL resizes with area/bilinear filters: palette -> RGBA, bilevel -> L, 16-bit -> I."""
    if im.mode in ("P", "PA"):
        return im.convert("RGBA")
    if im.mode == "1":
        return im.convert("L")
    if im.mode in _SIXTEEN and im.mode != "I":
        return im.convert("I")
    return im


def _resize(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    if im.size == size:
        return im
    shrink = size[0] * size[1] < im.size[0] * im.size[1]
    return im.resize(size, Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR)


def _to_rgb(im: Image.Image) -> np.ndarray:
    """A decoded image (small) -> uint8 [h, w, 3]."""
    if im.mode == "I" or im.mode == "F":
        arr = np.asarray(im, np.float64)
        arr = (arr / 257.0 if arr.max(initial=0) > 255 else arr).clip(0, 255).round().astype(np.uint8)
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    if im.mode in ("RGBA", "LA", "RGBa"):  # transparent pixels shown over white
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))
