"""Writers: a dataset in the NYUD_MT layout, and Label Studio import files (tasks JSON).

:func:`write_nyud` writes exactly what :func:`mtal_models.data.readers.read_nyud` reads back (lossless:
PNG images and class maps, float32 ``.npy`` maps, JSON boxes). Absent labels are not written and are
recorded as 0 in ``gt_sets/<split>_mask.csv``.

:func:`write_tasks` writes ``tasks.json``: a list of ``{"data": {"image": URL, "depth": URL,
"normals": URL, "sample_id": ID}}`` where URL = ``url_prefix`` + the file's path relative to the dataset
root (forward slashes). No Label Studio annotation formats are produced here: the backend converts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mtal_models.data.files import DataError, read_ids, save_png, write_label_mask
from mtal_models.data.readers import NYUD_META, nyud_fields
from mtal_models.data.sample import Sample
from mtal_models.modalities import ModalitySpec

__all__ = ["write_nyud", "write_tasks"]


def _write_label(root: Path, sid: str, name: str, spec: ModalitySpec, lab: Any, folder: str) -> None:
    d = root / folder
    d.mkdir(parents=True, exist_ok=True)
    if spec.kind == "segmentation":
        a = np.asarray(lab)
        if name == "semantic":  # NYUD_MT convention: 0 = void, class c stored as c + 1
            a = np.where(a == spec.ignore_index, 0, a + 1)
        if a.min() < 0 or a.max() > 255:
            raise ValueError(f"modality {name!r} of {sid!r}: class ids must fit a uint8 PNG")
        save_png(d / f"{sid}.png", a.astype(np.uint8))
    elif spec.kind == "binary":
        np.save(d / f"{sid}.npy", np.asarray(lab, np.uint8))
    elif spec.kind in ("depth", "normals"):
        np.save(d / f"{sid}.npy", np.asarray(lab, np.float32))
    else:
        boxes = np.asarray(lab["boxes"], np.float32).reshape(-1, 4)
        labels = np.asarray(lab["labels"], np.int64).reshape(-1)
        (d / f"{sid}.json").write_text(json.dumps({"boxes": boxes.tolist(), "labels": labels.tolist()}))


def write_nyud(samples: Iterable[Sample], root: str | Path, modalities: Mapping[str, ModalitySpec],
               split: str = "train") -> list[str]:
    """Write samples under ``root`` in the NYUD_MT layout (+ ``mtal_dataset.json``); returns the ids.

    The split file ``gt_sets/<split>.txt`` is (re)written with these ids; other splits are kept, and
    must use the same modality specs as an existing ``mtal_dataset.json``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    meta_path = root / NYUD_META
    meta = {"format": "nyud_mt+mtal", "modalities": [s.to_dict() for s in modalities.values()]}
    if meta_path.is_file() and json.loads(meta_path.read_text()) != meta:
        raise ValueError(f"{meta_path} describes other modalities; write to an empty folder")
    meta_path.write_text(json.dumps(meta, indent=1))
    folders = {n: f.dirs[0] for n, f in nyud_fields(root).items()}
    ids: list[str] = []
    mask_rows = []
    for s in samples:
        if s.id in ids:
            raise ValueError(f"duplicate sample id {s.id!r}")
        ids.append(s.id)
        save_png(root / "images" / f"{s.id}.png", s.image)
        row = []
        for name, spec in modalities.items():
            present = s.is_present(name)
            row.append(present)
            if present:
                _write_label(root, s.id, name, spec, s.labels[name], folders[name])
        mask_rows.append(row)
    (root / "gt_sets").mkdir(exist_ok=True)
    (root / "gt_sets" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    mask = np.array(mask_rows, bool).reshape(len(ids), len(modalities))
    mask_path = root / "gt_sets" / f"{split}_mask.csv"
    if not mask.all():
        write_label_mask(mask_path, ids, list(modalities), mask)
    elif mask_path.exists():
        mask_path.unlink()
    return ids


def write_tasks(root: str | Path, split: str = "train", url_prefix: str = "/data/local-files/?d=",
                out: str | Path | None = None, extra: Iterable[str] = ("depth", "normals")) -> list[dict]:
    """Write ``tasks.json`` (or ``out``) for an NYUD_MT folder written by :func:`write_nyud`.

    Each task: ``{"data": {"image": url, "<extra>": url, ..., "sample_id": id}}``; an extra modality
    (depth/normals ``.npy``) is included when its file exists. Returns the task list.
    """
    root = Path(root)
    ids = read_ids(root / "gt_sets" / f"{split}.txt")
    fields = nyud_fields(root)
    tasks = []
    for sid in ids:
        cands = [root / "images" / f"{sid}.{e}" for e in ("png", "jpg")]
        img = next((c for c in cands if c.is_file()), None)
        if img is None:
            raise DataError(f"missing file {root / 'images' / sid}.png")
        data: dict[str, Any] = {"image": url_prefix + img.relative_to(root).as_posix()}
        for name in extra:
            if name not in fields:
                continue
            f = fields[name]
            p = next((root / d / f"{sid}.{e}" for d in f.dirs for e in f.exts if (root / d / f"{sid}.{e}").is_file()),
                     None)
            if p is not None:
                data[name] = url_prefix + p.relative_to(root).as_posix()
        data["sample_id"] = sid
        tasks.append({"data": data})
    target = Path(out) if out is not None else root / "tasks.json"
    target.write_text(json.dumps(tasks, indent=1))
    return tasks
