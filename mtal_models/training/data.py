"""A Dataset over :class:`~mtal_models.data.sample.Sample` lists and the DataLoader that batches them."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mtal_models.data.sample import Sample, collate
from mtal_models.modalities import ModalitySpec

__all__ = ["SampleDataset", "make_loader"]


class SampleDataset(Dataset):
    """Wraps a sequence of samples (same image size; resizing belongs to the data transforms)."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        if len(samples) == 0:
            raise ValueError("SampleDataset: no samples")
        for i, s in enumerate(samples):
            if not isinstance(s, Sample):
                raise ValueError(f"SampleDataset: item {i} is a {type(s).__name__}, expected Sample")
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    samples: Sequence[Sample],
    modalities: Mapping[str, ModalitySpec],
    batch_size: int,
    shuffle: bool = False,
    num_workers: int = 0,
    generator: torch.Generator | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """DataLoader yielding :class:`~mtal_models.data.sample.Batch` (``collate`` with ``modalities``)."""
    return DataLoader(
        SampleDataset(samples),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=partial(collate, modalities=dict(modalities)),
        generator=generator,
        worker_init_fn=_seed_worker if num_workers else None,
        pin_memory=pin_memory,
    )
