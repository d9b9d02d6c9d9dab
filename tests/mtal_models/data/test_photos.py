"""CamVid (SegNet layout) and Penn-Fudan readers on tiny fixtures written in the public layouts; the
real datasets in ../shared/datasets are read when present (skipped otherwise)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtal_models.data.files import DataError
from mtal_models.data.photos import (
    CAMVID_CLASSES,
    fit_canvas,
    pennfudan_split,
    read_camvid,
    read_pennfudan,
)

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "datasets"


def png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def camvid(root: Path, splits: dict[str, int], size: tuple[int, int] = (12, 16), listed: bool = True) -> Path:
    """A SegNet-layout CamVid: per split n images, labels cycling through values 0..11."""
    h, w = size
    for split, n in splits.items():
        lines = []
        for i in range(n):
            name = f"0001TP_{i:06d}.png"
            png(root / split / name, np.full((h, w, 3), 10 * i, np.uint8))
            png(root / f"{split}annot" / name, (np.arange(h * w).reshape(h, w) + i) % 12)
            lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}")
        if listed:
            (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_camvid_reads_lists_strips_prefix_and_ignores_unlabelled(tmp_path: Path) -> None:
    ds = read_camvid(camvid(tmp_path, {"train": 3, "val": 2}), "train")
    assert len(ds) == 3 and ds.ids[0] == "0001TP_000000"
    spec = ds.modalities["semantic"]
    assert spec.kind == "segmentation" and spec.channels == 11
    s = ds[1]
    raw = (np.arange(12 * 16).reshape(12, 16) + 1) % 12
    expected = np.where(raw == 11, 255, raw)
    assert s.image.shape == (12, 16, 3) and s.is_present("semantic")
    np.testing.assert_array_equal(s.labels["semantic"], expected)


def test_camvid_two_tags_split_stuff_and_things(tmp_path: Path) -> None:
    ds = read_camvid(camvid(tmp_path, {"train": 1}), "train", "camvid-2tag")
    assert {n: s.channels for n, s in ds.modalities.items()} == {"stuff": 7, "things": 6}
    s = ds[0]
    raw = np.arange(12 * 16).reshape(12, 16) % 12
    stuff, things = s.labels["stuff"], s.labels["things"]
    assert (stuff[raw == 11] == 255).all() and (things[raw == 11] == 255).all()
    for value, name in enumerate(CAMVID_CLASSES):
        in_stuff = ds.classes["stuff"].index(name) if name in ds.classes["stuff"] else 0
        in_things = ds.classes["things"].index(name) if name in ds.classes["things"] else 0
        assert (stuff[raw == value] == in_stuff).all() and (things[raw == value] == in_things).all(), name
        assert (in_stuff == 0) != (in_things == 0), name  # every class is in exactly one tag


def test_camvid_without_lists_or_test_split(tmp_path: Path) -> None:
    root = camvid(tmp_path, {"train": 2, "val": 1}, listed=False)
    assert len(read_camvid(root, "val")) == 1
    with pytest.raises(DataError, match=r"split 'test'.*splits found: \['train', 'val'\]"):
        read_camvid(root, "test")


def test_camvid_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a directory"):
        read_camvid(tmp_path / "nothing")
    with pytest.raises(ValueError, match="unknown CamVid configuration"):
        read_camvid(tmp_path, config="camvid-3tag")
    root = camvid(tmp_path / "a", {"train": 2})
    png(root / "trainannot" / "0001TP_000001.png", np.zeros((6, 16)))
    with pytest.raises(DataError, match=r"label is 16x6, its image .* is 16x12"):
        read_camvid(root)[1]
    png(root / "trainannot" / "0001TP_000000.png", np.full((12, 16), 17))
    with pytest.raises(DataError, match=r"unknown label value\(s\) \[17\]"):
        read_camvid(root)[0]
    (root / "trainannot" / "0001TP_000000.png").unlink()
    with pytest.raises(DataError, match="missing file"):
        read_camvid(root)


def pennfudan(root: Path, n: int = 3, size: tuple[int, int] = (40, 30)) -> Path:
    """PennFudanPed/ with n images, person k of image i at a known box (1-based inclusive in the text)."""
    base = root / "PennFudanPed"
    w, h = size
    for i in range(n):
        sid = f"FudanPed{i + 1:05d}"
        png(base / "PNGImages" / f"{sid}.png", np.full((h, w, 3), 50, np.uint8))
        mask = np.zeros((h, w))
        mask[5:20, 2:10] = 1  # person 1: x 2..9, y 5..19
        mask[8:28, 20:35] = 2  # person 2
        png(base / "PedMasks" / f"{sid}_mask.png", mask)
        text = [f'Image size (X x Y x C) : {w} x {h} x 3',
                'Bounding box for object 1 "PASpersonWalking" (Xmin, Ymin) - (Xmax, Ymax) : (3, 6) - (10, 20)',
                'Bounding box for object 2 "PASpersonWalking" (Xmin, Ymin) - (Xmax, Ymax) : (21, 9) - (35, 28)']
        (base / "Annotation").mkdir(parents=True, exist_ok=True)
        (base / "Annotation" / f"{sid}.txt").write_text("\n".join(text) + "\n")
    return root


def test_pennfudan_boxes_mask_instances(tmp_path: Path) -> None:
    ds = read_pennfudan(pennfudan(tmp_path))  # the folder holding PennFudanPed/ works too
    assert len(ds) == 3 and ds.ids[0] == "FudanPed00001"
    assert {n: (s.kind, s.channels) for n, s in ds.modalities.items()} == {
        "boxes": ("detection", 1), "mask": ("segmentation", 2)}
    s = ds[0]
    np.testing.assert_array_equal(s.labels["boxes"]["boxes"], [[2, 5, 10, 20], [20, 8, 35, 28]])
    np.testing.assert_array_equal(s.labels["boxes"]["labels"], [0, 0])
    inst = ds.instances(0)
    assert set(np.unique(inst)) == {0, 1, 2}
    np.testing.assert_array_equal(s.labels["mask"], (inst > 0).astype(np.int64))
    ys, xs = np.nonzero(inst == 1)  # the box is the mask's pixel extent
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (2, 5, 10, 20)


def test_pennfudan_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing folder\(s\) \['PedMasks', 'Annotation'\]"):
        (tmp_path / "x" / "PNGImages").mkdir(parents=True)
        read_pennfudan(tmp_path / "x")
    root = pennfudan(tmp_path / "a") / "PennFudanPed"
    with pytest.raises(DataError, match="no image for id"):
        read_pennfudan(root, ["FudanPed00009"])
    png(root / "PedMasks" / "FudanPed00001_mask.png", np.zeros((10, 10)))
    with pytest.raises(DataError, match="mask is 10x10, its image is 40x30"):
        read_pennfudan(root)[0]
    mask = np.zeros((30, 40))
    mask[0, 0] = 3
    png(root / "PedMasks" / "FudanPed00002_mask.png", mask)
    with pytest.raises(DataError, match=r"instance value\(s\) \[3\] but .* has 2 box"):
        read_pennfudan(root)[1]


def test_pennfudan_split_is_fixed_by_seed() -> None:
    ids = [f"p{i}" for i in range(20)]
    pool, val = pennfudan_split(ids, 5, seed=0)
    assert len(pool) == 15 and len(val) == 5 and not set(pool) & set(val)
    assert (pool, val) == pennfudan_split(ids, 5, seed=0) and val != pennfudan_split(ids, 5, seed=1)[1]


def test_fit_canvas_keeps_aspect_and_pads_with_ignore(tmp_path: Path) -> None:
    ds = read_pennfudan(pennfudan(tmp_path))  # 40x30 images
    s = fit_canvas(ds[0], ds.modalities, 32, 32)  # scale 0.8 -> 32x24, padded to 32x32
    assert s.image.shape == (32, 32, 3) and (s.image[24:] == 0).all()
    assert (s.labels["mask"][24:] == 255).all() and set(np.unique(s.labels["mask"][:24])) == {0, 1}
    np.testing.assert_allclose(s.labels["boxes"]["boxes"][0], np.array([2, 5, 10, 20]) * 0.8)


@pytest.mark.skipif(not (SHARED / "camvid").is_dir(), reason="../shared/datasets/camvid absent")
def test_real_camvid() -> None:
    train, val = read_camvid(SHARED / "camvid", "train"), read_camvid(SHARED / "camvid", "val", "camvid-2tag")
    assert (len(train), len(val)) == (367, 101)
    s = train[0]
    assert s.image.shape == (360, 480, 3)
    assert set(np.unique(s.labels["semantic"]).tolist()) <= set(range(11)) | {255}
    assert set(val[0].labels) == {"stuff", "things"}


@pytest.mark.skipif(not (SHARED / "pennfudan").is_dir(), reason="../shared/datasets/pennfudan absent")
def test_real_pennfudan() -> None:
    ds = read_pennfudan(SHARED / "pennfudan")
    assert len(ds) == 170
    people = sum(len(ds[i].labels["boxes"]["boxes"]) for i in range(0, 170, 17))
    assert people >= 10
