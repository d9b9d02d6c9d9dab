"""The simulator on photograph datasets: tiny CamVid / Penn-Fudan fixtures in the public layouts, the
tiny net, one round, through the CLI's --dataset / --data-dir; the presets' documented settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtal_models.simulate import PRESETS, simulate
from mtal_models.simulate.cli import main
from mtal_models.simulate.config import SimConfig
from tests.mtal_models.data.test_photos import camvid, pennfudan

SMALL = dict(initial=2, rounds=1, budget=2, seeds=(0,), net="tiny", steps_per_round=2, full_steps=2,
             retrain=True, batch_size=2, mc_samples=2, threads=1, device="cpu")


def test_camvid_two_tags_with_pairs(tmp_path: Path) -> None:
    root = camvid(tmp_path / "camvid", {"train": 6, "val": 2}, size=(48, 64))
    config = PRESETS["camvid-2tag"].replace(path=str(root), image_size=32, image_width=64, val_images=2,
                                            strategies=("random", "partal"), **SMALL)
    result = simulate(config, tmp_path / "out", progress=False)
    rows = [r for r in result.rows if r["round"] == 1]
    assert {r["strategy"] for r in rows} == {"random", "partal"}
    assert all(r["labels"] == 2 * 2 + 2 for r in rows)  # 2 images x 2 tags, then 2 (image, tag) labels


def test_pennfudan_boxmask_through_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = pennfudan(tmp_path / "pf", n=6, size=(64, 48))
    small = tmp_path / "small.json"  # the pennfudan preset, shrunk
    small.write_text(json.dumps({"preset": "pennfudan", "image_size": 64, "image_width": 64, "n_images": 0,
                                 "val_images": 2, "initial": 2, "full_steps": 2, "batch_size": 2, "mc_samples": 2}))
    args = ["simulate", "--config", str(small), "--data-dir", str(root), "--out", str(tmp_path / "out"),
            "--strategies", "random,boxmask", "--seeds", "0", "--rounds", "1", "--budget", "2", "--net", "tiny",
            "--steps-per-round", "2", "--threads", "1", "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| random |" in out and "| boxmask |" in out


def test_photo_dataset_needs_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs its folder: --data-dir"):
        simulate(PRESETS["camvid"].replace(**SMALL), tmp_path, progress=False)
    with pytest.raises(ValueError, match="image_width must be 0, or >= 16 with a photograph dataset"):
        SimConfig(image_width=64)


def test_presets_are_the_documented_ones() -> None:
    for name, strategies in (("camvid", "random"), ("camvid-2tag", "partal"), ("pennfudan", "boxmask")):
        p = PRESETS[name]
        assert p.dataset == name and len(p.strategies) >= 4 and strategies in p.strategies
        assert len(p.seeds) == 3 and p.retrain and p.steps_per_round == p.full_steps
    assert (PRESETS["camvid"].image_size, PRESETS["camvid"].image_width) == (96, 128)  # 360 x 480 / 3.75
    assert (PRESETS["pennfudan"].n_images, PRESETS["pennfudan"].val_images) == (120, 50)
