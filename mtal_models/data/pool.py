"""The active-learning pool: which (image, modality) pairs are labelled.

Budget is counted in (image, modality) labels. The pool wraps any dataset whose ``dataset[i]`` is a
:class:`Sample` holding oracle labels; :meth:`LabelPool.sample` returns it with ``present`` restricted
to the labelled pairs and the oracle labels of the other modalities removed, so nothing downstream can
read a label that was not paid for.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from mtal_models.data.sample import Sample

__all__ = ["LabelPool"]


class LabelPool:
    """Labelled flags for ``n_images`` x ``modalities``; ``mask`` is bool [n_images, n_modalities]."""

    def __init__(self, n_images: int, modalities: Sequence[str]) -> None:
        if n_images < 0:
            raise ValueError(f"n_images must be >= 0, got {n_images}")
        if not modalities or len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities must be non-empty and unique, got {list(modalities)}")
        self.modalities = list(modalities)
        self.mask = np.zeros((int(n_images), len(self.modalities)), bool)

    # ---- lookup ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.mask.shape[0]

    def _col(self, modality: str) -> int:
        try:
            return self.modalities.index(modality)
        except ValueError:
            raise ValueError(f"unknown modality {modality!r}; pool modalities: {self.modalities}") from None

    def _row(self, index: int) -> int:
        if not 0 <= int(index) < len(self):
            raise ValueError(f"image index {index} out of range for a pool of {len(self)} images")
        return int(index)

    def is_labelled(self, index: int, modality: str) -> bool:
        return bool(self.mask[self._row(index), self._col(modality)])

    # ---- labelling ---------------------------------------------------------------------------
    def label(self, pairs: Iterable[tuple[int, str]]) -> int:
        """Mark (image index, modality) pairs labelled; returns how many were new (budget spent)."""
        new = 0
        for index, modality in pairs:
            r, c = self._row(index), self._col(modality)
            new += int(not self.mask[r, c])
            self.mask[r, c] = True
        return new

    def label_images(self, indices: Iterable[int], modalities: Sequence[str] | None = None) -> int:
        """Label every (or the given) modality of each image; returns the number of new pairs."""
        mods = self.modalities if modalities is None else list(modalities)
        return self.label((i, m) for i in indices for m in mods)

    # ---- queries -----------------------------------------------------------------------------
    @property
    def n_labelled(self) -> int:
        """Budget spent: number of labelled (image, modality) pairs."""
        return int(self.mask.sum())

    def labelled_pairs(self) -> list[tuple[int, str]]:
        return [(int(i), self.modalities[j]) for i, j in zip(*np.nonzero(self.mask), strict=True)]

    def unlabelled_pairs(self) -> list[tuple[int, str]]:
        return [(int(i), self.modalities[j]) for i, j in zip(*np.nonzero(~self.mask), strict=True)]

    def labelled_images(self) -> np.ndarray:
        """Indices [K] of images with at least one labelled modality."""
        return np.nonzero(self.mask.any(1))[0]

    def unlabelled_images(self) -> np.ndarray:
        """Indices [K] of images with no labelled modality."""
        return np.nonzero(~self.mask.any(1))[0]

    def partially_labelled_images(self) -> np.ndarray:
        """Indices [K] of images with some but not all modalities labelled."""
        return np.nonzero(self.mask.any(1) & ~self.mask.all(1))[0]

    def counts(self) -> dict[str, int]:
        """Labelled images per modality."""
        return {m: int(self.mask[:, j].sum()) for j, m in enumerate(self.modalities)}

    # ---- samples -----------------------------------------------------------------------------
    def apply(self, sample: Sample, index: int) -> Sample:
        """``sample`` with ``present`` = labelled here AND present in the oracle; other labels dropped."""
        row = self.mask[self._row(index)]
        present = {m: bool(row[j]) and sample.is_present(m) for j, m in enumerate(self.modalities)}
        labels = {m: v for m, v in sample.labels.items() if present.get(m, False)}
        return Sample(sample.id, sample.image, labels, {m: present[m] for m in self.modalities})

    def sample(self, dataset: Any, index: int) -> Sample:
        """Fetch ``dataset[index]`` and hide what is not labelled (see :meth:`apply`)."""
        return self.apply(dataset[index], index)

    # ---- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "n_images": len(self),
            "modalities": self.modalities,
            "labelled": {m: np.nonzero(self.mask[:, j])[0].tolist() for j, m in enumerate(self.modalities)},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelPool:
        for key in ("n_images", "modalities", "labelled"):
            if key not in d:
                raise ValueError(f"pool state: missing field {key!r}")
        pool = cls(int(d["n_images"]), list(d["modalities"]))
        for m, idx in d["labelled"].items():
            pool.label((int(i), m) for i in idx)
        return pool

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> LabelPool:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"pool state: invalid JSON ({e})") from None
        return cls.from_dict(d)

    def __repr__(self) -> str:
        return f"LabelPool({len(self)} images, {self.n_labelled} labelled pairs, counts={self.counts()})"
