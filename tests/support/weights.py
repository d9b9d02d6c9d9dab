"""Fabricated torchvision weights for offline tests: a state dict with the right keys, saved under the
file name torchvision's cache expects (``<TORCH_HOME>/hub/checkpoints/<file of weights.url>``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torchvision.models import WeightsEnum

from mtal_models.nets.pretrained import cache_file


def place_weights(weights: WeightsEnum, state: dict[str, Tensor] | bytes) -> Path:
    """Write ``state`` (a state dict, or raw bytes for a broken file) where torchvision looks for
    ``weights`` under the current TORCH_HOME; returns the path."""
    path = cache_file(weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(state, bytes):
        path.write_bytes(state)
    else:
        torch.save(state, path)
    return path


def random_state(model: torch.nn.Module, seed: int) -> dict[str, Tensor]:
    """``model``'s state dict with every float tensor redrawn from ``seed`` (normal, std 0.05; BN
    variances positive), so it differs from any fresh initialisation."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            value = torch.randn(value.shape, generator=gen) * 0.05
            if key.endswith("running_var"):
                value = value.abs() + 0.5
        out[key] = value.clone()
    return out


def fabricated_fcos(class_biases: dict[str, float]) -> dict[str, Tensor]:
    """torchvision's COCO FCOS ResNet-50 FPN keys with random weights (no download), shaped so the
    answer is known: ``cls_logits`` / ``bbox_ctrness`` / ``bbox_reg`` weights 0, so every location
    scores from the biases alone: COCO category ``name`` -> ``class_biases[name]``, other classes -20,
    centre-ness +8, and a box 2 anchor strides from its anchor on every side (softplus(b) = 2).
    Batch-norm ``num_batches_tracked`` keys are left out, like the FrozenBatchNorm2d of the real file."""
    import math

    from torchvision.models.detection import FCOS_ResNet50_FPN_Weights, fcos_resnet50_fpn

    categories = list(FCOS_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        state = fcos_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    bias = torch.full((len(categories),), -20.0)
    for name, value in class_biases.items():
        bias[categories.index(name)] = value
    state["head.classification_head.cls_logits.weight"].zero_()
    state["head.classification_head.cls_logits.bias"] = bias
    for name, value in (("bbox_ctrness", 8.0), ("bbox_reg", math.log(math.e**2 - 1))):
        state[f"head.regression_head.{name}.weight"].zero_()
        state[f"head.regression_head.{name}.bias"].fill_(value)
    return state
