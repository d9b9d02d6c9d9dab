"""Pretrained weights by name, the way torchvision does it: its weights enums, its download and its cache.

A weights *spec* (``NetConfig.weights``; the backend's ``MTAL_BACKBONE_WEIGHTS``) is one of

- ``None`` / ``"none"``: random initialisation;
- ``"imagenet"``: torchvision's ``DEFAULT`` weights of the backbone (e.g. ``ResNet18_Weights.IMAGENET1K_V1``);
- a weights enum name, ``"ResNet50_Weights.IMAGENET1K_V2"`` (``torchvision.models.get_weight``), which
  must belong to the backbone;
- anything else: a local state-dict file (any trunk shape; the keys must match).

Enum weights go through ``WeightsEnum.get_state_dict`` (``torch.hub.load_state_dict_from_url``): the file
``<torch.hub.get_dir()>/checkpoints/<file name of weights.url>`` (``$TORCH_HOME/hub/checkpoints/`` by
default, ``~/.cache/torch/hub/checkpoints/`` when TORCH_HOME is unset) is used when present, else it is
downloaded once. Without internet and without the file, :class:`WeightsUnavailable` names both the file
and the folder, so it can be copied there by hand.

Pretrained trunks are torchvision's standard ones (64 channels in the stem, the flavour's block counts);
:func:`is_standard` says whether a config has that shape. Input normalisation follows the weights: the
mean/std of ``weights.transforms()`` (:func:`with_weights`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torch import Tensor
from torchvision.models import ResNet18_Weights, ResNet34_Weights, ResNet50_Weights, WeightsEnum, get_weight

from mtal_models.nets.config import IMAGENET_MEAN, IMAGENET_STD, NetConfig

__all__ = [
    "BACKBONE_WEIGHTS",
    "STANDARD_LAYERS",
    "WeightsError",
    "WeightsUnavailable",
    "cache_file",
    "check_loadable",
    "fetch_state_dict",
    "is_standard",
    "parse_weights",
    "standard_trunk",
    "weights_name",
    "weights_normalization",
    "with_weights",
]

# backbone flavour -> its torchvision weights enum
BACKBONE_WEIGHTS: dict[str, type[WeightsEnum]] = {
    "resnet18": ResNet18_Weights,
    "resnet34": ResNet34_Weights,
    "resnet50": ResNet50_Weights,
}
# backbone flavour -> torchvision's blocks per stage
STANDARD_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
    "resnet50": (3, 4, 6, 3),
}
_NONE = ("", "none", "random", "off")


class WeightsError(ValueError):
    """Starting weights that cannot be used: unreadable, or not matching the network."""


class WeightsUnavailable(WeightsError):
    """Named weights are not in torchvision's cache and could not be downloaded (offline)."""


def weights_name(weights: WeightsEnum) -> str:
    """``"ResNet50_Weights.IMAGENET1K_V2"``: the name ``parse_weights`` and ``get_weight`` accept."""
    return f"{type(weights).__name__}.{weights.name}"


def parse_weights(backbone: str, spec: str | Path | None) -> WeightsEnum | Path | None:
    """A spec -> a torchvision weights enum member, a local file path, or None (random init).

    Raises ValueError for an unknown backbone, an unknown enum name, or an enum of another backbone.
    A file path is not checked here (loading reports a missing file).
    """
    if backbone not in BACKBONE_WEIGHTS:
        raise ValueError(f"unknown backbone {backbone!r}; valid: {sorted(BACKBONE_WEIGHTS)}")
    if spec is None or isinstance(spec, str) and spec.strip().lower() in _NONE:
        return None
    if isinstance(spec, Path):
        return spec
    text = spec.strip()
    enum = BACKBONE_WEIGHTS[backbone]
    if text.lower() == "imagenet":
        return enum.DEFAULT  # type: ignore[attr-defined]
    if "_Weights." in text:
        try:
            weights = get_weight(text)
        except (ValueError, KeyError, AttributeError) as exc:
            raise ValueError(
                f"unknown weights {text!r}; {backbone}'s are {[weights_name(w) for w in enum]}"
            ) from exc
        if not isinstance(weights, enum):
            raise ValueError(
                f"weights {text!r} do not belong to backbone {backbone!r}; its weights are "
                f"{[weights_name(w) for w in enum]} (or set the backbone to the weights' own)"
            )
        return weights
    return Path(text).expanduser()


