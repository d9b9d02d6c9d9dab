"""Pretrained starts in the backend (MTAL_BACKBONE, MTAL_BACKBONE_WEIGHTS, MTAL_PRETRAINED_HEADS), offline:
fabricated torchvision files in a temporary TORCH_HOME; tests/conftest.py makes every download fail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torchvision.models import ResNet18_Weights, resnet18

from backend.serving.store import ModelStore
from backend.settings import Settings, SettingsError
from mtal_models.nets.coco import COCO_WEIGHTS
from mtal_models.nets.pretrained import cache_file
from tests.backend.web import test_app
from tests.backend.web.test_app import SEG_CONFIG, _app, _settings, _tasks
from tests.support.weights import fabricated_fcos, place_weights, random_state

ls_files = test_app.ls_files  # the fixture serving /data/upload images

PROJECT = "7.1712345678"
DETSEG_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="boxes" toName="image">
    <Label value="Pedestrian"/><Label value="tree"/><Label value="car"/>
  </RectangleLabels>
  <BrushLabels name="seg" toName="image"><Label value="road"/></BrushLabels>
</View>"""


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MTAL_BACKBONE": "vgg16"}, "MTAL_BACKBONE must be one of"),
        ({"MTAL_NET_CONFIG": "tiny", "MTAL_BACKBONE_WEIGHTS": "imagenet"}, "Set MTAL_BACKBONE"),
        ({"MTAL_BACKBONE": "resnet18", "MTAL_BACKBONE_WEIGHTS": "ResNet50_Weights.IMAGENET1K_V2"},
         "do not belong to backbone 'resnet18'"),
        ({"MTAL_BACKBONE_WEIGHTS": "/nonexistent/trunk.pth"}, "MTAL_BACKBONE_WEIGHTS: no such file"),
        ({"MTAL_PRETRAINED_HEADS": "yolo"}, "MTAL_PRETRAINED_HEADS must be one of"),
        ({"MTAL_PRETRAINED_HEADS": "coco", "MTAL_BACKBONE": "resnet18"}, "MTAL_BACKBONE must be resnet50"),
        ({"MTAL_PRETRAINED_HEADS": "coco", "MTAL_BACKBONE_WEIGHTS": "none"}, "leave MTAL_BACKBONE_WEIGHTS=auto"),
    ],
)
def test_combinations_that_cannot_load_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_settings_parse(tmp_path: Path) -> None:
    s = Settings.from_env({"MTAL_BACKBONE": "ResNet50", "MTAL_BACKBONE_WEIGHTS": "ResNet50_Weights.IMAGENET1K_V1"})
    assert (s.backbone, s.backbone_weights, s.pretrained_heads) == ("resnet50", "ResNet50_Weights.IMAGENET1K_V1", None)
    assert Settings.from_env({"MTAL_PRETRAINED_HEADS": "COCO"}).pretrained_heads == "coco"
    d = Settings.from_env({"MTAL_PRETRAINED_HEADS": "off"})
    assert (d.backbone, d.backbone_weights, d.pretrained_heads) == (None, "auto", None)
    trunk = tmp_path / "trunk.pt"
    trunk.write_bytes(b"x")
    assert Settings.from_env({"MTAL_BACKBONE_WEIGHTS": str(trunk)}).backbone_weights == str(trunk)


def _setup(client: Any, config: str = SEG_CONFIG) -> Any:
    return client.post("/setup", json={"project": PROJECT, "schema": config})


def test_default_settings_start_random_without_trying_a_download(
    tmp_path: Path, ls_files: str, offline_torch_hub: list[str]
) -> None:
    client = _app(_settings(tmp_path, ls_files)).test_client()  # tiny preset, auto
    assert _setup(client).status_code == 200
    start = client.get(f"/status?project={PROJECT}").json["start_weights"]
    assert start["weights"] == "random" and "reduced resnet18 trunk" in start["note"]
    assert "warning" not in start and offline_torch_hub == []


def test_auto_offline_falls_back_to_random_with_a_warning_in_health_and_status(
    tmp_path: Path, ls_files: str, offline_torch_hub: list[str]
) -> None:
    client = _app(_settings(tmp_path, ls_files, backbone="resnet18")).test_client()
    r = _setup(client)
    assert r.status_code == 200, r.json
    expected = cache_file(ResNet18_Weights.IMAGENET1K_V1)
    for body in (client.get("/health").json, client.get(f"/status?project={PROJECT}").json):
        assert body["start_weights"]["weights"] == "random"
        (warning,) = body["warnings"]
        assert "MTAL_BACKBONE_WEIGHTS=auto" in warning and "Started from random weights" in warning
        assert repr(expected.name) in warning and repr(str(expected.parent)) in warning
    assert offline_torch_hub == [ResNet18_Weights.IMAGENET1K_V1.url]
    assert client.post("/predict", json={"tasks": _tasks("odd"), "project": PROJECT}).status_code == 200


