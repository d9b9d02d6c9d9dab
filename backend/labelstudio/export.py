"""A Label Studio project's JSON export + its image folder -> samples, read as the backend reads tasks.

Folder layout (``mtal simulate --dataset ls-export --data-dir FOLDER``)::

    FOLDER/label_config.xml   the project's labeling config (Settings > Labeling Interface > Code)
    FOLDER/*.json             one JSON export of the project (Export > JSON): a list of tasks
    FOLDER/...                the task images (and dense ``.npy`` / PNG maps), found from each URL

A task URL names a file relative to FOLDER: ``/data/local-files/?d=REL`` -> ``REL``,
``/data/upload/<project>/<file>`` -> ``<project>/<file>``, other URLs -> their path; each is tried as it
is, then under ``images/``, then by its file name alone (in FOLDER and ``images/``). Nothing is fetched
over the network.

Labels come from the backend's own code: the labeling config through
:func:`backend.labelstudio.label_config.parse_label_config` (the modalities, classes, choices tag and dense fields),
the latest non-cancelled annotation through :func:`backend.labelstudio.tasks.latest_annotation` and
:func:`backend.labelstudio.convert.annotation_to_labels` (partial labels: the choices tag, else "has a region"),
image and dense-map decoding through :class:`backend.labelstudio.images.ImageFetcher`. Before converting, the reader
refuses what the backend would only log and skip, since a measurement on silently dropped labels misleads:
a region drawn on an image of another size, and a label value that is not in the config.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from backend.labelstudio.convert import annotation_to_labels
from backend.labelstudio.images import ImageFetcher
from backend.labelstudio.label_config import ProjectSchema, parse_label_config
from backend.labelstudio.tasks import latest_annotation
from mtal_models.data import Sample
from mtal_models.data.sample import empty_label

__all__ = ["CONFIG_FILE", "ExportError", "LSExport", "LocalFiles", "read_ls_export"]

CONFIG_FILE = "label_config.xml"


class ExportError(ValueError):
    """The export folder cannot be read as a labelled dataset (the message names the task and file)."""


class LocalFiles(ImageFetcher):
    """An :class:`ImageFetcher` whose bytes come from a local folder instead of Label Studio: images and
    dense maps are decoded by the backend's own code (EXIF orientation, gray / 16-bit, depth PNG, .npy)."""

    def __init__(self, root: Path) -> None:
        super().__init__(None, None)
        self.root = Path(root).resolve()

    def path(self, url: str) -> Path:
        """The file a task URL names (see the module docstring); ExportError when there is none."""
        parsed = urlparse(url)
        rel = parse_qs(parsed.query).get("d", [""])[0] if parsed.path.endswith("/data/local-files/") else ""
        if not rel:
            rel = unquote(parsed.path)
            for prefix in ("/data/upload/", "/data/"):
                if rel.startswith(prefix):
                    rel = rel[len(prefix):]
                    break
            rel = (parsed.netloc + "/" + rel.lstrip("/")) if parsed.scheme in ("s3", "gs", "azure-blob") else rel
        rel = rel.lstrip("/")
        tried = []
        for cand in (rel, f"images/{rel}", Path(rel).name, f"images/{Path(rel).name}"):
            p = (self.root / cand).resolve()
            tried.append(cand)
            if p.is_relative_to(self.root) and p.is_file():
                return p
        raise ExportError(f"{url}: no such file in {self.root} (looked for {', '.join(dict.fromkeys(tried))})")

    def fetch_bytes(self, url: str, task_id: int | None = None) -> bytes:
        return self.path(url).read_bytes()


@dataclass
class LSExport:
    """samples: one per task with a non-empty latest annotation or a dense field (export order), at the
    image's own size; labels follow :mod:`mtal_models.data.sample`, ``present`` as the backend reads it.
    schema: the labeling config's :class:`ProjectSchema` (``schema.modalities``: name -> spec)."""

    samples: list[Sample]
    schema: ProjectSchema

    def class_names(self) -> dict[str, list[str]]:
        return {m: self.schema.class_names(m) for m in self.schema.annotatable}


def _export_file(root: Path) -> Path:
    files = sorted(p for p in root.glob("*.json") if p.is_file())
    if len(files) != 1:
        found = [p.name for p in files] or "none"
        raise ExportError(f"{root}: want exactly one Label Studio JSON export (*.json), found {found}")
    return files[0]


