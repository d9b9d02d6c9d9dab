"""A Dataset over :class:`~mtal_models.data.sample.Sample` lists, the DataLoader that batches them, and how
training draws partially labelled samples (:func:`draw_probabilities`)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, WeightedRandomSampler

from mtal_models.data.sample import Sample, collate
from mtal_models.modalities import ModalitySpec

__all__ = ["SAMPLINGS", "SampleDataset", "draw_probabilities", "make_loader", "make_sampler"]

SAMPLINGS = ("modality", "label", "image")


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


def draw_probabilities(samples: Sequence[Sample], names: Sequence[str], sampling: str) -> np.ndarray:
    """Probability [N] that one training draw picks each of ``samples`` (partial labels).

    "image": uniform. "label": proportional to the number of labelled modalities, i.e. every
    (image, modality) label equally often. "modality": pick one of the M modalities that have labels
    uniformly, then one of the N_m images labelled for it uniformly: p_i = (1/M) Σ_{m labelled in i} 1/N_m,
    so every modality is present in at least 1/M of the draws, whatever its share of the labels (drawing
    images uniformly starves the modalities few images carry). All three are uniform when every sample
    carries the same modalities. Samples without labels get 0.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    present = np.array([[s.is_present(m) for m in names] for s in samples], dtype=float).reshape(len(samples), -1)
    if sampling == "image" or not present.any():
        return np.full(len(samples), 1.0 / len(samples))
    if sampling == "label":
        weights = present.sum(axis=1)
    else:
        counts = present.sum(axis=0)
        weights = (present[:, counts > 0] / counts[counts > 0]).sum(axis=1)
    return weights / weights.sum()


def make_sampler(
    samples: Sequence[Sample],
    names: Sequence[str],
    sampling: str,
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> Sampler[int] | None:
    """The shuffling sampler of a training loader: None (plain ``shuffle=True``: one permutation per pass)
    when :func:`draw_probabilities` is uniform and ``num_samples`` is None; a ``RandomSampler`` of
    ``num_samples`` draws (whole shuffled passes back to back, the last one cut) when uniform; otherwise
    a ``WeightedRandomSampler`` of ``num_samples`` (default ``len(samples)``) independent draws."""
    p = draw_probabilities(samples, names, sampling)
    if np.allclose(p, p[0], rtol=1e-9, atol=0):
        if num_samples is None:
            return None
        return RandomSampler(range(len(samples)), num_samples=num_samples, generator=generator)
    weights = torch.as_tensor(p, dtype=torch.double)
    return WeightedRandomSampler(weights, num_samples or len(samples), replacement=True, generator=generator)


def make_loader(
    samples: Sequence[Sample],
    modalities: Mapping[str, ModalitySpec],
    batch_size: int,
    shuffle: bool = False,
    num_workers: int = 0,
    generator: torch.Generator | None = None,
    pin_memory: bool = False,
    sampling: str = "image",
) -> DataLoader:
    """DataLoader yielding :class:`~mtal_models.data.sample.Batch` (``collate`` with ``modalities``).
    ``shuffle`` with a ``sampling`` other than "image" draws partially labelled samples as
    :func:`draw_probabilities` says (an epoch = ``len(samples)`` draws); fully labelled sets shuffle as usual."""
    sampler = make_sampler(samples, list(modalities), sampling, generator=generator) if shuffle else None
    return DataLoader(
        SampleDataset(samples),
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=partial(collate, modalities=dict(modalities)),
        generator=generator,
        worker_init_fn=_seed_worker if num_workers else None,
        pin_memory=pin_memory,
    )
