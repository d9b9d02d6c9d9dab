"""Loading the simulator's data (:class:`~mtal_models.simulate.sim_data.SimData`): a pool with oracle labels and
a fixed held-out set, held in memory.

Synthetic scenes are rendered once at ``image_size`` (pool from ``data_seed``, held-out set from
``data_seed + 1``); NYUD_MT / PASCAL_MT samples are read from disk and resized to ``image_size``.
"""

from __future__ import annotations

from mtal_models.data import Sample, SceneConfig, SyntheticDataset, read_nyud, read_pascal, resize
from mtal_models.data.synth import scene_class_names
from mtal_models.simulate.config import DATASET_READERS, DATASETS, PHOTO_DATASETS, SimConfig, composed_reader_missing
from mtal_models.simulate.photos import load_photo_data
from mtal_models.simulate.sim_data import SimData, restrict_labels, select_modalities

__all__ = ["load_data"]


def load_data(config: SimConfig) -> SimData:
    """Render or read the pool and the held-out set described by ``config``."""
    size = config.image_size
    if config.dataset in DATASET_READERS:
        data = DATASET_READERS[config.dataset](config)
        if not isinstance(data, SimData):
            raise TypeError(f"dataset reader {config.dataset!r} returned {type(data).__name__}, not SimData")
        return data
    if config.dataset not in DATASETS:
        raise ValueError(composed_reader_missing(config.dataset))
    if config.dataset in PHOTO_DATASETS:
        return load_photo_data(config)
    if config.dataset == "synthetic":
        scene = SceneConfig(height=size, width=size)
        train = SyntheticDataset(config.n_images, scene, seed=config.data_seed)
        val = SyntheticDataset(config.val_images, scene, seed=config.data_seed + 1)
        mods = select_modalities(train.modalities, config.modalities, "the synthetic dataset")
        names = list(mods)
        return SimData(
            [restrict_labels(train[i], names) for i in range(len(train))],
            [restrict_labels(val[i], names) for i in range(len(val))],
            mods,
            {k: v for k, v in scene_class_names(scene).items() if k in mods},
        )
    reader = read_nyud if config.dataset == "nyud" else read_pascal
    wanted = list(config.modalities) or None
    train_ds = reader(config.path, config.train_split, wanted)
    val_ds = reader(config.path, config.val_split, wanted)
    mods = select_modalities(train_ds.modalities, config.modalities, f"{config.dataset} at {config.path}")
    names = list(mods)
    n = len(train_ds) if config.n_images == 0 else min(config.n_images, len(train_ds))
    nv = min(config.val_images, len(val_ds))
    if n < 2 or nv < 1:
        raise ValueError(f"{config.dataset} at {config.path}: need >= 2 pool and >= 1 val images, got {n} and {nv}")

    def load(ds: object, i: int) -> Sample:
        return restrict_labels(resize(ds[i], mods, size, size), names)  # type: ignore[index]

    return SimData([load(train_ds, i) for i in range(n)], [load(val_ds, i) for i in range(nv)], mods)
