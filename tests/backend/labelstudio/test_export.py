"""The Label Studio export reader (backend.labelstudio.export) and ``mtal simulate --dataset ls-export``: exports
written by the project's own writers read back to the exact labels; clear errors for broken exports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.cli import main as mtal_main
from backend.labelstudio.export import ExportError, read_ls_export
from backend.labelstudio.synthetic_export import write_example_export
from mtal_models.data import SceneConfig, SyntheticDataset
from mtal_models.simulate.cli import main as core_main
from mtal_models.simulate.config import DATASET_READERS
from tests.support.scene_project import SceneProject, annotation_result, scene_label_config

SIZE = 32


def _truth(n: int, seed: int = 0) -> SyntheticDataset:
    return SyntheticDataset(n, SceneConfig(height=SIZE, width=SIZE), seed=seed)


def test_example_export_reads_back_every_modality_exactly(tmp_path: Path) -> None:
    tasks = write_example_export(tmp_path, n=12, size=SIZE, labelled=0.8, partial=0.5, seed=0)
    export = read_ls_export(tmp_path)
    assert list(export.schema.modalities) == ["semantic", "parts", "objects", "depth", "normals"]
    truth = _truth(12)
    assert [s.id for s in export.samples] == [str(t["id"]) for t in tasks]  # dense maps: every task has labels
    ticked = {str(t["id"]): next(r["value"]["choices"] for r in t["annotations"][0]["result"]
                                 if r["type"] == "choices") for t in tasks if t.get("annotations")}
    assert any(len(c) < 3 for c in ticked.values()) and any(len(c) == 3 for c in ticked.values())
    assert len(ticked) < 12  # some tasks were never annotated
    for s in export.samples:
        gt = truth[int(s.id) - 1]
        assert {m for m in ("semantic", "parts", "objects") if s.is_present(m)} == set(ticked.get(s.id, []))
        if s.is_present("semantic"):  # the brush config's classes: background first, so floor = 1
            np.testing.assert_array_equal(s.labels["semantic"], gt.labels["semantic"] + 1)
        if s.is_present("parts"):
            np.testing.assert_array_equal(s.labels["parts"], gt.labels["parts"])
        if s.is_present("objects"):
            np.testing.assert_allclose(s.labels["objects"]["boxes"], gt.labels["objects"]["boxes"], atol=1e-3)
            np.testing.assert_array_equal(s.labels["objects"]["labels"], gt.labels["objects"]["labels"])
        np.testing.assert_allclose(s.labels["depth"], gt.labels["depth"], atol=1e-6)
        np.testing.assert_allclose(s.labels["normals"], gt.labels["normals"], atol=1e-6)


def _scene_export(root: Path, results: list[list[dict]], xml: str) -> list[dict]:
    """An export as LS writes it for uploaded files: /data/upload/<project>/<hash>-<name> URLs."""
    truth = _truth(len(results))
    (root / "images").mkdir(parents=True)
    tasks = []
    for k, result in enumerate(results):
        Image.fromarray(truth[k].image).save(root / "images" / f"a1b2-{k}.png")
        anns = [{"id": k, "result": result, "was_cancelled": False}] if result else []
        tasks.append({"id": 100 + k, "data": {"image": f"/data/upload/7/a1b2-{k}.png"}, "annotations": anns})
    (root / "label_config.xml").write_text(xml)
    (root / "project-7-at-2026.json").write_text(json.dumps(tasks))
    return tasks


def _scene_results(modalities: list[list[str]]) -> tuple[list[list[dict]], str]:
    config = SceneConfig(height=SIZE, width=SIZE)
    xml = scene_label_config(config, boxes=True)
    truth = _truth(len(modalities))
    project = SceneProject(7, [], [truth[i] for i in range(len(modalities))], xml, config)
    return [annotation_result(project, project.samples[i], m) if m else [] for i, m in enumerate(modalities)], xml


def test_scene_project_annotations_read_as_the_backend_reads_them(tmp_path: Path) -> None:
    results, xml = _scene_results([["semantic", "objects"], ["parts"], []])
    # the latest annotation counts; a cancelled one is ignored (backend.labelstudio.tasks.latest_annotation)
    tasks = _scene_export(tmp_path, results, xml)
    tasks[1]["annotations"] = [
        {"id": 1, "result": results[0], "was_cancelled": True, "updated_at": "2026-01-03"},
        {"id": 2, "result": results[1], "updated_at": "2026-01-02"},
        {"id": 3, "result": [], "updated_at": "2026-01-01"},
    ]
    (tmp_path / "project-7-at-2026.json").write_text(json.dumps(tasks))
    export = read_ls_export(tmp_path)
    assert [s.id for s in export.samples] == ["100", "101"]  # task 102 has no annotation
    first, second = export.samples
    truth = _truth(2)
    assert first.present == {"semantic": True, "parts": False, "objects": True}
    np.testing.assert_array_equal(first.labels["semantic"], truth[0].labels["semantic"] + 1)
    assert np.all(first.labels["parts"] == 255)  # absent: the ignore value everywhere
    assert second.present == {"semantic": False, "parts": True, "objects": False}
    np.testing.assert_array_equal(second.labels["parts"], truth[1].labels["parts"])


def _break(tmp_path: Path, change: str) -> None:
    results, xml = _scene_results([["semantic", "objects"], ["semantic"]])
    if change == "size":
        results[1][0]["original_width"] = SIZE * 2
    elif change == "label":
        next(r for r in results[1] if r["type"] == "brushlabels")["value"]["brushlabels"] = ["unicorn"]
    _scene_export(tmp_path, results, xml)
    if change == "image":
        (tmp_path / "images" / "a1b2-1.png").unlink()
    elif change == "config":
        (tmp_path / "label_config.xml").unlink()
    elif change == "two-exports":
        (tmp_path / "other.json").write_text("[]")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("size", r"task 101: region 0 of 'semantic' was drawn on a 64x32 image, but the image file is 32x32"),
        ("label", r"task 101: region \d+ of 'semantic' has label 'unicorn', which is not in the labeling config"),
        ("image", r"/data/upload/7/a1b2-1.png: no such file in .* \(looked for 7/a1b2-1.png, images/7/a1b2-1.png, "
                  r"a1b2-1.png, images/a1b2-1.png\)"),
        ("config", r"missing label_config.xml"),
        ("two-exports", r"exactly one Label Studio JSON export \(\*.json\), found \['other.json', 'project-7"),
    ],
)
def test_broken_exports_raise_clear_errors(tmp_path: Path, change: str, message: str) -> None:
    _break(tmp_path, change)
    with pytest.raises(ExportError, match=message):
        read_ls_export(tmp_path)


def test_missing_folder_and_wrong_size_dense_map(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="does not exist"):
        read_ls_export(tmp_path / "nope")
    write_example_export(tmp_path, n=3, size=SIZE, labelled=1.0, partial=0.0)
    np.save(tmp_path / "data" / "depth" / "000001.npy", np.zeros((SIZE, SIZE + 1), np.float32))
    with pytest.raises(ExportError, match=r"task 2: 'depth' map .*000001.npy is 33x32, the image is 32x32"):
        read_ls_export(tmp_path)


def test_mtal_simulate_runs_on_an_export_and_the_core_cli_names_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_example_export(tmp_path / "export", n=16, size=SIZE, labelled=0.9, partial=0.5, seed=1)
    args = ["simulate", "--config", "ls-export", "--data-dir", str(tmp_path / "export"), "--out", str(tmp_path / "sim"),
            "--val-images", "4", "--initial", "3", "--budget", "4", "--rounds", "1", "--seeds", "0",
            "--strategies", "random,partal", "--image-size", "32", "--steps-per-round", "3", "--net", "tiny",
            "--modalities", "semantic,parts,depth", "--threads", "1", "--no-progress"]
    assert mtal_main(args) == 0
    rows = json.loads((tmp_path / "sim" / "metrics.json").read_text())["rows"]
    assert {(r["strategy"], r["round"]) for r in rows} == {(s, r) for s in ("random", "partal") for r in (0, 1)}
    assert all(set(r) >= {"semantic_miou", "parts_miou", "depth_rmse"} for r in rows)
    capsys.readouterr()
    monkeypatch.delitem(DATASET_READERS, "ls-export")  # a process that only ran the core CLI
    assert core_main(args) == 2  # the core alone has no Label Studio reader, and says where it is
    assert "available through the `mtal simulate` command" in capsys.readouterr().err


def test_the_mtal_console_script_is_the_composed_cli() -> None:
    import importlib
    import tomllib

    target = tomllib.loads((Path(__file__).parents[3] / "pyproject.toml").read_text())["project"]["scripts"]["mtal"]
    module, func = target.split(":")
    assert getattr(importlib.import_module(module), func) is mtal_main
