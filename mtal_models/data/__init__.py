"""Data: samples, batches, synthetic scenes, on-disk dataset readers and writers, the labelling pool."""

from mtal_models.data.files import DataError, read_label_mask, write_label_mask
from mtal_models.data.pool import LabelPool
from mtal_models.data.readers import DiskDataset, read_mtan, read_nyud, read_pascal
from mtal_models.data.sample import Batch, Sample, collate, empty_label
from mtal_models.data.synth import (
    ObjectClass,
    Scene,
    SceneConfig,
    SceneType,
    SyntheticDataset,
    render_scene,
    scene_modalities,
)
from mtal_models.data.transforms import Compose, RandomCrop, RandomHFlip, Resize, crop, hflip, resize
from mtal_models.data.viz import render_grid, save_grid
from mtal_models.data.writers import write_nyud, write_tasks

__all__ = [
    "Batch",
    "Compose",
    "DataError",
    "DiskDataset",
    "LabelPool",
    "ObjectClass",
    "RandomCrop",
    "RandomHFlip",
    "Resize",
    "Sample",
    "Scene",
    "SceneConfig",
    "SceneType",
    "SyntheticDataset",
    "collate",
    "crop",
    "empty_label",
    "hflip",
    "read_label_mask",
    "read_mtan",
    "read_nyud",
    "read_pascal",
    "render_grid",
    "render_scene",
    "resize",
    "save_grid",
    "scene_modalities",
    "write_label_mask",
    "write_nyud",
    "write_tasks",
]
