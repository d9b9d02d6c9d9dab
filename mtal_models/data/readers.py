"""Readers for the on-disk layouts researchers already have; each returns a :class:`DiskDataset`.

- :func:`read_nyud`: NYUD_MT as used by Multi-Task-Learning-PyTorch / ASTMT (``images/``,
  ``segmentation/``, ``depth/*.npy``, ``normals/*.npy``, ``edge/``, ``gt_sets/<split>.txt``), plus the
  extra folders our synthetic writer adds (``parts/``, ``saliency/``, ``objects/``) described by
  ``mtal_dataset.json``.
- :func:`read_pascal`: PASCAL_MT (``JPEGImages/``, ``semseg/{pascal-context,VOC12}/``, ``human_parts/``
  as PNG, ``normals_distill/``, ``sal_distill/``, ``edge/`` as PNG/NPY, ``ImageSets/Context/<split>.txt``).
- :func:`read_mtan`: MTAN's pre-processed NYUv2 (``<split>/{image,label,depth,normal}/<i>.npy``).

Every reader takes ``label_mask``: a partial-label mask file (see :func:`files.read_label_mask`) whose
0 entries make that (image, modality) absent — its file is then never read. Missing or corrupt files
raise :class:`DataError` naming the file; ids in a split without an image raise listing those ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtal_models.data.files import (
    DataError,
    find_file,
    load_image,
    load_json,
    load_npy,
    load_png_label,
    read_ids,
    read_label_mask,
)
from mtal_models.data.sample import Sample
from mtal_models.modalities import ModalitySpec

__all__ = ["DiskDataset", "Field", "read_mtan", "read_nyud", "read_pascal", "NYUD_META"]

NYUD_META = "mtal_dataset.json"


@dataclass(frozen=True)
class Field:
    """How one modality is stored: folders tried in order, file extensions tried in order, a decoder."""

    spec: ModalitySpec
    dirs: tuple[str, ...]
    exts: tuple[str, ...]
    decode: Callable[[Path], Any]


class DiskDataset:
    """Samples read lazily from ``root``; ``present`` is bool [N, M] over ``modalities`` (partial labels)."""

    def __init__(self, root: Path, ids: Sequence[str], image_dir: str, image_exts: tuple[str, ...],
                 fields: dict[str, Field], label_mask: Path | None = None,
                 image_decode: Callable[[Path], np.ndarray] = load_image, split_file: Path | None = None) -> None:
        self.root = Path(root)
        self.ids = list(ids)
        self.fields = fields
        self.modalities: dict[str, ModalitySpec] = {n: f.spec for n, f in fields.items()}
        self._image_dir, self._image_exts, self._image_decode = self.root / image_dir, image_exts, image_decode
        missing = [i for i in self.ids if not any((self._image_dir / f"{i}.{e}").is_file() for e in image_exts)]
        if missing:
            where = f"split file {split_file}" if split_file else "the id list"
            raise DataError(f"{where} lists {len(missing)} id(s) with no image in {self._image_dir}: {missing[:20]}")
        names = list(fields)
        self.present = (np.ones((len(self.ids), len(names)), bool) if label_mask is None
                        else read_label_mask(Path(label_mask), self.ids, names))

    def __len__(self) -> int:
        return len(self.ids)

    def path(self, index: int, modality: str) -> Path:
        """The file holding ``modality`` of image ``index`` (DataError if none exists)."""
        f = self.fields[modality]
        sid = self.ids[index]
        for d in f.dirs[:-1]:
            try:
                return find_file(self.root / d, sid, f.exts)
            except DataError:
                continue
        return find_file(self.root / f.dirs[-1], sid, f.exts)

    def __getitem__(self, index: int) -> Sample:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index %= len(self)
        image = self._image_decode(find_file(self._image_dir, self.ids[index], self._image_exts))
        labels: dict[str, Any] = {}
        present: dict[str, bool] = {}
        for j, (name, f) in enumerate(self.fields.items()):
            present[name] = bool(self.present[index, j])
            if not present[name]:
                continue
            p = self.path(index, name)
            lab = f.decode(p)
            if f.spec.dense and lab.shape[:2] != image.shape[:2]:
                raise DataError(f"{p}: {name} label is {lab.shape[0]}x{lab.shape[1]}, image is "
                                f"{image.shape[0]}x{image.shape[1]}")
            labels[name] = lab
        return Sample(self.ids[index], image, labels, present)


# ---- decoders ----------------------------------------------------------------------------------------
def decode_nyud_segmentation(p: Path) -> np.ndarray:
    """NYUD_MT convention: 0 = void -> 255, class c stored as c + 1."""
    v = load_png_label(p)
    return np.where(v == 0, 255, v - 1).astype(np.int64)


def decode_segmentation(p: Path) -> np.ndarray:
    """Raw class ids (255 = ignore) from a PNG."""
    if p.suffix == ".mat":
        raise DataError(f"{p}: MATLAB part annotations are not supported; convert them to PNG class-id maps")
    return load_png_label(p)


def decode_depth(p: Path) -> np.ndarray:
    a = load_npy(p)
    if a.ndim == 3 and 1 in (a.shape[0], a.shape[-1]):
        a = a.reshape(a.shape[1:] if a.shape[0] == 1 else a.shape[:2])
    if a.ndim != 2:
        raise DataError(f"{p}: depth must be [H, W] (or with a unit channel axis), got shape {a.shape}")
    return np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def decode_normals(p: Path) -> np.ndarray:
    a = load_npy(p)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise DataError(f"{p}: normals must be [H, W, 3], got shape {a.shape}")
    return np.nan_to_num(a.astype(np.float32))


def decode_normals_png(p: Path) -> np.ndarray:
    """PASCAL distilled normals: uint8 RGB, n = 2 v / 255 - 1, renormalised."""
    v = load_image(p).astype(np.float32)
    n = 2.0 * v / 255.0 - 1.0
    return (n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)).astype(np.float32)


def decode_binary(p: Path) -> np.ndarray:
    """.npy: {0, 1} (255 kept as ignore, other values thresholded at 0.5); .png: > 127 -> 1."""
    if p.suffix == ".npy":
        a = load_npy(p).squeeze()
        return np.where(a == 255, 255, a > 0.5).astype(np.uint8)
    return (load_png_label(p) > 127).astype(np.uint8)


def decode_boxes(p: Path) -> dict[str, np.ndarray]:
    d = load_json(p)
    try:
        boxes = np.asarray(d["boxes"], np.float32).reshape(-1, 4)
        labels = np.asarray(d["labels"], np.int64).reshape(-1)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{p}: expected {{'boxes': [[x1, y1, x2, y2], ...], 'labels': [...]}} ({e})") from None
    if len(boxes) != len(labels):
        raise DataError(f"{p}: {len(boxes)} boxes but {len(labels)} labels")
    return {"boxes": boxes, "labels": labels}


def decode_mtan_image(p: Path) -> np.ndarray:
    a = load_npy(p)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise DataError(f"{p}: image must be [H, W, 3], got shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    return (np.clip(a.astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)


def decode_mtan_label(p: Path) -> np.ndarray:
    a = load_npy(p)
    if a.ndim != 2:
        raise DataError(f"{p}: semantic label must be [H, W], got shape {a.shape}")
    return np.where(a < 0, 255, a).astype(np.int64)


# ---- layouts -----------------------------------------------------------------------------------------
_DEFAULT_NYUD = [("semantic", "segmentation", 40, {}), ("depth", "depth", 1, {}), ("normals", "normals", 3, {}),
                 ("edges", "binary", 1, {"metric": "odsf"})]
_NYUD_STORAGE = {
    "semantic": (("segmentation",), ("png",), decode_nyud_segmentation),
    "depth": (("depth",), ("npy",), decode_depth),
    "normals": (("normals",), ("npy",), decode_normals),
    "edges": (("edge",), ("npy", "png"), decode_binary),
}
_KIND_STORAGE = {  # extra modalities named in mtal_dataset.json, stored in a folder of their own name
    "segmentation": (("png",), decode_segmentation),
    "binary": (("npy", "png"), decode_binary),
    "depth": (("npy",), decode_depth),
    "normals": (("npy",), decode_normals),
    "detection": (("json",), decode_boxes),
}


def _select(fields: dict[str, Field], wanted: Sequence[str] | None, root: Path) -> dict[str, Field]:
    if wanted is None:
        return {n: f for n, f in fields.items() if any((root / d).is_dir() for d in f.dirs)}
    unknown = [w for w in wanted if w not in fields]
    if unknown:
        raise ValueError(f"modalities {unknown} not available in this layout; available: {list(fields)}")
    return {n: fields[n] for n in wanted}


def _check_root(root: Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root {root} is not a directory")
    return root


def nyud_fields(root: Path) -> dict[str, Field]:
    """Fields of an NYUD_MT folder: from ``mtal_dataset.json`` when present, else the four NYUD tasks."""
    meta_path = Path(root) / NYUD_META
    if meta_path.is_file():
        meta = load_json(meta_path)
        try:
            specs = [ModalitySpec.from_dict(d) for d in meta["modalities"]]
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{meta_path}: bad 'modalities' entry ({e})") from None
    else:
        specs = [ModalitySpec(n, k, c, **o) for n, k, c, o in _DEFAULT_NYUD]
    fields = {}
    for s in specs:
        if s.name in _NYUD_STORAGE:
            dirs, exts, dec = _NYUD_STORAGE[s.name]
        else:
            exts, dec = _KIND_STORAGE[s.kind]
            dirs = (s.name,)
        fields[s.name] = Field(s, dirs, exts, dec)
    return fields


def read_nyud(root: str | Path, split: str = "train", modalities: Sequence[str] | None = None,
              label_mask: str | Path | None = None) -> DiskDataset:
    """NYUD_MT reader. ``label_mask`` defaults to ``gt_sets/<split>_mask.csv`` when that file exists."""
    root = _check_root(Path(root))
    split_file = root / "gt_sets" / f"{split}.txt"
    fields = _select(nyud_fields(root), modalities, root)
    auto_mask = root / "gt_sets" / f"{split}_mask.csv"
    mask = label_mask if label_mask is not None else (auto_mask if auto_mask.is_file() else None)
    return DiskDataset(root, read_ids(split_file), "images", ("jpg", "png"), fields, mask, split_file=split_file)


def read_pascal(root: str | Path, split: str = "train", modalities: Sequence[str] | None = None,
                label_mask: str | Path | None = None, semantic_classes: int = 21,
                part_classes: int = 7) -> DiskDataset:
    """PASCAL_MT reader (see module docstring); human parts must be PNG class-id maps."""
    root = _check_root(Path(root))
    split_file = root / "ImageSets" / "Context" / f"{split}.txt"
    fields = {
        "semantic": Field(ModalitySpec("semantic", "segmentation", semantic_classes),
                          ("semseg/VOC12", "semseg/pascal-context"), ("png",), decode_segmentation),
        "parts": Field(ModalitySpec("parts", "segmentation", part_classes), ("human_parts",), ("png", "mat"),
                       decode_segmentation),
        "normals": Field(ModalitySpec("normals", "normals", 3), ("normals_distill",), ("png",), decode_normals_png),
        "saliency": Field(ModalitySpec("saliency", "binary", 1), ("sal_distill",), ("png",), decode_binary),
        "edges": Field(ModalitySpec("edges", "binary", 1, metric="odsf"), ("edge",), ("png", "npy"), decode_binary),
    }
    fields = _select(fields, modalities, root)
    return DiskDataset(root, read_ids(split_file), "JPEGImages", ("jpg", "png"), fields, label_mask,
                       split_file=split_file)


def read_mtan(root: str | Path, split: str = "train", modalities: Sequence[str] | None = None,
              label_mask: str | Path | None = None, semantic_classes: int = 13) -> DiskDataset:
    """MTAN NYUv2 reader: ids are the integer file stems of ``<split>/image/*.npy``, sorted numerically."""
    root = _check_root(Path(root))
    base = root / split
    if not (base / "image").is_dir():
        raise DataError(f"missing folder {base / 'image'}")
    stems = [p.stem for p in (base / "image").glob("*.npy")]
    ids = sorted(stems, key=lambda s: (0, int(s)) if s.isdigit() else (1, s))
    fields = {
        "semantic": Field(ModalitySpec("semantic", "segmentation", semantic_classes), (f"{split}/label",),
                          ("npy",), decode_mtan_label),
        "depth": Field(ModalitySpec("depth", "depth", 1), (f"{split}/depth",), ("npy",), decode_depth),
        "normals": Field(ModalitySpec("normals", "normals", 3), (f"{split}/normal",), ("npy",), decode_normals),
    }
    fields = _select(fields, modalities, root)
    return DiskDataset(root, ids, f"{split}/image", ("npy",), fields, label_mask, image_decode=decode_mtan_image)
