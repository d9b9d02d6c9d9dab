"""A region drawn in a modality tag that Label Studio treats as smart -> the other modalities re-predicted
conditioned on it (PAD-Net's GT substitution, issue #31): through the real Flask app, the answer equals the
prefill /predict gives for the same task when that region is its saved annotation (the same conditioning by
the ordinary route), and is marked ``conditioned_on``; with untrained label encoders nothing is
re-predicted and the answer says why."""

from __future__ import annotations

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
from mtal_models.nets import PADNet
from mtal_models.training.checkpoint import save_checkpoint
from tests.backend.web.test_app import RecordingTrainer
from tests.backend.web.test_interactive import URL, MemoryFetcher

# "semantic" is smart, but its labels are no other tag's: a modality whose regions reach the backend as a context
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="semantic" toName="image" smart="true"><Label value="road"/><Label value="car"/></BrushLabels>
  <BrushLabels name="parts" toName="image"><Label value="wheel"/><Label value="window"/></BrushLabels>
</View>"""


def _client(tmp_path: Path, trained: bool) -> FlaskClient:
    torch.manual_seed(3)
    net = PADNet(parse_label_config(CONFIG).modalities, "tiny")
    if trained:  # as after a training with substitution: the encoders' outputs now condition the heads
        net.encoders_trained.fill_(True)
        with torch.no_grad():  # a strong encoder, so that the drawn car shows in the other modality's argmax
            for conv in net.label_encoders[0].net[::2]:
                conv.weight.mul_(8)
    ckpt = save_checkpoint(tmp_path / "net.pt", net)
    settings = Settings(label_studio_url="http://ls.invalid", label_studio_api_key="t", model_dir=tmp_path / "m",
                        net_config="tiny", image_size=96, device="cpu", initial_checkpoint=ckpt)
    fetcher = MemoryFetcher()
    client = create_app(settings, trainer=RecordingTrainer(), fetcher_factory=lambda *_: fetcher).test_client()
    assert client.post("/setup", json={"project": "7.1", "schema": CONFIG}).status_code == 200
    return client


def _drawn() -> dict[str, Any]:
    from tests.support.interactive_scene import CARS, SIZE, object_mask

    h, w = SIZE
    return {"from_name": "semantic", "to_name": "image", "type": "brushlabels", "original_width": w,
            "original_height": h, "value": {"format": "rle", "rle": mask_to_rle(object_mask(CARS[1])),
                                            "brushlabels": ["car"]}}


def _predict(client: FlaskClient, context: Any, annotations: list[dict[str, Any]]) -> dict[str, Any]:
    task = {"id": 3, "project": 7, "data": {"image": URL}, "annotations": annotations}
    resp = client.post("/predict", json={"tasks": [task], "project": "7.1", "label_config": CONFIG,
                                         "params": {"context": context}})
    assert resp.status_code == 200, resp.json
    return resp.json["results"][0]


def _masks(pred: dict[str, Any]) -> dict[str, np.ndarray]:
    from tests.support.interactive_scene import SIZE

    return {r["value"]["brushlabels"][0]: rle_to_mask(r["value"]["rle"], *SIZE) > 0 for r in pred["result"]}


def test_drawn_region_re_predicts_the_other_modality_as_the_conditioned_prefill(tmp_path: Path) -> None:
    client = _client(tmp_path, trained=True)
    got = _predict(client, {"result": [_drawn()]}, [])
    assert got["interactive"]["conditioned_on"] == ["semantic"] and got["interactive"]["modalities"] == ["parts"]
    assert {r["from_name"] for r in got["result"]} == {"parts"}
    # the same conditioning by the ordinary route: the region as the task's saved annotation
    want = _predict(client, None, [{"id": 1, "result": [_drawn()], "updated_at": "2026-01-01T00:00:00Z"}])
    unconditioned = _predict(client, None, [])
    got_m, want_m, plain_m = _masks(got), _masks(want), _masks(unconditioned)
    assert set(got_m) == set(want_m)
    for label in want_m:
        assert (got_m[label] == want_m[label]).mean() > 0.999
    # and the conditioning changed something: the parts prediction differs from the unconditioned one
    plain_parts = {k: v for k, v in plain_m.items() if k in ("wheel", "window")}
    assert set(plain_parts) != set(got_m) or any((plain_parts[k] != v).mean() > 0.01 for k, v in got_m.items())


@pytest.mark.parametrize("trained", [False])
def test_untrained_encoders_re_predict_nothing_and_say_why(tmp_path: Path, trained: bool) -> None:
    got = _predict(_client(tmp_path, trained), {"result": [_drawn()]}, [])
    assert got["result"] == [] and "label encoders of ['semantic'] are not trained" in got["interactive"]["reason"]
