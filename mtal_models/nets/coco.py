"""A COCO-pretrained start for the boxes of :class:`~mtal_models.nets.detseg.DetSegNet`.

Source: torchvision's FCOS ResNet-50 FPN trained on COCO (``FCOS_ResNet50_FPN_Weights.COCO_V1``), read
through its weights API and cache (:func:`~mtal_models.nets.pretrained.fetch_state_dict`: the file
``<TORCH_HOME>/hub/checkpoints/fcos_resnet50_fpn_coco-99b0c9b7.pth``, downloaded once).
DetSegNet is an FCOS on the same torchvision parts, so in the layout of :func:`coco_config`
(standard ResNet-50 trunk, 256 FPN channels, 4 tower convs, GroupNorm(32)) this is what transfers:

- trunk: ``backbone.body.*`` -> ``backbone.*`` (the frozen BatchNorm statistics become ordinary
  BatchNorm weights and running statistics);
- FPN: torchvision's has three inputs (C3..C5), ours four (C2..C5; P2 feeds the segmentation branch):
  its ``inner_blocks.i`` / ``layer_blocks.i`` -> our ``i + 1``, and ``extra_blocks.p6/p7``. Our C2
  lateral and P2 output conv stay untrained; the top-down path runs from coarse to fine, so they change
  P2 only and the detector reads exactly COCO's P3..P7;
- FCOS head: both towers, ``bbox_reg``, ``bbox_ctrness`` entirely; of ``cls_logits`` the rows of the
  COCO categories the project's box labels match (:func:`match_coco`), copied into those labels' rows.
  Rows of unmatched labels keep FCOS's initialisation (prior 0.01: scores ~0.1, under the display
  threshold), so those labels start untrained.

Not transferred: the segmentation branch (fusion, dense heads), the C2/P2 FPN convs. Two differences
from torchvision's detector remain and are accepted: box distances go through softplus, not ReLU
(:class:`~mtal_models.nets.detseg_heads.SoftplusConv2d`; softplus(x) - relu(x) <= ln 2 anchor strides,
under 5% of the distance for distances >= 3 strides), and images are not resized to 800 px (objects are
seen at ``MTAL_IMAGE_SIZE``). Normalisation is ImageNet's mean/std, as torchvision's detection transform.

Label matching: case-insensitive, with ``_``/``-``/CamelCase read as spaces ("TrafficLight" -> "traffic
light"), then :data:`COCO_SYNONYMS` (Pascal VOC's and common names, e.g. pedestrian -> person).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from torch import Tensor
from torchvision.models import WeightsEnum
from torchvision.models.detection import FCOS_ResNet50_FPN_Weights

from mtal_models.nets.config import IMAGENET_MEAN, IMAGENET_STD, NetConfig
from mtal_models.nets.pretrained import (
    WeightsError,
    cache_file,
    fetch_state_dict,
    is_standard,
    standard_trunk,
    weights_name,
)

__all__ = [
    "COCO_SYNONYMS",
    "COCO_WEIGHTS",
    "coco_config",
    "describe_matches",
    "load_coco_detector",
    "match_coco",
    "normalize_label",
]

COCO_WEIGHTS: WeightsEnum = FCOS_ResNet50_FPN_Weights.COCO_V1

# label (normalised) -> COCO category name; exact COCO names need no entry
COCO_SYNONYMS: dict[str, str] = {
    "pedestrian": "person", "people": "person", "human": "person", "man": "person", "woman": "person",
    "child": "person", "bike": "bicycle", "motorbike": "motorcycle", "aeroplane": "airplane",
    "plane": "airplane", "sofa": "couch", "tvmonitor": "tv", "tv monitor": "tv", "television": "tv",
    "monitor": "tv", "diningtable": "dining table", "table": "dining table", "pottedplant": "potted plant",
    "plant": "potted plant", "phone": "cell phone", "mobile phone": "cell phone", "cellphone": "cell phone",
    "hydrant": "fire hydrant", "ball": "sports ball", "doughnut": "donut", "ship": "boat", "lorry": "truck",
    "automobile": "car", "puppy": "dog", "kitten": "cat", "trafficlight": "traffic light",
    "stopsign": "stop sign",
}
_PLACEHOLDERS = ("__background__", "N/A")


def normalize_label(name: str) -> str:
    """"TrafficLight" / "traffic_light" / " Traffic-Light " -> "traffic light"."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name.strip())
    return " ".join(re.sub(r"[_\-]+", " ", spaced).lower().split())


def match_coco(class_names: Sequence[str], categories: Sequence[str] | None = None) -> dict[int, int]:
    """{class id: COCO category index} for the names that match a COCO category (see module doc).

    ``categories``: the detector's class table (default ``COCO_WEIGHTS.meta["categories"]``, 91
    entries with ``__background__`` and ``N/A`` placeholders, indexed like its ``cls_logits`` rows).
    """
    table = list(categories if categories is not None else COCO_WEIGHTS.meta["categories"])
    index = {normalize_label(c): i for i, c in enumerate(table) if c not in _PLACEHOLDERS}
    out: dict[int, int] = {}
    for i, name in enumerate(class_names):
        key = normalize_label(name)
        key = key if key in index else COCO_SYNONYMS.get(key, COCO_SYNONYMS.get(key.replace(" ", ""), key))
        if key in index:
            out[i] = index[key]
    return out


