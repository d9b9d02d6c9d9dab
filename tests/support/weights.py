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
