"""``fit`` draws partially labelled samples modality-balanced (``TrainConfig.sampling``); fully labelled
sets shuffle exactly as a plain ``shuffle=True`` loader."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import WeightedRandomSampler

from mtal_models.training import TrainConfig, draw_probabilities, make_loader, make_sampler
from mtal_models.training.loop import _as_loader
from tests.mtal_models.training.helpers import MODALITIES, TinyNet, make_samples

NAMES = list(MODALITIES)


def _partial(full: int, sem_only: int) -> list:
    """``full`` fully labelled samples s0..., then ``sem_only`` with only "sem" (ids renumbered)."""
    samples = make_samples(full) + make_samples(sem_only, present={"sem": True}, seed=1)
    for i, s in enumerate(samples):
        s.id = f"s{i}"
    return samples


def test_fully_labelled_sets_shuffle_as_before() -> None:
    samples = make_samples(10)
    assert make_sampler(samples, NAMES, "modality") is None
    ours = make_loader(samples, MODALITIES, 4, shuffle=True, generator=torch.Generator().manual_seed(3),
                       sampling="modality")
    plain = make_loader(samples, MODALITIES, 4, shuffle=True, generator=torch.Generator().manual_seed(3))
    assert [b.ids for b in ours] == [b.ids for b in plain]


def test_modality_sampling_gives_every_modality_an_equal_share_of_draws() -> None:
    samples = _partial(full=4, sem_only=8)
    p = draw_probabilities(samples, NAMES, "modality")
    # a modality (1/3), then one of its images: sem 1/12 of 12; depth, normals 1/4 of 4
    full, part = (1 / 12 + 1 / 4 + 1 / 4) / 3, (1 / 12) / 3
    np.testing.assert_allclose(p, [full] * 4 + [part] * 8)
    loader = make_loader(samples, MODALITIES, 6, shuffle=True, generator=torch.Generator().manual_seed(0),
                         sampling="modality")
    assert isinstance(loader.sampler, WeightedRandomSampler) and len(loader.sampler) == len(samples)
    draws = Counter(i for _ in range(400) for b in loader for i in b.ids)
    total = sum(draws.values())
    with_depth = sum(draws[f"s{i}"] for i in range(4)) / total
    assert with_depth == pytest.approx(4 * full, abs=0.03)  # 0.667 of the draws carry depth; uniform: 0.333


def test_fit_builds_its_loader_with_the_configured_sampling() -> None:
    samples = _partial(full=2, sem_only=6)
    model = TinyNet(MODALITIES)
    gen = torch.Generator().manual_seed(0)
    balanced = _as_loader(samples, model, TrainConfig(batch_size=4), True, gen)
    uniform = _as_loader(samples, model, TrainConfig(batch_size=4, sampling="image"), True, gen)
    assert isinstance(balanced.sampler, WeightedRandomSampler)
    assert not isinstance(uniform.sampler, WeightedRandomSampler)
    with pytest.raises(ValueError, match="sampling"):
        TrainConfig(sampling="balanced")
