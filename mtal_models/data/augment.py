"""Strong augmentation of a batch on the device: photometric noise, and geometric mixes that move the targets.

Tensor-level (``[B, 3, H, W]`` floats in [0, 1], on whatever device the batch is), so it runs after
collation and on the GPU when training runs there. Every random draw comes from a CPU
``torch.Generator`` passed at call time (the parameters are moved to the device), so a run is
reproducible from its seed whatever the device.

- :func:`photometric` changes pixel values only (colour jitter, greyscale, Gaussian blur): labels are
  untouched, so it serves the labelled branch too.
- :func:`hflip_maps` and :func:`cutmix` are geometric: they return the images and the dense target maps
  moved the same way (a mirrored normal map has its x component negated).

The recipe follows the strong view of FixMatch (Sohn et al. 2020) / UniMatch (Yang et al. 2023): colour
jitter with probability 0.8, greyscale 0.2, blur 0.5 with σ in [0.1, 2.0] px, CutMix boxes with
probability 0.5 covering 2-40 % of the image. Hue jitter is left out (an HSV round trip per step costs
more than the rest together on CPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from mtal_models.modalities import ModalitySpec

__all__ = ["cutmix", "cutmix_masks", "gaussian_blur", "hflip_maps", "photometric"]

_GREY = (0.299, 0.587, 0.114)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _grey(images: Tensor) -> Tensor:
    """Luma [B, 1, H, W] of RGB images [B, 3, H, W]."""
    w = images.new_tensor(_GREY).view(1, 3, 1, 1)
    return (images * w).sum(dim=1, keepdim=True)


def gaussian_blur(images: Tensor, sigma: Tensor) -> Tensor:
    """Blur each image with its own isotropic Gaussian: images [B, C, H, W], sigma [B] (pixels, > 0).

    One separable kernel size for the batch (covering 3·max σ, capped by the image), reflect padding."""
    b, c, h, w = images.shape
    radius = max(1, min(int(math.ceil(3 * float(sigma.max()))), (min(h, w) - 1) // 2))
    if min(h, w) < 3:
        return images
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    k = torch.exp(-(x[None] ** 2) / (2 * sigma.to(images)[:, None] ** 2))
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [B*C, K]
    flat = images.reshape(1, b * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=b * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=b * c)
    return flat.reshape(b, c, h, w)


def photometric(
    images: Tensor,
    generator: torch.Generator,
    jitter: float = 0.5,
    p_jitter: float = 0.8,
    p_grey: float = 0.2,
    p_blur: float = 0.5,
    sigma: tuple[float, float] = (0.1, 2.0),
) -> Tensor:
    """Photometric strong view of images [B, 3, H, W] in [0, 1] -> same shape, in [0, 1].

    Per image, independently: with ``p_jitter`` brightness, contrast and saturation factors drawn from
    [1 - jitter, 1 + jitter] (in that order); with ``p_grey`` greyscale; with ``p_blur`` a Gaussian blur of
    σ drawn from ``sigma``. Pixel positions never move: labels stay valid as they are."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"photometric: images must be [B, 3, H, W], got {tuple(images.shape)}")
    b = images.shape[0]
    dev = images.device
    on = (torch.rand(b, generator=generator) < p_jitter).to(dev).view(b, 1, 1, 1)
    factors = [_uniform(b, 1 - jitter, 1 + jitter, generator).to(images).view(b, 1, 1, 1) for _ in range(3)]
    grey_on = (torch.rand(b, generator=generator) < p_grey).to(dev).view(b, 1, 1, 1)
    blur_on = (torch.rand(b, generator=generator) < p_blur).to(dev).view(b, 1, 1, 1)
    sigmas = _uniform(b, *sigma, generator)
    bright, contrast, saturation = factors
    x = images * bright
    x = (x - _grey(x).mean(dim=(2, 3), keepdim=True)) * contrast + _grey(x).mean(dim=(2, 3), keepdim=True)
    x = (x - _grey(x)) * saturation + _grey(x)
    x = torch.where(on, x.clamp(0, 1), images)
    x = torch.where(grey_on, _grey(x).expand_as(x), x)
    if bool(blur_on.any()):
        x = torch.where(blur_on, gaussian_blur(x, sigmas), x)
    return x.clamp(0, 1)


