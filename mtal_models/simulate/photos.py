"""The simulator's real-photograph datasets: CamVid (``camvid``, ``camvid-2tag``) and Penn-Fudan.

Images fit an ``image_size`` (high) x ``image_width`` canvas with their aspect ratio kept (padding is
ignored by losses and metrics; :func:`mtal_models.data.photos.fit_canvas`). CamVid: pool = split
``train_split`` (first ``n_images``, 0 = all), held-out set = split ``val_split`` (first ``val_images``).
Penn-Fudan: ``val_images`` images drawn with ``data_seed`` are held out, the pool is the rest (first
``n_images``, 0 = all). ``class_names`` are the datasets' (BoxMask matches "person" boxes to the
"person" mask class by name).
"""

from __future__ import annotations

from collections.abc import Sequence

from mtal_models.data import Sample
from mtal_models.data.photos import fit_canvas, pennfudan_split, read_camvid, read_pennfudan
from mtal_models.simulate.config import SimConfig
from mtal_models.simulate.sim_data import SimData, restrict_labels, select_modalities

__all__ = ["load_photo_data"]


def load_photo_data(config: SimConfig) -> SimData:
    """Read and resize the pool and held-out set of a photograph dataset (``config.path``)."""
    if not config.path:
        raise ValueError(f"dataset {config.dataset!r} needs its folder: --data-dir (SimConfig.path)")
    height, width = config.image_size, config.image_width or config.image_size
    if config.dataset == "pennfudan":
        every = read_pennfudan(config.path)
        pool_ids, val_ids = pennfudan_split(every.ids, config.val_images, config.data_seed)
        train_ds, val_ds = read_pennfudan(config.path, pool_ids), read_pennfudan(config.path, val_ids)
        classes = {"boxes": ["person"], "mask": ["background", "person"]}
    else:
        train_ds = read_camvid(config.path, config.train_split, config.dataset)
        val_ds = read_camvid(config.path, config.val_split, config.dataset)
        classes = {n: list(c) for n, c in train_ds.classes.items()}
    where = f"{config.dataset} at {config.path}"
    mods = select_modalities(train_ds.modalities, config.modalities, where)
    names = list(mods)
    n = len(train_ds) if config.n_images == 0 else min(config.n_images, len(train_ds))
    nv = min(config.val_images, len(val_ds))
    if n < 2 or nv < 1:
        raise ValueError(f"{where}: need >= 2 pool and >= 1 val images, got {n} and {nv}")

    def load(ds: Sequence[Sample], count: int) -> list[Sample]:
        return [restrict_labels(fit_canvas(ds[i], mods, height, width), names) for i in range(count)]

    return SimData(load(train_ds, n), load(val_ds, nv), mods, {k: v for k, v in classes.items() if k in mods})
