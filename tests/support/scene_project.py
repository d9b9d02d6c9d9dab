"""A Label Studio project of synthetic scenes, and annotations made from their exact labels.

Used by the end-to-end suites and the demo: images are rendered by :mod:`mtal_models.data`, written
under LS's local-files root and imported as ``/data/local-files/?d=...`` tasks; annotations are
built from the scenes' ground truth with :mod:`backend.labelstudio.convert`, so tests know what a perfect
annotator would have drawn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import requests
from PIL import Image

from backend.labelstudio.convert import box_to_rect, mask_to_rle
from backend.labelstudio.label_config import parse_label_config
from mtal_models.data import SceneConfig, SyntheticDataset
from mtal_models.data.sample import Sample
from mtal_models.data.synth import STUFF_CLASSES
from tests.support import palette

if TYPE_CHECKING:
    from tests.support.photo_project import PhotoProject

__all__ = ["SceneProject", "annotate", "create_scene_project", "create_local_files_project", "scene_label_config"]

CHOICES_TAG = "mtal_labelled"


def scene_label_config(config: SceneConfig, boxes: bool = False, parts: bool = True) -> str:
    """Labeling config: semantic brush (+ parts brush) (+ object rectangles) + the modalities choices tag;
    each label its own colour (:mod:`tests.support.palette`; an object's box, its mask's colour)."""
    semantic = [*STUFF_CLASSES, *(c.name for c in config.classes)]
    tags = ['<BrushLabels name="semantic" toName="image">'
            + "".join(palette.label(n, i) for i, n in enumerate(semantic)) + "</BrushLabels>"]
    names = ["semantic"]
    if parts:
        tags.append('<BrushLabels name="parts" toName="image">'
                    + palette.label("top", len(semantic)) + palette.label("bottom", len(semantic) + 1)
                    + "</BrushLabels>")
        names.append("parts")
    if boxes:
        tags.append('<RectangleLabels name="objects" toName="image">'
                    + "".join(palette.label(c.name, len(STUFF_CLASSES) + i) for i, c in enumerate(config.classes))
                    + "</RectangleLabels>")
        names.append("objects")
    choices = "".join(f'<Choice value="{n}"/>' for n in names)
    return ('<View><Image name="image" value="$image"/>' + "".join(tags)
            + f'<Choices name="{CHOICES_TAG}" toName="image" choice="multiple">{choices}</Choices></View>')


@dataclass
class SceneProject:
    """A created project: LS ids, the scenes behind its tasks (same order), its labeling config."""

    id: int
    task_ids: list[int]
    samples: list[Sample]
    label_config: str
    scene_config: SceneConfig

    @property
    def modalities(self) -> list[str]:
        return parse_label_config(self.label_config).annotatable

    def annotation_result(self, sample: Sample, modalities: Sequence[str]) -> list[dict[str, Any]]:
        return annotation_result(self, sample, modalities)

    def ignored(self, sample: Sample, modality: str) -> None:
        """Synthetic scenes label every pixel: nothing to leave out of edit costs."""
        return None


def create_scene_project(url: str, headers: dict[str, str], files_root: Path, title: str, n: int,
                         size: int = 64, seed: int = 0, boxes: bool = False, parts: bool = True) -> SceneProject:
    """Create a project with ``n`` synthetic scene tasks served by LS's local-files storage."""
    config = SceneConfig(height=size, width=size)
    dataset = SyntheticDataset(n, config, seed=seed)
    label_config = scene_label_config(config, boxes=boxes, parts=parts)
    samples = [dataset[i] for i in range(n)]

    def write(folder: Path) -> list[tuple[str, dict[str, Any]]]:
        for s in samples:
            Image.fromarray(s.image).save(folder / f"{s.id}.png")
        return [(f"{s.id}.png", {"scene": s.id}) for s in samples]

    pid, task_ids = create_local_files_project(url, headers, files_root, title, label_config, write)
    return SceneProject(pid, task_ids, samples, label_config, config)


