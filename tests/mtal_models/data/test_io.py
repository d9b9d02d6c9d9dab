"""Readers on tiny fixtures written here in each layout; writer round trip; errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtal_models.data import (
    DataError,
    SceneConfig,
    SyntheticDataset,
    read_mtan,
    read_nyud,
    read_pascal,
    write_label_mask,
    write_nyud,
    write_tasks,
)
from mtal_models.data.__main__ import main
from mtal_models.data.sample import Sample

RNG = np.random.default_rng(0)
H, W = 12, 16


def _img() -> np.ndarray:
    return RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)


def _png(path: Path, a: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(a)
    if palette:
        im = im.convert("P")
        im.putpalette([v for i in range(256) for v in ((i * 7) % 256, (i * 13) % 256, (i * 29) % 256)])
        im.putdata(a.ravel().tolist())
    im.save(path)


def _npy(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, a)


def _same(a: Sample, b: Sample) -> None:
    assert a.id == b.id and a.image.tobytes() == b.image.tobytes()
    assert a.present == b.present
    for k in a.labels:
        if isinstance(a.labels[k], dict):
            for f in ("boxes", "labels"):
                assert a.labels[k][f].dtype == b.labels[k][f].dtype
                assert a.labels[k][f].tobytes() == b.labels[k][f].tobytes()
        else:
            np.testing.assert_array_equal(a.labels[k], b.labels[k])
            assert a.labels[k].dtype == b.labels[k].dtype, k


# ---- NYUD_MT -------------------------------------------------------------------------------------
def test_synthetic_nyud_write_then_read_gives_identical_samples(tmp_path):
    ds = SyntheticDataset(3, SceneConfig(height=32, width=32), seed=4)
    samples = [ds[i] for i in range(3)]
    partial = Sample(samples[2].id, samples[2].image, dict(samples[2].labels),
                     {k: k in ("depth", "objects") for k in ds.modalities})
    samples[2] = partial
    write_nyud(samples, tmp_path, ds.modalities)
    back = read_nyud(tmp_path)
    assert back.modalities == ds.modalities and len(back) == 3
    for i in range(2):
        _same(samples[i], back[i])
    b2 = back[2]
    assert b2.present == partial.present and set(b2.labels) == {"depth", "objects"}
    np.testing.assert_array_equal(b2.labels["depth"], partial.labels["depth"])
    assert not (tmp_path / "segmentation" / f"{partial.id}.png").exists()  # absent labels are not written


def _nyud_fixture(root: Path, ids=("a1", "b2")) -> dict:
    truth = {}
    for i in ids:
        img, seg = _img(), RNG.integers(0, 41, (H, W)).astype(np.uint8)
        depth = RNG.uniform(0.5, 5, (H, W)).astype(np.float32)
        n = RNG.normal(size=(H, W, 3)).astype(np.float32)
        n /= np.linalg.norm(n, axis=-1, keepdims=True)
        edge = (RNG.random((H, W)) > 0.8).astype(np.float32)
        _png(root / "images" / f"{i}.png", img)
        _png(root / "segmentation" / f"{i}.png", seg)
        _npy(root / "depth" / f"{i}.npy", depth)
        _npy(root / "normals" / f"{i}.npy", n)
        _npy(root / "edge" / f"{i}.npy", edge)
        truth[i] = (img, seg, depth, n, edge)
    (root / "gt_sets").mkdir(parents=True, exist_ok=True)
    (root / "gt_sets" / "train.txt").write_text("\n".join(ids) + "\n")
    return truth


def test_nyud_reader_on_original_layout(tmp_path):
    truth = _nyud_fixture(tmp_path)
    ds = read_nyud(tmp_path, "train")
    assert list(ds.modalities) == ["semantic", "depth", "normals", "edges"]
    assert ds.modalities["semantic"].channels == 40
    for k, (img, seg, depth, n, edge) in enumerate(truth.values()):
        s = ds[k]
        np.testing.assert_array_equal(s.image, img)
        np.testing.assert_array_equal(s.labels["semantic"], np.where(seg == 0, 255, seg.astype(np.int64) - 1))
        np.testing.assert_array_equal(s.labels["depth"], depth)
        np.testing.assert_array_equal(s.labels["normals"], n)
        np.testing.assert_array_equal(s.labels["edges"], edge.astype(np.uint8))


def test_partial_label_mask_is_honoured(tmp_path):
    _nyud_fixture(tmp_path)
    mask = tmp_path / "mask.csv"
    write_label_mask(mask, ["a1", "b2"], ["semantic", "depth"], np.array([[1, 0], [0, 1]], bool))
    (tmp_path / "depth" / "a1.npy").write_bytes(b"garbage")  # absent label: never read
    ds = read_nyud(tmp_path, label_mask=mask)
    s0, s1 = ds[0], ds[1]
    assert s0.present == {"semantic": True, "depth": False, "normals": True, "edges": True}
    assert "depth" not in s0.labels and "semantic" not in s1.labels
    mask.write_text("id semantic\na1 1\n")  # whitespace format, b2 has no row
    with pytest.raises(DataError, match=r"no row for 1 id\(s\): \['b2'\]"):
        read_nyud(tmp_path, label_mask=mask)
    mask.write_text("id,colour\na1,1\nb2,0\n")
    with pytest.raises(DataError, match="unknown modality column"):
        read_nyud(tmp_path, label_mask=mask)


def test_missing_and_corrupt_files_are_named(tmp_path):
    _nyud_fixture(tmp_path)
    (tmp_path / "depth" / "b2.npy").unlink()
    ds = read_nyud(tmp_path)
    with pytest.raises(DataError, match=r"missing file .*depth/b2\.npy"):
        ds[1]
    (tmp_path / "normals" / "a1.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match=r"corrupt array file .*normals/a1\.npy"):
        ds[0]
    (tmp_path / "images" / "a1.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"images/a1\.png"):
        ds[0]


def test_split_listing_missing_ids_is_reported(tmp_path):
    _nyud_fixture(tmp_path)
    (tmp_path / "gt_sets" / "val.txt").write_text("a1\nzz9\nyy8\n")
    with pytest.raises(DataError, match=r"val\.txt lists 2 id\(s\) with no image.*\['zz9', 'yy8'\]"):
        read_nyud(tmp_path, "val")
    with pytest.raises(DataError, match=r"missing split file .*test\.txt"):
        read_nyud(tmp_path, "test")


def test_label_size_mismatch_is_named(tmp_path):
    _nyud_fixture(tmp_path)
    _npy(tmp_path / "depth" / "a1.npy", np.ones((5, 5), np.float32))
    with pytest.raises(DataError, match=r"depth/a1\.npy: depth label is 5x5, image is 12x16"):
        read_nyud(tmp_path)[0]


# ---- PASCAL_MT -----------------------------------------------------------------------------------
def test_pascal_reader(tmp_path):
    img, sem = _img(), RNG.integers(0, 21, (H, W)).astype(np.uint8)
    sem[0, :4] = 255
    parts = RNG.integers(0, 7, (H, W)).astype(np.uint8)
    nrm = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
    sal = np.where(RNG.random((H, W)) > 0.5, 255, 0).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "x.jpg")  # jpg images are lossy: compare with what PIL decodes
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "x.jpg").rename(tmp_path / "JPEGImages" / "2008_000001.jpg")
    _png(tmp_path / "semseg" / "pascal-context" / "2008_000001.png", sem, palette=True)
    _png(tmp_path / "human_parts" / "2008_000001.png", parts)
    _png(tmp_path / "normals_distill" / "2008_000001.png", nrm)
    _png(tmp_path / "sal_distill" / "2008_000001.png", sal)
    (tmp_path / "ImageSets" / "Context").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Context" / "train.txt").write_text("2008_000001\n")
    ds = read_pascal(tmp_path)
    assert list(ds.modalities) == ["semantic", "parts", "normals", "saliency"]
    s = ds[0]
    np.testing.assert_array_equal(s.image, np.asarray(Image.open(tmp_path / "JPEGImages" / "2008_000001.jpg")))
    np.testing.assert_array_equal(s.labels["semantic"], sem)  # palette indices, not colours
    np.testing.assert_array_equal(s.labels["parts"], parts)
    np.testing.assert_array_equal(s.labels["saliency"], (sal > 127).astype(np.uint8))
    n = 2 * nrm.astype(np.float64) / 255.0 - 1
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)
    np.testing.assert_allclose(s.labels["normals"], n, atol=1e-5)
    (tmp_path / "human_parts" / "2008_000001.png").unlink()
    (tmp_path / "human_parts" / "2008_000001.mat").write_bytes(b"MATLAB")
    with pytest.raises(DataError, match=r"2008_000001\.mat: MATLAB part annotations are not supported"):
        read_pascal(tmp_path)[0]
    with pytest.raises(ValueError, match="not available in this layout"):
        read_pascal(tmp_path, modalities=["depth"])


# ---- MTAN ----------------------------------------------------------------------------------------
def test_mtan_reader(tmp_path):
    for i in (0, 1, 10):
        img = RNG.random((H, W, 3)).astype(np.float32)
        lab = RNG.integers(-1, 13, (H, W)).astype(np.float32)
        _npy(tmp_path / "train" / "image" / f"{i}.npy", img)
        _npy(tmp_path / "train" / "label" / f"{i}.npy", lab)
        _npy(tmp_path / "train" / "depth" / f"{i}.npy", RNG.uniform(0, 5, (H, W, 1)).astype(np.float32))
        _npy(tmp_path / "train" / "normal" / f"{i}.npy", RNG.normal(size=(H, W, 3)).astype(np.float32))
    ds = read_mtan(tmp_path)
    assert ds.ids == ["0", "1", "10"]
    s = ds[2]
    img = np.load(tmp_path / "train" / "image" / "10.npy")
    np.testing.assert_array_equal(s.image, (img * 255 + 0.5).astype(np.uint8))
    lab = np.load(tmp_path / "train" / "label" / "10.npy")
    np.testing.assert_array_equal(s.labels["semantic"], np.where(lab < 0, 255, lab).astype(np.int64))
    assert s.labels["depth"].shape == (H, W) and s.labels["normals"].shape == (H, W, 3)


# ---- Label Studio tasks and CLI ------------------------------------------------------------------
def test_write_tasks_schema(tmp_path):
    ds = SyntheticDataset(2, SceneConfig(height=16, width=16), seed=0)
    write_nyud([ds[0], ds[1]], tmp_path, ds.modalities)
    tasks = write_tasks(tmp_path, url_prefix="http://host/data/")
    assert json.loads((tmp_path / "tasks.json").read_text()) == tasks
    assert tasks[0] == {"data": {"image": "http://host/data/images/000000.png",
                                 "depth": "http://host/data/depth/000000.npy",
                                 "normals": "http://host/data/normals/000000.npy", "sample_id": "000000"}}
    for t in tasks:
        for key in ("image", "depth", "normals"):
            assert (tmp_path / t["data"][key].removeprefix("http://host/data/")).is_file()


def test_cli_synth_tasks_and_grid(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["synth-tasks", str(out), "--n", "3", "--size", "24", "--url-prefix", "/data/local-files/?d=s/"]) == 0
    tasks = json.loads((out / "tasks.json").read_text())
    assert len(tasks) == 3 and tasks[1]["data"]["image"] == "/data/local-files/?d=s/images/000001.png"
    assert len(read_nyud(out)) == 3
    grid = tmp_path / "grid.png"
    assert main(["grid", str(grid), "--from", str(out), "--n", "2", "--cell", "32"]) == 0
    g = np.asarray(Image.open(grid))
    assert g.shape == (14 + 2 * 32, 32 * 7, 3)  # header + 2 rows; image + 6 dense modalities
    assert main(["grid", str(tmp_path / "g2.png"), "--n", "2", "--size", "24", "--cell", "24"]) == 0
    assert "wrote a grid of 2 samples" in capsys.readouterr().out
