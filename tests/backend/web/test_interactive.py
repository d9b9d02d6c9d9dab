"""Interactive pre-annotation through the real Flask app (issue #31): a /predict with ``params.context``
(what Label Studio forwards from ``/api/ml/{id}/interactive-annotating``) answers a smart rectangle with
the one object inside it and smart keypoints with the region through the positive points; malformed
contexts are 400s that name the problem, never a 500 nor the whole prefill; a second click on the same
photo fetches nothing and runs only the heads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flask.testing import FlaskClient

from backend.labelstudio.convert import rle_to_mask
from backend.labelstudio.label_config import parse_label_config
from backend.labelstudio.regions import mask_to_rle
from backend.settings import Settings
from backend.web.app import create_app
from mtal_models.training.checkpoint import save_checkpoint
from tests.backend.web.test_app import RecordingTrainer
from tests.support.interactive_scene import CARS, SIZE, draw_scene, object_mask, train_scene_net

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="semantic" toName="image"><Label value="road"/><Label value="car"/></BrushLabels>
  <RectangleLabels name="box_smart" toName="image" smart="true"><Label value="car"/></RectangleLabels>
  <KeyPointLabels name="kp" toName="image" smart="true">
    <Label value="road" smart="true"/><Label value="car" smart="true"/>
  </KeyPointLabels>
</View>"""
H, W = SIZE
URL = "/data/upload/scene.png"


class MemoryFetcher:
    """The scene photo from memory; counts fetches."""

    def __init__(self) -> None:
        self.image = draw_scene(CARS)[0]
        self.fetches = 0

    def fetch_image(self, url: str, task_id: Any = None) -> np.ndarray:
        self.fetches += 1
        if url != URL:
            raise FileNotFoundError(url)
        return self.image

    def fetch_array(self, url: str, task_id: Any = None) -> np.ndarray:
        raise FileNotFoundError(url)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    net = train_scene_net(parse_label_config(CONFIG).modalities)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "scene.pt", net)


@pytest.fixture
def app(tmp_path: Path, checkpoint: Path) -> Iterator[tuple[FlaskClient, MemoryFetcher]]:
    fetcher = MemoryFetcher()
    settings = Settings(label_studio_url="http://ls.invalid", label_studio_api_key="t", model_dir=tmp_path / "m",
                        net_config="tiny", image_size=96, device="cpu", initial_checkpoint=checkpoint)
    client = create_app(settings, trainer=RecordingTrainer(), fetcher_factory=lambda *_: fetcher).test_client()
    assert client.post("/setup", json={"project": "7.1", "schema": CONFIG}).status_code == 200
    yield client, fetcher


def _rect(x0: float, y0: float, x1: float, y1: float, **value: Any) -> dict[str, Any]:
    return {"from_name": "box_smart", "to_name": "image", "type": "rectanglelabels", "original_width": W,
            "original_height": H, "value": {"x": 100 * x0 / W, "y": 100 * y0 / H, "width": 100 * (x1 - x0) / W,
                                             "height": 100 * (y1 - y0) / H, **value}}


def _kp(x: float, y: float, positive: bool, label: str = "car") -> dict[str, Any]:
    return {"from_name": "kp", "to_name": "image", "type": "keypointlabels", "original_width": W,
            "original_height": H, "is_positive": positive,
            "value": {"x": 100 * x / W, "y": 100 * y / H, "width": 1, "labels": [label]}}


def _post(client: FlaskClient, context: Any, task: dict[str, Any] | None = None, project: str = "7.1") -> Any:
    task = task or {"id": 3, "project": 7, "data": {"image": URL}, "annotations": []}
    return client.post("/predict", json={"tasks": [task], "project": project, "label_config": CONFIG,
                                         "params": {"login": None, "password": None, "context": context}})


def _mask(result: dict[str, Any]) -> np.ndarray:
    assert result["from_name"] == "semantic" and result["value"]["brushlabels"] == ["car"]
    return rle_to_mask(result["value"]["rle"], H, W) > 0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_smart_rectangle_returns_the_one_car_inside_it(app: tuple[FlaskClient, MemoryFetcher]) -> None:
    client, fetcher = app
    x0, y0, x1, y1 = CARS[1]
    resp = _post(client, {"result": [_rect(x0 - 30, y0 - 10, x1 + 12, y1 + 10)]})  # cuts into car 0
    assert resp.status_code == 200, resp.json
    pred = resp.json["results"][0]
    (region,) = pred["result"]
    mask = _mask(region)
    assert _iou(mask, object_mask(CARS[1])) > 0.8
    assert (mask & object_mask(CARS[0])).sum() == 0 and (mask & object_mask(CARS[2])).sum() == 0
    assert pred["interactive"]["prompts"][0]["label"] == "car" and not pred["interactive"]["cached"]
    assert pred["model_version"].startswith("mtal-7-v1")
    # a second click on the same photo: from the cache, nothing fetched
    again = _post(client, {"result": [_rect(*CARS[2])]}).json["results"][0]
    assert again["interactive"]["cached"] and fetcher.fetches == 1
    assert _iou(_mask(again["result"][0]), object_mask(CARS[2])) > 0.8


