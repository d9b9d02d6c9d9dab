"""What Label Studio gets as a prefill: duplicate boxes suppressed across classes, the version's display
threshold, speckle-free masks, on the paths the product runs (/predict and a trained version)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from backend.labelstudio.convert import rle_to_mask
from backend.labelstudio.label_config import parse_label_config
from backend.loop.train_round import train_version
from backend.serving.predict import predict_tasks
from backend.serving.prefill import Prefill, config_from
from backend.settings import Settings
from mtal_models.nets.base import Labels, MultiTaskOutput
from mtal_models.postprocess import PrefillConfig
from tests.backend.serving.test_predict import CONFIG, DictFetcher, FakeNet
from tests.support.scene_project import scene_model

# the task: one object under six boxes of both classes (0.39-0.45) + one clear box (0.8)
CLUTTER = [([4, 4, 20, 20], 0.45, 0), ([5, 4, 21, 20], 0.44, 1), ([4, 5, 20, 21], 0.42, 0),
           ([5, 5, 21, 21], 0.41, 1), ([4, 4, 19, 20], 0.40, 1), ([5, 5, 20, 20], 0.39, 0),
           ([40, 40, 60, 60], 0.80, 1)]


class ClutterNet(FakeNet):
    """FakeNet's masks with speckle (a 3x4 class-1 block in the background half) and CLUTTER boxes."""

    def forward(self, images: Tensor, given: Labels | None = None, committee: bool = False) -> MultiTaskOutput:
        out = super().forward(images, given, committee)
        for name, spec in self.modalities.items():
            if spec.kind == "segmentation":
                out.final[name][:, 1, 40:43, 50:54] = 40.0
            elif spec.kind == "detection":
                rows = torch.zeros(images.shape[0], len(CLUTTER), 6 + spec.channels)
                for k, (box, score, cls) in enumerate(CLUTTER):
                    rows[:, k, :6] = torch.tensor([*box, score, cls], dtype=torch.float32)
                out.final[name] = rows
        return out


def _predict(prefill: Prefill | None) -> dict[str, list[dict[str, Any]]]:
    schema = parse_label_config(CONFIG)
    images = {"/data/upload/a.png": np.full((64, 64, 3), 9, np.uint8)}  # not black: FakeNet finds it
    (pred,) = predict_tasks(ClutterNet(schema.modalities), schema, [{"id": 1, "data": {"image": "/data/upload/a.png"}}],
                            DictFetcher(images), model_version="v", image_size=64, prefill=prefill)
    by_tag: dict[str, list[dict[str, Any]]] = {}
    for r in pred["result"]:
        by_tag.setdefault(r["from_name"], []).append(r)
    return by_tag


def test_predict_sends_one_box_per_object_with_its_best_class() -> None:
    boxes = _predict(None)["boxes"]
    assert sorted((r["value"]["rectanglelabels"][0], round(r["score"], 2)) for r in boxes) == [
        ("Fußgänger", 0.8), ("car", 0.45)]


def test_per_class_option_and_version_threshold() -> None:
    per_class = _predict(Prefill(PrefillConfig(per_class=True)))["boxes"]
    assert len(per_class) == 3  # the object's best car and pedestrian boxes + the clear one
    strict = _predict(Prefill(thresholds={"boxes": 0.5}))["boxes"]
    assert [round(r["score"], 2) for r in strict] == [0.8]
    low = _predict(Prefill(thresholds={"boxes": 0.1}))["boxes"]  # below predictions_to_results' old 0.3 too
    assert len(low) == 2


def test_speckle_is_gone_from_brush_and_polygons() -> None:
    by_tag = _predict(Prefill(PrefillConfig(min_area=0.005)))  # 12 px < 0.005 * 64 * 64 = 20.5 px
    (brush,) = by_tag["seg"]
    mask = rle_to_mask(brush["value"]["rle"], 64, 64)
    assert not mask[:, 33:].any() and mask[:, :31].all()
    assert len(by_tag["poly"]) == 1  # the left half only
    kept = _predict(Prefill(PrefillConfig(min_area=0.0)))
    assert rle_to_mask(kept["seg"][0]["value"]["rle"], 64, 64)[40:43, 50:54].all()
    assert len(kept["poly"]) == 2


