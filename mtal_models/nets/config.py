"""Network configurations: a frozen dataclass and a registry of named presets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["CONFIGS", "IMAGENET_MEAN", "IMAGENET_STD", "NetConfig", "get_config"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class NetConfig:
    """How big a network is.

    backbone:      torchvision ResNet flavour: "resnet18", "resnet34" or "resnet50".
    layers:        blocks per ResNet stage; empty = the flavour's standard (e.g. 2, 2, 2, 2).
    base_width:    channels of the stem and first stage (torchvision's is 64; smaller = cheaper).
    head_channels: feature width of every task head (and of the distillation blocks).
    fpn_channels:  FPN width of the det+seg network.
    dropout:       dropout in the heads (MC-dropout uses the same layers).
    weights:       backbone weights to start from: None (random init), a local state-dict file, "imagenet"
                   (torchvision's DEFAULT weights of ``backbone``) or a weights enum name such as
                   "ResNet50_Weights.IMAGENET1K_V2" (torchvision's weights API and cache, see
                   :mod:`mtal_models.nets.pretrained`). Only read when a network is built from scratch; a
                   checkpoint carries its own weights.
    max_detections: rows K of the padded detection output [B, K, 6 + C].
    norm_mean / norm_std: per-channel input normalisation applied inside the trunk to images in [0, 1]
                   (ImageNet's by default; :func:`~mtal_models.nets.pretrained.with_weights` sets the
                   chosen weights' own).
    """

    backbone: str = "resnet18"
    layers: tuple[int, ...] = ()
    base_width: int = 64
    head_channels: int = 64
    fpn_channels: int = 128
    dropout: float = 0.2
    weights: str | None = None
    max_detections: int = 100
    norm_mean: tuple[float, float, float] = IMAGENET_MEAN
    norm_std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("layers", "norm_mean", "norm_std"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NetConfig:
        """Inverse of :meth:`to_dict`; configs saved before ``norm_mean``/``norm_std`` existed get ImageNet's."""
        d = dict(d)
        d["layers"] = tuple(d.get("layers", ()))
        for key in ("norm_mean", "norm_std"):
            if key in d:
                d[key] = tuple(float(v) for v in d[key])
        return cls(**d)


CONFIGS: dict[str, NetConfig] = {
    # for unit tests: a few thousand parameters per stage, runs on 64x64 inputs in milliseconds
    "tiny": NetConfig(layers=(1, 1, 1, 1), base_width=8, head_channels=16, fpn_channels=16, max_detections=20),
    # for the demo, end-to-end tests and the simulator on CPU
    "small": NetConfig(layers=(1, 1, 1, 1), base_width=32, head_channels=32, fpn_channels=64),
    # the product default (ResNet-18 widths)
    "default": NetConfig(),
}


def get_config(config: str | NetConfig | Mapping[str, Any], **overrides: Any) -> NetConfig:
    """A NetConfig from a preset name, an instance or a dict; keyword overrides replace fields."""
    if isinstance(config, str):
        if config not in CONFIGS:
            raise ValueError(f"unknown network config {config!r}; valid: {sorted(CONFIGS)}")
        cfg = CONFIGS[config]
    elif isinstance(config, NetConfig):
        cfg = config
    else:
        cfg = NetConfig.from_dict(config)
    return replace(cfg, **overrides) if overrides else cfg
