"""Scenes with three objects of one class, and a tiny PAD-Net trained to segment them (issue #31's
interactive pre-annotation: a box around one of three same-class objects must return that one only).

Images: a grey noisy background, a dark "road" band along the bottom and red "car" rectangles; the
semantic classes are background 0, road 1, car 2 (a BrushLabels tag with labels road, car). The tiny
network learns this from colour in about a hundred steps on random scenes, so tests get a real trained
network (the same trunk/heads code paths as the product) with a known answer.
"""

from __future__ import annotations

import numpy as np
import torch

from mtal_models.modalities import ModalitySpec
from mtal_models.nets import PADNet

__all__ = ["CARS", "SIZE", "draw_scene", "object_mask", "train_scene_net"]

SIZE = (200, 300)  # (height, width) of the test photo
CARS = [(20, 60, 80, 130), (120, 50, 180, 120), (215, 70, 280, 135)]  # xyxy pixels: three same-class objects
_ROAD_TOP = 0.78


def object_mask(box: tuple[int, int, int, int], size: tuple[int, int] = SIZE) -> np.ndarray:
    """bool [H, W]: the pixels of one car."""
    m = np.zeros(size, bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    return m


def draw_scene(cars: list[tuple[int, int, int, int]], size: tuple[int, int] = SIZE,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 image [H, W, 3], int64 class map [H, W]) with the ``cars`` (xyxy pixels)."""
    rng = np.random.default_rng(seed)
    h, w = size
    image = np.clip(rng.normal(150, 12, (h, w, 3)), 0, 255)
    labels = np.zeros((h, w), np.int64)
    top = int(h * _ROAD_TOP)
    image[top:] = np.clip(rng.normal(60, 8, (h - top, w, 3)), 0, 255)
    labels[top:] = 1
    for x0, y0, x1, y1 in cars:
        image[y0:y1, x0:x1] = np.clip(rng.normal((210, 30, 30), 10, (y1 - y0, x1 - x0, 3)), 0, 255)
        labels[y0:y1, x0:x1] = 2
    return image.astype(np.uint8), labels


def _random_cars(rng: np.random.Generator, size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    h, w = size
    out = []
    for _ in range(int(rng.integers(1, 4))):
        bw, bh = int(rng.integers(w // 10, w // 4)), int(rng.integers(h // 8, h // 3))
        x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, int(h * _ROAD_TOP) - bh))
        out.append((x0, y0, x0 + bw, y0 + bh))
    return out


def train_scene_net(modalities: dict[str, ModalitySpec], steps: int = 120, size: tuple[int, int] = (96, 128),
                    seed: int = 0) -> PADNet:
    """A tiny PAD-Net over ``modalities`` (one segmentation modality with classes background, road, car)
    trained on random scenes; returned in eval mode."""
    (name,) = [n for n, s in modalities.items() if s.kind == "segmentation"]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = PADNet(modalities, "tiny")
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for step in range(steps):
        batch = [draw_scene(_random_cars(rng, size), size, seed=seed * 1000 + step * 4 + i) for i in range(4)]
        images = torch.stack([torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im, _ in batch])
        target = torch.stack([torch.from_numpy(lb) for _, lb in batch])
        out = net(images)
        loss = sum(torch.nn.functional.cross_entropy(o[name], target) for o in (out.final, out.initial))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()