def _check_result(result: Sequence[Mapping[str, Any]], schema: ProjectSchema, h: int, w: int, where: str) -> None:
    """Refuse regions drawn on an image of another size and label values the config does not have."""
    for i, res in enumerate(result):
        tag = schema.tags.get(res.get("from_name")) if isinstance(res, Mapping) else None  # type: ignore[arg-type]
        if tag is None or not isinstance(res.get("value"), Mapping):
            continue  # the choices tag, a control the backend ignores (e.g. a TextArea), or junk it skips
        oh, ow = res.get("original_height"), res.get("original_width")
        if oh is not None and ow is not None and (int(oh), int(ow)) != (h, w):
            raise ExportError(f"{where}: region {i} of {tag.name!r} was drawn on a {ow}x{oh} image, "
                              f"but the image file is {w}x{h}")
        for value in res["value"].get(tag.result_type) or []:
            if schema.class_index(tag.modality, value) is None:
                raise ExportError(f"{where}: region {i} of {tag.name!r} has label {value!r}, which is not in "
                                  f"the labeling config (valid: {schema.class_names(tag.modality)})")


def _dense(schema: ProjectSchema, data: Mapping[str, Any], files: LocalFiles, h: int, w: int,
           where: str) -> tuple[dict[str, Any], dict[str, bool]]:
    labels: dict[str, Any] = {}
    present: dict[str, bool] = {}
    for name, key in schema.dense_fields.items():
        if not isinstance(data.get(key), str):
            continue
        arr = np.asarray(files.fetch_array(data[key]), np.float32)
        if schema.modalities[name].kind == "depth" and arr.ndim == 3:
            arr = arr[..., 0]
        if arr.shape[:2] != (h, w):
            raise ExportError(f"{where}: {name!r} map {data[key]} is {arr.shape[1]}x{arr.shape[0]}, "
                              f"the image is {w}x{h}")
        labels[name], present[name] = arr, True
    return labels, present


def read_ls_export(folder: str | Path) -> LSExport:
    """Read a project export folder (module docstring); ExportError (a ValueError) for a missing folder,
    config or image, a label of the wrong size or an unknown label value."""
    root = Path(folder)
    if not root.is_dir():
        raise ExportError(f"Label Studio export folder {root} does not exist")
    config = root / CONFIG_FILE
    if not config.is_file():
        raise ExportError(f"{root}: missing {CONFIG_FILE} (the project's labeling config: Settings > "
                          "Labeling Interface > Code)")
    schema = parse_label_config(config.read_text())
    export = _export_file(root)
    try:
        tasks = json.loads(export.read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f"{export}: not valid JSON ({e})") from None
    if not isinstance(tasks, list):
        raise ExportError(f"{export}: a Label Studio JSON export is a list of tasks")
    files = LocalFiles(root)
    samples: list[Sample] = []
    for n, task in enumerate(tasks):
        data = task.get("data") if isinstance(task, dict) else None
        where = f"{export.name}: task {task.get('id', n) if isinstance(task, dict) else n}"
        if not isinstance(data, dict) or not isinstance(data.get(schema.image_key), str):
            raise ExportError(f"{where}: no image URL under data.{schema.image_key}")
        ann = latest_annotation(task)
        if (ann is None or not ann["result"]) and not any(k in data for k in schema.dense_fields.values()):
            continue  # nothing labelled: the oracle has nothing to give
        image = files.fetch_image(data[schema.image_key])
        h, w = image.shape[:2]
        labels, present = _dense(schema, data, files, h, w, where)
        if ann is not None and ann["result"]:
            _check_result(ann["result"], schema, h, w, where)
            got, flags = annotation_to_labels(ann["result"], schema, h, w)
            labels.update({m: got[m] for m in got if flags[m]})
            present.update(flags)
        for m, spec in schema.modalities.items():
            present.setdefault(m, False)
            if not present[m]:
                labels[m] = empty_label(spec, h, w)
        if any(present.values()):
            samples.append(Sample(str(task.get("id", n)), image, labels, present))
    if not samples:
        raise ExportError(f"{export}: no task has a labelled modality")
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        raise ExportError(f"{export}: task ids are not unique")
    return LSExport(samples, schema)
