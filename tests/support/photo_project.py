"""A Label Studio project of real photographs (CamVid), and annotations made from their human labels.

The photo counterpart of :mod:`tests.support.scene_project`, used by ``make demo`` with
``DEMO_DATA`` and by the end-to-end suite when ``../shared/datasets`` is there: photographs of a
CamVid-layout folder (read with :func:`mtal_models.data.photos.read_camvid`) are copied under Label
Studio's local-files root and imported as ``/data/local-files/?d=...`` tasks, with one brush tag per
modality of the configuration (``camvid-2tag``: *stuff* and *things*, as an annotator would label
them with two brush tags) and the ``mtal_labelled`` modalities choice. An annotation paints every
class of the human label map except ``background`` (what is left unpainted); CamVid's Unlabelled
pixels (255 in the samples) stay unpainted too, and :meth:`PhotoProject.ignored` gives them so that
edit costs leave them out, as SegNet's protocol does.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backend.labelstudio.convert import mask_to_rle
from mtal_models.data.photos import read_camvid
from mtal_models.data.sample import Sample
from tests.support import palette
from tests.support.scene_project import CHOICES_TAG, create_local_files_project

__all__ = ["PhotoProject", "create_photo_project", "photo_label_config"]

IGNORE = 255  # CamVid's Unlabelled after the reader's class lookup


def photo_label_config(classes: Mapping[str, Sequence[str]]) -> str:
    """Labeling config: one BrushLabels tag per modality (its classes but ``background``, each its own
    colour: :mod:`tests.support.palette`) + the choices tag."""
    labels = [[c for c in names if c != "background"] for names in classes.values()]
    starts = [sum(len(x) for x in labels[:k]) for k in range(len(labels))]
    tags = [f'<BrushLabels name="{m}" toName="image">'
            + "".join(palette.label(c, start + i) for i, c in enumerate(names)) + "</BrushLabels>"
            for m, names, start in zip(classes, labels, starts, strict=True)]
    choices = "".join(f'<Choice value="{m}"/>' for m in classes)
    return ('<View><Image name="image" value="$image"/>' + "".join(tags)
            + f'<Choices name="{CHOICES_TAG}" toName="image" choice="multiple">{choices}</Choices></View>')


@dataclass
class PhotoProject:
    """A created project: LS ids, the photographs behind its tasks (same order), the class names per
    modality in the samples' id order (``background`` first), its labeling config."""

    id: int
    task_ids: list[int]
    samples: list[Sample]
    label_config: str
    classes: dict[str, tuple[str, ...]]

    @property
    def modalities(self) -> list[str]:
        return list(self.classes)

    def annotation_result(self, sample: Sample, modalities: Sequence[str]) -> list[dict[str, Any]]:
        """LS result painting ``sample``'s human labels for ``modalities`` and ticking them."""
        h, w = sample.image.shape[:2]
        common = {"to_name": "image", "original_width": w, "original_height": h, "image_rotation": 0}
        out: list[dict[str, Any]] = []
        for m in modalities:
            label = np.asarray(sample.labels[m])
            for cid in np.unique(label):
                if cid == 0 or cid == IGNORE:
                    continue
                value = {"format": "rle", "rle": mask_to_rle(label == cid), "brushlabels": [self.classes[m][cid]]}
                out.append({**common, "from_name": m, "type": "brushlabels", "value": value})
        out.append({"from_name": CHOICES_TAG, "to_name": "image", "type": "choices",
                    "value": {"choices": list(modalities)}})
        return out

    def ignored(self, sample: Sample, modality: str) -> np.ndarray:
        """bool [H, W]: pixels without a human label (left out of edit costs)."""
        return np.asarray(sample.labels[modality]) == IGNORE


def create_photo_project(url: str, headers: dict[str, str], files_root: Path, title: str, data_dir: Path,
                         n: int, split: str = "train", config: str = "camvid-2tag", seed: int = 0) -> PhotoProject:
    """Create a project of ``n`` photographs of CamVid ``split`` at ``data_dir``, drawn with ``seed``
    (spread over the split's driving sequences), served by LS's local-files storage."""
    dataset = read_camvid(data_dir, split, config)
    if not 1 <= n <= len(dataset):
        raise ValueError(f"asked for {n} photographs; CamVid {split!r} at {data_dir} has {len(dataset)}")
    picked = sorted(np.random.default_rng(seed).choice(len(dataset), n, replace=False).tolist())
    label_config = photo_label_config(dataset.classes)
    samples = [dataset[i] for i in picked]

    def write(folder: Path) -> list[tuple[str, dict[str, Any]]]:
        for i, s in zip(picked, samples, strict=True):
            shutil.copyfile(dataset.pairs[i][0], folder / f"{s.id}.png")
        return [(f"{s.id}.png", {"photo": s.id}) for s in samples]

    pid, task_ids = create_local_files_project(url, headers, files_root, title, label_config, write)
    return PhotoProject(pid, task_ids, samples, label_config, {m: tuple(c) for m, c in dataset.classes.items()})
