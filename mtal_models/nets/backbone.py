"""Shared backbone pieces: a configurable torchvision ResNet trunk and a multi-scale fusion module.

The trunk is built from torchvision's ``BasicBlock``/``Bottleneck`` with the module names of
``torchvision.models.ResNet`` (``conv1``, ``bn1``, ``layer1`` ... ``layer4``), so a torchvision ResNet
state dict (its ``fc.*`` keys are dropped) loads into the matching standard configuration. Widths
(``NetConfig.base_width``) and blocks per stage (``NetConfig.layers``) are configurable, which is how
the "tiny" test configuration stays tiny. Nothing is ever downloaded: ``NetConfig.weights`` names a
local state-dict file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from mtal_models.nets.config import IMAGENET_MEAN, IMAGENET_STD, NetConfig
from mtal_models.nets.pretrained import (
    WeightsError,
    cache_file,
    check_loadable,
    fetch_state_dict,
    parse_weights,
    weights_name,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MultiScaleFusion",
    "ResNetTrunk",
    "build_backbone",
    "check_images",
    "load_backbone_weights",
    "load_trunk_state",
]

# flavour -> (block class, standard blocks per stage)
_FLAVOURS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


def check_images(images: Tensor) -> None:
    """Raise ValueError unless ``images`` is a non-empty float batch [B, 3, H, W] without NaN."""
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a torch.Tensor [B, 3, H, W], got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must be 4-D [B, 3, H, W], got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("images: empty batch (B = 0)")
    if images.shape[1] != 3:
        raise ValueError(f"images must have 3 (RGB) channels, got {images.shape[1]} (shape {tuple(images.shape)})")
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype}")
    if torch.isnan(images).any():
        raise ValueError("images contain NaN")


class ResNetTrunk(nn.Module):
    """ResNet without its classifier: images [B, 3, H, W] in [0, 1] -> 4 feature maps.

    Returns ``[c2, c3, c4, c5]`` at strides ``(4, 8, 16, 32)`` with ``out_channels`` channels
    (``base_width * (1, 2, 4, 8) * block.expansion``). ``normalize=True`` applies ``mean``/``std``
    (ImageNet's by default; ``NetConfig.norm_mean``/``norm_std``) inside, as non-persistent buffers, so
    the state dict matches torchvision's keys.
    """

    strides: tuple[int, int, int, int] = (4, 8, 16, 32)

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        base_width: int = 64,
        normalize: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"backbone layers must be 4 positive block counts, got {tuple(layers)}")
        if base_width < 1:
            raise ValueError(f"backbone base_width must be >= 1, got {base_width}")
        self.normalize = normalize
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"normalisation needs 3 means and 3 positive stds, got {tuple(mean)}, {tuple(std)}")
        self.register_buffer("mean", torch.tensor(tuple(mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(tuple(std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.conv1 = nn.Conv2d(3, base_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._inplanes = base_width
        widths = [base_width * m for m in (1, 2, 4, 8)]
        self.layer1 = self._make_stage(block, widths[0], int(layers[0]), stride=1)
        self.layer2 = self._make_stage(block, widths[1], int(layers[1]), stride=2)
        self.layer3 = self._make_stage(block, widths[2], int(layers[2]), stride=2)
        self.layer4 = self._make_stage(block, widths[3], int(layers[3]), stride=2)
        self.out_channels: tuple[int, int, int, int] = tuple(w * block.expansion for w in widths)  # type: ignore[assignment]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_stage(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        stage = [block(self._inplanes, planes, stride, downsample)]
        self._inplanes = planes * block.expansion
        stage += [block(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, images: Tensor) -> list[Tensor]:
        """images [B, 3, H, W] -> [c2 [B, C2, H/4, W/4], c3 [.., H/8], c4 [.., H/16], c5 [.., H/32]]."""
        x = (images - self.mean) / self.std if self.normalize else images
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


def load_trunk_state(trunk: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Load ``state`` into ``trunk`` (strict) after dropping ``fc.*`` and a ``backbone.`` key prefix.

    Accepts a trunk state dict or a full torchvision ResNet one. Raises WeightsError (a ValueError) naming ``source``
    when the keys or shapes do not match (listing missing/unexpected keys and shape mismatches).
    """
    state = {k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith("fc.")}
    own = trunk.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        def head(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" ... (+{len(keys) - 5})" if len(keys) > 5 else "")

        raise WeightsError(
            f"{source} does not match the configured backbone: "
            f"missing [{head(missing)}]; unexpected [{head(unexpected)}]; shape mismatch [{head(wrong)}]"
        )
    trunk.load_state_dict(state, strict=True)


def load_backbone_weights(trunk: nn.Module, path: str | Path) -> None:
    """Load a local state dict into ``trunk`` (strict), with ``torch.load(weights_only=True)``.

    Accepts a trunk state dict, a full torchvision ResNet state dict (``fc.*`` dropped) or one whose
    keys carry a ``backbone.`` prefix. Raises WeightsError (a ValueError) if the file is missing, unreadable or does
    not match the trunk (listing missing/unexpected keys and shape mismatches).
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"backbone weights file {str(p)!r} does not exist (NetConfig.weights)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is reported the same way
        raise WeightsError(f"backbone weights file {str(p)!r} could not be read as a state dict: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"backbone weights file {str(p)!r} does not hold a state dict of tensors")
    load_trunk_state(trunk, state, f"backbone weights file {str(p)!r}")


def build_backbone(config: NetConfig, normalize: bool = True) -> ResNetTrunk:
    """The trunk described by ``config``: random init, or ``config.weights`` (a local file, "imagenet" or
    a torchvision weights enum name; named weights come from torchvision's cache, downloaded once)."""
    if config.backbone not in _FLAVOURS:
        raise ValueError(f"unknown backbone {config.backbone!r}; valid: {sorted(_FLAVOURS)}")
    block, standard = _FLAVOURS[config.backbone]
    trunk = ResNetTrunk(
        block, tuple(config.layers) or standard, config.base_width, normalize=normalize,
        mean=config.norm_mean, std=config.norm_std,
    )
    weights = parse_weights(config.backbone, config.weights)
    check_loadable(config, weights)
    if isinstance(weights, Path):
        load_backbone_weights(trunk, weights)
    elif weights is not None:
        source = f"{weights_name(weights)} (cached file {str(cache_file(weights))!r}; delete it to download again)"
        load_trunk_state(trunk, fetch_state_dict(weights), source)
    return trunk


class MultiScaleFusion(nn.Module):
    """Fuse backbone maps at several strides into one map at the resolution of ``in_channels[target]``.

    Each input is resized to the target size (area-average down before, bilinear up after a 1x1 projection)
    and summed; a 3x3 conv + BN + ReLU mixes the sum. inputs: list of [B, C_i, h_i, w_i];
    output [B, out_channels, h_target, w_target].
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, target: int = 1) -> None:
        super().__init__()
        if not 0 <= target < len(in_channels):
            raise ValueError(f"fusion target index {target} outside 0..{len(in_channels) - 1}")
        self.target = target
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, kernel_size=1, bias=False) for c in in_channels)
        self.mix = nn.Sequential(
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        if len(features) != len(self.lateral):
            raise ValueError(f"fusion expects {len(self.lateral)} feature maps, got {len(features)}")
        size = features[self.target].shape[-2:]
        out: Tensor | None = None
        for x, proj in zip(features, self.lateral, strict=True):
            if x.shape[-2] > size[0]:  # pool before projecting (cheaper); project before upsampling
                x = F.adaptive_avg_pool2d(x, size)
            y = proj(x)
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            out = y if out is None else out + y
        assert out is not None
        return self.mix(out)
