"""Multi-task networks: the registry, a builder and the rule that picks a network for a set of modalities."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mtal_models.modalities import ModalitySpec
from mtal_models.nets.base import Labels, MultiTaskNet, MultiTaskOutput
from mtal_models.nets.config import CONFIGS, NetConfig, get_config
from mtal_models.nets.detseg import DetSegNet
from mtal_models.nets.padnet import PADNet

__all__ = [
    "CONFIGS",
    "NETWORKS",
    "Labels",
    "MultiTaskNet",
    "MultiTaskOutput",
    "NetConfig",
    "PADNet",
    "build_network",
    "choose_network",
    "get_config",
]

NETWORKS: dict[str, type[MultiTaskNet]] = {
    "padnet": PADNet,
    "detseg": DetSegNet,
}


def build_network(
    name: str, modalities: Mapping[str, ModalitySpec], config: str | NetConfig | Mapping[str, Any] = "default"
) -> MultiTaskNet:
    """Instantiate network ``name`` for ``modalities`` with a preset name, NetConfig or dict config."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; valid: {sorted(NETWORKS)}")
    return NETWORKS[name](modalities, get_config(config))


def choose_network(modalities: Mapping[str, ModalitySpec]) -> str:
    """"detseg" when any modality is a detection, else "padnet"."""
    if not modalities:
        raise ValueError("choose_network: at least one modality is required")
    return "detseg" if any(spec.kind == "detection" for spec in modalities.values()) else "padnet"
