"""Unlabelled images streamed from disk: a Dataset that decodes one image per ``__getitem__``.

What the semi-supervised term draws from when the pool is large (a project's unlabelled photographs):
only the images of the batches in flight are in memory, never the pool. An image that fails to decode
raises :class:`~mtal_models.data.files.DataError` naming the file; callers that must skip bad images
filter the list first (the pool cache decodes each image once when it writes it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
from torch.utils.data import Dataset

from mtal_models.data.files import load_image
from mtal_models.data.sample import Sample

__all__ = ["ImageFiles"]


class ImageFiles(Dataset):
    """Image-only samples (``Sample(id, image)``, no labels) read lazily from ``paths``.

    ids: one per path (default: the file stems). size: (height, width) to resize every image to with area
    interpolation (default: as stored; a batch of mixed sizes is padded by ``collate``)."""

    def __init__(self, paths: Sequence[str | Path], ids: Sequence[str] | None = None,
                 size: tuple[int, int] | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        self.ids = [p.stem for p in self.paths] if ids is None else [str(i) for i in ids]
        if len(self.ids) != len(self.paths):
            raise ValueError(f"ImageFiles: {len(self.ids)} ids for {len(self.paths)} paths")
        if size is not None and (size[0] < 1 or size[1] < 1):
            raise ValueError(f"ImageFiles: size must be positive, got {size}")
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Sample:
        image = load_image(self.paths[index])
        if self.size is not None and image.shape[:2] != tuple(self.size):
            image = cv2.resize(image, (self.size[1], self.size[0]), interpolation=cv2.INTER_AREA)
        return Sample(self.ids[index], image)