def create_local_files_project(url: str, headers: dict[str, str], files_root: Path, title: str, label_config: str,
                               write: Callable[[Path], list[tuple[str, dict[str, Any]]]]) -> tuple[int, list[int]]:
    """Create a project, let ``write(folder)`` put its images in a fresh folder below ``files_root`` and
    return ``[(file name, extra task data)]``, serve the folder through a local-files storage of the
    project and import one task per file (``{"image": "/data/local-files/?d=...", **extra}``).
    Returns (project id, task ids in ``write``'s order)."""
    r = requests.post(f"{url}/api/projects/", headers=headers, json={"title": title, "label_config": label_config},
                      timeout=60)
    r.raise_for_status()
    pid = r.json()["id"]
    folder = files_root / f"project-{pid}"
    folder.mkdir(parents=True, exist_ok=True)
    files = write(folder)
    # LS 1.23 serves /data/local-files/ only below a local-files storage of the project
    r = requests.post(f"{url}/api/storages/localfiles/", headers=headers, timeout=60,
                      json={"project": pid, "path": str(folder), "use_blob_urls": True, "title": "images"})
    r.raise_for_status()
    tasks = [{"image": f"/data/local-files/?d={folder.relative_to(files_root)}/{name}", **extra}
             for name, extra in files]
    r = requests.post(f"{url}/api/projects/{pid}/import", params={"return_task_ids": "true"}, headers=headers,
                      json=tasks, timeout=120)
    r.raise_for_status()
    return pid, list(r.json()["task_ids"])


def annotation_result(project: SceneProject, sample: Sample, modalities: Sequence[str]) -> list[dict[str, Any]]:
    """LS result drawing ``sample``'s exact labels for ``modalities`` and ticking them in the choices tag."""
    h, w = sample.image.shape[:2]
    common = {"to_name": "image", "original_width": w, "original_height": h, "image_rotation": 0}
    semantic = [*STUFF_CLASSES, *(c.name for c in project.scene_config.classes)]
    names = {"semantic": semantic, "parts": ["background", "top", "bottom"]}
    out: list[dict[str, Any]] = []
    for m in modalities:
        if m in names:
            label = np.asarray(sample.labels[m])
            for cid in np.unique(label):
                cid = int(cid)
                if m == "parts" and cid == 0:
                    continue  # background is what is left unpainted
                value = {"format": "rle", "rle": mask_to_rle(label == cid), "brushlabels": [names[m][cid]]}
                out.append({**common, "from_name": m, "type": "brushlabels", "value": value})
        elif m == "objects":
            objects = sample.labels["objects"]
            for box, cls in zip(objects["boxes"], objects["labels"], strict=True):
                rect = box_to_rect(np.asarray(box), h, w)
                out.append({**common, "from_name": "objects", "type": "rectanglelabels",
                            "value": {**rect, "rectanglelabels": [project.scene_config.classes[int(cls)].name]}})
        else:
            raise ValueError(f"cannot annotate modality {m!r}")
    out.append({"from_name": CHOICES_TAG, "to_name": "image", "type": "choices",
                "value": {"choices": list(modalities)}})
    return out


def annotate(url: str, headers: dict[str, str], project: SceneProject | PhotoProject, index: int,
             modalities: Sequence[str]) -> int:
    """Submit an annotation of task ``index`` labelling only ``modalities``; returns its id."""
    result = project.annotation_result(project.samples[index], modalities)
    r = requests.post(f"{url}/api/tasks/{project.task_ids[index]}/annotations/", headers=headers,
                      json={"result": result}, timeout=60)
    r.raise_for_status()
    return int(r.json()["id"])


def scene_model(tmp: Path, boxes: bool, n: int = 6, **settings: Any) -> tuple[Any, Any, Any, list[Sample]]:
    """A project "7" set up in a :class:`backend.serving.store.ModelStore` at ``tmp`` (tiny net, 64 px scenes,
    one training epoch; ``settings`` override), and ``n`` scenes labelled for its modalities only.
    Returns (store, model, settings, samples)."""
    import torch

    from backend.serving.model import MTALModel
    from backend.serving.store import ModelStore
    from backend.settings import Settings

    torch.manual_seed(0)
    scene = SceneConfig(height=64, width=64)
    config = Settings(**{"model_dir": tmp, "net_config": "tiny", "image_size": 64, "device": "cpu",
                         "train_epochs": 1, **settings})
    store = ModelStore(tmp)
    model = MTALModel("7", scene_label_config(scene, boxes=boxes, parts=False), config, store)
    model.setup()
    names = set(model.schema.modalities)
    samples = [SyntheticDataset(n, scene, seed=1)[i] for i in range(n)]
    for s in samples:
        s.labels = {k: v for k, v in s.labels.items() if k in names}
        s.present = {k: True for k in names}
    return store, model, config, samples