def test_version_metadata_and_settings_feed_the_prefill() -> None:
    settings = Settings(prefill_per_class=True, prefill_min_area=0.01)
    p = Prefill.for_version(settings, {"prefill_thresholds": {"boxes": 0.55}})
    assert p.config.per_class and p.config.min_area == 0.01
    assert p.threshold("boxes") == 0.55 and p.threshold("other") == 0.3
    assert Prefill.for_version(Settings(), {}).threshold("boxes") == 0.3
    assert config_from(Settings()) == PrefillConfig()
    assert Settings.from_env({}).keep_prediction_versions == 1  # only the current version's prefill stays
    env = Settings.from_env({"MTAL_PREFILL_PER_CLASS": "true", "MTAL_PREFILL_MIN_AREA": "0"})
    assert env.prefill_per_class and env.prefill_min_area == 0.0
    with pytest.raises(ValueError, match="MTAL_PREFILL_MIN_AREA"):
        Settings.from_env({"MTAL_PREFILL_MIN_AREA": "2"})


@pytest.mark.parametrize("with_val", [True, False])
def test_trained_version_stores_threshold_and_edit_cost(tmp_path: Any, with_val: bool) -> None:
    store, model, settings, samples = scene_model(tmp_path, boxes=True)
    val = samples[4:] if with_val else []
    version, metrics = train_version(store, "7", model.schema, settings, samples[:4], val)
    meta = store.metadata("7", version)
    if with_val:
        objects, semantic = metrics["val"]["objects"], metrics["val"]["semantic"]
        assert {"box_precision", "box_recall", "duplicates_per_object", "display_threshold"} <= set(objects)
        assert 0 <= semantic["mask_edit_share"] <= 1
        chosen = objects["display_threshold"]  # None (NaN) only when val holds neither boxes nor objects
        assert meta["prefill_thresholds"] == ({} if chosen is None else {"objects": chosen})
    else:
        assert meta["prefill_thresholds"] == {}
    assert Prefill.for_version(settings, meta).threshold("objects") == meta["prefill_thresholds"].get("objects", 0.3)


def test_polygon_tolerance_trades_vertices_for_fidelity() -> None:
    """A disc of radius 40 px as a PolygonLabels prefill: no simplification keeps a vertex per boundary
    step, 1 px (the default) far fewer at IoU >= 0.98, 6 px fewer still and visibly coarser."""
    from backend.labelstudio.regions import polygon_to_mask

    schema = parse_label_config(CONFIG)
    yy, xx = np.mgrid[:128, :128]
    disc = (yy - 64) ** 2 + (xx - 64) ** 2 <= 40**2
    probs = np.stack([~disc, disc]).astype(np.float32)

    def polygon(tolerance: float) -> tuple[int, float]:
        prefill = Prefill(PrefillConfig(min_area=0.0), polygon_tolerance=tolerance)
        (region,) = [r for r in prefill.results({"poly": probs}, schema, 128, 128) if r["from_name"] == "poly"]
        back = polygon_to_mask(region["value"]["points"], 128, 128)
        return len(region["value"]["points"]), float((back & disc).sum() / (back | disc).sum())

    (n0, iou0), (n1, iou1), (n6, iou6) = polygon(0.0), polygon(1.0), polygon(6.0)
    assert n0 > 2 * n1 > 2 * n6 >= 6
    assert iou0 >= iou1 >= 0.98 and iou6 < iou1
    assert Prefill.for_version(Settings(prefill_polygon_tolerance=6.0), {}).polygon_tolerance == 6.0
    assert Settings.from_env({"MTAL_PREFILL_POLYGON_TOLERANCE": "2.5"}).prefill_polygon_tolerance == 2.5
    with pytest.raises(ValueError, match="MTAL_PREFILL_POLYGON_TOLERANCE"):
        Settings.from_env({"MTAL_PREFILL_POLYGON_TOLERANCE": "-1"})
