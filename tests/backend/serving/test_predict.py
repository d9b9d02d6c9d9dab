"""Batched /predict pipeline with a fake network whose outputs are known by construction."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from backend.labelstudio.convert import polygon_to_mask, rle_to_mask
from backend.labelstudio.label_config import parse_label_config
from backend.labelstudio.tasks import _as_rgb, latest_annotation
from backend.serving.predict import predict_tasks, task_scores
from mtal_models.modalities import ModalitySpec
from mtal_models.nets.base import Labels, MultiTaskNet, MultiTaskOutput

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="seg" toName="image"><Label value="Straße"/><Label value="猫"/></BrushLabels>
  <RectangleLabels name="boxes" toName="image"><Label value="car"/><Label value="Fußgänger"/></RectangleLabels>
  <PolygonLabels name="poly" toName="image"><Label value="road"/></PolygonLabels>
  <Choices name="mtal_labelled" toName="image" choice="multiple">
    <Choice value="seg"/><Choice value="boxes"/><Choice value="poly"/>
  </Choices>
</View>"""


class FakeNet(MultiTaskNet):
    """Segmentation: class 1 on the left half of each image, background elsewhere (confident);
    detection: one box over the image's top-left quarter, class 1, score 0.9. The image's extent inside
    the padded batch is where any channel is non-zero (the test images have none black). Records
    every forward's batch size and ``given``."""

    def __init__(self, modalities: Mapping[str, ModalitySpec]) -> None:
        super().__init__(modalities)
        self.calls: list[tuple[int, Labels | None]] = []

    def forward(self, images: Tensor, given: Labels | None = None, committee: bool = False) -> MultiTaskOutput:
        b, _, h, w = images.shape
        self.calls.append((b, given))
        valid = images.amax(1) > 0  # [B, H, W]
        extent = [(int(v.any(1).sum()), int(v.any(0).sum())) for v in valid]
        final: dict[str, Tensor] = {}
        for name, spec in self.modalities.items():
            if spec.kind == "segmentation":
                logits = torch.zeros(b, spec.channels, h, w)
                logits[:, 0] = 20.0
                for i, (_, wi) in enumerate(extent):
                    logits[i, 1, :, : wi // 2] = 20.0
                    logits[i, 0, :, : wi // 2] = 0.0
                final[name] = logits
            elif spec.kind == "detection":
                rows = torch.zeros(b, 3, 6 + spec.channels)
                rows[:, :, 5] = -1  # padding
                for i, (hi, wi) in enumerate(extent):
                    rows[i, 0, :6] = torch.tensor([0.0, 0.0, wi / 2, hi / 2, 0.9, 1.0])
                rows[:, 0, 6 + 1] = 1.0
                final[name] = rows
        return MultiTaskOutput(final=final)

    def losses(self, out: MultiTaskOutput, labels: Labels, weights: Any = None) -> dict[str, Tensor]:
        raise NotImplementedError

    def mc_samples(self, images: Tensor, n: int, given: Labels | None = None) -> dict[str, Tensor]:
        raise NotImplementedError


class DictFetcher:
    """url -> image array; unknown URLs raise like an unreachable host."""

    def __init__(self, images: dict[str, np.ndarray]) -> None:
        self.images = images

    def fetch_image(self, url: str, task_id: Any = None) -> np.ndarray:
        if url not in self.images:
            raise ValueError(f"{url}: 404")
        return self.images[url]

    def fetch_array(self, url: str, task_id: Any = None) -> np.ndarray:
        raise ValueError("no arrays here")


@pytest.fixture
def schema() -> Any:
    return parse_label_config(CONFIG)


def _images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {  # no black pixel (FakeNet finds each image inside the padded batch by that)
        "/data/upload/odd.png": rng.integers(1, 255, (333, 517, 3), dtype=np.uint8),
        "/data/upload/gray.png": rng.integers(1, 255, (40, 60), dtype=np.uint8),
        "/data/upload/rgba.png": rng.integers(1, 255, (50, 30, 4), dtype=np.uint8),
    }


def test_one_batched_forward_and_known_results(schema: Any) -> None:
    net = FakeNet(schema.modalities)
    tasks = [{"id": i, "data": {"image": url}} for i, url in enumerate(_images())]
    preds = predict_tasks(net, schema, tasks, DictFetcher(_images()), model_version="v1", image_size=64)
    assert [c[0] for c in net.calls] == [3]  # one forward over the whole request
    assert len(preds) == 3
    sizes = [(333, 517), (40, 60), (50, 30)]
    for pred, (h, w) in zip(preds, sizes, strict=True):
        assert pred["model_version"] == "v1"
        assert 0.99 <= pred["score"] <= 1.0  # confident fake -> entropy ~0 -> score ~1 (label last)
        by_tag = {}
        for r in pred["result"]:
            by_tag.setdefault(r["from_name"], []).append(r)
        (brush,) = by_tag["seg"]
        assert brush["value"]["brushlabels"] == ["Straße"]
        assert (brush["original_height"], brush["original_width"]) == (h, w)
        mask = rle_to_mask(brush["value"]["rle"], h, w) > 0
        tol = math.ceil(min(h, w) / 64) + 1  # one network pixel (shorter side 64), rounding of the half
        assert mask[:, : w // 2 - tol].all() and not mask[:, w // 2 + tol :].any()
        (poly,) = by_tag["poly"]  # PolygonLabels tag: a polygon of the left half, not a brush
        assert poly["type"] == "polygonlabels" and poly["value"]["polygonlabels"] == ["road"]
        filled = polygon_to_mask(poly["value"]["points"], h, w)
        assert filled[:, : w // 2 - tol].all() and not filled[:, w // 2 + tol :].any()
        (rect,) = by_tag["boxes"]
        assert rect["value"]["rectanglelabels"] == ["Fußgänger"]
        for key in ("x", "y", "width", "height"):
            assert rect["value"][key] == pytest.approx({"x": 0, "y": 0}.get(key, 50.0), abs=1e-3)
        (choices,) = by_tag["mtal_labelled"]
        assert choices["value"]["choices"] == ["seg", "boxes", "poly"]


def test_broken_image_gets_empty_prediction_others_go_on(schema: Any, caplog: pytest.LogCaptureFixture) -> None:
    net = FakeNet(schema.modalities)
    urls = ["/data/upload/odd.png", "/data/upload/missing.png", "/data/upload/gray.png"]
    tasks = [{"id": i, "data": {"image": u}} for i, u in enumerate(urls)]
    tasks.append({"id": 9, "data": {"other": 1}})  # no image key
    preds = predict_tasks(net, schema, tasks, DictFetcher(_images()), model_version="v1", image_size=64)
    assert [bool(p["result"]) for p in preds] == [True, False, True, False]
    assert preds[1] == {"result": [], "model_version": "v1"}
    assert net.calls[0][0] == 2
    assert "missing.png" in caplog.text and "task 9" in caplog.text


def test_gt_substitution_for_partial_annotation(schema: Any) -> None:
    net = FakeNet(schema.modalities)
    box = {"x": 10, "y": 10, "width": 20, "height": 20, "rectanglelabels": ["car"]}
    old = {"id": 1, "updated_at": "2024-01-01", "result": []}
    new = {
        "id": 2,
        "updated_at": "2024-02-01",
        "result": [
            {"from_name": "boxes", "to_name": "image", "type": "rectanglelabels", "value": box},
            {"from_name": "mtal_labelled", "to_name": "image", "type": "choices", "value": {"choices": ["boxes"]}},
        ],
    }
    cancelled = {"id": 3, "updated_at": "2025-01-01", "was_cancelled": True, "result": []}
    tasks = [
        {"id": 1, "data": {"image": "/data/upload/odd.png"}, "annotations": [old, new, cancelled]},
        {"id": 2, "data": {"image": "/data/upload/gray.png"}},
    ]
    preds = predict_tasks(net, schema, tasks, DictFetcher(_images()), model_version="v1", image_size=64)
    given = net.calls[0][1]
    assert given is not None
    # the batch is ordered by input shape: gray.png (64x96) before odd.png (64x99, padded 64x128)
    assert given.present["boxes"].tolist() == [False, True]
    assert not given.present["seg"].any()
    gt = given.values["boxes"][1]["boxes"]  # 20% of 99 x 64 px (333x517, shorter side 64) at (10%, 10%)
    assert torch.allclose(gt, torch.tensor([[9.9, 6.4, 29.7, 19.2]]), atol=1e-3)
    tags0 = {r["from_name"] for r in preds[0]["result"]}
    assert "boxes" not in tags0 and "seg" in tags0  # labelled modality not predicted again
    choices0 = next(r for r in preds[0]["result"] if r["from_name"] == "mtal_labelled")
    assert choices0["value"]["choices"] == ["seg", "poly"]
    assert "boxes" in {r["from_name"] for r in preds[1]["result"]}


def test_stored_ranking_wins_only_for_current_version(schema: Any) -> None:
    tasks = [{"id": 7, "data": {"image": "/data/upload/odd.png"}}]
    ranking = {"model_version": "v2", "tasks": {"7": {"score": 0.125, "requested": ["poly"]}}}
    fetch = DictFetcher(_images())
    p = predict_tasks(FakeNet(schema.modalities), schema, tasks, fetch, model_version="v2", ranking=ranking)[0]
    assert p["score"] == 0.125
    assert next(r for r in p["result"] if r["from_name"] == "mtal_labelled")["value"]["choices"] == ["poly"]
    stale = predict_tasks(FakeNet(schema.modalities), schema, tasks, fetch, model_version="v3", ranking=ranking)[0]
    assert stale["score"] > 0.99


def test_chunking_keeps_order(schema: Any) -> None:
    net = FakeNet(schema.modalities)
    images = {f"/u/{i}.png": np.full((20 + i, 30, 3), i + 1, np.uint8) for i in range(5)}
    tasks = [{"id": i, "data": {"image": f"/u/{i}.png"}} for i in range(5)]
    preds = predict_tasks(net, schema, tasks, DictFetcher(images), model_version="v", image_size=32, batch_size=2)
    assert [c[0] for c in net.calls] == [2, 2, 1]
    assert [p["result"][0]["original_height"] for p in preds] == [20, 21, 22, 23, 24]


def test_portrait_and_landscape_are_batched_apart(schema: Any) -> None:
    """Inputs of one shape go through a forward together (a portrait among landscapes would pad them)."""
    shapes = []

    class ShapeNet(FakeNet):
        def forward(self, images: Tensor, given: Labels | None = None, committee: bool = False) -> MultiTaskOutput:
            shapes.append(tuple(images.shape))
            return super().forward(images, given, committee)

    images = {f"/u/{i}.png": np.full((40, 60, 3) if i % 2 else (60, 40, 3), 9, np.uint8) for i in range(4)}
    tasks = [{"id": i, "data": {"image": f"/u/{i}.png"}} for i in range(4)]
    preds = predict_tasks(ShapeNet(schema.modalities), schema, tasks, DictFetcher(images), model_version="v",
                          image_size=32, batch_size=2)
    assert sorted(shapes) == [(2, 3, 32, 64), (2, 3, 64, 32)]
    assert [p["result"][0]["original_height"] for p in preds] == [60, 40, 60, 40]


def test_task_score_bounds() -> None:
    mods = {
        "s": ModalitySpec("s", "segmentation", 4),
        "b": ModalitySpec("b", "binary", 1),
        "d": ModalitySpec("d", "detection", 2),
    }
    uniform = torch.full((1, 4, 8, 8), 0.25)
    onehot = torch.nn.functional.one_hot(torch.zeros(1, 8, 8, dtype=torch.long), 4).permute(0, 3, 1, 2).float()
    p = torch.tensor([0.7, 0.1, 0.1, 0.1])[None, :, None, None].expand(1, 4, 2, 2)
    got = task_scores({"s": torch.cat([uniform[:, :, :2, :2], onehot[:, :, :2, :2], p])}, mods)
    h = -(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1))
    assert got == pytest.approx([0.0, 1.0, 1 - h / math.log(4)], abs=1e-5)
    assert task_scores({"b": torch.full((2, 1, 8, 8), 0.5)}, mods) == pytest.approx([0.0, 0.0], abs=1e-6)
    dets = torch.zeros(2, 3, 8)
    dets[:, :, 5] = -1
    dets[0, 0, 4:6] = torch.tensor([0.8, 1.0])
    dets[1, 1, 4] = 0.9  # a padding row's score never counts
    assert task_scores({"d": dets}, mods) == pytest.approx([0.8, 0.0])


def test_latest_annotation_and_rgb() -> None:
    task = {"annotations": [{"id": 5, "result": []}, {"id": 9, "result": [], "was_cancelled": True}, "junk"]}
    assert latest_annotation(task)["id"] == 5
    assert latest_annotation({"annotations": None}) is None
    assert _as_rgb(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)
    assert _as_rgb(np.zeros((4, 5, 4), np.uint8)).shape == (4, 5, 3)
    with pytest.raises(ValueError, match="uint8"):
        _as_rgb(np.zeros((4, 5, 3), np.float32))


@pytest.mark.parametrize(("channels", "ignore", "dtype"),
                         [(3, 255, np.uint8), (300, 255, np.int16), (3, -1, np.int16), (40000, 255, np.int32)])
def test_segmentation_labels_are_held_compactly(channels: int, ignore: int, dtype: type) -> None:
    """Training holds every labelled task's labels: class maps use the smallest integer type that fits,
    values unchanged, and collate still hands the losses int64."""
    from backend.labelstudio.tasks import _resize_label
    from mtal_models.data.geometry import Fit
    from mtal_models.data.sample import Sample, collate

    spec = ModalitySpec("seg", "segmentation", channels, ignore_index=ignore)
    label = np.full((30, 40), ignore, np.int64)
    label[:, :20] = channels - 1
    label[:10] = 0
    out = _resize_label(spec, label, Fit(30, 40, 16, 16, 16, 16))
    assert out.dtype == dtype and out.shape == (16, 16)
    assert set(np.unique(out).tolist()) == {0, channels - 1, ignore}
    batch = collate([Sample("a", np.zeros((16, 16, 3), np.uint8), {"seg": out}, {"seg": True})], {"seg": spec})
    assert batch.labels.values["seg"].dtype == torch.int64
    assert torch.equal(batch.labels.values["seg"][0], torch.from_numpy(out.astype(np.int64)))
