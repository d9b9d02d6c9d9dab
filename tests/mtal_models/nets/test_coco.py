"""COCO-pretrained boxes for DetSegNet, offline: a fabricated torchvision FCOS ResNet-50 FPN state dict
(random init, no download) is placed under the COCO_V1 file name in a temporary TORCH_HOME."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models import resnet50

from mtal_models.modalities import ModalitySpec, unpack_detections
from mtal_models.nets.coco import COCO_WEIGHTS, coco_config, load_coco_detector, match_coco, normalize_label
from mtal_models.nets.config import get_config
from mtal_models.nets.detseg import DetSegNet
from mtal_models.nets.pretrained import WeightsUnavailable, cache_file
from tests.support.weights import fabricated_fcos, place_weights, random_state

CATEGORIES = list(COCO_WEIGHTS.meta["categories"])
LABELS = ["Pedestrian", "tree", "Car"]  # pedestrian -> person (synonym), tree unmatched, car exact
PERSON, CAR = CATEGORIES.index("person"), CATEGORIES.index("car")


def _net() -> DetSegNet:
    torch.manual_seed(0)
    mods = {
        "boxes": ModalitySpec("boxes", "detection", len(LABELS)),
        "seg": ModalitySpec("seg", "segmentation", len(LABELS) + 1),
    }
    return DetSegNet(mods, coco_config(get_config("tiny", max_detections=300))).eval()


@pytest.fixture(scope="module")
def coco_state() -> dict[str, torch.Tensor]:
    """person scores from a bias of +8, car +2, every other class -20 (see fabricated_fcos)."""
    return fabricated_fcos({"person": 8.0, "car": 2.0})


def test_label_names_match_coco_case_insensitively_and_through_synonyms() -> None:
    assert normalize_label(" TrafficLight ") == "traffic light" == normalize_label("traffic_light")
    names = ["Pedestrian", "tree", "CAR", "TrafficLight", "bike", "N/A", "background", "tvmonitor", "Dining-Table"]
    assert match_coco(names, CATEGORIES) == {
        0: PERSON, 2: CAR, 3: CATEGORIES.index("traffic light"), 4: CATEGORIES.index("bicycle"),
        7: CATEGORIES.index("tv"), 8: CATEGORIES.index("dining table"),
    }


def test_first_predictions_are_boxes_of_the_matched_classes(
    coco_state: dict[str, torch.Tensor], offline_torch_hub: list[str]
) -> None:
    place_weights(COCO_WEIGHTS, coco_state)
    net = _net()
    prior = net.fcos.head.classification_head.cls_logits.bias[1].item()
    matched = load_coco_detector(net, LABELS)
    assert offline_torch_hub == []
    assert matched == {"Pedestrian": "person", "Car": "car"}
    own = net.state_dict()
    assert torch.equal(own["backbone.layer4.2.conv3.weight"], coco_state["backbone.body.layer4.2.conv3.weight"])
    assert torch.equal(own["fpn.inner_blocks.1.0.weight"], coco_state["backbone.fpn.inner_blocks.0.0.weight"])
    assert torch.equal(own["fcos.head.regression_head.conv.9.weight"], coco_state["head.regression_head.conv.9.weight"])
    assert own["fcos.head.classification_head.cls_logits.bias"].tolist() == [8.0, prior, 2.0]  # tree untrained

    with torch.no_grad():
        det = net(torch.rand(1, 3, 64, 96)).final["boxes"]
    found = unpack_detections(det)[0]
    boxes, scores, classes = found["boxes"], found["scores"], found["labels"]
    assert set(classes.tolist()) == {0, 2}  # Pedestrian and Car; the unmatched "tree" has no box
    assert scores[classes == 0].max().item() == pytest.approx(torch.sigmoid(torch.tensor(8.0)).item(), abs=1e-4)
    assert scores[classes == 2].max().item() == pytest.approx(
        math.sqrt(torch.sigmoid(torch.tensor(2.0)) * torch.sigmoid(torch.tensor(8.0))), abs=1e-4)
    # every box is its anchor +- 2 strides (P3: 8 px -> 32 px wide) unless clipped at the image border
    inside = (boxes[:, 0] > 0) & (boxes[:, 1] > 0) & (boxes[:, 2] < 96) & (boxes[:, 3] < 64)
    assert inside.any()
    sizes = (boxes[inside, 2:] - boxes[inside, :2]).flatten()
    assert all(any(abs(s - 4 * stride) < 1e-3 for stride in (8, 16, 32, 64, 128)) for s in sizes.tolist())


def test_old_fpn_key_layout_loads_too(coco_state: dict[str, torch.Tensor]) -> None:
    """Files saved before torchvision 0.13 name FPN convs inner_blocks.0.weight (no Conv2dNormActivation)."""
    old = {k.replace(".0.weight", ".weight").replace(".0.bias", ".bias") if ".fpn." in k and "_blocks." in k else k: v
           for k, v in coco_state.items()}
    assert "backbone.fpn.layer_blocks.2.weight" in old
    place_weights(COCO_WEIGHTS, old)
    net = _net()
    load_coco_detector(net, LABELS)
    own = net.state_dict()
    assert torch.equal(own["fpn.layer_blocks.3.0.weight"], coco_state["backbone.fpn.layer_blocks.2.0.weight"])


def test_missing_and_mismatching_files_give_clear_errors(offline_torch_hub: list[str]) -> None:
    net = _net()
    expected = r"FCOS_ResNet50_FPN_Weights.COCO_V1.*'fcos_resnet50_fpn_coco-99b0c9b7.pth'.*cache folder"
    with pytest.raises(WeightsUnavailable, match=expected) as info:
        load_coco_detector(net, LABELS)
    assert offline_torch_hub == [COCO_WEIGHTS.url]
    assert f"cache folder {str(cache_file(COCO_WEIGHTS).parent)!r}" in str(info.value)
    place_weights(COCO_WEIGHTS, random_state(resnet50(), seed=0))  # a classifier, not the detector
    with pytest.raises(ValueError, match="does not match the COCO layout|does not hold torchvision's FCOS"):
        load_coco_detector(net, LABELS)


def test_only_the_coco_layout_is_accepted() -> None:
    mods = {"boxes": ModalitySpec("boxes", "detection", 2), "seg": ModalitySpec("seg", "segmentation", 3)}
    with pytest.raises(ValueError, match="standard resnet50 trunk, fpn_channels 256"):
        load_coco_detector(DetSegNet(mods, "tiny"), ["a", "b"])