def cache_file(weights: WeightsEnum) -> Path:
    """Where torchvision keeps (and looks for) ``weights``: ``<hub dir>/checkpoints/<url's file name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def fetch_state_dict(weights: WeightsEnum, download: bool = True) -> dict[str, Tensor]:
    """The state dict of ``weights`` from torchvision's cache, downloaded once if missing and ``download``.

    Raises :class:`WeightsUnavailable` (naming the expected file and cache folder) when the file is
    missing and cannot be downloaded, and :class:`WeightsError` when the cached file is not a state dict.
    """
    path = cache_file(weights)
    name = weights_name(weights)
    hint = (
        f"expected file {path.name!r} in the cache folder {str(path.parent)!r} "
        f"(set by TORCH_HOME: <TORCH_HOME>/hub/checkpoints); on a machine without internet, download "
        f"{weights.url} elsewhere and copy it there"
    )
    if not path.is_file() and not download:
        raise WeightsUnavailable(f"{name} is not in torchvision's cache: {hint}")
    try:
        state = weights.get_state_dict(progress=False, map_location="cpu", weights_only=True)
    except (URLError, TimeoutError, ConnectionError) as exc:
        raise WeightsUnavailable(f"{name} could not be downloaded ({exc}): {hint}") from exc
    except OSError as exc:  # after the URL errors: URLError is an OSError too
        raise WeightsUnavailable(f"{name} could not be read or downloaded ({exc}): {hint}") from exc
    except Exception as exc:  # noqa: BLE001 - a corrupt file fails in many ways (UnpicklingError, IndexError, ...)
        raise WeightsError(
            f"{name}: the cached file {str(path)!r} could not be read as a state dict "
            f"({type(exc).__name__}: {_first_line(exc)}); delete it to download it again"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{name}: the cached file {str(path)!r} does not hold a state dict of tensors")
    return state


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


def weights_normalization(weights: WeightsEnum | Path | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the weights were trained with: from ``weights.transforms()`` when it has them
    (torchvision's classification presets), else ImageNet's (local files, random init, detection presets
    whose model normalises with ImageNet's mean/std internally)."""
    if isinstance(weights, WeightsEnum):
        transform = weights.transforms()
        mean, std = getattr(transform, "mean", None), getattr(transform, "std", None)
        if mean is not None and std is not None:
            return tuple(float(v) for v in mean), tuple(float(v) for v in std)
    return IMAGENET_MEAN, IMAGENET_STD


def is_standard(config: NetConfig) -> bool:
    """True when the trunk of ``config`` is torchvision's own (stem width 64, standard block counts),
    the only shape torchvision's pretrained weights load into."""
    layers = tuple(config.layers) or STANDARD_LAYERS.get(config.backbone)
    return config.base_width == 64 and layers == STANDARD_LAYERS.get(config.backbone)


def standard_trunk(config: NetConfig, backbone: str) -> NetConfig:
    """``config`` with torchvision's standard ``backbone`` trunk (heads keep their widths)."""
    if backbone not in STANDARD_LAYERS:
        raise ValueError(f"unknown backbone {backbone!r}; valid: {sorted(STANDARD_LAYERS)}")
    return replace(config, backbone=backbone, layers=(), base_width=64)


def check_loadable(config: NetConfig, weights: WeightsEnum | Path | None) -> None:
    """Raise ValueError when torchvision ``weights`` cannot load into ``config``'s trunk (not standard)."""
    if isinstance(weights, WeightsEnum) and not is_standard(config):
        raise ValueError(
            f"{weights_name(weights)} loads only into torchvision's standard {config.backbone} "
            f"(base_width 64, layers {STANDARD_LAYERS[config.backbone]}); this config has base_width "
            f"{config.base_width}, layers {tuple(config.layers)}"
        )


def with_weights(config: NetConfig, spec: str | Path | None) -> NetConfig:
    """``config`` set to start from ``spec``, with the input normalisation of those weights.

    Raises ValueError when named (enum) weights cannot load into the config's trunk: they need
    :func:`is_standard` (use :func:`standard_trunk`). A local file may fit any trunk; it is checked
    when the network is built.
    """
    weights = parse_weights(config.backbone, spec)
    check_loadable(config, weights)
    mean, std = weights_normalization(weights)
    stored = None if weights is None else weights_name(weights) if isinstance(weights, WeightsEnum) else str(weights)
    return replace(config, weights=stored, norm_mean=mean, norm_std=std)  # type: ignore[arg-type]
