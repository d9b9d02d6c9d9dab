"""Smart tools through a real Label Studio 1.23 (issue #31, item 2): with MTAL added as an interactive
backend (``is_interactive: true``) on a config with separate smart tags, the editor's
``POST /api/ml/{id}/interactive-annotating`` with a smart rectangle around one of three cars returns that
car's mask (IoU with it, nothing of the others), and smart keypoints return the cars through the positive
points with the negative one left out. Label Studio answers 200 either way: success is ``{"data": ...}``,
a backend error ``{"errors": [...]}``. The network is a tiny PAD-Net trained on such scenes
(:mod:`tests.support.interactive_scene`), the project's first version (``MTAL_INITIAL_CHECKPOINT``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from backend.labelstudio.label_config import parse_label_config
from backend.labelstudio.regions import rle_to_mask
from backend.settings import Settings
from mtal_models.training.checkpoint import save_checkpoint
from tests.support.backend_server import serve_backend
from tests.support.interactive_scene import CARS, SIZE, draw_scene, object_mask, train_scene_net
from tests.support.label_studio import LabelStudioServer
from tests.support.scene_project import create_local_files_project

pytestmark = pytest.mark.e2e

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="semantic" toName="image"><Label value="road"/><Label value="car"/></BrushLabels>
  <RectangleLabels name="box_smart" toName="image" smart="true" smartOnly="true">
    <Label value="car"/>
  </RectangleLabels>
  <KeyPointLabels name="kp" toName="image" smart="true">
    <Label value="road" smart="true"/><Label value="car" smart="true"/>
  </KeyPointLabels>
</View>"""
H, W = SIZE
COMMON = {"to_name": "image", "original_width": W, "original_height": H, "image_rotation": 0}


@pytest.fixture(scope="module")
def interactive(label_studio: LabelStudioServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """(ls, ML backend id, task id) with the backend serving the trained scene network."""
    tmp = tmp_path_factory.mktemp("interactive")
    torch.set_num_threads(1)
    checkpoint = save_checkpoint(tmp / "scene.pt", train_scene_net(parse_label_config(CONFIG).modalities))

    def write(folder: Path) -> list[tuple[str, dict[str, Any]]]:
        Image.fromarray(draw_scene(CARS)[0]).save(folder / "scene.png")
        return [("scene.png", {})]

    ls = label_studio
    pid, (task_id,) = create_local_files_project(ls.url, ls.headers, ls.files_root, "mtal smart tools", CONFIG, write)
    settings = Settings(label_studio_url=ls.url, label_studio_api_key=ls.token, model_dir=tmp / "models",
                        redis_url=None, net_config="tiny", image_size=96, device="cpu", cache_dir=tmp / "cache",
                        initial_checkpoint=checkpoint, train_threshold=1000)
    with serve_backend(settings) as backend_url:
        ml = requests.post(f"{ls.url}/api/ml/", headers=ls.headers, timeout=60,
                           json={"url": backend_url, "project": pid, "title": "mtal", "is_interactive": True})
        assert ml.status_code == 201, ml.text
        yield ls, ml.json()["id"], task_id


def _click(interactive: tuple, result: list[dict[str, Any]]) -> dict[str, Any]:
    ls, ml_id, task_id = interactive
    resp = requests.post(f"{ls.url}/api/ml/{ml_id}/interactive-annotating", headers=ls.headers, timeout=120,
                         json={"task": task_id, "context": {"result": result}})
    assert resp.status_code == 200, resp.text  # Label Studio answers 200 either way
    return resp.json()


def _car_mask(data: dict[str, Any]) -> np.ndarray:
    assert "errors" not in data, data
    (region,) = data["data"]["result"]
    assert region["from_name"] == "semantic" and region["value"]["brushlabels"] == ["car"]
    assert (region["original_width"], region["original_height"]) == (W, H)
    return rle_to_mask(region["value"]["rle"], H, W) > 0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_smart_rectangle_returns_the_one_car_inside_it(interactive: tuple) -> None:
    x0, y0, x1, y1 = CARS[1]
    x0, y0, x1, y1 = x0 - 30, y0 - 12, x1 + 12, y1 + 12  # loose: it cuts into the first car too
    # as the editor sends a smart rectangle: percent of the image, no label
    rect = {**COMMON, "id": "r1", "from_name": "box_smart", "type": "rectanglelabels", "origin": "manual",
            "value": {"x": 100 * x0 / W, "y": 100 * y0 / H, "width": 100 * (x1 - x0) / W,
                      "height": 100 * (y1 - y0) / H, "rotation": 0}}
    mask = _car_mask(_click(interactive, [rect]))
    assert _iou(mask, object_mask(CARS[1])) > 0.8
    assert not (mask & (object_mask(CARS[0]) | object_mask(CARS[2]))).any()


def test_smart_keypoints_return_the_cars_through_the_positive_points_only(interactive: tuple) -> None:
    def kp(box: tuple[int, int, int, int], positive: bool) -> dict[str, Any]:
        x, y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        return {**COMMON, "from_name": "kp", "type": "keypointlabels", "origin": "manual", "is_positive": positive,
                "value": {"x": 100 * x / W, "y": 100 * y / H, "width": 0.5, "labels": ["car"]}}

    mask = _car_mask(_click(interactive, [kp(CARS[0], True), kp(CARS[1], False), kp(CARS[2], True)]))
    assert _iou(mask, object_mask(CARS[0]) | object_mask(CARS[2])) > 0.8
    assert not mask[object_mask(CARS[1])].any()


def test_malformed_context_is_an_error_not_the_prefill(interactive: tuple) -> None:
    bad = {**COMMON, "from_name": "kp", "type": "keypointlabels", "value": {"y": 10, "labels": ["car"]}}
    data = _click(interactive, [bad])
    assert "data" not in data and "400" in data["errors"][0], data
