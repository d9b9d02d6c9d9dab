"""Known answer: the unlabelled pool carries what the labels lack, and the semi-supervised term finds it.

Scenes: a bright square on a darker, noisy background; the modality is the square's mask (binary). The
4 labelled scenes are all fully lit; the held-out scenes are dim (light x 0.35-0.6), so a threshold
learnt on the labels alone misses most squares. The pool holds 300 unlabelled scenes at every light
level from 0.25 to 1. The semi-supervised run must beat the supervised one on the held-out scenes in
every seed, and beat the same run whose pool holds only fully lit scenes (so the gain comes from the
pool's images, not just from the strong views' jitter).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtal_models.data.sample import Sample
from mtal_models.modalities import build_modalities
from mtal_models.training import TrainConfig, evaluate, fit, make_loader
from tests.mtal_models.training.helpers import TinyNet

MODS = build_modalities([("fg", "binary", 1)])


def _scene(i: int, rng: np.random.Generator, light: float, size: int = 24) -> Sample:
    image = rng.integers(20, 70, (size, size, 3)).astype(np.float32)
    w = int(rng.integers(6, 12))
    x, y = (int(v) for v in rng.integers(0, size - w, 2))
    image[y : y + w, x : x + w] = rng.integers(180, 240)
    mask = np.zeros((size, size), np.uint8)
    mask[y : y + w, x : x + w] = 1
    return Sample(f"s{i}", (image * light).clip(0, 255).astype(np.uint8), {"fg": mask}, {"fg": True})


def _f1(seed: int, labelled: list[Sample], pool: list[Sample] | None, test: list[Sample]) -> float:
    torch.manual_seed(seed)
    net = TinyNet(MODS)
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-2, weight_decay=0.0, device="cpu", seed=seed, min_steps=300,
                      semi_threshold=0.9)
    fit(net, labelled, cfg, unlabelled=pool)
    return evaluate(net, make_loader(test, MODS, 16))["fg"]["f1"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_semi_supervised_beats_supervised_when_the_pool_carries_the_signal(seed: int) -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    labelled = [_scene(i, rng, 1.0) for i in range(4)]
    scenes = [_scene(100 + i, rng, rng.uniform(0.25, 1.0)) for i in range(300)]
    test = [_scene(1000 + i, rng, rng.uniform(0.35, 0.6)) for i in range(48)]
    pool = [Sample(s.id, s.image) for s in scenes]
    lit = [Sample(s.id, s.image) for s in (_scene(2000 + i, rng, 1.0) for i in range(300))]
    supervised = _f1(seed, labelled, None, test)
    semi = _f1(seed, labelled, pool, test)
    semi_lit = _f1(seed, labelled, lit, test)
    assert semi > supervised + 0.1, (supervised, semi)
    assert semi > semi_lit + 0.05, (semi_lit, semi)