def test_imagenet_offline_is_a_clear_setup_error(tmp_path: Path, ls_files: str) -> None:
    client = _app(_settings(tmp_path, ls_files, backbone="resnet18", backbone_weights="imagenet")).test_client()
    r = _setup(client)
    assert r.status_code == 422
    assert "ResNet18_Weights.IMAGENET1K_V1" in r.json["message"] and "resnet18-f37072fd.pth" in r.json["message"]
    assert "cache folder" in r.json["message"]


def test_auto_uses_cached_imagenet_weights_and_the_version_keeps_them(tmp_path: Path, ls_files: str) -> None:
    fabricated = random_state(resnet18(), seed=5)
    place_weights(ResNet18_Weights.IMAGENET1K_V1, fabricated)
    settings = _settings(tmp_path, ls_files, backbone="resnet18")
    client = _app(settings).test_client()
    version = _setup(client).json["model_version"]
    status = client.get(f"/status?project={PROJECT}").json
    assert status["start_weights"]["weights"] == "ResNet18_Weights.IMAGENET1K_V1" and "warnings" not in status
    cache_file(ResNet18_Weights.IMAGENET1K_V1).unlink()  # the stored version does not need the cache any more
    loaded = ModelStore(settings.model_dir, device="cpu").load_model("7")  # a fresh store: read from disk
    assert loaded.version == version
    net = loaded.model
    assert torch.equal(net.state_dict()["backbone.layer2.1.conv1.weight"], fabricated["layer2.1.conv1.weight"])
    assert net.config.backbone == "resnet18" and net.config.base_width == 64


def test_coco_heads_first_predictions_are_boxes_of_the_matched_labels(
    tmp_path: Path, ls_files: str, offline_torch_hub: list[str]
) -> None:
    place_weights(COCO_WEIGHTS, fabricated_fcos({"person": 8.0, "car": 2.0}))
    client = _app(_settings(tmp_path, ls_files, pretrained_heads="coco")).test_client()
    assert _setup(client, DETSEG_CONFIG).status_code == 200
    start = client.get(f"/status?project={PROJECT}").json["start_weights"]
    assert start["weights"] == "FCOS_ResNet50_FPN_Weights.COCO_V1"
    assert start["heads"] == "Pedestrian -> person, car -> car; untrained: tree"
    r = client.post("/predict", json={"tasks": _tasks("odd"), "project": PROJECT, "label_config": DETSEG_CONFIG})
    assert r.status_code == 200, r.json
    boxes = [res for res in r.json["results"][0]["result"] if res["type"] == "rectanglelabels"]
    assert boxes, r.json
    assert {label for res in boxes for label in res["value"]["rectanglelabels"]} <= {"Pedestrian", "car"}
    assert "Pedestrian" in {res["value"]["rectanglelabels"][0] for res in boxes}
    assert offline_torch_hub == []


def test_coco_heads_offline_is_a_clear_setup_error(tmp_path: Path, ls_files: str) -> None:
    client = _app(_settings(tmp_path, ls_files, pretrained_heads="coco")).test_client()
    r = _setup(client, DETSEG_CONFIG)
    assert r.status_code == 422
    assert "FCOS_ResNet50_FPN_Weights.COCO_V1" in r.json["message"] and "fcos_resnet50_fpn_coco" in r.json["message"]


def test_auto_falls_back_on_a_cached_file_that_does_not_load(tmp_path: Path) -> None:
    from backend.labelstudio.label_config import parse_label_config
    from backend.serving.initial import build_initial

    path = place_weights(ResNet18_Weights.IMAGENET1K_V1, b"truncated download")
    settings = Settings(model_dir=tmp_path, net_config="tiny", backbone="resnet18")
    net, report = build_initial(settings, parse_label_config(SEG_CONFIG))
    assert report.weights == "random" and str(path) in (report.warning or "")
    assert "could not be read as a state dict" in (report.warning or "")
    assert net.config.weights is None and net.config.base_width == 64


def test_coco_setting_gives_dense_only_projects_the_resnet50_trunk(tmp_path: Path) -> None:
    from backend.labelstudio.label_config import parse_label_config
    from backend.serving.initial import build_initial

    settings = Settings(model_dir=tmp_path, net_config="tiny", pretrained_heads="coco")
    net, report = build_initial(settings, parse_label_config(SEG_CONFIG))  # PAD-Net: no boxes to start
    assert net.config.backbone == "resnet50" and report.backbone == "resnet50 (standard)"
    assert report.heads is None and "ResNet50_Weights.IMAGENET1K_V2" in (report.warning or "")  # auto, offline


def test_auto_does_not_hide_other_build_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mtal_models.nets
    from backend.labelstudio.label_config import parse_label_config
    from backend.serving.initial import build_initial

    calls: list[Any] = []

    def refuse(*args: Any) -> None:
        calls.append(args)
        raise ValueError("unknown network 'x'")

    monkeypatch.setattr(mtal_models.nets, "build_network", refuse)
    settings = Settings(model_dir=tmp_path, net_config="tiny", backbone="resnet18")
    with pytest.raises(ValueError, match="unknown network"):
        build_initial(settings, parse_label_config(SEG_CONFIG))
    assert len(calls) == 1  # no "fell back to random weights" retry
