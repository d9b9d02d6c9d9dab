"""What a project's first network starts from: ``MTAL_BACKBONE``, ``MTAL_BACKBONE_WEIGHTS`` and
``MTAL_PRETRAINED_HEADS`` turned into a built network and a :class:`StartReport`.

Rules (docs/models.md "Pretrained weights"):

- The trunk is ``MTAL_NET_CONFIG``'s unless ``MTAL_BACKBONE`` names one: then it is torchvision's
  standard ResNet of that name (stem width 64, standard block counts), and the preset sizes only the
  heads. Only standard trunks take torchvision's weights; the ``default`` preset's trunk is standard
  ResNet-18, ``tiny``/``small`` have reduced widths.
- ``MTAL_BACKBONE_WEIGHTS``: ``auto`` = ImageNet weights for a standard trunk, downloaded once into
  torchvision's cache; when they cannot be had (offline, unreadable file) the network starts from random
  weights and the reason is kept as a warning (``/health``, ``/status``, the version's metadata). For a
  reduced trunk ``auto`` means random weights, said in a note. ``imagenet`` / an enum name stop with a
  clear error instead (HTTP 422 at ``/setup``); a file path loads that state dict; ``none`` = random.
- ``MTAL_PRETRAINED_HEADS=coco``: det+seg projects start from torchvision's COCO FCOS (trunk, FPN, head;
  labels matching COCO categories get their class rows, :mod:`mtal_models.nets.coco`); needs the
  ResNet-50 trunk (``MTAL_BACKBONE`` unset or ``resnet50``) and ``MTAL_BACKBONE_WEIGHTS=auto``. Dense-only
  (PAD-Net) projects then use the standard ResNet-50 trunk with ``auto`` weights.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

import mtal_models.nets as nets
from mtal_models.nets import get_config
from mtal_models.nets.coco import COCO_WEIGHTS, coco_config, describe_matches, load_coco_detector
from mtal_models.nets.config import NetConfig
from mtal_models.nets.pretrained import (
    WeightsError,
    is_standard,
    weights_name,
    with_weights,
)

if TYPE_CHECKING:
    from backend.labelstudio.label_config import ProjectSchema
    from backend.settings import Settings

__all__ = ["StartReport", "build_initial", "last_start", "start_config", "start_of",
           "weights_fields"]

log = logging.getLogger(__name__)
_last: dict[str, StartReport] = {}
_last_lock = threading.Lock()


@dataclass(frozen=True)
class StartReport:
    """What an initial network was built from (JSON-safe via :meth:`to_dict`).

    backbone: trunk, e.g. "resnet18 (standard)"; weights: "ResNet18_Weights.IMAGENET1K_V1", a file path,
    "FCOS_ResNet50_FPN_Weights.COCO_V1" or "random"; heads: COCO class matches (None unless coco);
    warning: why the requested weights were not used (``auto`` fallback); note: other information.
    """

    backbone: str
    weights: str
    setting: str
    heads: str | None = None
    warning: str | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def start_config(settings: Settings) -> tuple[NetConfig, bool, str | None]:
    """(config to build, whether a failure to get its weights falls back to random, note) for a PAD-Net
    or a det+seg network without COCO heads."""
    trunk = settings.trunk_config()
    spec = settings.backbone_weights
    if spec != "auto":
        return with_weights(trunk, spec), False, None
    if is_standard(trunk):
        return with_weights(trunk, "imagenet"), True, None
    note = (f"MTAL_NET_CONFIG={settings.net_config} has a reduced {trunk.backbone} trunk (width {trunk.base_width}); "
            "torchvision's pretrained weights need a standard one (set MTAL_BACKBONE): random weights")
    return with_weights(trunk, None), False, note


def _describe(config: NetConfig) -> str:
    return f"{config.backbone} ({'standard' if is_standard(config) else f'width {config.base_width}'})"


def build_initial(settings: Settings, schema: ProjectSchema) -> tuple[torch.nn.Module, StartReport]:
    """The project's initial network (seeded with ``MTAL_SEED``) and what it starts from.

    Raises ValueError (incl. WeightsUnavailable) when explicitly requested weights cannot be used.
    """
    setting = f"MTAL_BACKBONE_WEIGHTS={settings.backbone_weights}" + (
        f", MTAL_PRETRAINED_HEADS={settings.pretrained_heads}" if settings.pretrained_heads else "")
    if settings.pretrained_heads == "coco" and schema.network == "detseg":
        config = coco_config(get_config(settings.net_config))
        net = _seeded(settings, schema, config)
        det = next(n for n, s in schema.modalities.items() if s.kind == "detection")
        names = schema.class_names(det)
        matches = load_coco_detector(net, names, COCO_WEIGHTS)
        heads = describe_matches(names, matches)
        report = StartReport(_describe(config), weights_name(COCO_WEIGHTS), setting, heads=heads)
    else:
        config, fallback, note = start_config(settings)
        try:
            net = _seeded(settings, schema, config)
            report = StartReport(_describe(config), config.weights or "random", setting, note=note)
        except WeightsError as e:  # WeightsUnavailable, or a cached file that does not load
            if not fallback:
                raise
            warning = f"MTAL_BACKBONE_WEIGHTS=auto: {e}. Started from random weights instead"
            log.warning("%s", warning)
            config = with_weights(config, None)
            net = _seeded(settings, schema, config)
            report = StartReport(_describe(config), "random", setting, warning=warning)
    with _last_lock:
        _last[str(settings.model_dir)] = report
    return net, report


def _seeded(settings: Settings, schema: ProjectSchema, config: NetConfig) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        return nets.build_network(schema.network, schema.modalities, config)


def last_start(settings: Settings) -> dict[str, Any] | None:
    """The StartReport of the last initial network this process built for ``settings.model_dir``."""
    with _last_lock:
        report = _last.get(str(settings.model_dir))
    return report.to_dict() if report else None


def start_of(versions: list[Mapping[str, Any]], current: str | None) -> dict[str, Any] | None:
    """The start report stored with ``current`` or, for a trained version, with its nearest initial
    ancestor (metadata key "start")."""
    by_version = {str(m.get("version")): m for m in versions}
    seen: set[str] = set()
    while current is not None and current in by_version and current not in seen:
        seen.add(current)
        meta = by_version[current]
        if isinstance(meta.get("start"), dict):
            return dict(meta["start"])
        current = meta.get("parent")
    return None


def weights_fields(start: Mapping[str, Any] | None) -> dict[str, Any]:
    """{"start_weights": report or None} plus {"warnings": [...]} when it carries a warning (/health, /status)."""
    out: dict[str, Any] = {"start_weights": dict(start) if start else None}
    if start and start.get("warning"):
        out["warnings"] = [start["warning"]]
    return out
