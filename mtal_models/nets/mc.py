"""MC-dropout samples kept at the heads' resolution and brought to the input size on demand.

PAD-Net's heads run at stride 8; its MC samples at the input size are the heads' raw outputs upsampled and
formatted (:func:`~mtal_models.nets.blocks.format_predictions`) D times per image. For a batch of photos that
is the largest tensor of a ranking ([B, D, C, H, W]: 32 CamVid inputs of 384x512, 10 samples, 6 classes are
1.5 GB) and most of its time. :class:`MCSamples` is a read-only mapping with the same values: ``samples[k]``
builds the whole [B, D, C, H, W] as before, while :meth:`MCSamples.image` builds one image's [D, C, H, W],
so that a per-image score (:func:`~mtal_models.strategies.uncertainty.image_uncertainty`) never holds more.
Bilinear upsampling and the formats work plane by plane and pixel by pixel, so both give the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from torch import Tensor

from mtal_models.modalities import ModalitySpec
from mtal_models.nets.blocks import format_predictions

__all__ = ["MCSamples"]


class MCSamples(Mapping[str, Tensor]):
    """name -> MC samples [B, D, C, H, W] (formats of ``final``), computed from the low-resolution raw outputs.

    specs: the network's modalities; raw: dense name -> raw head outputs [B, D, C, h, w]; size: the input
    (H, W); crop: (height, width) kept at the top left after formatting (the images' own pixels of a padded
    batch), or None for all of it.
    """

    def __init__(self, specs: Mapping[str, ModalitySpec], raw: Mapping[str, Tensor], size: tuple[int, int],
                 crop: tuple[int, int] | None = None) -> None:
        bad = {k: tuple(v.shape) for k, v in raw.items() if v.dim() != 5}
        if bad:
            raise ValueError(f"MCSamples: raw outputs must be [B, D, C, h, w], got {bad}")
        self.specs, self.raw, self.size, self.crop = specs, dict(raw), (int(size[0]), int(size[1])), crop

    @property
    def batch(self) -> int:
        """B, the number of images."""
        return next(iter(self.raw.values())).shape[0] if self.raw else 0

    def image(self, name: str, i: int) -> Tensor:
        """Image ``i``'s samples of modality ``name`` at the input size: [D, C, H, W] (cropped when set)."""
        return self._full(name, self.raw[name][i])

    def cropped(self, height: int, width: int) -> MCSamples:
        """The same samples cut to their top-left ``height`` x ``width`` (within any earlier crop)."""
        h, w = self.crop or self.size
        return MCSamples(self.specs, self.raw, self.size, (min(h, height), min(w, width)))

    def __getitem__(self, name: str) -> Tensor:
        raw = self.raw[name]
        return self._full(name, raw.flatten(0, 1)).unflatten(0, raw.shape[:2])

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def _full(self, name: str, raw: Tensor) -> Tensor:
        """[N, C, h, w] raw -> [N, C, H, W] formatted (and cropped)."""
        out = format_predictions({name: self.specs[name]}, {name: raw}, self.size)[name]
        return out if self.crop is None else out[..., : self.crop[0], : self.crop[1]]