def test_smart_keypoints_positive_and_negative(app: tuple[FlaskClient, MemoryFetcher]) -> None:
    client, _ = app
    centre = [((x0 + x1) / 2, (y0 + y1) / 2) for x0, y0, x1, y1 in CARS]
    both = _post(client, {"result": [_kp(*centre[0], True), _kp(*centre[2], True)]}).json["results"][0]
    mask = _mask(both["result"][0])
    assert _iou(mask, object_mask(CARS[0]) | object_mask(CARS[2])) > 0.8 and not mask[object_mask(CARS[1])].any()
    # a negative point on car 2: car 2 is left out
    cut = _post(client, {"result": [_kp(*centre[0], True), _kp(*centre[2], False)]}).json["results"][0]
    mask = _mask(cut["result"][0])
    assert _iou(mask, object_mask(CARS[0])) > 0.8 and not mask[object_mask(CARS[2])].any()


def test_nothing_of_the_class_in_the_box_is_an_empty_result_with_a_reason(
        app: tuple[FlaskClient, MemoryFetcher]) -> None:
    client, _ = app
    pred = _post(client, {"result": [_rect(85, 5, 115, 40)]}).json["results"][0]  # grey background only
    assert pred["result"] == []
    assert "no 'car' found inside the box" in pred["interactive"]["prompts"][0]["modalities"]["semantic"]


def test_a_context_without_smart_regions_is_empty_not_the_prefill(app: tuple[FlaskClient, MemoryFetcher]) -> None:
    client, _ = app
    other = {"from_name": "notes", "type": "textarea", "value": {"text": ["x"]}}
    pred = _post(client, {"result": [other]}).json["results"][0]
    assert pred["result"] == [] and "no region of a smart tool" in pred["interactive"]["reason"]
    # the annotator's own region: the other modalities would be conditioned on it, but this network's
    # label encoders are untrained (and there is no other modality): nothing, with the reason
    own = {"from_name": "semantic", "type": "brushlabels", "original_width": W, "original_height": H,
           "value": {"format": "rle", "rle": mask_to_rle(object_mask(CARS[0])), "brushlabels": ["car"]}}
    pred = _post(client, {"result": [own]}).json["results"][0]
    assert pred["result"] == [] and "label encoders of ['semantic'] are not trained" in pred["interactive"]["reason"]


@pytest.mark.parametrize(("context", "message"), [
    ("box", "params.context must be an object"),
    ({"result": {"x": 1}}, "params.context.result must be a list"),
    ({"noresult": []}, "params.context.result must be a list"),
    ({"result": ["kp"]}, "context.result[0] must be an object"),
    ({"result": [{"from_name": "kp", "type": "keypointlabels", "value": {"y": 5, "labels": ["car"]}}]},
     "context.result[0].value.x must be a finite number"),
    ({"result": [{"from_name": "kp", "type": "keypointlabels", "value": {"x": "5", "y": 5, "labels": ["car"]}}]},
     "context.result[0].value.x must be a finite number"),
    ({"result": [{"from_name": "kp", "type": "keypointlabels", "value": {"x": 5, "y": 5, "labels": ["bus"]}}]},
     "label 'bus' of smart tool 'kp' is in no modality"),
    ({"result": [{"from_name": "kp", "type": "keypointlabels", "value": {"x": 5, "y": 5}}]},
     "a keypoint needs one label"),
    ({"result": [{"from_name": "kp", "type": "keypointlabels", "is_positive": "yes",
                  "value": {"x": 5, "y": 5, "labels": ["car"]}}]}, "is_positive must be true or false"),
    ({"result": [{"from_name": "box_smart", "type": "rectanglelabels", "value": {"x": 5, "y": 5, "width": 3}}]},
     "value.height must be a finite number"),
    ({"result": [{"from_name": "box_smart", "type": "rectanglelabels", "value": "x"}]}, "value must be an object"),
    ({"result": [{"from_name": "box_smart", "type": "rectanglelabels",
                  "value": {"x": 5, "y": 5, "width": -3, "height": 2}}]}, "width and height must be >= 0"),
])
def test_malformed_contexts_are_400s_naming_the_problem(app: tuple[FlaskClient, MemoryFetcher], context: Any,
                                                        message: str) -> None:
    client, fetcher = app
    resp = _post(client, context)
    assert resp.status_code == 400, resp.json
    assert message in resp.json["message"]
    assert fetcher.fetches == 0  # refused before any image work


def test_a_task_of_another_project_or_several_tasks_are_400s(app: tuple[FlaskClient, MemoryFetcher]) -> None:
    client, _ = app
    other = {"id": 4, "project": 8, "data": {"image": URL}}
    resp = _post(client, {"result": [_rect(*CARS[0])]}, task=other)
    assert resp.status_code == 400 and "belongs to project 8, not to project 7" in resp.json["message"]
    two = client.post("/predict", json={"tasks": [other, other], "project": "8.1", "label_config": CONFIG,
                                        "params": {"context": {"result": []}}})
    assert two.status_code == 400 and "carries one task" in two.json["message"]


def test_an_image_that_cannot_be_fetched_is_an_empty_result_with_the_reason(
        app: tuple[FlaskClient, MemoryFetcher]) -> None:
    client, _ = app
    task = {"id": 5, "project": 7, "data": {"image": "/data/upload/missing.png"}}
    resp = _post(client, {"result": [_rect(*CARS[0])]}, task=task)
    assert resp.status_code == 200
    pred = resp.json["results"][0]
    assert pred["result"] == [] and "missing.png" in pred["interactive"]["error"] and "score" not in pred


def test_without_context_predict_is_the_whole_prefill(app: tuple[FlaskClient, MemoryFetcher]) -> None:
    client, _ = app
    resp = _post(client, None)
    assert resp.status_code == 200 and "interactive" not in resp.json["results"][0]
    assert {r["value"]["brushlabels"][0] for r in resp.json["results"][0]["result"]} >= {"car"}