def coco_config(config: NetConfig) -> NetConfig:
    """``config`` in the layout of torchvision's COCO FCOS: standard ResNet-50 trunk, 256 FPN channels,
    ImageNet normalisation, no separate backbone weights (the detector's trunk is loaded). Dense heads
    keep ``config``'s widths."""
    return replace(
        standard_trunk(config, "resnet50"), fpn_channels=256, weights=None, norm_mean=IMAGENET_MEAN,
        norm_std=IMAGENET_STD,
    )


def _coco_to_ours(key: str) -> str | None:
    """A torchvision FCOS state-dict key -> DetSegNet's key (None: not transferred here)."""
    if key.startswith("backbone.body."):
        return "backbone." + key.removeprefix("backbone.body.")
    m = re.fullmatch(r"backbone\.fpn\.(inner_blocks|layer_blocks)\.(\d+)\.(.+)", key)
    if m:  # files saved before torchvision 0.13 lack the ".0" of Conv2dNormActivation (FPN version 1)
        rest = f"0.{m[3]}" if m[3] in ("weight", "bias") else m[3]
        return f"fpn.{m[1]}.{int(m[2]) + 1}.{rest}"
    if key.startswith("backbone.fpn.extra_blocks."):
        return "fpn." + key.removeprefix("backbone.fpn.")
    if key.startswith("head.") and not key.startswith("head.classification_head.cls_logits."):
        return "fcos." + key
    return None


def load_coco_detector(
    net: torch.nn.Module,
    class_names: Sequence[str],
    weights: WeightsEnum = COCO_WEIGHTS,
    download: bool = True,
) -> dict[str, str]:
    """Load the COCO detector's trunk, FPN and FCOS head into ``net`` (a DetSegNet built with
    :func:`coco_config`); the classification rows of ``class_names`` (the detection modality's labels,
    by class id) that match COCO categories are copied. Returns {label: COCO category} of the matches.

    Raises ValueError when ``net`` is not in the COCO layout or the file does not hold that detector's
    keys, and :class:`~mtal_models.nets.pretrained.WeightsUnavailable` when the file is neither cached
    nor downloadable.
    """
    from mtal_models.nets.detseg import DetSegNet

    if not isinstance(net, DetSegNet):
        raise ValueError(f"COCO detector weights load into a DetSegNet, not {type(net).__name__}")
    if len(class_names) != net.num_det_classes:
        raise ValueError(f"{len(class_names)} class names for {net.num_det_classes} detection classes")
    cfg = net.config
    if not (cfg.backbone == "resnet50" and is_standard(cfg) and cfg.fpn_channels == 256):
        raise ValueError(
            "COCO detector weights need the layout of torchvision's FCOS ResNet-50 FPN (standard resnet50 "
            f"trunk, fpn_channels 256: mtal_models.nets.coco.coco_config); got backbone {cfg.backbone!r}, "
            f"base_width {cfg.base_width}, layers {tuple(cfg.layers)}, fpn_channels {cfg.fpn_channels}"
        )
    state = fetch_state_dict(weights, download=download)
    source = f"{weights_name(weights)} (cached file {str(cache_file(weights))!r})"
    categories = list(weights.meta["categories"])
    own = net.state_dict()
    new: dict[str, Tensor] = {}
    for key, value in state.items():
        ours = _coco_to_ours(key)
        if ours is None or key.endswith("num_batches_tracked"):
            continue
        if ours not in own or own[ours].shape != value.shape:
            have = tuple(own[ours].shape) if ours in own else "no such key"
            raise WeightsError(f"{source} does not match the COCO layout: {key} {tuple(value.shape)} -> {ours} {have}")
        new[ours] = value
    expected = {k for k in own if k.startswith(("backbone.", "fcos.head."))
                and "cls_logits" not in k and not k.endswith("num_batches_tracked")}
    expected |= {k for k in own if re.fullmatch(r"fpn\.(inner|layer)_blocks\.[123]\..+|fpn\.extra_blocks\..+", k)}
    missing = sorted(expected - set(new))
    logits_w = state.get("head.classification_head.cls_logits.weight")
    logits_b = state.get("head.classification_head.cls_logits.bias")
    if missing or logits_w is None or logits_b is None or logits_w.shape[0] != len(categories):
        shown = ", ".join(missing[:5]) + (f" ... (+{len(missing) - 5})" if len(missing) > 5 else "")
        raise WeightsError(
            f"{source} does not hold torchvision's FCOS ResNet-50 FPN with {len(categories)} classes: "
            f"missing [{shown}]{'' if logits_w is not None else ' and the cls_logits rows'}"
        )
    matches = match_coco(class_names, categories)
    cls_w = own["fcos.head.classification_head.cls_logits.weight"].clone()
    cls_b = own["fcos.head.classification_head.cls_logits.bias"].clone()
    for ours_i, coco_i in matches.items():
        cls_w[ours_i] = logits_w[coco_i]
        cls_b[ours_i] = logits_b[coco_i]
    new["fcos.head.classification_head.cls_logits.weight"] = cls_w
    new["fcos.head.classification_head.cls_logits.bias"] = cls_b
    net.load_state_dict(new, strict=False)
    return {class_names[i]: categories[c] for i, c in sorted(matches.items())}


def describe_matches(class_names: Sequence[str], matches: Mapping[str, str]) -> str:
    """"pedestrian -> person, Car -> car; untrained: tree" for logs and /status."""
    parts = [f"{k} -> {v}" for k, v in matches.items()]
    rest = [n for n in class_names if n not in matches]
    return ", ".join(parts) + (f"; untrained: {', '.join(rest)}" if rest else "") if parts else (
        f"no label matches a COCO category; untrained: {', '.join(rest)}")
