"""Reading the unlabelled pool's entries (written by :mod:`backend.serving.pool`): one entry, the streaming
dataset the training and the pretrain iterate, and the last fill's counts for ``/status``."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtal_models.data.geometry import Fit
from mtal_models.data.sample import Sample

__all__ = ["FIT_FIELDS", "PROJECT_RE", "PoolDataset", "PooledFetcher", "entry_readable", "load_entry",
           "pool_status"]

log = logging.getLogger(__name__)
PROJECT_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a project id, as the store checks it

FIT_FIELDS = ("height", "width", "resized_height", "resized_width", "padded_height", "padded_width")


def load_entry(path: Path) -> tuple[np.ndarray, Fit] | None:
    """(padded uint8 [H, W, 3], Fit) of one entry; None when missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            image, fields = z["image"], z["fit"]
        fit = Fit(*(int(v) for v in fields))
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != fit.resized:
            raise ValueError(f"image {image.dtype} {image.shape} does not match its fit {fit.resized}")
        return fit.pad(image, 0), fit
    except FileNotFoundError:
        return None
    except Exception as e:  # a torn or foreign file: treated as missing (fetched again by the next fill)
        log.warning("pool entry %s unreadable: %s", path, e)
        return None


def entry_readable(path: Path) -> bool:
    """The entry exists and its zip directory and Fit read (cheap: the image itself is not read)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return "image" in z.files and len(z["fit"]) == len(FIT_FIELDS)
    except Exception:  # missing, torn or foreign: fetched again
        return False


class PoolDataset(Sequence[Sample]):
    """The pool's images, read from disk per item (never all in memory): ``dataset[i]`` is a
    :class:`Sample` with ``id`` = the task id, ``image`` uint8 [H, W, 3] (the training's geometry, padded to
    a multiple of 32; sizes differ between images as for labelled samples), no labels and ``present``
    False for every modality. An entry that vanished or broke since the fill (another job pruned it) is
    replaced by the next readable one, with a warning; ``task_ids`` lists the entries in order.
    Picklable (DataLoader workers)."""

    def __init__(self, entries: Sequence[tuple[int, Path]], modalities: Sequence[str] = ()) -> None:
        self._entries = list(entries)
        self._modalities = tuple(modalities)

    @property
    def task_ids(self) -> list[int]:
        return [t for t, _ in self._entries]

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        n = len(self._entries)
        if not -n <= index < n:
            raise IndexError(f"pool index {index} out of range for {n} images")
        for k in range(n):
            task_id, path = self._entries[(index + k) % n]
            got = load_entry(path)
            if got is not None:
                if k:
                    log.warning("pool image of task %s unreadable; task %s used instead",
                                self._entries[index % n][0], task_id)
                return Sample(id=str(task_id), image=got[0], labels={},
                              present=dict.fromkeys(self._modalities, False))
        raise FileNotFoundError(f"no pool image is readable any more ({n} entries under "
                                f"{self._entries[0][1].parent if n else '?'})")


def pool_status(root: Path | str, project: str) -> dict[str, Any] | None:
    """The last fill's counts of ``project`` (``status.json``), or None before the first fill."""
    if not PROJECT_RE.fullmatch(str(project)):
        return None
    try:
        return json.loads((Path(root) / str(project) / "pool" / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class PooledFetcher:
    """A fetcher that answers ``fetch_fitted`` from the pool when it holds the task's image at the geometry
    the caller asks for (the rank job reads the images the train job's pool fill decoded), and asks
    ``fetcher`` otherwise. Every other method (``fetch_array``, ...) is ``fetcher``'s.

    pool: anything with ``image(task_id, url) -> (uint8 [H, W, 3] padded, Fit) | None``
    (:class:`backend.serving.pool.PoolCache`). ``hits`` / ``misses`` count the answers."""

    def __init__(self, pool: Any, fetcher: Any) -> None:
        self.pool, self.fetcher = pool, fetcher
        self.hits = self.misses = 0

    def fetch_fitted(self, url: str, task_id: int | None,
                     fit_for: Callable[[int, int], Fit]) -> tuple[np.ndarray, Fit]:
        entry = self.pool.image(task_id, url) if task_id is not None else None
        if entry is not None and fit_for(entry[1].height, entry[1].width) == entry[1]:
            self.hits += 1
            return entry
        self.misses += 1
        return self.fetcher.fetch_fitted(url, task_id, fit_for)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fetcher, name)