def _move(targets: Mapping[str, Tensor], fn: Callable[[str, Tensor], Tensor]) -> dict[str, Tensor]:
    return {n: fn(n, t) for n, t in targets.items()}


def hflip_maps(
    images: Tensor,
    targets: Mapping[str, Tensor],
    specs: Mapping[str, ModalitySpec],
    generator: torch.Generator,
    p: float = 0.5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Mirror each image and its dense target maps left-right with probability ``p``.

    images [B, C, H, W]; targets: modality -> [B, H, W] (segmentation ids) or [B, C, H, W] (other dense
    kinds). Normals have their x component negated where mirrored (as :func:`mtal_models.data.transforms.hflip`).
    """
    b = images.shape[0]
    flip = (torch.rand(b, generator=generator) < p).to(images.device)

    def one(name: str, t: Tensor) -> Tensor:
        f = flip.view(b, *([1] * (t.dim() - 1)))
        flipped = t.flip(-1)
        if specs[name].kind == "normals":
            flipped = flipped * flipped.new_tensor([-1.0, 1.0, 1.0]).view(1, 3, 1, 1)
        return torch.where(f, flipped, t)

    return torch.where(flip.view(b, 1, 1, 1), images.flip(-1), images), _move(targets, one)


def cutmix_masks(
    batch: int, height: int, width: int, generator: torch.Generator, p: float = 0.5,
    area: tuple[float, float] = (0.02, 0.4), ratio: tuple[float, float] = (0.3, 1 / 0.3),
) -> Tensor:
    """bool [B, H, W]: per image, with probability ``p``, one box of ``area`` share of the image and
    height/width ``ratio`` (log-uniform), placed uniformly; all False for the others."""
    on = torch.rand(batch, generator=generator) < p
    share = _uniform(batch, *area, generator)
    aspect = torch.exp(_uniform(batch, math.log(ratio[0]), math.log(ratio[1]), generator))
    ch = (torch.sqrt(share * height * width * aspect)).round().clamp(1, height).long()
    cw = (torch.sqrt(share * height * width / aspect)).round().clamp(1, width).long()
    top = (torch.rand(batch, generator=generator) * (height - ch + 1)).long()
    left = (torch.rand(batch, generator=generator) * (width - cw + 1)).long()
    ys = torch.arange(height).view(1, height, 1)
    xs = torch.arange(width).view(1, 1, width)
    inside = ((ys >= top.view(-1, 1, 1)) & (ys < (top + ch).view(-1, 1, 1))
              & (xs >= left.view(-1, 1, 1)) & (xs < (left + cw).view(-1, 1, 1)))
    return inside & on.view(-1, 1, 1)


def cutmix(
    images: Tensor, targets: Mapping[str, Tensor], generator: torch.Generator, p: float = 0.5
) -> tuple[Tensor, dict[str, Tensor]]:
    """CutMix between the images of one batch (French et al. 2020): with probability ``p`` an image gets a
    box pasted from the next image in the batch (``roll`` by one), and every dense target map gets the same
    box from the same partner, so targets stay aligned. images [B, C, H, W]; targets as :func:`hflip_maps`.
    A batch of one is returned unchanged."""
    b, _, h, w = images.shape
    if b < 2 or p <= 0:
        return images, dict(targets)
    mask = cutmix_masks(b, h, w, generator, p).to(images.device)

    def one(_name: str, t: Tensor) -> Tensor:
        m = mask if t.dim() == 3 else mask[:, None]
        return torch.where(m, t.roll(1, dims=0), t)

    return torch.where(mask[:, None], images.roll(1, dims=0), images), _move(targets, one)
